"""The canary judge on a cluster: the same :func:`serving.canary_judge.judge_once`, with cluster parts.

What the local stack's parts become on a cluster:

- the actions (:class:`ClusterRolloutActions`): the InferenceService through
  ``serving.cluster_rollout``, the MLflow aliases with it. The next step is
  ``deploy_version`` of the live canary at the next percent (the same canary patch the
  deploy step sends: only ``canaryTrafficPercent`` differs, so KServe starts no new
  revision); promote and roll back are its patches (``canaryTrafficPercent`` null / 0);
- the operations figures: ``serving.prometheus_ops.PrometheusOps`` on the cluster
  Prometheus, which scrapes the predictor pods;
- the models that score the labelled trips: each revision's file from the MLflow
  registry by version (:func:`registry_scorer`), checked against the sha256 the
  InferenceService serves, so the offline scores are those of the served files;
- the folders: the prediction log and the labels (written by the inference-log sink
  and ``taxi-mlops labels``) and the judge's own folder -- ``judge.json`` (where the
  step began), ``history.jsonl``, ``latest.json``, ``report.html`` -- live in MinIO
  (``names.PREDICTION_LOG_URI``, ``LABELS_URI``, ``CANARY_URI``). Each analysis
  downloads them into a scratch folder, judges there, and uploads the judge's files back.

One analysis at a time is assumed: the recurring run that calls this (``taxi-mlops submit
--pipeline canary --schedule ...``) has ``max_concurrency=1``. S3 has neither append nor
lock, so two analyses at once would each read ``judge.json`` and ``history.jsonl``, each act,
and the later upload would drop the earlier one's decision from the history.

The action happens before the decision is uploaded (``judge_once`` acts, then records). If
the upload then fails, the cluster has moved but the bucket has not: the run fails, and the
next analysis reads the InferenceService afresh -- a new percent starts a new step there, a
promoted or rolled-back canary leaves nothing to judge -- so only that one record is lost,
never an action repeated.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from components.canary.decision_store import HISTORY_FILE, LATEST_FILE
from components.canary.policy import CanaryPolicy
from components.models.duration_model import TripDurationModel
from components.monitoring.locations import LABELS_PATTERN, SEGMENT_PATTERN, is_remote, local_folder
from components.names import CANARY_URI, LABELS_URI, PREDICTION_LOG_URI
from components.storage.object_transfer import (
    ObjectStoreError,
    connection_for,
    download_file,
    remove_object,
    upload_file,
)
from components.storage.s3 import S3Connection, parse_s3_uri
from serving.canary_judge import MEMORY_FILE, REPORT_FILE, CanaryJudgeError, JudgeFolders, judge_once
from serving.cluster_rollout import ClusterTarget, deploy_version, promote_canary, rollback_canary, status
from serving.deployment_state import DeploymentState, Revision
from serving.prometheus_ops import PrometheusOps

#: The judge's files downloaded before an analysis (the report is rendered from the history).
_KEPT: Final = (MEMORY_FILE, HISTORY_FILE, LATEST_FILE)
_CONTENT_TYPES: Final = {
    ".json": "application/json",
    ".jsonl": "application/x-ndjson",
    ".html": "text/html; charset=utf-8",
}


class ClusterRolloutActions:
    """:class:`serving.canary_judge.RolloutActions` on the InferenceService (``serving.cluster_rollout``).

    An action applies to the canary that was judged, or to nothing: before each one the
    InferenceService is read again, and if its canary, percent or champion has changed since
    :meth:`state` (someone deployed or promoted meanwhile) the action is refused with a
    :class:`CanaryJudgeError` -- the evidence was about another deployment, and the next
    analysis judges the live one. (What remains is the instant between that read and the
    rollout verb's own read; the verb's patch then carries the resourceVersion it read.)
    """

    def __init__(self, target: ClusterTarget) -> None:
        self.target = target
        self._judged: DeploymentState | None = None

    def state(self) -> DeploymentState:
        self._judged = status(self.target).state
        return self._judged

    def set_percent(self, percent: int) -> str:
        canary = self._still_judged(f"move the canary to {percent}%")
        return deploy_version(self.target, canary.model_version, percent).message

    def promote(self) -> str:
        self._still_judged("promote the canary")
        return promote_canary(self.target).message

    def rollback(self) -> str:
        self._still_judged("roll the canary back")
        return rollback_canary(self.target).message

    def _still_judged(self, what: str) -> Revision:
        judged = self._judged
        if judged is None or judged.canary is None:
            raise CanaryJudgeError(f"cannot {what} on {self.target.ref.describe()}: no canary was judged")
        live = status(self.target).state
        if _roles(live) != _roles(judged):
            raise CanaryJudgeError(
                f"{self.target.ref.describe()} changed during the analysis (judged: {judged.describe()}; "
                f"now: {live.describe()}); did not {what}: the next analysis judges what is live"
            )
        return judged.canary


def _roles(state: DeploymentState) -> tuple[Any, ...]:
    def named(revision: Revision | None) -> tuple[str, str] | None:
        return None if revision is None else (revision.model_version, revision.sha256)

    return named(state.champion), named(state.canary), state.canary_percent


def registry_scorer(
    tracking_uri: str, model_name: str, cache_dir: Path
) -> Callable[[Revision], TripDurationModel]:
    """Each revision's model from the MLflow registry by its version, loaded once per version.

    The file is the one registered (``components.registry.versions.fetch_model_file``) and is
    loaded only if its sha256 is the one recorded at registration -- and that must be the
    sha256 the InferenceService serves (the predictor's env): otherwise the offline scores
    would not be those of the answers in the log.
    """
    from mlflow.exceptions import MlflowException

    from components.registry.tracking import client_for
    from components.registry.versions import SHA256_TAG, fetch_model_file

    loaded: dict[tuple[str, str], TripDurationModel] = {}

    def score(revision: Revision) -> TripDurationModel:
        key = (revision.model_version, revision.sha256)
        if key in loaded:
            return loaded[key]
        where = f"model {model_name!r} version {revision.model_version}"
        try:
            version = client_for(tracking_uri).get_model_version(model_name, revision.model_version)
        except MlflowException as exc:
            raise CanaryJudgeError(f"{where}: not in the registry at {tracking_uri} ({exc})") from exc
        recorded = str((version.tags or {}).get(SHA256_TAG, "")).strip().lower()
        if recorded != revision.sha256:
            raise CanaryJudgeError(
                f"{where}: the registry records sha256 {recorded or '(none)'} but the InferenceService "
                f"serves {revision.sha256}; the logged answers cannot be scored offline"
            )
        model_dir = cache_dir / f"v{revision.model_version}"
        loaded[key] = fetch_model_file(tracking_uri, version, dest_dir=model_dir).load()
        return loaded[key]

    return score


@dataclass(frozen=True)
class JudgeLocations:
    """Where the judge reads the log and labels and keeps its files: ``s3://`` prefixes or folders."""

    prediction_log: str = PREDICTION_LOG_URI
    labels: str = LABELS_URI
    canary: str = CANARY_URI

    def __post_init__(self) -> None:
        for name in ("prediction_log", "labels", "canary"):
            if not getattr(self, name).strip():
                raise CanaryJudgeError(f"judge locations: {name} is empty (give a folder or an s3:// prefix)")


@dataclass(frozen=True)
class ClusterJudgement:
    """One cluster analysis: the recorded decision (None without a canary), what was live, the page."""

    decision: dict[str, Any] | None
    state: DeploymentState  # as read before the analysis
    report_html: str | None  # this canary's decision page, None without a decision
    canary_location: str  # where the judge's files are kept


def judge_cluster_once(
    target: ClusterTarget,
    prometheus_url: str,
    locations: JudgeLocations = JudgeLocations(),  # frozen: one default shared safely
    policy: CanaryPolicy | None = None,
    *,
    s3: S3Connection | None = None,
    now: datetime | None = None,
    note: Callable[[str], None] = lambda _line: None,
) -> ClusterJudgement:
    """One analysis of the InferenceService's canary, its action, and its record in ``locations.canary``."""
    actions = ClusterRolloutActions(target)
    ops = PrometheusOps(prometheus_url, now=now)
    with tempfile.TemporaryDirectory(prefix="taxi-mlops-canary-") as scratch:
        folder = Path(scratch)
        canary_dir = _pull(locations.canary, folder / "canary", s3)
        score = registry_scorer(target.tracking_uri, target.model_name, folder / "models")
        live = status(target).state
        if live.canary is None:
            # Nothing to judge, so the log is not downloaded; judge_once forgets the last step.
            folders = JudgeFolders(folder / "no-log", folder / "no-labels", canary_dir)
            decision = judge_once(actions, ops, folders, score, policy, now=now)
        else:
            with (
                local_folder(locations.prediction_log, folder / "log", SEGMENT_PATTERN, s3, note) as log_dir,
                local_folder(locations.labels, folder / "labels", LABELS_PATTERN, s3, note) as labels_dir,
            ):
                folders = JudgeFolders(log_dir, labels_dir, canary_dir)
                decision = judge_once(actions, ops, folders, score, policy, now=now)
        report = (canary_dir / REPORT_FILE).read_text(encoding="utf-8") if decision is not None else None
        _push(canary_dir, locations.canary, decision, s3)
    return ClusterJudgement(decision, live, report, locations.canary)


# --------------------------------------------------------------------------- the judge's folder in S3


def _pull(location: str, scratch: Path, s3: S3Connection | None) -> Path:
    """The judge's folder to work in: ``location`` itself, or its files downloaded into ``scratch``."""
    if not is_remote(location):
        Path(location).mkdir(parents=True, exist_ok=True)
        return Path(location)
    scratch.mkdir(parents=True, exist_ok=True)
    conn = connection_for(location, s3)
    prefix = parse_s3_uri(location)
    for name in _KEPT:
        try:
            download_file(conn, prefix.join(name).uri, scratch / name, require_sha256=False)
        except ObjectStoreError as exc:
            if not exc.missing:
                raise
    return scratch


def _push(canary_dir: Path, location: str, decision: dict[str, Any] | None, s3: S3Connection | None) -> None:
    """Upload what the analysis changed: history first and latest after it (a reader of latest.json
    finds it in the history), the pages, then the memory -- or remove it, as judge_once did."""
    if not is_remote(location):
        return
    conn = connection_for(location, s3)
    prefix = parse_s3_uri(location)
    names = []
    if decision is not None:
        names = [HISTORY_FILE, LATEST_FILE, REPORT_FILE, f"report-v{decision['canary']}.html"]
    for name in names:
        path = canary_dir / name
        upload_file(conn, path, prefix.join(name).uri, content_type=_CONTENT_TYPES[path.suffix])
    memory = canary_dir / MEMORY_FILE
    if memory.is_file():
        upload_file(conn, memory, prefix.join(MEMORY_FILE).uri, content_type=_CONTENT_TYPES[".json"])
    else:
        remove_object(conn, prefix.join(MEMORY_FILE).uri)
