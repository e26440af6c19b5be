"""Monitor step: judge one window of the prediction log against the served version's reference profile.

The one monitor, called by ``taxi-mlops monitor`` and by the KFP ``monitor``
component alike: read the log and the labels, pick the window, fetch the
version's reference profile, ``monitor_window``, then record the verdict in the
three places that read it:

- the verdict store (``latest.json`` + ``history.jsonl``, then ``report.html``
  beside them): the Prometheus gauges and the canary judge read it. It is written
  first: an MLflow outage must not silence the alerts;
- the self-contained HTML report (``components.monitoring.report``);
- an MLflow run in ``<experiment>-monitoring`` with both documents as artifacts,
  and the registered version tagged with its newest verdict.

Every location is a local folder or an ``s3://`` prefix (MinIO on a cluster:
``names.PREDICTION_LOG_URI``, ``LABELS_URI``, ``MONITOR_URI``). From S3 the
complete files are downloaded into a temporary folder and read by the same local
readers; the verdict store is updated there and uploaded back, history first.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

import pandas as pd

from components.errors import TaxiMlopsError
from components.monitoring.labels import join_labels, read_labels
from components.monitoring.locations import LABELS_PATTERN, SEGMENT_PATTERN, local_folder
from components.monitoring.monitor import monitor_window
from components.monitoring.prediction_log import read_prediction_log, utc_timestamp
from components.monitoring.reference_profile import ReferenceProfile
from components.monitoring.verdict_store import HISTORY_FILE, LATEST_FILE, load_history, save_verdict
from components.registry import tracking
from components.registry.versions import CHAMPION, fetch_reference_profile, version_for_alias
from components.storage.atomic_write import write_atomically
from components.storage.object_transfer import (
    ObjectStoreError,
    connection_for,
    download_file,
    upload_file,
)
from components.storage.s3 import SCHEME, S3Connection, parse_s3_uri
from pipelines.steps.notes import log
from pipelines.steps.task_process import task_step

REPORT_FILE: Final = "report.html"  # beside latest.json in the monitor location


class MonitorError(TaxiMlopsError):
    """The monitor cannot judge: no such version, no window, a location it cannot use."""


@dataclass(frozen=True)
class WindowChoice:
    """Which event times to judge: ``since <= t < until`` (either open), or the ``last_hours`` up to the
    newest event time in the log -- what a recurring run uses: it follows the log's own clock, so it
    judges the same windows during an accelerated replay as in real time. Naive times mean UTC."""

    since: datetime | None = None
    until: datetime | None = None
    last_hours: float | None = None

    def __post_init__(self) -> None:
        if self.last_hours is not None:
            if self.since is not None or self.until is not None:
                raise MonitorError("window: give last_hours or since/until, not both")
            if not self.last_hours > 0:
                raise MonitorError(f"window: last_hours must be above 0, got {self.last_hours}")
        if (
            self.since is not None
            and self.until is not None
            and utc_timestamp(self.since) >= utc_timestamp(self.until)
        ):
            raise MonitorError(f"window: since {self.since} is not before until {self.until}")

    @classmethod
    def month(cls, month: str) -> WindowChoice:
        """Every event time in ``YYYY-MM`` (UTC)."""
        if not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", month):
            raise MonitorError(f"window: month {month!r} is not YYYY-MM")
        start = pd.Timestamp(f"{month}-01", tz="UTC")
        return cls(start.to_pydatetime(), (start + pd.offsets.MonthBegin(1)).to_pydatetime())

    @classmethod
    def from_text(cls, since: str = "", until: str = "", last_hours: float = 0.0) -> WindowChoice:
        """From pipeline parameters: ISO 8601 strings (empty: open) and hours (0: not used).

        ``last_hours`` has a default in the pipeline, so a ``since`` or ``until`` given there
        replaces it rather than clashing with it.
        """
        start, end = _parse_time(since, "since"), _parse_time(until, "until")
        if start is not None or end is not None:
            return cls(start, end)
        return cls(last_hours=last_hours or None)


@dataclass(frozen=True)
class MonitorRequest:
    """What to judge and where everything is; every location is a folder or an ``s3://`` prefix."""

    tracking_uri: str
    experiment: str
    model_name: str
    prediction_log: str
    labels: str
    monitor: str
    window: WindowChoice = field(default_factory=WindowChoice)
    model_version: str = ""  # empty: the version holding model_alias
    model_alias: str = CHAMPION
    artifact_location: str = ""  # of the monitoring experiment, when it is created
    report_path: str = ""  # one more copy of the HTML report (the KFP task's Output[HTML])


@dataclass(frozen=True)
class MonitorOutcome:
    """The verdict as stored, what it judged, and where it was recorded."""

    verdict: dict[str, Any]
    window: pd.DataFrame  # PULocationID, DOLocationID, trip_distance, prediction, labels where joined
    profile: ReferenceProfile
    history: list[dict[str, Any]]  # every stored verdict, this one last
    report_html: str
    report_location: str  # report.html in the monitor location (a path or s3:// URI)
    mlflow_run_id: str


@task_step
def monitor_step(request: MonitorRequest, s3: S3Connection | None = None) -> MonitorOutcome:
    """Judge the request's window, store the verdict, write the report, record the MLflow run."""
    version = _model_version(request)
    with tempfile.TemporaryDirectory(prefix="taxi-mlops-monitor-") as scratch:
        folder = Path(scratch)
        with local_folder(request.prediction_log, folder / "log", SEGMENT_PATTERN, s3, _note) as log_dir:
            frame, start, end = _window_of_log(read_prediction_log(log_dir), request.window)
        frame = frame[frame["model_version"] == version]
        with local_folder(request.labels, folder / "labels", LABELS_PATTERN, s3, _note) as labels_dir:
            joined, _ = join_labels(frame, read_labels(labels_dir))
        window = joined.rename(columns={"minutes": "prediction"})
        registered = _registered(request, version)
        profile = fetch_reference_profile(request.tracking_uri, registered, folder / "profile")
        document = monitor_window(window, profile, model_version=version, start=start, end=end)
        stored, history, html, report_at = _record(request, document, window, profile, folder / "store", s3)
    if request.report_path:
        write_atomically(request.report_path, html)
    run_id = tracking.log_monitor_verdict(
        request.tracking_uri,
        request.experiment,
        stored,
        request.artifact_location or None,
        model_name=request.model_name,
        report_html=html,
    )
    for line in verdict_lines(stored):
        log.info("%s", line)
    return MonitorOutcome(stored, window, profile, history, html, report_at, run_id)


def verdict_lines(document: Mapping[str, Any]) -> list[str]:
    """The verdict for a terminal or a task log: the counts and verdict, one line per feature, accuracy."""
    window, accuracy = document["window"], document["accuracy"]
    lines = [
        f"version {document['model_version']}: {window['predictions']} predictions, "
        f"{window['labelled']} labelled; verdict {document['verdict'].upper()}",
        f"  window         {window['start'] or '(open)'} .. {window['end'] or '(open)'}",
    ]
    for name, result in document["drift"].get("features", {}).items():
        flag = "DRIFT" if result["drifted"] else "ok"
        lines.append(
            f"  {name:<14} {flag:<5} effect {result['effect']:.3f} (min {result['min_effect']:.2f}), "
            f"statistic {result['statistic']:.4g} vs {result['threshold']:.4g}"
        )
    if accuracy["rmse"] is not None:
        low, high = accuracy["rmse_ci"]
        lines.append(
            f"  accuracy       RMSE {accuracy['rmse']:.3f} [{low:.3f}, {high:.3f}] vs validation "
            f"{accuracy['baseline_rmse']:.3f}; label coverage {accuracy['label_coverage']:.1%}"
        )
    else:
        lines.append(f"  accuracy       not judged: {accuracy['labelled']} labelled trips")
    segments = document.get("segments") or {}
    if segments.get("statistic") is not None:
        flag = "MOVED" if segments["degraded"] else "ok"
        zones = ", ".join(f"{z['zone']} {z['slower_by']:+.0%}" for z in segments.get("moved", [])[:5])
        lines.append(
            f"  by zone        {flag:<5} {segments['statistic']:.3f} (max {segments['threshold']:g}) over "
            f"{segments['zones']} zones" + (f"; moved most: {zones}" if zones else "")
        )
    elif segments:
        lines.append(
            f"  by zone        not judged: {segments.get('labelled', 0)} labelled trips in zones big enough"
        )
    return lines


# ----------------------------------------------------------------- the inputs


def _model_version(request: MonitorRequest) -> str:
    if request.model_version:
        return request.model_version
    holder = version_for_alias(request.tracking_uri, request.model_name, request.model_alias)
    if holder is None:
        raise MonitorError(
            f"model {request.model_name!r}: no version holds the alias {request.model_alias!r}; "
            "give a model version"
        )
    return str(holder.version)


def _registered(request: MonitorRequest, version: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return tracking.client_for(request.tracking_uri).get_model_version(request.model_name, version)
    except MlflowException as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MonitorError(f"model {request.model_name!r} version {version}: {first}") from None


def _window_of_log(log_frame: pd.DataFrame, choice: WindowChoice) -> tuple[pd.DataFrame, str, str]:
    """The log's records in the window, and the window's start and end as ISO 8601 (empty: open)."""
    times = log_frame["event_time"]
    if choice.last_hours is not None:
        if log_frame.empty:
            return log_frame, "", ""
        newest = times.max()
        start = newest - timedelta(hours=choice.last_hours)
        # The newest record ends the window and belongs to it: since < t <= newest.
        return log_frame[times > start], _iso(start), _iso(newest)
    chosen = log_frame
    if choice.since is not None:
        chosen = chosen[chosen["event_time"] >= utc_timestamp(choice.since)]
    if choice.until is not None:
        chosen = chosen[chosen["event_time"] < utc_timestamp(choice.until)]
    return chosen, _iso(choice.since), _iso(choice.until)


def _note(line: str) -> None:
    log.info("%s", line)


# ----------------------------------------------------------------- the outputs


def _record(
    request: MonitorRequest,
    document: Mapping[str, Any],
    window: pd.DataFrame,
    profile: ReferenceProfile,
    scratch: Path,
    s3: S3Connection | None,
) -> tuple[dict[str, Any], list[dict[str, Any]], str, str]:
    """Save the verdict in the store, render the report with the store's history, put it beside them."""
    location = request.monitor
    if not location.startswith(SCHEME):
        stored = save_verdict(location, document)
        history = load_history(location)
        html = _render_report(stored, window, profile, history)
        report = Path(location) / REPORT_FILE
        write_atomically(report, html)
        return stored, history, html, str(report)

    conn = connection_for(location, s3)
    store = parse_s3_uri(location)
    remote = {name: store.join(name).uri for name in (HISTORY_FILE, LATEST_FILE, REPORT_FILE)}
    try:
        download_file(conn, remote[HISTORY_FILE], scratch / HISTORY_FILE, require_sha256=False)
    except ObjectStoreError as exc:
        if not exc.missing:
            raise
        log.info("%s: no verdicts yet, starting the history", remote[HISTORY_FILE])
    stored = save_verdict(scratch, document)
    # History first, latest last, as on a disk: a reader of latest.json finds it in the history.
    upload_file(conn, scratch / HISTORY_FILE, remote[HISTORY_FILE], content_type="application/x-ndjson")
    upload_file(conn, scratch / LATEST_FILE, remote[LATEST_FILE], content_type="application/json")
    history = load_history(scratch)
    html = _render_report(stored, window, profile, history)
    write_atomically(scratch / REPORT_FILE, html)
    upload_file(conn, scratch / REPORT_FILE, remote[REPORT_FILE], content_type="text/html; charset=utf-8")
    return stored, history, html, remote[REPORT_FILE]


def _render_report(
    document: Mapping[str, Any],
    window: pd.DataFrame,
    profile: ReferenceProfile,
    history: Sequence[Mapping[str, Any]],
) -> str:
    """``history`` ends with ``document`` itself (just saved); the report wants the earlier ones."""
    # Imported here: matplotlib is only needed once there is a verdict to draw.
    from components.monitoring.report import render_monitor_report

    return render_monitor_report(document, window, profile, history=history[:-1])


# ----------------------------------------------------------------- time


def _iso(moment: datetime | pd.Timestamp | None) -> str:
    return "" if moment is None else utc_timestamp(moment).isoformat()


def _parse_time(text: str, name: str) -> datetime | None:
    if not text.strip():
        return None
    try:
        return utc_timestamp(datetime.fromisoformat(text.strip())).to_pydatetime()
    except ValueError:
        raise MonitorError(f"window: {name} {text!r} is not an ISO 8601 time") from None
