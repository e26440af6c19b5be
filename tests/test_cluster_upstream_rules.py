"""Upstream rules the cluster path relies on, ported from the pinned sources and checked offline.

Each rule below is a few lines of KServe or Knative code, transcribed from the tag that
scripts/cluster/up.sh installs (KSERVE_VERSION, KNATIVE_SERVING_VERSION, KNATIVE_KOURIER_VERSION)
and applied to what we render or run. Both rules failed the first real run while every schema
check passed, because nothing was wrong with the objects' shape, only with where KServe and
Knative look:

* KServe gives the storage initializer an S3 endpoint only from the Secrets the predictor's
  ServiceAccount lists (or from the ServiceAccount itself, but only with an IRSA role); without
  one, boto3 downloads ``s3://models/...`` from AWS.
* Knative gives a route with no ``config-domain`` entry the domain ``svc.cluster.local``, which
  makes it cluster-local; Kourier then serves it only on its internal listener, and curl through
  the kind port answers 404.

When up.sh moves to a new KServe or Knative version, re-read the files cited here at that tag.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.k8s_schemas import REPO_ROOT, render_kustomization

from components import names

MANIFESTS = REPO_ROOT / "manifests"
UP_SH = REPO_ROOT / "scripts" / "cluster" / "up.sh"
README = REPO_ROOT / "README.md"
SECRET_ENV = Path("base/credentials/taxi-mlops-s3.secret.env")
KSERVE = "serving.kserve.io"


def _pinned(variable: str) -> str:
    match = re.search(rf'^{variable}="([^"]+)"', UP_SH.read_text(encoding="utf-8"), re.MULTILINE)
    assert match, f"up.sh pins no {variable}"
    return match.group(1)


def test_the_rules_below_were_read_at_the_pinned_versions() -> None:
    # The ports below are from these tags; a version bump must re-check them (and update this).
    assert _pinned("KSERVE_VERSION") == "v0.19.0"
    assert _pinned("KNATIVE_SERVING_VERSION") == "knative-v1.21.1"
    assert _pinned("KNATIVE_KOURIER_VERSION") == "knative-v1.21.1"


# ============================================================================ KServe S3 credentials
#
# kserve v0.19.0, pkg/credentials/service_account_credentials.go,
# CreateSecretVolumeAndEnvFromServiceAccount + mountSecretCredential:
#   - the ServiceAccount's own annotations are read (s3.BuildServiceAccountEnvs) only when it has
#     the annotation AwsIrsaAnnotationKey = "eks.amazonaws.com/role-arn";
#   - then, for each Secret in serviceAccount.secrets that has the data key
#     config.S3.S3SecretAccessKeyName, s3.BuildSecretEnvs(secret) adds AWS_ACCESS_KEY_ID /
#     AWS_SECRET_ACCESS_KEY as secretKeyRefs plus BuildS3EnvVars(secret.Annotations, &secret.Data),
#     merged over the ServiceAccount's (utils.MergeEnvs: the Secret wins).
# kserve v0.19.0, pkg/credentials/s3/utils.go, BuildS3EnvVars / getEnvValue /
# getEndpointConfiguration: each setting comes from the annotation, else the data key, else the
# inferenceservice-config `credentials.s3` value; the endpoint without a scheme is https unless
# s3-usehttps is "0".
# kserve v0.19.0, pkg/credentials/s3/s3_secret.go: the annotation and data-key names below.
# kserve v0.19.0, config/configmap/inferenceservice.yaml `credentials`: s3AccessKeyIDName
# AWS_ACCESS_KEY_ID, s3SecretAccessKeyName AWS_SECRET_ACCESS_KEY, s3Endpoint/s3UseHttps/s3Region "".

IRSA_ANNOTATION = "eks.amazonaws.com/role-arn"
S3_CONFIG = {
    "s3AccessKeyIDName": "AWS_ACCESS_KEY_ID",
    "s3SecretAccessKeyName": "AWS_SECRET_ACCESS_KEY",
    "s3Endpoint": "",
    "s3UseHttps": "",
    "s3Region": "",
}
# (annotation, secret data key, credentials.s3 field) -> the env variable it becomes.
ENDPOINT = (f"{KSERVE}/s3-endpoint", "S3_ENDPOINT", "s3Endpoint")
USE_HTTPS = (f"{KSERVE}/s3-usehttps", "S3_USE_HTTPS", "s3UseHttps")
REGION = (f"{KSERVE}/s3-region", "AWS_DEFAULT_REGION", "s3Region")


def _env_value(annotations: Mapping[str, str], data: Mapping[str, str], setting: tuple[str, str, str]) -> str:
    """utils.go getEnvValue: annotation, else secret data key, else the configmap value."""
    annotation, data_key, config_key = setting
    if annotation in annotations:
        return annotations[annotation]
    if data_key in data:
        return data[data_key]
    return S3_CONFIG[config_key]


def _s3_env_vars(annotations: Mapping[str, str], data: Mapping[str, str]) -> dict[str, str]:
    """utils.go BuildS3EnvVars, the settings we depend on (endpoint, https, region)."""
    env: dict[str, str] = {}
    endpoint = _env_value(annotations, data, ENDPOINT).strip()
    if endpoint:
        # getEndpointConfiguration
        if endpoint.lower().startswith("https://"):
            use_https, host, url = "1", endpoint[8:], endpoint
        elif endpoint.lower().startswith("http://"):
            use_https, host, url = "0", endpoint[7:], endpoint
        else:
            use_https = _env_value(annotations, data, USE_HTTPS)
            host = endpoint
            url = ("http://" if use_https == "0" else "https://") + endpoint
        if use_https:
            env["S3_USE_HTTPS"] = use_https
        env["S3_ENDPOINT"] = host
        env["AWS_ENDPOINT_URL"] = url
    region = _env_value(annotations, data, REGION)
    if region:
        env["AWS_DEFAULT_REGION"] = region
    return env


def storage_initializer_s3_env(
    account: dict[str, Any], secrets: Mapping[str, dict[str, Any]]
) -> dict[str, str | dict[str, Any]]:
    """The S3 env KServe gives the storage initializer of a predictor running as ``account``."""
    env: dict[str, str | dict[str, Any]] = {}
    account_annotations = account["metadata"].get("annotations") or {}
    if IRSA_ANNOTATION in account_annotations:
        env.update(_s3_env_vars(account_annotations, {}))
    for ref in account.get("secrets") or []:
        # mountSecretCredential fails the reconcile when a listed Secret does not exist.
        secret = secrets[ref["name"]]
        data = {key: base64.b64decode(value).decode() for key, value in (secret.get("data") or {}).items()}
        if S3_CONFIG["s3SecretAccessKeyName"] not in data:
            continue  # not an S3 secret (GCS, Azure, ... or skipped)
        for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            key = S3_CONFIG[
                "s3AccessKeyIDName" if variable == "AWS_ACCESS_KEY_ID" else "s3SecretAccessKeyName"
            ]
            env[variable] = {"secretKeyRef": {"name": secret["metadata"]["name"], "key": key}}
        env.update(_s3_env_vars(secret["metadata"].get("annotations") or {}, data))
    return env


def _account(annotations: dict[str, str] | None = None, secrets: list[str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": "sa", "annotations": annotations or {}},
        "secrets": [{"name": name} for name in secrets or []],
    }


def _secret(data: dict[str, str], annotations: dict[str, str] | None = None) -> dict[str, Any]:
    encoded = {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}
    return {"metadata": {"name": "s", "annotations": annotations or {}}, "data": encoded}


KEYS = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}


@pytest.mark.parametrize(
    ("account", "secret", "expected"),
    [
        # One case per branch of the code cited above that the manifests depend on, so the port
        # itself is pinned (upstream's pkg/credentials/s3/utils_test.go covers the same branches).
        (_account({ENDPOINT[0]: "minio:9000"}, ["s"]), _secret(KEYS), {}),  # SA annotation, no IRSA
        (
            _account({ENDPOINT[0]: "minio:9000", IRSA_ANNOTATION: "arn:aws:iam::1:role/r"}),
            _secret(KEYS),
            {"S3_ENDPOINT": "minio:9000", "AWS_ENDPOINT_URL": "https://minio:9000"},
        ),
        (
            _account(secrets=["s"]),
            _secret(KEYS, {ENDPOINT[0]: "minio:9000", USE_HTTPS[0]: "0", REGION[0]: "r1"}),
            {
                "S3_USE_HTTPS": "0",
                "S3_ENDPOINT": "minio:9000",
                "AWS_ENDPOINT_URL": "http://minio:9000",
                "AWS_DEFAULT_REGION": "r1",
            },
        ),
        (
            _account(secrets=["s"]),
            _secret(KEYS | {"S3_ENDPOINT": "http://minio:9000"}),
            {"S3_USE_HTTPS": "0", "S3_ENDPOINT": "minio:9000", "AWS_ENDPOINT_URL": "http://minio:9000"},
        ),
        (_account(secrets=["s"]), _secret({"AWS_ACCESS_KEY_ID": "k"}, {ENDPOINT[0]: "minio:9000"}), {}),
    ],
    ids=["sa-annotations-ignored-without-irsa", "sa-annotations-with-irsa", "secret-annotations",
         "secret-data-key-with-scheme", "not-an-s3-secret"],
)  # fmt: skip
def test_the_port_of_kserves_credential_builder(account, secret, expected) -> None:
    env = storage_initializer_s3_env(account, {"s": secret})
    assert {key: value for key, value in env.items() if isinstance(value, str)} == expected


@pytest.fixture(scope="module")
def kind_overlay(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """What up.sh applies (manifests/overlays/kind), with a throwaway credentials file."""
    root = tmp_path_factory.mktemp("manifests") / "manifests"
    shutil.copytree(MANIFESTS, root, ignore=shutil.ignore_patterns("*.secret.env"))
    (root / SECRET_ENV).write_text(
        "AWS_ACCESS_KEY_ID=u\nAWS_SECRET_ACCESS_KEY=render-only-0123\n", encoding="utf-8"
    )
    return render_kustomization(root / "overlays" / "kind")


def _one(objs: list[dict[str, Any]], kind: str, name: str, namespace: str) -> dict[str, Any]:
    (obj,) = (
        o
        for o in objs
        if o["kind"] == kind and o["metadata"]["name"] == name and o["metadata"].get("namespace") == namespace
    )
    return obj


def test_kserve_points_the_storage_initializer_at_our_minio(kind_overlay: list[dict[str, Any]]) -> None:
    # Rule: kserve v0.19.0 pkg/credentials/service_account_credentials.go + pkg/credentials/s3/
    # (ported above). The endpoint must be the in-cluster MinIO Service, plain HTTP, with a region
    # (boto3 needs one), or the storage initializer asks AWS for s3://models/....
    account = _one(kind_overlay, "ServiceAccount", names.PREDICTOR_SERVICE_ACCOUNT, names.NAMESPACE)
    secrets = {
        o["metadata"]["name"]: o
        for o in kind_overlay
        if o["kind"] == "Secret" and o["metadata"].get("namespace") == names.NAMESPACE
    }
    minio = _one(kind_overlay, "Service", "minio", names.NAMESPACE)
    s3_port = next(p["port"] for p in minio["spec"]["ports"] if p["name"] == "s3")
    minio_host = f"{minio['metadata']['name']}.{names.NAMESPACE}.svc.cluster.local:{s3_port}"
    assert f"http://{minio_host}" == names.S3_ENDPOINT_URL  # components/names.py names the same Service

    env = storage_initializer_s3_env(account, secrets)
    assert env == {
        "AWS_ACCESS_KEY_ID": {"secretKeyRef": {"name": names.S3_SECRET, "key": "AWS_ACCESS_KEY_ID"}},
        "AWS_SECRET_ACCESS_KEY": {"secretKeyRef": {"name": names.S3_SECRET, "key": "AWS_SECRET_ACCESS_KEY"}},
        "S3_ENDPOINT": minio_host,
        "S3_USE_HTTPS": "0",
        "AWS_ENDPOINT_URL": names.S3_ENDPOINT_URL,
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def test_the_predictor_account_carries_no_s3_settings_kserve_would_ignore(
    kind_overlay: list[dict[str, Any]],
) -> None:
    # Rule: kserve v0.19.0 pkg/credentials/service_account_credentials.go reads a ServiceAccount's
    # serving.kserve.io/s3-* annotations only next to eks.amazonaws.com/role-arn (IRSA), which a kind
    # cluster has no use for. Settings there would look effective and be silently ignored.
    account = _one(kind_overlay, "ServiceAccount", names.PREDICTOR_SERVICE_ACCOUNT, names.NAMESPACE)
    annotations = account["metadata"].get("annotations") or {}
    assert IRSA_ANNOTATION not in annotations
    assert not [key for key in annotations if key.startswith(f"{KSERVE}/s3-")], annotations
    assert account["secrets"] == [{"name": names.S3_SECRET}]


# ============================================================================ Knative route domain
#
# knative/serving knative-v1.21.1, pkg/reconciler/route/config/domain.go:
#   NewDomainFromConfigMap skips the `_example` key; an entry without a selector is a default;
#   with no default entry, DefaultDomain = "svc." + cluster domain ("svc.cluster.local") is added.
#   LookupDomainForLabels picks the most specific matching selector (ties: the smaller name).
# knative-v1.21.1, pkg/reconciler/route/visibility/visibility.go routeVisibility: a route whose
#   domain is "svc.cluster.local" is IngressVisibilityClusterLocal, else ExternalIP.
# knative-v1.21.1, config/core/configmaps/domain.yaml: the shipped config-domain has only `_example`.
# net-kourier knative-v1.21.1, pkg/generator/ingress_translator.go: every rule goes on the local
#   (internal, port 8081) virtual hosts; only ExternalIP rules also go on the external ones (port
#   8080, pkg/reconciler/ingress/config/config.go HTTPPortExternal), which is the targetPort of our
#   kind NodePort (manifests/overlays/kind/nodeports.yaml).
# vendor/knative.dev/networking/pkg/config/config.go: DefaultDomainTemplate
#   "{{.Name}}.{{.Namespace}}.{{.Domain}}", DefaultTagTemplate "{{.Tag}}-{{.Name}}".
# kserve v0.19.0 hack/setup/infra/knative/templates/knative-serving-kourier.yaml sets
#   config-domain `example.com: ""` for the same reason ("svc.cluster.local is not exposed on ingress").

CLUSTER_LOCAL_DOMAIN = "svc.cluster.local"
SHIPPED_CONFIG_DOMAIN = {"_example": "..."}


def route_domain(config_domain: Mapping[str, str], route_labels: Mapping[str, str]) -> str:
    """domain.go NewDomainFromConfigMap + LookupDomainForLabels."""
    if route_labels.get("networking.knative.dev/visibility") == "cluster-local":
        return CLUSTER_LOCAL_DOMAIN
    selectors: dict[str, dict[str, str]] = {}
    for domain, value in config_domain.items():
        if domain == "_example":
            continue
        selectors[domain] = (yaml.safe_load(value) or {}).get("selector") or {}
    if not any(not selector for selector in selectors.values()):
        selectors[CLUSTER_LOCAL_DOMAIN] = {}
    matching = [
        (-len(selector), domain)
        for domain, selector in selectors.items()
        if all(route_labels.get(key) == value for key, value in selector.items())
    ]
    return min(matching)[1]


def test_the_port_of_knatives_domain_lookup() -> None:
    assert route_domain(SHIPPED_CONFIG_DOMAIN, {}) == CLUSTER_LOCAL_DOMAIN
    assert route_domain({**SHIPPED_CONFIG_DOMAIN, "example.com": ""}, {}) == "example.com"
    assert route_domain({"example.com": "", "b.org": "selector:\n  app: x\n"}, {"app": "x"}) == "b.org"
    assert route_domain({"b.org": "", "a.org": ""}, {}) == "a.org"
    assert route_domain({"example.com": ""}, {"networking.knative.dev/visibility": "cluster-local"}) == (
        CLUSTER_LOCAL_DOMAIN
    )


def _function_body(script: str, name: str) -> str:
    match = re.search(rf"^{name}\(\) \{{\n(.*?)^\}}", script, re.MULTILINE | re.DOTALL)
    assert match, f"up.sh has no function {name}"
    return match.group(1)


CONFIG_DOMAIN_PATCH = re.compile(
    r"^\s*(?P<retry>retry \d+ \d+ )?kubectl patch configmap[/ ]config-domain -n knative-serving "
    r"--type merge\s*(?:\\\n\s*)?-p '(?P<patch>[^']*)'",
    re.MULTILINE,
)


def _config_domain_patch() -> tuple[dict[str, str], str]:
    body = _function_body(UP_SH.read_text(encoding="utf-8"), "install_knative")
    found = list(CONFIG_DOMAIN_PATCH.finditer(body))
    assert len(found) == 1, "install_knative must patch Knative's config-domain exactly once"
    return json.loads(found[0]["patch"])["data"], body


def up_sh_route_domain() -> str:
    data, _ = _config_domain_patch()
    return route_domain({**SHIPPED_CONFIG_DOMAIN, **data}, {})


def test_up_sh_gives_knative_routes_an_external_domain() -> None:
    # Rule: knative-v1.21.1 pkg/reconciler/route/config/domain.go + visibility/visibility.go and
    # net-kourier knative-v1.21.1 pkg/generator/ingress_translator.go (ported above): without a
    # default config-domain entry every route is cluster-local and the kind port answers 404.
    data, body = _config_domain_patch()
    assert up_sh_route_domain() != CLUSTER_LOCAL_DOMAIN
    assert all(value == "" for value in data.values()), "a selector would leave our routes cluster-local"
    # The ConfigMap exists only once serving-core is applied; the patch must come after that and
    # go through `retry`: Knative's config webhook (config/core/webhooks/configmap-validation.yaml,
    # failurePolicy Fail) validates config-domain and may not answer yet.
    match = CONFIG_DOMAIN_PATCH.search(body)
    assert match and match["retry"], "patch config-domain through retry (webhook still starting)"
    assert body.index("serving-core.yaml") < match.start()
    # ...and before anything creates a route: KServe and our manifests come after install_knative.
    main = _function_body(UP_SH.read_text(encoding="utf-8"), "main").split()
    assert main.index("install_knative") < min(
        main.index(step) for step in ("install_kserve", "apply_manifests")
    )


def test_knative_config_patches_wait_for_the_webhook() -> None:
    # knative-v1.21.1 config/core/webhooks/configmap-validation.yaml: config-network, config-domain
    # and config-deployment (components networking/controller) go through a webhook with
    # failurePolicy Fail, which starts with serving-core; a bare patch right after the apply fails
    # the first run with "connection refused".
    body = _function_body(UP_SH.read_text(encoding="utf-8"), "install_knative")
    patches = re.findall(r"^\s*(.*)kubectl patch configmap", body, re.MULTILINE)
    assert len(patches) >= 3, patches
    assert all(prefix.startswith("retry ") for prefix in patches), patches


def test_readme_and_fakes_use_the_hosts_knative_will_produce() -> None:
    # KServe v0.19.0: the predictor's Knative Service is `<isvc>-predictor`
    # (pkg/constants/constants.go PredictorServiceName); status.components.predictor.url is that
    # Service's URL (pkg/apis/serving/v1beta1/inference_service_status.go PropagateStatus); with
    # disableIstioVirtualHost (up.sh sets it for Kourier), status.url is the predictor URL unchanged
    # (pkg/controller/v1beta1/inferenceservice/reconcilers/ingress/ingress_reconciler.go
    # getHostBasedServiceUrl). Knative's templates make it <name>.<namespace>.<domain>, and the
    # canary's previous revision is tagged "prev" (reconcilers/knative/ksvc_reconciler.go).
    assert 'ingress["disableIstioVirtualHost"] = True' in _function_body(
        UP_SH.read_text(encoding="utf-8"), "install_kserve"
    )
    predictor_host = f"{names.INFERENCE_SERVICE}-predictor.{names.NAMESPACE}.{up_sh_route_domain()}"
    readme = README.read_text(encoding="utf-8")
    assert f"# {predictor_host}" in readme  # the comment beside the HOST= command
    assert f"prev-{predictor_host}" in readme
    rollout_test = (REPO_ROOT / "tests" / "test_cluster_rollout.py").read_text(encoding="utf-8")
    assert f"http://{predictor_host}" in rollout_test
    assert f"{names.INFERENCE_SERVICE}.{names.NAMESPACE}.example.com" not in rollout_test
    assert f"{names.INFERENCE_SERVICE}.{names.NAMESPACE}.example.com" not in readme
