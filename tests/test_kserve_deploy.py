"""The InferenceService bodies the cluster deploy code sends, field by field, and how it reads one back."""

from __future__ import annotations

import json

import pytest
from support.k8s_schemas import validate_resource
from support.merge_patch import merge_patch

from serving import kserve_deploy as kd
from serving.deployment_state import DeploymentState, DeploymentStateError, Revision

SHA1 = "1" * 64
SHA2 = "2" * 64
V1 = Revision("1", f"s3://models/taxi-trip-duration/{SHA1}/", SHA1)
V2 = Revision("2", f"s3://models/taxi-trip-duration/{SHA2}/", SHA2)
RESOURCES = {"requests": {"cpu": "100m", "memory": "384Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}
# KServe's payload logger -> our inference-log sink (docs/cluster-contract.md). The header names are
# Go's canonical forms: the agent matches metadataHeaders against them as they are.
LOGGER = {
    "mode": "all",
    "url": "http://inference-log-sink.taxi-mlops.svc.cluster.local:8080",
    "metadataHeaders": ["X-Request-Id", "X-Event-Time"],
    "metadataAnnotations": ["taxi-mlops/model-version"],
}


def _pod_annotations(revision: Revision) -> dict:
    return {
        "taxi-mlops/model-version": revision.model_version,
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "8080",
        "prometheus.io/path": "/metrics",
    }


def _model(revision: Revision) -> dict:
    return {
        "modelFormat": {"name": "taxi-duration", "version": "1"},
        "runtime": "taxi-duration-runtime",
        "storageUri": revision.model_uri,
        "env": [
            {"name": "TAXI_MLOPS_MODEL_VERSION", "value": revision.model_version},
            {"name": "TAXI_MLOPS_MODEL_SHA256", "value": revision.sha256},
        ],
        "resources": RESOURCES,
    }


def test_first_deployment_is_the_whole_isvc_at_100_percent():
    body = kd.first_deployment(V1)
    assert set(body) == {"apiVersion", "kind", "metadata", "spec"}
    assert body["apiVersion"] == "serving.kserve.io/v1beta1"
    assert body["kind"] == "InferenceService"
    assert body["metadata"] == {
        "name": "taxi-duration",
        "namespace": "taxi-mlops",
        "labels": {"app.kubernetes.io/managed-by": "taxi-mlops"},
        "annotations": {"serving.kserve.io/deploymentMode": "Serverless"},
    }
    predictor = body["spec"]["predictor"]
    assert set(body["spec"]) == {"predictor"}
    assert "canaryTrafficPercent" not in predictor  # the first version takes all traffic
    assert predictor["serviceAccountName"] == "taxi-duration-predictor"
    assert predictor["minReplicas"] == 1
    assert predictor["maxReplicas"] == 1
    assert predictor["logger"] == LOGGER
    assert predictor["annotations"] == _pod_annotations(V1)
    assert set(predictor) == {
        "serviceAccountName",
        "minReplicas",
        "maxReplicas",
        "annotations",
        "logger",
        "model",
    }
    model = predictor["model"]
    assert model["modelFormat"] == {"name": "taxi-duration", "version": "1"}
    assert model["runtime"] == "taxi-duration-runtime"
    assert model["storageUri"] == f"s3://models/taxi-trip-duration/{SHA1}/"
    assert model["env"] == [
        {"name": "TAXI_MLOPS_MODEL_VERSION", "value": "1"},
        {"name": "TAXI_MLOPS_MODEL_SHA256", "value": SHA1},
    ]
    assert model["resources"] == RESOURCES
    assert set(model) == {"modelFormat", "runtime", "storageUri", "env", "resources"}


def test_first_deployment_in_another_namespace():
    body = kd.first_deployment(V1, kd.IsvcRef("other", "team-a"))
    assert (body["metadata"]["name"], body["metadata"]["namespace"]) == ("other", "team-a")


def test_canary_patch_sets_the_new_model_percent_and_baseline():
    patch = kd.canary_patch(V2, V1, 20, resource_version="41")
    assert patch == {
        "metadata": {
            "resourceVersion": "41",
            "annotations": {
                "taxi-mlops/baseline-version": "1",
                "taxi-mlops/baseline-sha256": SHA1,
                "taxi-mlops/baseline-storage-uri": f"s3://models/taxi-trip-duration/{SHA1}/",
            },
        },
        "spec": {
            "predictor": {
                "canaryTrafficPercent": 20,
                "annotations": _pod_annotations(V2),
                "logger": LOGGER,
                "model": _model(V2),
            }
        },
    }


def test_go_header_names():
    assert kd.go_header_name("x-request-id") == "X-Request-Id"
    assert kd.go_header_name("X-EVENT-TIME") == "X-Event-Time"
    assert kd.go_header_name("ce-id") == "Ce-Id"


def test_every_revision_keeps_its_logger_and_its_own_version_annotation():
    # A merge patch leaves what it does not name: promote and rollback keep the canary's logger and
    # annotations (no new revision), the canary's own annotation replaces the champion's in the spec.
    first = kd.first_deployment(V1)
    canary = merge_patch(first, kd.canary_patch(V2, V1, 20))
    for stage, body in {
        "first": first,
        "canary": canary,
        "promoted": merge_patch(canary, kd.promote_patch()),
        "rolled back": merge_patch(canary, kd.rollback_patch()),
    }.items():
        predictor = body["spec"]["predictor"]
        assert predictor["logger"] == LOGGER, stage
        version = V1 if stage == "first" else V2
        assert predictor["annotations"] == _pod_annotations(version), stage
    # A canary of an InferenceService made before the logger existed gets it too.
    old = merge_patch(first, {"spec": {"predictor": {"logger": None, "annotations": None}}})
    assert "logger" not in old["spec"]["predictor"]
    assert merge_patch(old, kd.canary_patch(V2, V1, 20))["spec"]["predictor"]["logger"] == LOGGER


@pytest.mark.parametrize("percent", [0, -1, 101, 20.0, "20"])
def test_canary_patch_refuses_percentages_a_rollback_or_kserve_would_misread(percent):
    with pytest.raises(DeploymentStateError, match="1 to 100 percent"):
        kd.canary_patch(V2, V1, percent)


def test_promote_is_a_merge_patch_with_an_explicit_null():
    patch = kd.promote_patch(resource_version="42")
    assert patch == {
        "metadata": {"resourceVersion": "42"},
        "spec": {"predictor": {"canaryTrafficPercent": None}},
    }
    # On the wire the field is null, which deletes it under RFC 7386 (absent would leave it as is).
    assert json.dumps(patch["spec"]) == '{"predictor": {"canaryTrafficPercent": null}}'
    assert kd.promote_patch() == {"metadata": {}, "spec": {"predictor": {"canaryTrafficPercent": None}}}


def test_rollback_pins_traffic_to_the_champion():
    assert kd.rollback_patch(resource_version="43") == {
        "metadata": {"resourceVersion": "43"},
        "spec": {"predictor": {"canaryTrafficPercent": 0}},
    }


def test_promote_and_rollback_leave_annotations_alone():
    # KServe copies annotations into the revision template: changing them would start a new revision.
    for patch in (kd.promote_patch(), kd.rollback_patch()):
        assert "annotations" not in patch["metadata"]
        assert set(patch["spec"]["predictor"]) == {"canaryTrafficPercent"}


def test_reading_back_each_stage():
    assert kd.state_from_isvc(None) == DeploymentState()
    first = {**kd.first_deployment(V1), "metadata": {**kd.first_deployment(V1)["metadata"], "generation": 1}}
    assert kd.state_from_isvc(first) == DeploymentState(champion=V1, generation=1)
    canary = merge_patch(first, kd.canary_patch(V2, V1, 20))
    assert kd.state_from_isvc(canary) == DeploymentState(
        champion=V1, canary=V2, canary_percent=20, generation=1
    )
    promoted = merge_patch(canary, kd.promote_patch())
    assert "canaryTrafficPercent" not in promoted["spec"]["predictor"]
    assert kd.state_from_isvc(promoted) == DeploymentState(champion=V2, generation=1)
    rolled_back = merge_patch(canary, kd.rollback_patch())
    assert kd.state_from_isvc(rolled_back) == DeploymentState(champion=V1, generation=1)


def test_every_stage_is_a_valid_inference_service_for_the_kserve_schema():
    # The same strict schema the manifests are checked against (tests/k8s_schemas.py, from the kserve SDK).
    first = kd.first_deployment(V1)
    canary = merge_patch(first, kd.canary_patch(V2, V1, 20, resource_version="7"))
    stages = {
        "first": first,
        "canary": canary,
        "promoted": merge_patch(canary, kd.promote_patch(resource_version="8")),
        "rolled back": merge_patch(canary, kd.rollback_patch(resource_version="8")),
    }
    for stage, body in stages.items():
        assert validate_resource(body) == [], stage
    broken = merge_patch(canary, {"spec": {"predictor": {"canaryTrafficPercent": "20"}}})
    assert validate_resource(broken), "a string percent must fail the schema"
    # The derived schema knows the logger's fields (kserve SDK 0.21 V1beta1LoggerSpec): a misspelt one fails.
    misspelt = merge_patch(first, {"spec": {"predictor": {"logger": {"metadataHeader": ["X-Request-Id"]}}}})
    assert any("'metadataHeader' was unexpected" in error for error in validate_resource(misspelt))
    wrong_mode = merge_patch(first, {"spec": {"predictor": {"logger": {"metadataAnnotations": "a"}}}})
    assert validate_resource(wrong_mode), "a string for the annotations list must fail the schema"


def test_an_isvc_not_made_here_is_refused():
    foreign = {"metadata": {"name": "x"}, "spec": {"predictor": {"model": {"storageUri": "s3://a/b"}}}}
    with pytest.raises(DeploymentStateError, match="not deployed by taxi-mlops"):
        kd.state_from_isvc(foreign)
    canary_without_baseline = merge_patch(
        kd.first_deployment(V1), {"spec": {"predictor": {"canaryTrafficPercent": 5}}}
    )
    with pytest.raises(DeploymentStateError, match="baseline-version"):
        kd.state_from_isvc(canary_without_baseline)


def _isvc(generation, observed, ready, traffic, created="r-2", latest_ready="r-2", ctp=20):
    return {
        "metadata": {"generation": generation},
        "spec": {"predictor": {} if ctp is None else {"canaryTrafficPercent": ctp}},
        "status": {
            "observedGeneration": observed,
            "conditions": [{"type": "Ready", **ready}],
            "components": {
                "predictor": {
                    "latestCreatedRevision": created,
                    "latestReadyRevision": latest_ready,
                    "traffic": traffic,
                }
            },
        },
    }


SPLIT = [
    {"revisionName": "r-2", "percent": 20, "latestRevision": True},
    {"revisionName": "r-1", "percent": 80, "latestRevision": False, "tag": "prev"},
]


def test_progress_waits_for_the_new_generation_traffic_and_ready():
    ready = {"status": "True"}
    assert kd.rollout_progress(_isvc(2, 2, ready, SPLIT)).settled
    stale = kd.rollout_progress(_isvc(3, 2, ready, SPLIT))
    assert not stale.settled and "generation 3 not observed" in stale.detail
    wrong = kd.rollout_progress(_isvc(2, 2, ready, SPLIT, ctp=None))
    assert not wrong.settled and "20% of traffic, want 100%" in wrong.detail
    failing = {"status": "False", "reason": "RevisionFailed", "message": "image pull back-off"}
    stuck = kd.rollout_progress(_isvc(2, 2, failing, SPLIT))
    assert not stuck.settled
    assert stuck.detail == "Ready=False (RevisionFailed): image pull back-off"
    starting = kd.rollout_progress(_isvc(2, 2, ready, SPLIT, created="r-3"))
    assert not starting.settled and "r-3 is not ready yet" in starting.detail


def test_a_rollback_settles_without_ready():
    pinned = [
        {"revisionName": "r-1", "percent": 0, "latestRevision": True},
        {"revisionName": "r-1", "percent": 100, "latestRevision": False, "tag": "prev"},
    ]
    broken = _isvc(3, 3, {"status": "False", "reason": "RevisionFailed"}, pinned, latest_ready="r-1", ctp=0)
    assert not kd.rollout_progress(broken).settled
    progress = kd.rollout_progress(broken, require_ready=False)
    assert progress.settled and not progress.ready


def test_describe_traffic():
    assert kd.describe_traffic(_isvc(1, 1, {"status": "True"}, SPLIT)) == [
        "r-2: 20% (latest)",
        "r-1: 80% (rolled out tag prev)",
    ]
