"""Retrain-decision step: the retraining policy on a cluster, one decision per run of the autopilot pipeline.

What the KFP ``retrain_decision`` component runs (``pipelines/autopilot_pipeline.py``), after the
``monitor`` task of the same run has stored its verdict. It gathers the policy's signals the way the
local loop does (``components.retraining.signals``), from what the cluster already keeps:

- **now**: the newest event time in the prediction log (the log's own clock, as the monitor's window);
- **verdicts**: the champion's evidence in the monitor's ``history.jsonl``, one per window, and only
  windows that do not overlap (see :func:`disjoint_windows`);
- **the champion's data end**: from the lineage params of the registered version's run
  (``steps/train.py``: ``data.<side>.window`` for a window, ``data.<color>.<month>.rows`` for a whole
  month), so no new tag is needed at registration;
- **labels**: how far they reach, and how many landed after the champion's data end;
- **the last retraining**: from this step's own decision log, ``<monitor>/autopilot/decisions.jsonl``,
  so the cooldown holds across recurring runs;
- **a live canary**: a challenger still being judged counts as a retraining running (as in the local
  loop), read from the InferenceService (a ``get``, which the deployer Role grants) or, locally, from
  the deployment state file; a second challenger must not replace one the judge has not finished with.

``decide`` then says ``retrain`` or ``no_retrain`` with its reason; the decision is appended to the
decision log *before* the pipeline acts on it (the ``dsl.If`` that starts the training graph).
One retraining at a time is KFP's own: the recurring run has ``max_concurrency=1`` and the training
graph runs inside the same run, so no training is running when a decision is made. A re-run over the
same log (a KFP retry, or a schedule that fires with no new traffic) finds a retraining already decided
at this event time for this champion and starts none.

Every location is a folder or an ``s3://`` prefix (MinIO on a cluster: ``names.MONITOR_URI`` ...).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from components.data.event_window import EventWindow
from components.errors import TaxiMlopsError
from components.monitoring.labels import read_labels
from components.monitoring.locations import LABELS_PATTERN, SEGMENT_PATTERN, is_remote, local_folder
from components.monitoring.prediction_log import read_prediction_log
from components.monitoring.verdict_store import HISTORY_FILE, load_history
from components.names import NAMESPACE
from components.registry import tracking
from components.registry.versions import CHAMPION, version_for_alias
from components.retraining.policy import (
    RetrainDecision,
    RetrainingPolicy,
    RetrainingPolicyError,
    Signals,
    decide,
)
from components.retraining.signals import champion_evidence, event_moment, labelled_since, trained_until
from components.storage.atomic_write import write_atomically
from components.storage.json_records import append_record, read_records
from components.storage.object_transfer import ObjectStoreError, connection_for, download_file, upload_file
from components.storage.s3 import S3Connection, parse_s3_uri
from pipelines.steps.notes import log
from pipelines.steps.task_process import task_step

if TYPE_CHECKING:
    from kubernetes.client import CustomObjectsApi

#: The decision log, in the monitor location: ``<monitor>/autopilot/decisions.jsonl``.
DECISION_DIR: Final = "autopilot"
DECISION_FILE: Final = "decisions.jsonl"
#: The window outputs, in the order the training graph takes them (train_start .. val_end).
WINDOW_KEYS: Final = ("train_start", "train_end", "holdout_start", "holdout_end")


class RetrainDecisionError(TaxiMlopsError):
    """The decision cannot be made: no champion, or a location or log it cannot use."""


@dataclass(frozen=True)
class DecisionRequest:
    """Where the evidence is, which model, the policy (a JSON object of overrides) and any request."""

    tracking_uri: str
    model_name: str
    prediction_log: str
    labels: str
    monitor: str
    policy_overrides: str = ""  # JSON: {"degraded_windows": 3, "cooldown_days": 1}; empty: defaults
    requested: str = ""  # why someone asked for a retraining; empty: nobody did
    model_alias: str = CHAMPION
    # Where a live canary would be: the InferenceService (cluster), else the local deployment state.
    inference_service: str = ""
    inference_namespace: str = NAMESPACE
    deployment_state_path: str = ""
    decision_path: str = ""  # a copy of the recorded decision (the KFP task's output artifact)


@dataclass(frozen=True)
class DecisionOutcome:
    record: dict[str, Any]  # the decision as appended to the log (decision, signals, decided_at)
    kind: str  # retrain | no_retrain
    windows: dict[str, str]  # WINDOW_KEYS -> ISO 8601 ("" for a no_retrain)
    log_location: str  # the decision log (a path or s3:// URI)


def parse_policy(overrides: str) -> RetrainingPolicy:
    """The default policy with a JSON object of field overrides (``RetrainingPolicy.with_overrides``)."""
    if not overrides.strip():
        return RetrainingPolicy()
    try:
        fields = json.loads(overrides)
    except ValueError as exc:
        raise RetrainingPolicyError(f"retraining_policy: not JSON ({exc}): {overrides!r}") from exc
    if not isinstance(fields, Mapping):
        raise RetrainingPolicyError(
            'retraining_policy: a JSON object of policy fields, e.g. {"cooldown_days": 1}, '
            f"got {overrides!r}"
        )
    return RetrainingPolicy().with_overrides(fields)


@task_step
def retrain_decision_step(
    request: DecisionRequest,
    s3: S3Connection | None = None,
    now: datetime | None = None,
    api: CustomObjectsApi | None = None,
) -> DecisionOutcome:
    """Gather the signals, decide, append the decision to the log; ``now`` (wall clock) stamps it.

    ``api`` defaults to the pod's service account (in-cluster), used only with an ``inference_service``.
    """
    policy = parse_policy(request.policy_overrides)  # a bad override stops the run before any read
    champion = _champion_version(request)
    running = live_canary(request, api)
    data_until = champion_trained_until(request.tracking_uri, request.model_name, champion)
    with tempfile.TemporaryDirectory(prefix="taxi-mlops-decision-") as scratch:
        folder = Path(scratch)
        with local_folder(request.prediction_log, folder / "log", SEGMENT_PATTERN, s3, _note) as log_dir:
            served = read_prediction_log(log_dir)
        with local_folder(request.labels, folder / "labels", LABELS_PATTERN, s3, _note) as labels_dir:
            labels = read_labels(labels_dir)
        verdicts = load_history(_fetched(request.monitor, HISTORY_FILE, folder / "monitor", s3))
        log_folder = _fetched(_join(request.monitor, DECISION_DIR), DECISION_FILE, folder / "decisions", s3)
        earlier = read_records(log_folder / DECISION_FILE, _parse_record)
        if served.empty:
            decision = RetrainDecision(
                "no_retrain",
                None,
                "not retraining: the prediction log is empty, so there is no event time to decide at",
                champion,
                "",
            )
            signals: dict[str, Any] = {}
        else:
            newest = event_moment(served["event_time"].max())
            labelled_until, labelled_after = labelled_since(served, labels, data_until)
            evidence = disjoint_windows(champion_evidence(verdicts, champion))
            facts = Signals(
                now=newest,
                champion_version=champion,
                verdicts=evidence,
                champion_trained_until=data_until,
                labelled_until=labelled_until,
                labelled_since_training=labelled_after,
                last_retrain_at=last_retrain_at(earlier),
                retrain_running=running,
                requested=request.requested.strip() or None,
            )
            decision = _already_decided(earlier, facts) or decide(facts, policy)
            signals = _signals_record(facts, evidence)
        record = {
            **decision.to_dict(),
            "decided_at": (now or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="seconds"),
            "policy": policy.to_dict(),
            "signals": signals,
        }
        # The decision is written before anything acts on it (the pipeline's dsl.If comes after).
        append_record(log_folder / DECISION_FILE, record)
        where = _publish(request.monitor, log_folder / DECISION_FILE, s3)
    if request.decision_path:
        write_atomically(request.decision_path, json.dumps(record, indent=2) + "\n")
    log.info("version %s at %s: %s", champion, record["event_time"] or "(no events)", decision.reason)
    log.info("recorded in %s", where)
    return DecisionOutcome(record, decision.kind, window_outputs(decision), where)


def window_outputs(decision: RetrainDecision) -> dict[str, str]:
    """The decision's windows as the training graph's text parameters ("" for a no_retrain)."""
    if decision.train_window is None or decision.holdout_window is None:
        return dict.fromkeys(WINDOW_KEYS, "")
    return dict(zip(WINDOW_KEYS, (*decision.train_window, *decision.holdout_window), strict=True))


# ----------------------------------------------------------------- the signals


def disjoint_windows(evidence: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The newest verdict, then going back each one whose window ended by the start of the one after.

    A recurring run judges the ``last_hours`` up to the newest event, so hourly runs of 24-hour
    windows overlap: 24 of them in a row are one day of evidence, not 24 days. Counting only
    windows that do not overlap keeps "N windows in a row" at N windows of traffic whatever the
    schedule. A window with no start (open) ends the walk: what came before it is inside it.
    """
    kept: list[Mapping[str, Any]] = []
    for verdict in reversed(evidence):
        window = verdict.get("window") or {}
        if kept:
            later_start = (kept[-1].get("window") or {}).get("start")
            end = window.get("end")
            if not later_start:
                break
            if not end or event_moment(str(end)) > event_moment(str(later_start)):
                continue
        kept.append(verdict)
    return list(reversed(kept))


def live_canary(request: DecisionRequest, api: CustomObjectsApi | None = None) -> str | None:
    """What is being judged, when a canary is live: the retraining it came from is not finished."""
    if request.inference_service:
        from serving.cluster_rollout import ClusterTarget, connect, status
        from serving.kserve_deploy import IsvcRef

        target = ClusterTarget(
            api=api or connect(in_cluster=True),
            tracking_uri=request.tracking_uri,
            model_name=request.model_name,
            ref=IsvcRef(request.inference_service, request.inference_namespace or NAMESPACE),
        )
        canary = status(target).state.canary  # one GET of the InferenceService
    elif request.deployment_state_path:
        from serving.deployment_state import load_state

        canary = load_state(request.deployment_state_path).canary
    else:
        return None
    return None if canary is None else f"canary version {canary.model_version} is being judged"


def champion_trained_until(tracking_uri: str, model_name: str, version: str) -> datetime | None:
    """The end of the newest data ``version`` was trained or validated on, from its run's lineage params."""
    from mlflow.exceptions import MlflowException

    client = tracking.client_for(tracking_uri)
    try:
        registered = client.get_model_version(model_name, version)
        params = client.get_run(registered.run_id).data.params if registered.run_id else {}
    except MlflowException as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RetrainDecisionError(f"model {model_name!r} version {version}: {first}") from None
    return trained_until(lineage_data(params))


def lineage_data(params: Mapping[str, str]) -> dict[str, Any]:
    """A run summary's ``data`` (each side's ``end``) from a candidate run's lineage params.

    ``data.<side>.window`` = ``start/end`` for a window; ``data.<color>.<YYYY-MM>.rows`` is written
    only for a side that read a whole month (a window's files carry no rows of their own).
    """
    ends: dict[str, str] = {}
    for key, value in params.items():
        parts = key.split(".")
        if len(parts) == 3 and parts[0] == "data" and parts[2] == "window" and "/" in value:
            ends[parts[1]] = value.split("/", 1)[1]
        elif len(parts) == 4 and parts[0] == "data" and parts[3] == "rows":
            month_end = EventWindow.of_month(parts[2]).end.isoformat()
            ends[f"month {parts[2]}"] = month_end
    # trained_until takes the newest of the train and val ends: any two names do.
    newest = sorted(ends.values(), key=event_moment)
    return {"data": {"train": {"end": newest[0]}, "val": {"end": newest[-1]}}} if newest else {}


def last_retrain_at(records: Sequence[Mapping[str, Any]]) -> datetime | None:
    """The event time of the newest ``retrain`` decision in the log (the cooldown starts there)."""
    times = [
        event_moment(str(record["event_time"]))
        for record in records
        if record.get("kind") == "retrain" and record.get("event_time")
    ]
    return max(times) if times else None


def _already_decided(records: Sequence[Mapping[str, Any]], facts: Signals) -> RetrainDecision | None:
    """A retraining already decided for this champion at this very event time: none again."""
    now = facts.now.isoformat()
    for record in reversed(records):
        if (
            record.get("kind") == "retrain"
            and str(record.get("model_version")) == facts.champion_version
            and record.get("event_time") == now
        ):
            return RetrainDecision(
                "no_retrain",
                None,
                f"not retraining: a retraining of version {facts.champion_version} was already decided at "
                f"event time {now} (decided at {record.get('decided_at')}); the log has not moved since",
                facts.champion_version,
                now,
            )
    return None


def _signals_record(facts: Signals, evidence: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    def iso(moment: datetime | None) -> str | None:
        return None if moment is None else moment.isoformat()

    return {
        "verdicts": [
            {"verdict": v.get("verdict"), **{k: (v.get("window") or {}).get(k) for k in ("start", "end")}}
            for v in evidence
        ],
        "champion_trained_until": iso(facts.champion_trained_until),
        "labelled_until": iso(facts.labelled_until),
        "labelled_since_training": facts.labelled_since_training,
        "last_retrain_at": iso(facts.last_retrain_at),
        "retrain_running": facts.retrain_running,
        "requested": facts.requested,
    }


def _parse_record(text: str, source: str) -> dict[str, Any]:
    record = json.loads(text)  # a torn line raises ValueError: skipped
    if not isinstance(record, dict) or record.get("kind") not in ("retrain", "no_retrain"):
        raise ValueError(f"{source}: not a retrain decision")
    return record


def _champion_version(request: DecisionRequest) -> str:
    holder = version_for_alias(request.tracking_uri, request.model_name, request.model_alias)
    if holder is None:
        raise RetrainDecisionError(
            f"model {request.model_name!r}: no version holds the alias {request.model_alias!r}; "
            "train a first model (taxi-mlops submit --pipeline training) before the autopilot runs"
        )
    return str(holder.version)


# ----------------------------------------------------------------- locations


def _join(location: str, name: str) -> str:
    return parse_s3_uri(location).join(name).uri if is_remote(location) else str(Path(location) / name)


def _fetched(location: str, name: str, scratch: Path, s3: S3Connection | None) -> Path:
    """The folder holding ``location``'s file ``name``: the folder itself, or a scratch copy from S3."""
    if not is_remote(location):
        return Path(location)
    uri = _join(location, name)
    try:
        download_file(connection_for(location, s3), uri, scratch / name, require_sha256=False)
    except ObjectStoreError as exc:
        if not exc.missing:
            raise
        log.info("%s: nothing yet", uri)
    return scratch


def _publish(monitor: str, path: Path, s3: S3Connection | None) -> str:
    """Upload the appended log back when the monitor location is in S3; returns where the log is."""
    if not is_remote(monitor):
        return str(path)
    uri = _join(_join(monitor, DECISION_DIR), DECISION_FILE)
    upload_file(connection_for(monitor, s3), path, uri, content_type="application/x-ndjson")
    return uri


def _note(line: str) -> None:
    log.info("%s", line)
