"""Run the training pipeline on this machine with ``kfp.local`` and report on it.

The same compiled components run here as on a cluster:
``SubprocessRunner(use_venv=False)`` executes each task in a subprocess of this
interpreter (the project's own environment stands in for its image). KFP's very
verbose local logs go to a log file; the terminal gets one progress line per
step, and the run's summary is read back from MLflow, the system of record.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from components.data.cleaning_rules import DEFAULT_MIN_ROWS
from components.data.event_window import EventWindow, TrainingData, plan_training_data
from components.errors import TaxiMlopsError
from pipelines.settings import Settings

# Friendly step names for KFP's task names (the second ingest reads the validation month or window).
STEP_NAMES = {
    "open-tracking-run": "open_run",
    "ingest": "ingest_train",
    "ingest-2": "ingest_val",
    "vectorize": "vectorize",
    "train": "train",
    "evaluate": "evaluate",
    "register": "register",
    "deploy": "deploy",
    "close-tracking-run": "close_run",
}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_TASK_START = re.compile(r"Executing task '([\w-]+)'")
_TASK_END = re.compile(r"Task '([\w-]+)' finished with status (\w+)")
_STEP_NOTE = re.compile(r"\[taxi-mlops\] (.*)")
_OUR_PACKAGES = ("components.", "serving.", "pipelines.")
_ERROR_LINE = re.compile(r"^\s*((?:[\w]+\.)*\w*(?:Error|Exception)): (.+)$")


class PipelineRunError(TaxiMlopsError):
    """The local pipeline run failed; the message carries the failing step's own error."""


@dataclass(frozen=True)
class RunRequest:
    color: str = "green"
    train_month: str = "2021-01"
    val_month: str = "2021-02"
    # A window of event time replaces the month of its side (components.data.event_window);
    # validation must then start at or after the end of training.
    train_window: EventWindow | None = None
    val_window: EventWindow | None = None
    allow_missing_months: bool = False  # skip a month a window spans that has no file
    data_dir: str | None = None
    s3_uri: str | None = None
    candidates: Sequence[Mapping[str, Any]] | None = None
    min_improvement: float = 0.01
    min_rows: int = DEFAULT_MIN_ROWS  # rows each month must keep after cleaning (too_few_rows)
    canary_percent: int = 20
    deploy: bool = True  # roll the registered version out to the local deployment state

    def training_data(self) -> TrainingData:
        """What each side reads; raises ``IngestError`` for validation that is not newer than training."""
        return plan_training_data(self.train_month, self.val_month, self.train_window, self.val_window)


@dataclass
class _StepClock:
    """Per-step timings from KFP's task start/finish log lines (parallel tasks share a step)."""

    started: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    running: dict[str, int] = field(default_factory=dict)

    def start(self, step: str, now: float) -> None:
        if self.running.get(step, 0) == 0:
            self.started[step] = now
        self.running[step] = self.running.get(step, 0) + 1

    def finish(self, step: str, now: float) -> float:
        self.running[step] = max(0, self.running.get(step, 1) - 1)
        # Wall-clock span of the step: for the parallel train tasks, first start to last finish.
        elapsed = now - self.started.get(step, now)
        self.seconds[step] = round(elapsed, 2)
        return elapsed


class _ProgressTee(io.TextIOBase):
    """Writes KFP's output to a log file and turns task events into progress lines."""

    def __init__(self, log: TextIO, progress: Callable[[str], None], terminal: TextIO) -> None:
        self._log = log
        self._progress = progress
        self._terminal = terminal
        # KFP prints each parallel task's output from its own thread, sometimes a
        # line in two writes: buffer per thread so lines never interleave.
        self._pending: dict[int, str] = {}
        self._lock = threading.Lock()
        self._emitting = threading.local()
        self.clock = _StepClock()
        self.error_lines: list[str] = []
        self._detached = False
        self.failed_step: str | None = None

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if self._detached:
            # A logging handler KFP created during this run may outlive it; its log file is closed.
            return len(text)
        if getattr(self._emitting, "active", False):
            # The progress callback itself printed (e.g. click.echo): that is for the terminal.
            return self._terminal.write(text)
        thread = threading.get_ident()
        with self._lock:
            pending = self._pending.get(thread, "") + text
            *lines, self._pending[thread] = pending.split("\n")
            for line in lines:
                self._log.write(line + "\n")
                self._on_line(_ANSI.sub("", line))
        return len(text)

    def flush(self) -> None:
        if not self._detached:
            self._log.flush()

    def detach(self) -> None:
        with self._lock:
            self._detached = True

    @property
    def step_error(self) -> str | None:
        """The failing step's own error: ours (the project's packages) first, else the last one seen."""
        ours = [error for error in self.error_lines if error.startswith(_OUR_PACKAGES)]
        chosen = ours[0] if ours else (self.error_lines[-1] if self.error_lines else None)
        if chosen is None:
            return None
        name, _, message = chosen.partition(": ")
        return f"{name.rsplit('.', 1)[-1]}: {message}"

    def _on_line(self, line: str) -> None:
        now = time.perf_counter()
        if match := _TASK_START.search(line):
            self.clock.start(_step_name(match.group(1)), now)
        elif match := _TASK_END.search(line):
            step = _step_name(match.group(1))
            elapsed = self.clock.finish(step, now)
            status = match.group(2)
            mark = "ok" if status == "SUCCESS" else status.lower()
            if status != "SUCCESS" and self.failed_step is None:
                self.failed_step = step
            self._emit(f"  [{mark:>7}] {step:<13} {elapsed:7.1f}s")
        elif match := _STEP_NOTE.search(line):
            self._emit(f"            {match.group(1)}")
        elif (match := _ERROR_LINE.match(line)) and "RuntimeError" not in match.group(1):
            self.error_lines.append(f"{match.group(1)}: {match.group(2)}")

    def _emit(self, line: str) -> None:
        self._emitting.active = True
        try:
            self._progress(line)
        finally:
            self._emitting.active = False


def _step_name(task: str) -> str:
    return STEP_NAMES.get(task, task)


def prepare_state_dir(settings: Settings) -> None:
    """Create the state folders before any task runs (the open-run task creates the experiment)."""
    for folder in (settings.state_dir, settings.pipeline_root, settings.log_dir):
        folder.mkdir(parents=True, exist_ok=True)


def recover_killed_runs(settings: Settings, progress: Callable[[str], None] = print) -> list[str]:
    """Repair what a SIGKILLed run left in the local registry; one progress line per repair.

    ``run``, ``deploy`` and ``status`` call this first: a version still marked
    pending whose registering process is gone is removed, and a RUNNING parent
    run whose ``taxi-mlops run`` process is gone is closed FAILED
    (``components.registry.recovery``). A sqlite registry that does not exist yet
    has nothing to repair, and is not created here; a quick read-only look
    (``maybe_left_behind``) spares the MLflow import when nothing was left.
    """
    from components.registry.leftovers import maybe_left_behind

    if not maybe_left_behind(settings.tracking_uri):
        return []
    from components.registry.recovery import close_dead_runs, recover_registrations

    repairs = recover_registrations(settings.tracking_uri, settings.model_name)
    repairs += close_dead_runs(settings.tracking_uri, settings.experiment)
    for repair in repairs:
        progress(f"recovered: {repair}")
    return repairs


def import_tracking_in_background(tracking_uri: str) -> threading.Thread:
    """Import MLflow (and, for a sqlite URI, its SQL store) in a thread while the pipeline runs.

    This process needs them only at the end, to read the run's summary back, and
    meanwhile waits on one task process at a time with a core to spare: importing
    them here first cost ~2.5 s before the first task could start. The thread only
    imports; the open-run task is the first to touch the tracking store (a fresh
    sqlite file must be migrated by one process only).
    """

    def work() -> None:
        import components.registry.tracking  # noqa: F401 - mlflow, the client

        if tracking_uri.startswith("sqlite:"):
            import mlflow.store.model_registry.sqlalchemy_store
            import mlflow.store.tracking.sqlalchemy_store  # noqa: F401

    thread = threading.Thread(target=work, name="import-mlflow", daemon=True)
    thread.start()
    return thread


def window_arguments(data: TrainingData) -> dict[str, str]:
    """``train_start`` .. ``val_end`` as the pipeline takes them: full ISO date-times, empty for a month."""
    arguments: dict[str, str] = {}
    for side in (data.train, data.val):
        bounds = side.span.to_dict() if side.is_window else {"start": "", "end": ""}
        arguments.update({f"{side.side}_{key}": value for key, value in bounds.items()})
    return arguments


def pipeline_arguments(settings: Settings, request: RunRequest, run_name: str) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "color": request.color,
        "train_month": request.train_month,
        "val_month": request.val_month,
        **window_arguments(request.training_data()),
        "allow_missing_months": request.allow_missing_months,
        "min_improvement": request.min_improvement,
        "tracking_uri": settings.tracking_uri,
        "experiment": settings.experiment,
        "artifact_location": settings.artifact_location,
        "model_name": settings.model_name,
        "run_name": run_name,
        "data_dir": str(Path(request.data_dir).resolve()) if request.data_dir else "",
        "s3_uri": request.s3_uri or "",
        "cache_dir": str(settings.cache_dir),
        "tlc_base_url": settings.tlc_base_url,
        "min_rows": request.min_rows,
        "deployment_state_path": str(settings.deployment_state_path) if request.deploy else "",
        "canary_percent": request.canary_percent,
    }
    if request.candidates is not None:
        arguments["candidates"] = local_candidates(request.candidates)
    return arguments


# kfp.local (2.17) runs at most two iterations of a dsl.ParallelFor at a time, in list order.
LOCAL_PARALLEL_TASKS = 2


def local_candidates(
    candidates: Sequence[Mapping[str, Any]], cpu_count: int | None = None
) -> list[dict[str, Any]]:
    """The candidates as this machine trains them: costliest fit first, each booster on its share of cores.

    Order: starting the slowest fit first lets the quick ones share the other slot
    instead of leaving it idle at the end (evaluation ranks by RMSE, so the order
    shows nowhere else). Threads: two tasks share the machine, so a candidate with
    an ``n_jobs`` parameter the user did not set gets ``cores // 2`` threads. On 2
    cores that is one: a single-threaded xgboost fit takes 18.6 s of CPU against
    24.5 s with two threads that keep waiting on each other while the other task
    runs (the model is bit for bit the same; XGBoost's hist method does not depend
    on the thread count). The candidate's own default (2) is for a task that has a
    pod to itself.
    """
    from components.models.candidates import CANDIDATES

    threads = max(1, (cpu_count or os.cpu_count() or 1) // LOCAL_PARALLEL_TASKS)

    def cost(candidate: Mapping[str, Any]) -> float:
        spec = CANDIDATES.get(str(candidate.get("name")))
        return spec.relative_cost if spec is not None else 1.0

    out = []
    for candidate in sorted(candidates, key=cost, reverse=True):
        spec = CANDIDATES.get(str(candidate.get("name")))
        params = dict(candidate.get("params") or {})
        if spec is not None and "n_jobs" in spec.defaults:
            params.setdefault("n_jobs", threads)
        out.append({**candidate, "params": params})
    return out


def run_pipeline_locally(
    settings: Settings,
    request: RunRequest,
    progress: Callable[[str], None] = print,
    verbose: bool = False,
) -> dict[str, Any]:
    """Run the pipeline end to end; returns the summary (see ``build_summary``).

    Raises ``PipelineRunError`` naming the failed step and its error; the full
    KFP log stays in ``settings.log_dir``.
    """
    from kfp import local

    from pipelines.training_pipeline import training_pipeline

    # Windows that cannot be right are refused before anything starts (each ingest task checks too).
    data = request.training_data()
    prepare_state_dir(settings)
    # Before this run opens its own: a run killed earlier must not stay RUNNING, and its
    # half-registered version must not become the champion this run's gate compares against.
    recover_killed_runs(settings, progress)
    tracking_imports = import_tracking_in_background(settings.tracking_uri)
    # The candidates train in parallel subprocesses (they inherit this environment), each
    # with its own OpenMP pool. OpenMP's default wait policy spins at every barrier, so two
    # boosters sharing two cores spend most of their time spinning against each other:
    # measured on green 2021-01, 188 s instead of 2.2 s for target_encoded_xgboost and
    # 203 s instead of 31 s for xgboost. Waiting threads that sleep avoid that.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    run_name = f"local-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    log_path = settings.log_dir / f"{run_name}.log"
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(settings.pipeline_root),
        raise_on_error=True,
    )
    progress(f"pipeline run {run_name} (log: {log_path})")
    with (
        open(log_path, "w", encoding="utf-8") as log_file,
        _captured_output(log_file, progress, verbose) as tee,
    ):
        try:
            training_pipeline(**pipeline_arguments(settings, request, run_name))
        except RuntimeError as exc:
            step = tee.failed_step or "pipeline"
            detail = tee.step_error or _ANSI.sub("", str(exc))
            raise PipelineRunError(f"step {step} failed: {detail} (full log: {log_path})") from None
    tracking_imports.join()  # whatever it failed to import, the summary's own imports raise
    return build_summary(settings, run_name, tee.clock.seconds, log_path, data=data, color=request.color)


@contextlib.contextmanager
def _captured_output(
    log_file: TextIO, progress: Callable[[str], None], verbose: bool
) -> Iterator[_ProgressTee]:
    import sys

    terminal = sys.stdout
    tee = _ProgressTee(log_file, progress, terminal)
    _OUTPUT_ROUTER.target = _Both(tee, terminal) if verbose else tee  # type: ignore[assignment]
    with warnings.catch_warnings():
        # kfp warns that our image name is "not a Python image": here it is this very interpreter.
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        # Display names are for the KFP UI; the local runner says it ignores them, on every task.
        warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
        with contextlib.redirect_stdout(_OUTPUT_ROUTER), contextlib.redirect_stderr(_OUTPUT_ROUTER):
            try:
                yield tee
            finally:
                tee.detach()
                _OUTPUT_ROUTER.target = None


class _Router(io.TextIOBase):
    """The one stream KFP ever sees as stdout/stderr, forwarding to the current run's tee.

    KFP's local logger keeps the stream it found at its first run; in a process
    that runs the pipeline more than once (tests, notebooks) that must still
    reach the current run's log, not a closed one.
    """

    def __init__(self) -> None:
        self.target: TextIO | None = None

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        target = self.target
        return target.write(text) if target is not None else len(text)

    def flush(self) -> None:
        if self.target is not None:
            self.target.flush()


_OUTPUT_ROUTER = _Router()


class _Both(io.TextIOBase):
    def __init__(self, first: TextIO, second: TextIO) -> None:
        self._streams = (first, second)

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        for stream in self._streams:
            stream.write(text)
        return len(text)


def build_summary(
    settings: Settings,
    run_name: str,
    step_seconds: Mapping[str, float],
    log_path: Path,
    *,
    data: TrainingData | None = None,
    color: str = "green",
) -> dict[str, Any]:
    """The run summary, read back from the MLflow parent run the pipeline wrote it to.

    With ``data`` (what the run was asked to read) it holds ``data``: per side the month
    (or null for a window), the ``start``/``end`` actually read and the rows kept, as the
    candidates' runs recorded them.
    """
    # MLflow announces its sqlite schema migrations at INFO; that is not news to a user.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from components.registry.tracking import (
        DEPLOYMENT_TAG,
        PIPELINE_RUN_TAG,
        SUMMARY_ARTIFACT,
        client_for,
        find_pipeline_run,
    )

    run_id = find_pipeline_run(settings.tracking_uri, settings.experiment, PIPELINE_RUN_TAG, run_name)
    if run_id is None:
        raise PipelineRunError(f"pipeline finished but MLflow has no run tagged {run_name!r}")
    client = client_for(settings.tracking_uri)
    local_file = client.download_artifacts(run_id, SUMMARY_ARTIFACT)
    recorded = json.loads(Path(local_file).read_text(encoding="utf-8"))
    deployment = client.get_run(run_id).data.tags.get(DEPLOYMENT_TAG, "")
    gate = recorded["gate"]
    registration = recorded["registration"]
    return {
        "candidates": [
            {
                "name": row["name"],
                "rmse": row["rmse"],
                "mae": row["mae"],
                "train_seconds": row["train_seconds"],
            }
            for row in recorded["candidates"]
        ],
        "winner": recorded["winner"],
        "gate": {
            "passed": gate["passed"],
            "champion_rmse": gate["champion_rmse"],
            "challenger_rmse": gate["challenger_rmse"],
            "champion_version": gate["champion_version"],
            "reason": gate["reason"],
        },
        "model_name": registration["model_name"],
        "model_version": registration["model_version"],
        "alias": registration["alias"],
        "deployment": deployment,
        **({"data": _data_used(client, run_id, data, color)} if data is not None else {}),
        "step_seconds": dict(step_seconds),
        "mlflow_run_id": run_id,
        "run_name": run_name,
        "log_file": str(log_path),
    }


def _data_used(client: Any, run_id: str, data: TrainingData, color: str) -> dict[str, Any]:
    """Each side's span and rows kept, from the lineage params of one candidate's run (``steps/train.py``)."""
    experiment_id = client.get_run(run_id).info.experiment_id
    children = client.search_runs(
        [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'", max_results=1
    )
    params = children[0].data.params if children else {}
    used: dict[str, Any] = {"color": color}
    for side in (data.train, data.val):
        key = f"data.{side.side}.rows" if side.is_window else f"data.{color}.{side.month}.rows"
        rows = params.get(key)
        used[side.side] = {**side.to_dict(), "rows": int(rows) if rows is not None else None}
    return used
