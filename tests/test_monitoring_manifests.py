"""The cluster's monitoring component: rendered, schema-validated, configs checked by promtool and
amtool, and its pod discovery run by a real Prometheus against pods shaped like the cluster's.

Nothing here needs a cluster. ``kubectl kustomize`` renders the component alone and inside the
kind overlay (``tests/test_manifests.py``'s fixtures, over a copy of ``manifests/`` with
throwaway credentials); ``tests/support/k8s_schemas`` validates every object offline.

Debian's Prometheus is built without Kubernetes service discovery (its promtool refuses
``kubernetes_sd_configs`` as an unknown field), so the discovery is checked in two parts:
the ``kubernetes_sd_configs`` blocks against the fields of upstream's ``SDConfig``
(prometheus/prometheus ``discovery/kubernetes/kubernetes.go``: role, namespaces.names,
selectors of the pod role), and everything else by the real binaries with each block
swapped for a ``file_sd`` file holding the target groups Kubernetes discovery would make
of our pods (the meta labels of upstream's ``discovery/kubernetes/pod.go``: one target per
container port, labels and annotations sanitized). That file_sd Prometheus then relabels
them with the very relabel rules of the ConfigMap, and its ``/api/v1/targets`` says which
pods the cluster's Prometheus would scrape, where, and with which labels.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from support.k8s_schemas import render_kustomization, validate_resource
from support.predictor_process import free_port
from support.prometheus_binaries import require_binary
from test_manifests import containers_of, find, kind_config, kind_overlay, manifests_copy, pod_spec

from components import names
from serving.deployment_state import Revision
from serving.kserve_deploy import first_deployment
from serving.local_stack import stop_process_group
from serving.observability import RULES_FILE

__all__ = ["kind_config", "kind_overlay", "manifests_copy"]  # fixtures, imported to be reused

COMPONENT = Path("components") / "monitoring"
NS = names.NAMESPACE
PROMETHEUS_IMAGE = re.compile(r"quay\.io/prometheus/(prometheus|alertmanager):v\d+\.\d+\.\d+")
MONITORING_DEPLOYMENTS = {"prometheus", "alertmanager", "alert-receiver"}


@pytest.fixture(scope="module")
def component(manifests_copy: Path) -> list[dict[str, Any]]:
    return render_kustomization(manifests_copy / COMPONENT)


def _config_map(objs: list[dict[str, Any]], prefix: str) -> dict[str, Any]:
    """The generated ConfigMap ``prefix-<hash>`` (exactly one)."""
    (found,) = [
        o
        for o in objs
        if o["kind"] == "ConfigMap" and re.fullmatch(rf"{prefix}-[a-z0-9]{{10}}", o["metadata"]["name"])
    ]
    return found


def _prometheus_config(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return yaml.safe_load(_config_map(objs, "prometheus-config")["data"]["prometheus.yml"])


def test_the_component_renders_alone_and_every_object_validates(component: list[dict[str, Any]]) -> None:
    ids = {
        (o["kind"], o["metadata"].get("namespace"), re.sub(r"-[a-z0-9]{10}$", "", o["metadata"]["name"]))
        for o in component
    }
    assert ids == {
        ("ServiceAccount", NS, "prometheus"),
        ("Role", NS, "prometheus"),
        ("RoleBinding", NS, "prometheus"),
        ("ConfigMap", NS, "prometheus-config"),
        ("ConfigMap", NS, "alertmanager-config"),
        *{("Deployment", NS, name) for name in MONITORING_DEPLOYMENTS},
        *{("Service", NS, name) for name in MONITORING_DEPLOYMENTS},
    }
    assert [error for obj in component for error in validate_resource(obj)] == []


def test_the_kind_overlay_includes_it_with_nodeports_on_the_kind_port_mappings(
    component: list[dict[str, Any]], kind_overlay: list[dict[str, Any]], kind_config: dict[str, Any]
) -> None:
    for obj in component:
        rendered = find(kind_overlay, obj["kind"], obj["metadata"]["name"], NS)
        assert rendered["metadata"]["labels"]["app.kubernetes.io/part-of"] == "taxi-mlops"
    mappings = {m["containerPort"]: m for m in kind_config["nodes"][0]["extraPortMappings"]}
    for service, target, node_port, host_port in (
        ("prometheus-nodeport", "prometheus", 30083, 9190),
        ("alertmanager-nodeport", "alertmanager", 30084, 9193),
    ):
        spec = find(kind_overlay, "Service", service, NS)["spec"]
        assert spec["type"] == "NodePort" and spec["selector"] == {"app.kubernetes.io/name": target}
        assert spec["ports"][0]["nodePort"] == node_port and spec["ports"][0]["targetPort"] == "web"
        assert (
            mappings[node_port]["hostPort"] == host_port
            and mappings[node_port]["listenAddress"] == "127.0.0.1"
        )
    # The UIs' host ports leave 9090/9093 to a local `taxi-mlops observe`.
    assert not {9090, 9093} & {m["hostPort"] for m in mappings.values()}
    script = (Path(__file__).resolve().parents[1] / "scripts" / "cluster" / "port-forward.sh").read_text()
    for forward in ("svc/prometheus 9190:9090", "svc/alertmanager 9193:9093", "svc/alert-receiver 9195:9095"):
        assert forward in script


def test_the_rules_in_the_config_map_are_the_repo_file_byte_for_byte(component: list[dict[str, Any]]) -> None:
    config_map = _config_map(component, "prometheus-config")
    assert config_map["data"]["taxi-mlops.rules.yml"].encode("utf-8") == RULES_FILE.read_bytes()
    assert _prometheus_config(component)["rule_files"] == ["taxi-mlops.rules.yml"]
    # ... and it is what the Prometheus pod mounts beside prometheus.yml.
    spec = pod_spec(find(component, "Deployment", "prometheus", NS))
    (volume,) = [v for v in spec["volumes"] if v["name"] == "config"]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "config"]
    assert mount["mountPath"] == "/etc/prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in spec["containers"][0]["args"]


def test_least_privilege_rbac_in_the_namespace_only(component: list[dict[str, Any]]) -> None:
    assert not [o for o in component if o["kind"] in {"ClusterRole", "ClusterRoleBinding"}]
    role = find(component, "Role", "prometheus", NS)
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods", "endpoints", "services"], "verbs": ["get", "list", "watch"]}
    ]
    binding = find(component, "RoleBinding", "prometheus", NS)
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "prometheus",
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "prometheus", "namespace": NS}]
    for name in MONITORING_DEPLOYMENTS:
        spec = pod_spec(find(component, "Deployment", name, NS))
        # Only Prometheus talks to the API (kubernetes_sd), with its own account.
        assert spec.get("automountServiceAccountToken") is (name == "prometheus"), name
        assert spec.get("serviceAccountName") == ("prometheus" if name == "prometheus" else None), name
    # Discovery asks the API for this namespace only, which is all the Role allows.
    for job in _prometheus_config(component)["scrape_configs"]:
        for sd in job["kubernetes_sd_configs"]:
            assert sd["namespaces"] == {"names": [NS]}, job["job_name"]


def test_pods_are_non_root_bounded_probed_pinned_and_keep_nothing(component: list[dict[str, Any]]) -> None:
    checked = 0
    for obj in component:
        for container, spec in containers_of(obj):
            checked += 1
            where = f"{obj['metadata']['name']}/{container['name']}"
            assert (
                spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] > 0
            )
            security = container["securityContext"]
            assert (
                security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True
            )
            assert security["capabilities"]["drop"] == ["ALL"], where
            for section in ("requests", "limits"):
                assert set(container["resources"][section]) == {"cpu", "memory"}, where
            assert container["readinessProbe"]["httpGet"] and container["livenessProbe"]["httpGet"], where
            image = container["image"]
            assert PROMETHEUS_IMAGE.fullmatch(image) or image == "docker.io/taxi-mlops/pipeline:0.1.0", image
            # Storage is emptyDir (bounded) or the config: nothing claims a volume.
            for volume in spec["volumes"]:
                assert "emptyDir" in volume or "configMap" in volume, where
                if "emptyDir" in volume:
                    assert volume["emptyDir"]["sizeLimit"], where
    assert checked == len(MONITORING_DEPLOYMENTS)


def test_alerts_go_to_the_alertmanager_service_and_on_to_the_receiver_service(
    component: list[dict[str, Any]],
) -> None:
    def service_url(name: str) -> str:
        port = find(component, "Service", name, NS)["spec"]["ports"][0]["port"]
        return f"{name}.{NS}.svc.cluster.local:{port}"

    config = _prometheus_config(component)
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
        service_url("alertmanager")
    ]
    alertmanager = yaml.safe_load(_config_map(component, "alertmanager-config")["data"]["alertmanager.yml"])
    (receiver,) = alertmanager["receivers"]
    assert receiver["webhook_configs"][0]["url"] == f"http://{service_url('alert-receiver')}/alerts"
    assert alertmanager["route"]["receiver"] == receiver["name"]
    # The receiver pod writes alerts.jsonl on its emptyDir.
    args = pod_spec(find(component, "Deployment", "alert-receiver", NS))["containers"][0]["args"]
    assert "--alerts-file=/var/lib/taxi-mlops/alerts/alerts.jsonl" in args


# ------------------------------------------------------------------ the configs, by the real binaries

#: upstream SDConfig (discovery/kubernetes/kubernetes.go): the fields a pod-role block may use here.
_SD_FIELDS = {"role", "namespaces", "selectors", "api_server", "kubeconfig_file", "attach_metadata"}
_SD_ROLES = {"pod", "service", "endpoints", "endpointslice", "node", "ingress"}


def _check_kubernetes_sd(block: dict[str, Any], where: str) -> None:
    assert set(block) <= _SD_FIELDS, (where, set(block) - _SD_FIELDS)
    assert block["role"] in _SD_ROLES, where
    assert set(block.get("namespaces", {})) <= {"names", "own_namespace"}, where
    for selector in block.get("selectors", []):
        assert set(selector) <= {"role", "label", "field"}, where
        assert selector["role"] == block["role"], f"{where}: a pod-role block takes only pod selectors"
        for requirement in selector.get("label", "").split(","):
            assert re.fullmatch(r"[\w./-]+(=|==|!=)[\w.-]*|!?[\w./-]+", requirement.strip()), (
                where,
                requirement,
            )


def _pod_targets(pod: dict[str, Any]) -> dict[str, Any]:
    """The target group Kubernetes pod discovery makes of ``pod`` (upstream discovery/kubernetes/pod.go),
    with the pod at 127.0.0.1 so nothing leaves this machine."""

    def sanitized(name: str) -> str:
        return re.sub(r"[^a-zA-Z0-9_]", "_", name)

    labels = {
        "__meta_kubernetes_namespace": pod["namespace"],
        "__meta_kubernetes_pod_name": pod["name"],
        "__meta_kubernetes_pod_ip": "127.0.0.1",
        "__meta_kubernetes_pod_phase": "Running",
        "__meta_kubernetes_pod_ready": "true",
    }
    for key, value in pod.get("labels", {}).items():
        labels[f"__meta_kubernetes_pod_label_{sanitized(key)}"] = value
        labels[f"__meta_kubernetes_pod_labelpresent_{sanitized(key)}"] = "true"
    for key, value in pod.get("annotations", {}).items():
        labels[f"__meta_kubernetes_pod_annotation_{sanitized(key)}"] = value
        labels[f"__meta_kubernetes_pod_annotationpresent_{sanitized(key)}"] = "true"
    targets = []
    for init, containers in ((True, pod.get("initContainers", [])), (False, pod["containers"])):
        for container in containers:
            common = {"__meta_kubernetes_pod_container_name": container["name"]}
            common["__meta_kubernetes_pod_container_init"] = "true" if init else "false"
            if not container.get("ports"):
                targets.append({"__address__": "127.0.0.1", **common})
            for port in container.get("ports", []):
                number = str(port["containerPort"])
                targets.append(
                    {
                        "__address__": f"127.0.0.1:{number}",
                        **common,
                        "__meta_kubernetes_pod_container_port_number": number,
                        "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
                        "__meta_kubernetes_pod_container_port_protocol": port.get("protocol", "TCP"),
                    }
                )
    # file_sd takes one label set per group: one group per target, the pod's labels on each.
    return {"groups": [{"targets": [t.pop("__address__")], "labels": {**labels, **t}} for t in targets]}


def _selected(pod: dict[str, Any], block: dict[str, Any]) -> bool:
    """Whether the API would return ``pod`` to this kubernetes_sd block (namespace and label selector)."""
    if pod["namespace"] not in block.get("namespaces", {}).get("names", [pod["namespace"]]):
        return False
    for selector in block.get("selectors", []):
        for requirement in filter(None, selector.get("label", "").split(",")):
            key, _, value = requirement.partition("=")
            if pod.get("labels", {}).get(key.strip()) != value.strip():
                return False
    return True


def _cluster_pods(kind_overlay: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pods as the cluster runs them: from the rendered Deployments, and a KServe predictor pod as
    KServe + Knative build it (our ServingRuntime container, the deploy code's annotations)."""
    pods = []
    for obj in kind_overlay:
        if obj["kind"] == "Deployment":
            template = obj["spec"]["template"]
            pods.append(
                {
                    "name": f"{obj['metadata']['name']}-7d9f-abcde",
                    "namespace": obj["metadata"]["namespace"],
                    "labels": template["metadata"].get("labels", {}),
                    "annotations": template["metadata"].get("annotations", {}),
                    "containers": template["spec"]["containers"],
                    "initContainers": template["spec"].get("initContainers", []),
                }
            )
    runtime = find(kind_overlay, "ServingRuntime", names.SERVING_RUNTIME, NS)["spec"]["containers"][0]
    isvc = first_deployment(Revision("7", "s3://models/taxi-trip-duration/7", "ab" * 32))
    predictor = {
        "name": "taxi-duration-predictor-00001-deployment-5f9c-xyz12",
        "namespace": NS,
        "labels": {
            "serving.kserve.io/inferenceservice": names.INFERENCE_SERVICE,  # KServe predictor.go
            "component": "predictor",
            "serving.knative.dev/revision": "taxi-duration-predictor-00001",
        },
        "annotations": isvc["spec"]["predictor"].get("annotations", {}),
        "initContainers": [{"name": "storage-initializer"}],
        "containers": [
            # Knative keeps the user container's one port, named user-port.
            {"name": "kserve-container", "ports": [{"name": "user-port", **runtime["ports"][0]}]},
            {
                "name": "queue-proxy",
                "ports": [
                    {"name": "http-queueadm", "containerPort": 8022},
                    {"name": "http-autometric", "containerPort": 9090},
                    {"name": "http-usermetric", "containerPort": 9091},
                    {"name": "queue-port", "containerPort": 8012},
                ],
            },
        ],
    }
    # The same pod had an operator switched on KServe's enable-prometheus-scraping (queue-proxy port).
    rewritten = {
        **predictor,
        "name": predictor["name"].replace("xyz12", "qp123"),
        "annotations": {
            **predictor["annotations"],
            "prometheus.io/scrape": "true",
            "prometheus.io/port": "9091",
        },
    }
    return [*pods, predictor, rewritten]


def _file_sd_variant(config: dict[str, Any], pods: list[dict[str, Any]], folder: Path) -> dict[str, Any]:
    """``config`` with each kubernetes_sd block replaced by a file of the targets it would discover."""
    variant = json.loads(json.dumps(config))
    for job in variant["scrape_configs"]:
        files = []
        for index, block in enumerate(job.pop("kubernetes_sd_configs")):
            _check_kubernetes_sd(block, job["job_name"])
            groups = [g for pod in pods if _selected(pod, block) for g in _pod_targets(pod)["groups"]]
            path = folder / f"{job['job_name']}-{index}.json"
            path.write_text(json.dumps(groups), encoding="utf-8")
            files.append(str(path))
        job["file_sd_configs"] = [{"files": files}]
    return variant


@pytest.fixture(scope="module")
def config_dir(kind_overlay: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ConfigMaps' files as the pods mount them, and the file_sd variant beside them."""
    folder = tmp_path_factory.mktemp("monitoring-config")
    for prefix in ("prometheus-config", "alertmanager-config"):
        for name, text in _config_map(kind_overlay, prefix)["data"].items():
            (folder / name).write_text(text, encoding="utf-8")
    variant = _file_sd_variant(_prometheus_config(kind_overlay), _cluster_pods(kind_overlay), folder)
    (folder / "prometheus-file-sd.yml").write_text(yaml.safe_dump(variant, sort_keys=False), encoding="utf-8")
    return folder


def test_promtool_checks_the_rendered_prometheus_config(config_dir: Path) -> None:
    promtool = require_binary("promtool")
    original = subprocess.run(
        [promtool, "check", "config", "prometheus.yml"],
        cwd=config_dir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if original.returncode != 0:
        # Only acceptable failure: a promtool built without Kubernetes discovery (Debian's).
        output = original.stdout + original.stderr
        assert re.findall(r"field (\w+) not found", output) == ["kubernetes_sd_configs"] * 2, output
    checked = subprocess.run(
        [promtool, "check", "config", "prometheus-file-sd.yml"],
        cwd=config_dir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 1 rule files found" in checked.stdout + checked.stderr  # the rules load beside it


def test_amtool_checks_the_rendered_alertmanager_config(config_dir: Path) -> None:
    amtool = require_binary("amtool")
    checked = subprocess.run(
        [amtool, "check-config", "alertmanager.yml"],
        cwd=config_dir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_prometheus_discovers_exactly_the_predictor_model_server_and_the_annotated_sink(
    config_dir: Path, tmp_path: Path
) -> None:
    """Debian's Prometheus, with the ConfigMap's scrape jobs and relabel rules, over the targets
    Kubernetes discovery would hand it: it keeps each predictor pod's model container at 8080 (never
    the queue-proxy's ports, even when KServe rewrote the annotations to 9091), the sink at its
    annotated port and path, and no other pod."""
    prometheus = require_binary("prometheus")
    port = free_port()
    process = subprocess.Popen(
        [
            prometheus,
            f"--config.file={config_dir / 'prometheus-file-sd.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        targets: dict[str, Any] = {}
        while time.monotonic() < deadline:
            assert process.poll() is None, "prometheus exited"
            try:
                targets = httpx.get(f"http://127.0.0.1:{port}/api/v1/targets", timeout=2).json()["data"]
            except (httpx.TransportError, ValueError):
                time.sleep(0.2)
                continue
            if len(targets["activeTargets"]) >= 3:
                break
            time.sleep(0.2)
    finally:
        stop_process_group(process, 10.0)
    active = {
        (t["labels"]["job"], t["labels"]["pod"], t["scrapeUrl"].removeprefix("http://127.0.0.1")): t["labels"]
        for t in targets["activeTargets"]
    }
    predictor_pod = "taxi-duration-predictor-00001-deployment-5f9c-xyz12"
    rewritten_pod = predictor_pod.replace("xyz12", "qp123")
    assert set(active) == {
        ("taxi-predictor", predictor_pod, ":8080/metrics"),
        ("taxi-predictor", rewritten_pod, ":8080/metrics"),
        ("taxi-annotated-pods", "inference-log-sink-7d9f-abcde", ":8080/metrics"),
    }
    labels = active[("taxi-predictor", predictor_pod, ":8080/metrics")]
    assert labels["knative_revision"] == "taxi-duration-predictor-00001" and labels["namespace"] == NS
    assert active[("taxi-annotated-pods", "inference-log-sink-7d9f-abcde", ":8080/metrics")]["app"] == (
        "inference-log-sink"
    )
    assert targets["droppedTargets"], "the other pods' ports were seen and dropped"
