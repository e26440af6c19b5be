"""The InferenceService ``taxi-duration`` as plain dicts: what the cluster deploy code sends and reads.

Pure functions, no Kubernetes client: bodies for the first deployment, a
canary, promote and rollback, and the way back from a live InferenceService
to the same ``DeploymentState`` the local deployment uses, so the cluster and
the local stack share one set of transition rules and messages
(``serving.deployment_state``). Names follow docs/cluster-contract.md.

How KServe (Knative mode) splits traffic, which these bodies rely on:

- without ``canaryTrafficPercent`` the latest revision gets 100% and becomes
  the "rolled out" revision;
- with ``canaryTrafficPercent: P`` the latest revision gets P% and the last
  rolled-out revision the rest; ``P = 0`` pins all traffic to the rolled-out
  revision (a rollback);
- promoting is removing the field, which a JSON merge patch (RFC 7386) does
  with an explicit ``null``.

Which model the latest revision runs is in the spec (storageUri and the env
``TAXI_MLOPS_MODEL_VERSION``/``TAXI_MLOPS_MODEL_SHA256``). Which model the
rolled-out revision runs is not in the spec once a canary is deployed, so the
canary patch records it in ``taxi-mlops/baseline-*`` annotations. They are
written only together with a spec change: KServe copies InferenceService
annotations into the Knative revision template, so changing them on promote or
rollback would start a needless new revision. Hence the name "baseline" (the
version that serves the rest while ``canaryTrafficPercent`` is set), not
"champion": after a promote they still name the old champion, and are ignored.

Every predictor revision is logged and scraped (docs/cluster-contract.md, "The
inference-log sink"): the predictor spec carries KServe's payload ``logger``
pointed at our sink, and pod annotations that the same revision keeps for its
whole life -- the model version it serves (which the logger forwards, since its
events say nothing else about the answering revision; see
``serving.inference_log_sink``) and the ``prometheus.io`` scrape annotations
for its ``/metrics``. Both are written with every model change (first
deployment and canary), never on promote or rollback, and a merge patch leaves
fields it does not name alone, so they survive every patch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from components.names import (
    EVENT_TIME_HEADER,
    INFERENCE_LOG_SINK_URL,
    INFERENCE_SERVICE,
    METRICS_PATH,
    MODEL_VERSION_ANNOTATION,
    NAMESPACE,
    PREDICTOR_HTTP_PORT,
    PREDICTOR_SERVICE_ACCOUNT,
    PROMETHEUS_PATH_ANNOTATION,
    PROMETHEUS_PORT_ANNOTATION,
    PROMETHEUS_SCRAPE_ANNOTATION,
    REQUEST_ID_HEADER,
    RUNTIME_MODEL_FORMAT,
    SERVING_RUNTIME,
)
from serving.deployment_state import DeploymentState, DeploymentStateError, Revision

GROUP = "serving.kserve.io"
VERSION = "v1beta1"
PLURAL = "inferenceservices"
KIND = "InferenceService"
API_VERSION = f"{GROUP}/{VERSION}"

MODEL_FORMAT_VERSION = "1"

DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
# "Serverless" is Knative mode under its name in KServe 0.15; 0.16+ call it "Knative" and still
# accept "Serverless" as its legacy spelling, while 0.15 rejects "Knative". So this value works on both.
DEPLOYMENT_MODE = "Serverless"

VERSION_ENV = "TAXI_MLOPS_MODEL_VERSION"
SHA256_ENV = "TAXI_MLOPS_MODEL_SHA256"

ANNOTATION_PREFIX = "taxi-mlops/"
BASELINE_VERSION = f"{ANNOTATION_PREFIX}baseline-version"
BASELINE_SHA256 = f"{ANNOTATION_PREFIX}baseline-sha256"
BASELINE_STORAGE_URI = f"{ANNOTATION_PREFIX}baseline-storage-uri"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "taxi-mlops"

# The only patch type the deploy code sends: null deletes a field, objects merge, lists replace.
MERGE_PATCH = "application/merge-patch+json"

# Small enough for two revisions (champion + canary) side by side on a laptop kind cluster.
RESOURCES: dict[str, dict[str, str]] = {
    "requests": {"cpu": "100m", "memory": "384Mi"},
    "limits": {"cpu": "1", "memory": "1Gi"},
}


# KServe's logger mode: "all" sends the request and, for a 200, the response (both are needed:
# the inputs are in one, the minutes in the other).
LOGGER_MODE = "all"


def go_header_name(name: str) -> str:
    """``x-request-id`` -> ``X-Request-Id``: the form Go's net/http keys request headers by.

    KServe's agent compares ``metadataHeaders`` with those keys as they are
    (kserve v0.19.0 pkg/logger/handler.go:131-140), so a lower-case entry never matches.
    """
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


#: Request headers the logger forwards to the sink (in the events' ``Ce-Metadata``).
LOGGED_REQUEST_HEADERS = (go_header_name(REQUEST_ID_HEADER), go_header_name(EVENT_TIME_HEADER))


@dataclass(frozen=True)
class IsvcRef:
    """Which InferenceService: the contract's name and namespace unless told otherwise."""

    name: str = INFERENCE_SERVICE
    namespace: str = NAMESPACE

    def describe(self) -> str:
        return f"InferenceService {self.namespace}/{self.name}"


# --------------------------------------------------------------------------- bodies


def first_deployment(revision: Revision, ref: IsvcRef = IsvcRef()) -> dict[str, Any]:
    """The whole InferenceService for the first version: 100% of traffic, no canaryTrafficPercent."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": ref.name,
            "namespace": ref.namespace,
            "labels": {MANAGED_BY_LABEL: MANAGED_BY},
            "annotations": {DEPLOYMENT_MODE_ANNOTATION: DEPLOYMENT_MODE},
        },
        "spec": {
            "predictor": {
                "serviceAccountName": PREDICTOR_SERVICE_ACCOUNT,
                # One replica per revision: no scale-to-zero cold start on the first curl, and two
                # revisions stay within a laptop's budget.
                "minReplicas": 1,
                "maxReplicas": 1,
                "annotations": _revision_annotations(revision),
                "logger": _logger(),
                "model": _model(revision),
            }
        },
    }


def canary_patch(
    canary: Revision, baseline: Revision, percent: int, *, resource_version: str | None = None
) -> dict[str, Any]:
    """Merge patch: ``canary`` becomes the latest revision with ``percent``%; ``baseline`` keeps the rest.

    ``percent`` must be 1..100: 0 is how a rollback is written, so a canary at
    0% could not be told apart from a rolled-back one.
    """
    if type(percent) is not int or not 1 <= percent <= 100:
        raise DeploymentStateError(
            f"on the cluster a canary needs 1 to 100 percent of traffic, got {percent!r} "
            "(canaryTrafficPercent 0 means rolled back)"
        )
    return {
        "metadata": _metadata_patch(
            resource_version,
            annotations={
                BASELINE_VERSION: baseline.model_version,
                BASELINE_SHA256: baseline.sha256,
                BASELINE_STORAGE_URI: baseline.model_uri,
            },
        ),
        # The logger is repeated (the same object) so that a canary of an InferenceService made
        # before it existed is logged too; the annotations are the new revision's own.
        "spec": {
            "predictor": {
                "canaryTrafficPercent": percent,
                "annotations": _revision_annotations(canary),
                "logger": _logger(),
                "model": _model(canary),
            }
        },
    }


def promote_patch(*, resource_version: str | None = None) -> dict[str, Any]:
    """Merge patch: remove canaryTrafficPercent (explicit null), so the latest revision takes 100%."""
    return {
        "metadata": _metadata_patch(resource_version),
        "spec": {"predictor": {"canaryTrafficPercent": None}},
    }


def rollback_patch(*, resource_version: str | None = None) -> dict[str, Any]:
    """Merge patch: canaryTrafficPercent 0, so the rolled-out (champion) revision gets all traffic."""
    return {
        "metadata": _metadata_patch(resource_version),
        "spec": {"predictor": {"canaryTrafficPercent": 0}},
    }


def _logger() -> dict[str, Any]:
    return {
        "mode": LOGGER_MODE,
        "url": INFERENCE_LOG_SINK_URL,
        "metadataHeaders": list(LOGGED_REQUEST_HEADERS),
        "metadataAnnotations": [MODEL_VERSION_ANNOTATION],
    }


def _revision_annotations(revision: Revision) -> dict[str, str]:
    # Component annotations reach the revision's pods (KServe v0.19.0 predictor.go:170,
    # buildObjectMeta; ksvc_reconciler.go template annotations): the pods the logger's agent and
    # the cluster Prometheus look at. KServe's own enable-prometheus-scraping would point at the
    # queue-proxy (9091) instead, and its aggregation needs the qpext queue-proxy image.
    return {
        MODEL_VERSION_ANNOTATION: revision.model_version,
        PROMETHEUS_SCRAPE_ANNOTATION: "true",
        PROMETHEUS_PORT_ANNOTATION: str(PREDICTOR_HTTP_PORT),
        PROMETHEUS_PATH_ANNOTATION: METRICS_PATH,
    }


def _model(revision: Revision) -> dict[str, Any]:
    return {
        "modelFormat": {"name": RUNTIME_MODEL_FORMAT, "version": MODEL_FORMAT_VERSION},
        "runtime": SERVING_RUNTIME,
        "storageUri": revision.model_uri,
        # The ServingRuntime's args read these ($(TAXI_MLOPS_MODEL_SHA256), ...): the predictor
        # refuses a model file whose sha256 differs from the one recorded at registration.
        "env": [
            {"name": VERSION_ENV, "value": revision.model_version},
            {"name": SHA256_ENV, "value": revision.sha256},
        ],
        "resources": {kind: dict(values) for kind, values in RESOURCES.items()},
    }


def _metadata_patch(resource_version: str | None, annotations: Mapping[str, str] | None = None) -> dict:
    # resourceVersion in a patch is a precondition: the API server answers 409 if the object
    # changed since it was read, so two deployers cannot silently overwrite each other.
    metadata: dict[str, Any] = {}
    if resource_version is not None:
        metadata["resourceVersion"] = resource_version
    if annotations:
        metadata["annotations"] = dict(annotations)
    return metadata


# --------------------------------------------------------------------------- reading it back


def state_from_isvc(isvc: Mapping[str, Any] | None) -> DeploymentState:
    """The champion/canary view of a live InferenceService (``None``: nothing deployed)."""
    if isvc is None:
        return DeploymentState()
    metadata = isvc.get("metadata") or {}
    predictor = (isvc.get("spec") or {}).get("predictor") or {}
    generation = int(metadata.get("generation") or 0)
    latest = _latest_revision(predictor, metadata.get("name", "?"))
    percent = predictor.get("canaryTrafficPercent")
    if percent is None:
        return DeploymentState(champion=latest, generation=generation)
    baseline = _baseline_revision(metadata.get("annotations") or {}, metadata.get("name", "?"))
    if percent == 0:  # rolled back: the latest revision is idle
        return DeploymentState(champion=baseline, generation=generation)
    return DeploymentState(
        champion=baseline, canary=latest, canary_percent=int(percent), generation=generation
    )


def latest_percent(isvc: Mapping[str, Any]) -> int:
    """The share the spec asks for the latest revision: canaryTrafficPercent, or 100 without it."""
    percent = ((isvc.get("spec") or {}).get("predictor") or {}).get("canaryTrafficPercent")
    return 100 if percent is None else int(percent)


def _latest_revision(predictor: Mapping[str, Any], name: str) -> Revision:
    model = predictor.get("model") or {}
    env = {item.get("name"): item.get("value") for item in model.get("env") or []}
    if not model.get("storageUri") or not env.get(VERSION_ENV) or not env.get(SHA256_ENV):
        raise DeploymentStateError(
            f"InferenceService {name} was not deployed by taxi-mlops: its predictor model lacks "
            f"storageUri or the env {VERSION_ENV}/{SHA256_ENV}"
        )
    return Revision(
        model_version=str(env[VERSION_ENV]), model_uri=model["storageUri"], sha256=env[SHA256_ENV]
    )


def _baseline_revision(annotations: Mapping[str, str], name: str) -> Revision:
    missing = [
        key for key in (BASELINE_VERSION, BASELINE_SHA256, BASELINE_STORAGE_URI) if key not in annotations
    ]
    if missing:
        raise DeploymentStateError(
            f"InferenceService {name} has canaryTrafficPercent but no {', '.join(missing)} annotation: "
            "it was not deployed by taxi-mlops, so which version serves the rest is unknown"
        )
    return Revision(
        model_version=annotations[BASELINE_VERSION],
        model_uri=annotations[BASELINE_STORAGE_URI],
        sha256=annotations[BASELINE_SHA256],
    )


# --------------------------------------------------------------------------- rollout progress


@dataclass(frozen=True)
class Progress:
    """Whether KServe has carried out the spec: ``settled`` ends a wait, ``detail`` says why not."""

    settled: bool
    ready: bool
    detail: str


def rollout_progress(isvc: Mapping[str, Any], *, require_ready: bool = True) -> Progress:
    """Has the controller caught up with this generation, and does traffic match the spec?

    Settled means: ``status.observedGeneration`` has reached ``metadata.generation``
    (so the status is not left over from before the change), the latest revision
    gets the share the spec asks for, and - unless ``require_ready`` is off - the
    Ready condition is True and the latest created revision is the latest ready
    one. A rollback waits without Ready: it is how a broken canary is taken out
    of traffic, and the broken revision keeps the InferenceService not Ready.
    """
    metadata = isvc.get("metadata") or {}
    status = isvc.get("status") or {}
    ready, condition = ready_condition(isvc)
    generation = metadata.get("generation")
    observed = status.get("observedGeneration")
    if generation is not None and (observed is None or int(observed) < int(generation)):
        return Progress(
            False, ready, f"generation {generation} not observed yet (status at {observed}); {condition}"
        )
    wanted = latest_percent(isvc)
    actual = traffic_to_latest(isvc)
    if actual != wanted:
        return Progress(
            False, ready, f"latest revision has {actual}% of traffic, want {wanted}%; {condition}"
        )
    if require_ready:
        if not ready:
            return Progress(False, ready, condition)
        predictor = (status.get("components") or {}).get("predictor") or {}
        created, latest_ready = predictor.get("latestCreatedRevision"), predictor.get("latestReadyRevision")
        if created and latest_ready and created != latest_ready:
            return Progress(
                False, ready, f"revision {created} is not ready yet (latest ready: {latest_ready})"
            )
    return Progress(True, ready, condition)


def ready_condition(isvc: Mapping[str, Any]) -> tuple[bool, str]:
    """(Ready is True, ``"Ready=False (Reason): message"``) from ``status.conditions``."""
    for condition in (isvc.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            state = condition.get("status", "Unknown")
            text = f"Ready={state}"
            if condition.get("reason"):
                text += f" ({condition['reason']})"
            if condition.get("message"):
                text += f": {condition['message']}"
            return state == "True", text
    return False, "no Ready condition yet"


def traffic_to_latest(isvc: Mapping[str, Any]) -> int:
    """Percent the status routes to the latest revision (KServe copies Knative's route status)."""
    predictor = ((isvc.get("status") or {}).get("components") or {}).get("predictor") or {}
    return sum(int(t.get("percent") or 0) for t in predictor.get("traffic") or [] if t.get("latestRevision"))


def describe_traffic(isvc: Mapping[str, Any]) -> list[str]:
    """One line per traffic target in the status: revision, percent, tag, latest or not."""
    predictor = ((isvc.get("status") or {}).get("components") or {}).get("predictor") or {}
    lines = []
    for target in predictor.get("traffic") or []:
        role = "latest" if target.get("latestRevision") else "rolled out"
        tag = f" tag {target['tag']}" if target.get("tag") else ""
        lines.append(f"{target.get('revisionName', '?')}: {int(target.get('percent') or 0)}% ({role}{tag})")
    return lines
