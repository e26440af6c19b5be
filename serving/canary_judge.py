"""The canary judge: gathers a live canary's evidence, asks for a verdict, acts on it, records why.

One analysis (:func:`judge_once`):

1. reads what is deployed; no canary, nothing to judge;
2. remembers where the current step began (``judge.json``: the revisions'
   request and error counters then, the step's wall-clock start, the event time
   the canary was first seen) -- a new canary or a new percent starts a new step;
3. operations: each revision's requests and errors since the step began and its
   p99 latency (:class:`OpsSource`: the local splitter's ``/status``, or
   Prometheus on a cluster);
4. accuracy: every logged trip since the canary started, whichever revision
   answered it, that has a label is scored by BOTH models offline (they are
   deterministic on the three inputs), so champion and canary errors are compared
   trip by trip (``components.canary.paired_accuracy``);
5. ``components.canary.analysis.analyze`` turns that into pass / fail /
   inconclusive and an action, which the :class:`RolloutActions` carry out
   (locally the deployment state + aliases, on a cluster the InferenceService);
6. the decision, with every check and the action's own message, is appended to
   ``history.jsonl`` and becomes ``latest.json`` (``components.storage.json_records``).

Time: the deadline is in event time (the newest event time in the prediction
log), so a replayed month behaves like the real one; the analysis interval is
the caller's, in wall-clock seconds.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol

import numpy as np
import pandas as pd

from components.canary.analysis import CanaryAnalysis, Evidence, RevisionOps, analyze
from components.canary.decision_store import decision_history, save_decision
from components.canary.policy import CanaryPolicy
from components.errors import TaxiMlopsError
from components.features.trip_features import TARGET_COLUMN
from components.models.duration_model import TripDurationModel
from components.monitoring.labels import join_labels, read_labels
from components.monitoring.prediction_log import read_prediction_log, utc_timestamp
from components.names import CANARY_REVISION as CANARY
from components.names import CHAMPION_REVISION as CHAMPION
from components.storage.atomic_write import write_atomically
from serving.deployment_state import DeploymentState, Revision

MEMORY_FILE: Final = "judge.json"
REPORT_FILE: Final = "report.html"  # the newest canary's page; each canary also keeps report-v<N>.html
_INPUTS: Final = ["PULocationID", "DOLocationID", "trip_distance"]


class CanaryJudgeError(TaxiMlopsError):
    """The judge could not gather its evidence or act (names what and where)."""


@dataclass(frozen=True)
class OpsReading:
    """One revision's counters as a cumulative source reports them now, and its current p99."""

    requests: int
    errors: int
    p99_ms: float | None


class OpsSource(Protocol):
    """Where requests, errors and latency come from (the splitter locally, Prometheus on a cluster)."""

    def snapshot(self, state: DeploymentState) -> dict[str, list[int]]:
        """What counting from the step's start needs later (JSON, kept in judge.json)."""
        ...

    def since(
        self, state: DeploymentState, baseline: Mapping[str, list[int]], step_started: datetime
    ) -> dict[str, RevisionOps]:
        """Each revision's figures since the step began, keyed ``champion`` / ``canary``."""
        ...


class CumulativeOps:
    """An :class:`OpsSource` over cumulative counters: the step's figures are now minus the baseline."""

    def read(self, state: DeploymentState) -> dict[str, OpsReading]:
        raise NotImplementedError

    def snapshot(self, state: DeploymentState) -> dict[str, list[int]]:
        return {role: [reading.requests, reading.errors] for role, reading in self.read(state).items()}

    def since(
        self, state: DeploymentState, baseline: Mapping[str, list[int]], step_started: datetime
    ) -> dict[str, RevisionOps]:
        figures = {}
        for role, reading in self.read(state).items():
            requests0, errors0 = baseline.get(role) or [0, 0]
            # Counters restart with their process (the splitter restarted): count from zero again.
            if reading.requests < requests0 or reading.errors < errors0:
                requests0 = errors0 = 0
            figures[role] = RevisionOps(
                reading.requests - requests0, reading.errors - errors0, reading.p99_ms
            )
        return figures


class RolloutActions(Protocol):
    def state(self) -> DeploymentState: ...
    def set_percent(self, percent: int) -> str: ...
    def promote(self) -> str: ...
    def rollback(self) -> str: ...


@dataclass
class JudgeMemory:
    """What the judge must remember between analyses (``judge.json``)."""

    champion_version: str
    canary_version: str
    percent: int
    step_started_at: str  # wall clock, ISO 8601
    step_baseline: dict[str, list[int]]  # role -> [requests, errors] when the step began
    canary_since: str  # wall clock (ISO 8601) the canary was deployed: its life is what was logged since
    canary_started_event: str | None  # earliest event time logged in the canary's life (ISO 8601)
    consecutive_failures: int = 0
    analyses: int = 0

    @classmethod
    def load(cls, path: Path) -> JudgeMemory | None:
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            return cls(**document)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError):
            # Written atomically, so only a foreign edit makes it unreadable. That costs the
            # current step's baseline, never a decision: the judge starts the step again.
            return None

    def save(self, path: Path) -> None:
        write_atomically(path, json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")


class SplitterOps(CumulativeOps):
    """Operations evidence from the local traffic splitter's ``/status`` (per revision and version).

    Its p99 is over the splitter's recent window of requests (2,048 by default), which at a
    step's minimum of requests is mostly, not only, the current step's.
    """

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def read(self, state: DeploymentState) -> dict[str, OpsReading]:
        try:
            with urllib.request.urlopen(f"{self.url}/status", timeout=self.timeout) as response:
                status = json.load(response)
        except (OSError, ValueError) as exc:
            raise CanaryJudgeError(f"cannot read the splitter's status at {self.url}/status: {exc}") from exc
        readings: dict[str, OpsReading] = {}
        for role, revision in ((CHAMPION, state.champion), (CANARY, state.canary)):
            if revision is None:
                continue
            rows = [
                row
                for row in status.get("revisions", [])
                if row.get("revision") == role and str(row.get("model_version")) == revision.model_version
            ]
            if rows:
                row = rows[0]
                p99 = (row.get("latency_ms") or {}).get("p99")
                readings[role] = OpsReading(int(row["requests"]), int(row["errors"]), p99)
            else:
                readings[role] = OpsReading(0, 0, None)
        return readings


@dataclass
class PairedTrips:
    """Labelled trips of the canary's life scored by both models, and the log's newest event time."""

    actual: np.ndarray
    champion: np.ndarray
    canary: np.ndarray
    newest_event: pd.Timestamp | None
    logged: int = 0
    mismatched: int = 0  # logged minutes that differ from the answering model's offline score
    span_hours: float | None = None  # event time from the first labelled pair to the last


def paired_trips(
    log: pd.DataFrame,
    labels: pd.DataFrame,
    state: DeploymentState,
    score: Callable[[Revision], TripDurationModel],
) -> PairedTrips:
    """Score every labelled trip of ``log`` (the canary's life) by both deployed models."""
    assert state.champion is not None and state.canary is not None
    newest = log["event_time"].max() if len(log) else None
    versions = {state.champion.model_version, state.canary.model_version}
    window = log[log["model_version"].astype(str).isin(versions)]
    joined, _ = join_labels(window, labels)
    # In event order, not log order (which depends on how two predictors' flushes interleave):
    # the bootstrap then draws the same interval from the same pairs on every run.
    labelled = joined[joined[TARGET_COLUMN].notna()].sort_values(["event_time", "request_id"], kind="stable")
    if labelled.empty:
        empty = np.empty(0)
        return PairedTrips(empty, empty, empty, newest, logged=len(joined))
    inputs = labelled[_INPUTS]
    champion = score(state.champion).predict(inputs)
    canary = score(state.canary).predict(inputs)
    # The logged answer must be what its model gives offline: otherwise the pairs are not
    # what was served (a model file that changed, a non-deterministic model).
    answered_by_canary = labelled["model_version"].astype(str).to_numpy() == state.canary.model_version
    offline = np.where(answered_by_canary, canary, champion)
    mismatched = int((np.abs(offline - labelled["minutes"].to_numpy(dtype=np.float64)) > 1e-6).sum())
    times = pd.to_datetime(labelled["event_time"])
    return PairedTrips(
        labelled[TARGET_COLUMN].to_numpy(dtype=np.float64),
        champion,
        canary,
        newest,
        logged=len(joined),
        mismatched=mismatched,
        span_hours=float((times.max() - times.min()).total_seconds() / 3600),
    )


@dataclass(frozen=True)
class JudgeFolders:
    prediction_log_dir: Path
    labels_dir: Path
    canary_dir: Path  # judge.json, history.jsonl, latest.json


def judge_once(
    actions: RolloutActions,
    ops: OpsSource,
    folders: JudgeFolders,
    score: Callable[[Revision], TripDurationModel],
    policy: CanaryPolicy | None = None,
    *,
    now: datetime | None = None,
    event_now: datetime | None = None,
    on_decision: Callable[[dict[str, Any], Path], None] | None = None,
) -> dict[str, Any] | None:
    """One analysis of the live canary and its action; the recorded decision, or None without a canary.

    ``on_decision(decision, report_path)`` runs once the decision and its page are on disk (the
    CLI logs an MLflow run there); if it raises, the decision stands and the error propagates.
    ``event_now`` is the caller's event clock where it keeps one (a replay): the decision's event
    time and the deadline's "now". Without it, the newest logged trip's -- which a trip still in
    a predictor's one-second log buffer does not move yet.
    """
    policy = policy or CanaryPolicy()
    wall = (now or datetime.now(UTC)).astimezone(UTC)
    state = actions.state()
    memory_path = folders.canary_dir / MEMORY_FILE
    if state.champion is None or state.canary is None:
        memory_path.unlink(missing_ok=True)
        return None
    log = (
        read_prediction_log(folders.prediction_log_dir, on_corrupt="skip")
        if folders.prediction_log_dir.is_dir()
        else None
    )
    memory = JudgeMemory.load(memory_path)
    if memory is None or memory.canary_version != state.canary.model_version:
        memory = JudgeMemory(
            champion_version=state.champion.model_version,
            canary_version=state.canary.model_version,
            percent=state.canary_percent,
            step_started_at=wall.isoformat(),
            step_baseline=ops.snapshot(state),
            canary_since=_deployed_at(state, wall).isoformat(),
            canary_started_event=None,
        )
    elif memory.percent != state.canary_percent:
        memory.percent = state.canary_percent
        memory.step_started_at = wall.isoformat()
        memory.step_baseline = ops.snapshot(state)
        memory.consecutive_failures = 0
    # The canary's life is what was logged (wall clock) since it was deployed, whatever event
    # times those trips carry: a month replayed a second time is new traffic for this canary.
    # Its event times are the canary's clock: the deadline runs from the first to the newest.
    window = log[log["logged_at"] > pd.Timestamp(memory.canary_since)] if log is not None else None
    newest = window["event_time"].max() if window is not None and len(window) else None
    if event_now is not None:
        newest = utc_timestamp(event_now)
    if window is not None and len(window):
        first = window["event_time"].min()
        if memory.canary_started_event is None or first < pd.Timestamp(memory.canary_started_event):
            memory.canary_started_event = first.isoformat()
    since = pd.Timestamp(memory.canary_started_event) if memory.canary_started_event else None
    if window is not None:
        pairs = paired_trips(window, read_labels(folders.labels_dir), state, score)
    else:
        empty = np.empty(0)
        pairs = PairedTrips(empty, empty, empty, None)
    figures = ops.since(state, memory.step_baseline, datetime.fromisoformat(memory.step_started_at))
    evidence = Evidence(
        champion_version=state.champion.model_version,
        canary_version=state.canary.model_version,
        percent=state.canary_percent,
        champion=figures.get(CHAMPION, RevisionOps(0, 0, None)),
        canary=figures.get(CANARY, RevisionOps(0, 0, None)),
        actual=pairs.actual,
        champion_predictions=pairs.champion,
        canary_predictions=pairs.canary,
        canary_started=since.to_pydatetime() if since is not None else None,
        now=newest.to_pydatetime() if newest is not None else None,
        consecutive_failures=memory.consecutive_failures,
        pairs_span_hours=pairs.span_hours,
    )
    analysis = analyze(evidence, policy)
    message = _act(actions, analysis)
    memory.analyses += 1
    memory.consecutive_failures = memory.consecutive_failures + 1 if analysis.verdict == "fail" else 0
    decision = _decision(analysis, wall, evidence, memory, pairs, message)
    save_decision(folders.canary_dir, decision)
    report = write_report(
        folders.canary_dir, state.canary.model_version, (pairs.actual, pairs.champion, pairs.canary)
    )
    if analysis.action in ("promote", "rollback"):
        memory_path.unlink(missing_ok=True)
    else:
        if analysis.action == "set_percent" and analysis.next_percent is not None:
            # The next step starts now: counting from here, not from the next analysis, so
            # the traffic in between belongs to the step it was sent in.
            stepped = actions.state()
            memory.percent = analysis.next_percent
            memory.step_started_at = datetime.now(UTC).isoformat() if now is None else wall.isoformat()
            memory.step_baseline = ops.snapshot(stepped)
            memory.consecutive_failures = 0
        memory.save(memory_path)
    if on_decision is not None:
        on_decision(decision, report)
    return decision


def write_report(
    canary_dir: Path, canary_version: str, pairs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
) -> Path:
    """The canary's decision page from its recorded analyses; returns its path."""
    from components.canary.report import render_canary_report

    page = render_canary_report(decision_history(canary_dir, canary_version), pairs)
    path = canary_dir / f"report-v{canary_version}.html"
    write_atomically(path, page)
    write_atomically(canary_dir / REPORT_FILE, page)
    return path


def _deployed_at(state: DeploymentState, wall: datetime) -> datetime:
    """When the state last changed (the canary's deployment, when the judge meets it first), else now."""
    try:
        moment = datetime.fromisoformat(state.updated_at)
    except ValueError:
        return wall
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return min(moment.astimezone(UTC), wall)


def _act(actions: RolloutActions, analysis: CanaryAnalysis) -> str:
    if analysis.action == "set_percent":
        assert analysis.next_percent is not None
        return actions.set_percent(analysis.next_percent)
    if analysis.action == "promote":
        return actions.promote()
    if analysis.action == "rollback":
        return actions.rollback()
    return f"held at {analysis.percent}%"


def _decision(
    analysis: CanaryAnalysis,
    wall: datetime,
    evidence: Evidence,
    memory: JudgeMemory,
    pairs: PairedTrips,
    message: str,
) -> dict[str, Any]:
    return {
        **analysis.to_dict(),
        "evaluated_at": wall.isoformat(timespec="seconds"),
        "event_time": evidence.now.isoformat() if evidence.now else None,
        "canary_started_event": memory.canary_started_event,
        "step_started_at": memory.step_started_at,
        "operations": {
            CHAMPION: asdict(evidence.champion),
            CANARY: asdict(evidence.canary),
        },
        "labelled_pairs": int(pairs.actual.size),
        "logged_since_canary": pairs.logged,
        "offline_mismatches": pairs.mismatched,
        "result": message,
    }


class LocalRollout:
    """:class:`RolloutActions` on the local deployment state (the running ``serve`` follows it)."""

    def __init__(self, target: Any) -> None:
        self.target = target  # serving.rollout.RolloutTarget

    def state(self) -> DeploymentState:
        from serving.deployment_state import load_state

        return load_state(self.target.state_path)

    def set_percent(self, percent: int) -> str:
        from serving.rollout import set_canary_percent

        return set_canary_percent(self.target, percent).message

    def promote(self) -> str:
        from serving.rollout import promote_canary

        return promote_canary(self.target).message

    def rollback(self) -> str:
        from serving.rollout import rollback_canary

        return rollback_canary(self.target).message


def local_scorer() -> Callable[[Revision], TripDurationModel]:
    """Loads each deployed revision's verified model file once (``model_uri`` is its staged folder)."""
    from components.models.duration_model import MODEL_FILE_NAME, load_duration_model

    loaded: dict[tuple[str, str], TripDurationModel] = {}

    def score(revision: Revision) -> TripDurationModel:
        key = (revision.model_version, revision.sha256)
        if key not in loaded:
            loaded[key] = load_duration_model(Path(revision.model_uri) / MODEL_FILE_NAME, revision.sha256)
        return loaded[key]

    return score


class CanaryJudgeLoop:
    """Runs :func:`judge_once` every ``policy.interval_seconds`` on a daemon thread (``taxi-mlops serve``).

    A failed analysis (the splitter not answering yet, an unreadable file) is reported through
    ``progress`` and in :attr:`last_error`, and the loop carries on: the next analysis
    gathers the evidence afresh. Nothing is acted on without a complete analysis.
    """

    def __init__(
        self,
        actions: RolloutActions,
        ops: OpsSource,
        folders: JudgeFolders,
        score: Callable[[Revision], TripDurationModel],
        policy: CanaryPolicy | None = None,
        progress: Callable[[str], None] = lambda _line: None,
        on_decision: Callable[[dict[str, Any], Path], None] | None = None,
    ) -> None:
        import threading

        self.actions, self.ops, self.folders, self.score = actions, ops, folders, score
        self.policy = policy or CanaryPolicy()
        self.progress = progress
        self.on_decision = on_decision
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="canary-judge", daemon=True)

    def start(self) -> CanaryJudgeLoop:
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def __enter__(self) -> CanaryJudgeLoop:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.policy.interval_seconds):
            try:
                decision = judge_once(
                    self.actions,
                    self.ops,
                    self.folders,
                    self.score,
                    self.policy,
                    on_decision=self.on_decision,
                )
            except Exception as exc:  # one failed analysis must not end the judging
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.progress(f"canary judge: analysis failed: {self.last_error}")
                continue
            self.last_error = None
            if decision is not None and decision["action"] != "hold":
                self.progress(
                    f"canary judge: {decision['verdict']} -> {decision['action']} "
                    f"(version {decision['canary']} at {decision['percent']}%): {decision['reason']}"
                )
