"""Canary analysis step: one analysis of the InferenceService's canary on a cluster, and its action.

What the KFP ``canary-analysis`` component runs (``pipelines/canary_pipeline.py``), each run of
the recurring analysis (``taxi-mlops submit --pipeline canary --schedule ...``): the same judge
as ``taxi-mlops serve``'s, with the cluster's parts (``serving.cluster_canary``) -- the
InferenceService through the pod's service account (get and patch, Role
``taxi-mlops-deployer``), the cluster Prometheus, the registry's model files, and the
prediction log, labels and the judge's own files in MinIO. A decision that acts (a new step,
promote, rollback) is also an MLflow run in ``<experiment>-canary``, written after the
decision is stored in the bucket: an MLflow outage must not lose the record of an action.

One analysis at a time: the recurring run has ``max_concurrency=1`` (``pipelines.submit``),
because each analysis reads the judge's files from the bucket, acts, and writes them back.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from components.canary.policy import CanaryPolicy, CanaryPolicyError
from components.names import (
    CANARY_URI,
    EXPERIMENT_NAME,
    INFERENCE_SERVICE,
    LABELS_URI,
    NAMESPACE,
    PREDICTION_LOG_URI,
    PROMETHEUS_URL,
)
from components.storage.atomic_write import write_atomically
from components.storage.s3 import S3Connection
from pipelines.steps.notes import log
from pipelines.steps.task_process import task_step

if TYPE_CHECKING:
    from kubernetes.client import CustomObjectsApi

#: The action output when no canary is live (the judge's own actions: set_percent, promote,
#: rollback, hold).
NO_CANARY: Final = "none"


@dataclass(frozen=True)
class CanaryRequest:
    """Which InferenceService, where its evidence is, and the policy (a JSON object of overrides)."""

    tracking_uri: str
    model_name: str
    namespace: str = NAMESPACE
    inference_service: str = INFERENCE_SERVICE
    prometheus_url: str = PROMETHEUS_URL
    policy_overrides: str = ""  # JSON: {"steps": "10,25,50", "mae_margin": 0.03, ...}; empty: defaults
    prediction_log: str = PREDICTION_LOG_URI
    labels: str = LABELS_URI
    canary: str = CANARY_URI
    experiment: str = EXPERIMENT_NAME
    artifact_location: str = ""  # of the canary experiment, when it is created
    report_path: str = ""  # a copy of the decision page (the KFP task's Output[HTML])
    decision_path: str = ""  # a copy of the decision JSON (the KFP task's output artifact)


@dataclass(frozen=True)
class CanaryOutcome:
    document: dict[str, Any]  # the recorded decision, or what was live when there was no canary
    action: str  # set_percent | promote | rollback | hold | none
    report_html: str
    mlflow_run_id: str  # empty unless the decision acted


def parse_policy(overrides: str) -> CanaryPolicy:
    """The default policy with a JSON object of field overrides (``CanaryPolicy.with_overrides``)."""
    if not overrides.strip():
        return CanaryPolicy()
    try:
        fields = json.loads(overrides)
    except ValueError as exc:
        raise CanaryPolicyError(f"policy_overrides: not JSON ({exc}): {overrides!r}") from exc
    if not isinstance(fields, Mapping):
        raise CanaryPolicyError(
            'policy_overrides: a JSON object of policy fields, e.g. {"steps": "10,25,50"}, '
            f"got {overrides!r}"
        )
    return CanaryPolicy().with_overrides(fields)


@task_step
def canary_step(
    request: CanaryRequest,
    *,
    api: CustomObjectsApi | None = None,
    s3: S3Connection | None = None,
    now: datetime | None = None,
) -> CanaryOutcome:
    """One analysis and its action; ``api`` defaults to the pod's service account (in-cluster)."""
    from serving.cluster_canary import JudgeLocations, judge_cluster_once
    from serving.cluster_rollout import ClusterTarget, connect
    from serving.kserve_deploy import IsvcRef

    policy = parse_policy(request.policy_overrides)  # a bad override stops the run before any request
    locations = JudgeLocations(request.prediction_log, request.labels, request.canary)
    target = ClusterTarget(
        api=api or connect(in_cluster=True),
        tracking_uri=request.tracking_uri,
        model_name=request.model_name,
        ref=IsvcRef(request.inference_service, request.namespace or NAMESPACE),
    )
    judged = judge_cluster_once(target, request.prometheus_url, locations, policy, s3=s3, now=now, note=_note)
    run_id = ""
    if judged.decision is None:
        document: dict[str, Any] = {
            "verdict": None,
            "action": NO_CANARY,
            "champion": None if judged.state.champion is None else judged.state.champion.model_version,
            "canary": None,
            "reason": f"no canary to judge: {judged.state.describe()}",
        }
        html = _no_canary_page(document["reason"])
    else:
        document, html = judged.decision, judged.report_html or ""
        if document["action"] != "hold":
            from components.registry.tracking import log_canary_decision

            run_id = log_canary_decision(
                request.tracking_uri,
                request.experiment,
                document,
                request.artifact_location or None,
                model_name=request.model_name,
                report_html=html,
            )
    if request.report_path:
        write_atomically(request.report_path, html)
    if request.decision_path:
        write_atomically(request.decision_path, json.dumps(document, indent=2) + "\n")
    for line in outcome_lines(document, judged.canary_location):
        log.info("%s", line)
    return CanaryOutcome(document, str(document["action"]), html, run_id)


def outcome_lines(document: Mapping[str, Any], where: str) -> list[str]:
    """The analysis for the task's log: verdict and action, the checks, the reason, what was done."""
    if document["canary"] is None:
        return [str(document["reason"])]
    lines = [
        f"canary version {document['canary']} vs champion {document['champion']} at {document['percent']}%: "
        f"{str(document['verdict']).upper()} -> {document['action']}"
    ]
    for check in document.get("checks", []):
        mark = {True: "ok", False: "FAIL", None: "wait"}[check.get("passed")]
        lines.append(f"  {check['name']:<16} {mark:<4} {check.get('detail', '')}")
    lines.append(f"  reason: {document['reason']}")
    lines.append(f"  done: {document.get('result', '')}; recorded in {where}")
    return lines


def _note(line: str) -> None:
    log.info("%s", line)


def _no_canary_page(reason: str) -> str:
    import html

    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Canary analysis</title></head>"
        f"<body><h1>Canary analysis</h1><p>{html.escape(reason)}</p></body></html>\n"
    )
