"""Carry out a retraining decision locally: the training pipeline on the decision's windows, then the gate.

The autopilot (issue #12) calls :func:`retrain` when the policy
(``components.retraining.policy.decide``) says ``retrain``. It runs the same pipeline as
``taxi-mlops run``, on the decision's event-time windows (train on the newest labelled
weeks, validate on the newer held-out ones), so the gate compares challenger and champion on
that same newest data. A gate pass registers the challenger and deploys it as a canary,
which the canary judge then promotes or rolls back; a gate refusal registers nothing.

Every outcome is a timeline event with its reason -- a failed run too: a failed run
registers nothing and touches no deployment (``run_pipeline_locally``), so the champion
keeps serving, and the event says which step failed and why.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from components.data.event_window import EventWindow
from components.errors import TaxiMlopsError
from pipelines.local_run import RunRequest, run_pipeline_locally
from pipelines.settings import Settings


@dataclass(frozen=True)
class RetrainOutcome:
    """What a retraining did: the timeline event (kind ``gate``) and the run summary, if it finished."""

    event: dict[str, Any]
    summary: dict[str, Any] | None


def request_for(decision: Mapping[str, Any], base: RunRequest) -> RunRequest:
    """``base`` (data source, candidates, margins) with the decision's training and held-out windows."""
    train, holdout = decision.get("train_window"), decision.get("holdout_window")
    if not train or not holdout:
        raise ValueError(f"decision {decision.get('kind')!r} names no training and held-out windows")
    from dataclasses import replace

    return replace(
        base,
        train_window=EventWindow.from_bounds(train[0], train[1], "train_window"),
        val_window=EventWindow.from_bounds(holdout[0], holdout[1], "holdout_window"),
        allow_missing_months=True,  # a window may span a month the source does not hold
    )


def retrain(
    settings: Settings,
    decision: Mapping[str, Any],
    base: RunRequest,
    progress: Callable[[str], None] = lambda _line: None,
) -> RetrainOutcome:
    """Run the training pipeline for ``decision``; the gate's verdict (or the failure) as an event."""
    request = request_for(decision, base)
    windows = f"train {request.train_window}, held out {request.val_window}"
    try:
        summary = run_pipeline_locally(settings, request, progress=progress)
    except TaxiMlopsError as exc:
        event = _event(decision, False, f"retraining failed, the champion keeps serving: {exc}", windows)
        return RetrainOutcome(event, None)
    gate = summary["gate"]
    if summary.get("model_version"):
        reason = f"gate passed: {gate['reason']}; version {summary['model_version']} deployed as a canary"
    else:
        reason = f"gate refused: {gate['reason']}; nothing registered, the champion keeps serving"
    event = _event(decision, bool(summary.get("model_version")), reason, windows)
    event["challenger_version"] = summary.get("model_version")
    event["mlflow_run_id"] = summary.get("mlflow_run_id")
    return RetrainOutcome(event, summary)


def _event(decision: Mapping[str, Any], passed: bool, reason: str, windows: str) -> dict[str, Any]:
    return {
        "kind": "gate",
        "event_time": decision.get("event_time"),
        "model_version": decision.get("model_version"),
        "passed": passed,
        "reason": f"{reason} ({windows})",
    }
