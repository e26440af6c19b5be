"""The local stand-in for the KServe controller: predictor processes follow the deployment state file.

``taxi-mlops serve`` runs this. Like a Kubernetes controller it compares the
desired state (``serving.deployment_state``) with what is running and closes
the gap, in an order that never drops traffic:

1. for every revision in the desired state (champion, canary) make sure a
   predictor process is running and READY (its model answers
   ``/v2/models/<name>/ready``), starting new ones side by side with the old;
2. only when all of them are ready, switch the splitter's routing table in one
   step (``TrafficSplitter.apply_routes``);
3. then drain and stop the processes no longer referenced.

If a revision fails to start (exits, or is not ready in time) the failure is
reported - with the tail of its log - and the old routing stays; the
controller retries later or as soon as the state file changes. Promoting a
canary reuses its process: only the labels move.

One controller thread owns the processes: it polls the state file every
``poll_interval`` seconds (so ``taxi-mlops deploy/promote/rollback`` from
another terminal take effect without a restart), restarts predictors that
died, and runs every reconcile, including the ones ``reconcile()`` asks for.
Children are started in their own process group, with ``PR_SET_PDEATHSIG``
on Linux, so neither Ctrl-C nor a killed supervisor leaves orphans behind.

For a local Prometheus (``taxi-mlops observe``) the stack writes
``prometheus-targets.json`` beside the state file on every reconcile: a
Prometheus ``file_sd`` list of the splitter and every routed predictor
(``role``, ``revision``, ``model_version`` labels), replaced atomically, so
Prometheus follows champion and canary changes without a restart. A clean stop
empties it; a killed stack leaves its targets listed, and down.
The splitter's ``/metrics`` also serves the newest monitor verdict's gauges
from ``<state dir>/monitor`` (``components.monitoring.verdict_metrics``), the canary
judge's decisions beside it, and the autopilot's state from the folder the loop keeps in
the state dir itself, one level up (``components.retraining.loop_metrics``).
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from components.errors import TaxiMlopsError
from components.names import (
    AUTOPILOT_DIR_NAME,
    CANARY_DIR_NAME,
    MONITOR_DIR_NAME,
    PREDICTION_LOG_DIR_NAME,
    SERVED_MODEL_NAME,
)
from components.storage.atomic_write import write_atomically
from serving.deployment_state import DeploymentState, Revision, load_state
from serving.traffic_splitter import RoutingTable, SplitterServer, TrafficSplitter

#: Beside the state file: the Prometheus file_sd targets of the running stack.
PROMETHEUS_TARGETS_FILE = "prometheus-targets.json"

#: Where the splitter reaches predictors, whatever address the splitter itself listens on.
PREDICTOR_HOST = "127.0.0.1"

PredictorCommand = Callable[[Revision, int], Sequence[str]]
Progress = Callable[[str], None]

log = logging.getLogger(__name__)
_UNSEEN = (-1, -1, -1)  # differs from every file signature, and from "no file" (None)

# Runs between fork and the predictor: ask the kernel to SIGTERM us when the supervisor
# thread that started us dies, then become the predictor (exec keeps the pid and the setting).
_PDEATHSIG_EXEC = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None).prctl(1, int(signal.SIGTERM))\n"  # 1 = PR_SET_PDEATHSIG
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(0)\n"  # the supervisor died before prctl: nobody needs us
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def orphan_proof(command: Sequence[str]) -> list[str]:
    """``command``, made to get SIGTERM when the thread that started it dies (Linux; unchanged elsewhere)."""
    if not sys.platform.startswith("linux"):
        return list(command)
    return [sys.executable, "-c", _PDEATHSIG_EXEC, str(os.getpid()), *command]


def stop_process_group(process: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM ``process``'s group (a child started with ``start_new_session``), SIGKILL after ``grace`` s."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if process.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(wait)
    # The group may still hold children of the process (extra KServe workers).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def kserve_predictor_command(
    revision: Revision,
    port: int,
    *,
    model_name: str = SERVED_MODEL_NAME,
    python: str = sys.executable,
    prediction_log_dir: Path | None = None,
) -> list[str]:
    """The contract command of ``python -m serving`` (see ``serving/__main__.py``) for one revision."""
    log_args = ["--prediction-log-dir", str(prediction_log_dir)] if prediction_log_dir is not None else []
    return [
        python,
        "-m",
        "serving",
        "--model_name",
        model_name,
        "--model-uri",
        revision.model_uri,
        "--model-sha256",
        revision.sha256,
        "--model-version",
        revision.model_version,
        "--http_port",
        str(port),
        # Only the splitter is meant to be reachable; the container keeps the default 0.0.0.0.
        "--bind-host",
        PREDICTOR_HOST,
        *log_args,
    ]


class LocalStackError(TaxiMlopsError):
    """The local stack cannot start (e.g. its port is taken)."""


@dataclass(frozen=True)
class ReconcileReport:
    """What one reconcile did; ``ok`` is false when the old routing had to stay."""

    ok: bool
    desired_generation: int
    routed_generation: int
    message: str
    started: tuple[str, ...] = ()
    stopped: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    # Why the state file could not be read (names the file); "" when it could. Kept apart from
    # ``message`` so `taxi-mlops status` can tell a broken state file from a failed predictor.
    state_error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "desired_generation": self.desired_generation,
            "routed_generation": self.routed_generation,
            "message": self.message,
            "started": list(self.started),
            "stopped": list(self.stopped),
            "failed": list(self.failed),
            "state_error": self.state_error,
        }


def answers_200(host: str, port: int, path: str, timeout: float = 1.0) -> bool:
    """Whether ``GET path`` on host:port answers 200 now (a readiness probe; any failure is "no")."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", path)
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def log_tail(path: Path, lines: int = 15) -> str:
    """The last non-blank ``lines`` of a child's log, for the error that says why it did not start."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    tail = [line for line in text.splitlines() if line.strip()][-lines:]
    return "\n".join(tail) or "(empty log)"


@dataclass(eq=False)
class PredictorProcess:
    """One running predictor: which revision, where it listens, its process and log file."""

    revision: Revision
    host: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    started_at: float = field(default_factory=time.monotonic)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def name(self) -> str:
        return f"version {self.revision.model_version} (pid {self.process.pid}, port {self.port})"

    def alive(self) -> bool:
        return self.process.poll() is None

    def ready(self, model_name: str) -> bool:
        """KServe's model readiness: 200 from ``/v2/models/<name>/ready`` once the model is loaded."""
        return answers_200(self.host, self.port, f"/v2/models/{model_name}/ready")

    def log_tail(self, lines: int = 15) -> str:
        return log_tail(self.log_path, lines)

    def stop(self, grace: float) -> None:
        """SIGTERM the process group (KServe shuts down gracefully), SIGKILL after ``grace`` seconds."""
        stop_process_group(self.process, grace)


class LocalStack:
    """Traffic splitter + predictor processes kept in line with the deployment state file.

    ``start()`` serves the splitter on ``host:port`` (0 picks a free port; see
    ``url``) and runs the first reconcile; ``reconcile()`` runs one now and
    returns its report; ``stop()`` stops the splitter, then every predictor.
    ``predictor_ports`` is a pool to take predictor ports from (default: free
    ephemeral ports); ``predictor_command`` builds a predictor's argv.
    """

    def __init__(
        self,
        state_path: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        port: int = 8080,
        predictor_ports: Sequence[int] | None = None,
        predictor_command: PredictorCommand = kserve_predictor_command,
        model_name: str = SERVED_MODEL_NAME,
        ready_timeout: float = 120.0,
        drain_timeout: float = 10.0,
        stop_grace: float = 10.0,
        poll_interval: float = 0.5,
        retry_interval: float = 15.0,
        log_dir: str | os.PathLike[str] | None = None,
        seed: int | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.state_path = Path(state_path)
        self.host = host
        self.predictor_ports = tuple(predictor_ports) if predictor_ports else None
        if predictor_command is kserve_predictor_command:
            # Champion and canary log into one folder beside the state file (segment names carry the pid).
            predictor_command = functools.partial(
                kserve_predictor_command, prediction_log_dir=self.state_path.parent / PREDICTION_LOG_DIR_NAME
            )
        self.predictor_command = predictor_command
        self.model_name = model_name
        self.ready_timeout = ready_timeout
        self.drain_timeout = drain_timeout
        self.stop_grace = stop_grace
        self.poll_interval = poll_interval
        self.retry_interval = retry_interval
        self.log_dir = Path(log_dir) if log_dir else self.state_path.parent / "predictor-logs"
        self._progress = progress or log.info
        self.targets_path = self.state_path.parent / PROMETHEUS_TARGETS_FILE
        self.splitter = TrafficSplitter(
            seed=seed,
            monitor_dir=self.state_path.parent / MONITOR_DIR_NAME,
            canary_dir=self.state_path.parent / CANARY_DIR_NAME,
            # <state_dir>/deployment/state.json -> <state_dir>/autopilot (Settings.state_dir, as the loop).
            autopilot_dir=self.state_path.parent.parent / AUTOPILOT_DIR_NAME,
        )
        self._server = SplitterServer(self.splitter, host, port)
        self._processes: dict[Revision, PredictorProcess] = {}
        self._requests: queue.Queue[Future[ReconcileReport] | None] = queue.Queue()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._file_signature: tuple[int, int, int] | None = _UNSEEN
        self._routed_state: DeploymentState | None = None
        self._failed_at: float | None = None
        self.last_report: ReconcileReport | None = None

    # ------------------------------------------------------------------ public API

    @property
    def url(self) -> str:
        """Where clients send predictions (the splitter)."""
        return self._server.url

    def start(self, wait: bool = True) -> ReconcileReport | None:
        """Serve the splitter, start the controller thread and run the first reconcile.

        ``wait=False`` returns at once (the CLI, so Ctrl-C works while models load).
        """
        if self._thread is not None:
            raise LocalStackError("the local stack is already running")
        try:
            self._server.start()
        except (OSError, RuntimeError) as exc:
            raise LocalStackError(str(exc)) from exc
        self._stopping.clear()
        self._write_targets()  # the splitter, before any predictor is routed
        self._file_signature = _UNSEEN  # whatever the file says, the first poll reconciles
        self._thread = threading.Thread(target=self._control_loop, name="local-stack-controller", daemon=True)
        self._thread.start()
        self._progress(f"traffic splitter listening on {self.url}; deployment state {self.state_path}")
        return self.reconcile() if wait else None

    def reconcile(self, timeout: float | None = None) -> ReconcileReport:
        """Reconcile now (on the controller thread, which owns the processes) and return the report."""
        if self._thread is None or not self._thread.is_alive():
            raise LocalStackError("the local stack is not running; call start() first")
        request: Future[ReconcileReport] = Future()
        self._requests.put(request)
        return request.result(timeout)

    def stop(self) -> None:
        """Stop taking requests, then stop every predictor process. Safe to call twice."""
        self._server.stop()
        self._stopping.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            self._requests.put(None)  # wake the controller up
            thread.join(self.stop_grace + self.drain_timeout + 30.0)
        self._stop_all()  # normally already done by the controller on its way out
        self._write_targets(stopped=True)

    def predictors(self) -> list[dict[str, Any]]:
        """The running predictor processes (for status and tests)."""
        return [
            {
                "model_version": p.revision.model_version,
                "pid": p.process.pid,
                "port": p.port,
                "url": p.url,
                "alive": p.alive(),
                "log": str(p.log_path),
            }
            for p in list(self._processes.values())
        ]

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ controller thread

    def _control_loop(self) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    request = self._requests.get(timeout=self.poll_interval)
                except queue.Empty:
                    request = None
                if self._stopping.is_set():
                    if request is not None:
                        request.set_exception(LocalStackError("the local stack is stopping"))
                    break
                if request is not None:
                    self._answer(request)
                elif self._needs_reconcile():
                    self._reconcile_safely()
        finally:
            # Children die with the thread that started them (PDEATHSIG): stop them here, in order.
            self._stop_all()
            while not self._requests.empty():
                pending = self._requests.get_nowait()
                if pending is not None:
                    pending.set_exception(LocalStackError("the local stack stopped"))

    def _answer(self, request: Future[ReconcileReport]) -> None:
        try:
            request.set_result(self._reconcile_safely())
        except BaseException as exc:  # the caller gets the error instead of waiting forever
            request.set_exception(exc)

    def _needs_reconcile(self) -> bool:
        signature = self._signature()
        if signature != self._file_signature:
            return True
        if any(not p.alive() for p in self._processes.values()):
            return True
        return self._failed_at is not None and time.monotonic() - self._failed_at >= self.retry_interval

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            stat = self.state_path.stat()
        except FileNotFoundError:
            return None
        return (stat.st_ino, stat.st_mtime_ns, stat.st_size)

    def _reconcile_safely(self) -> ReconcileReport:
        try:
            report = self._reconcile()
        except Exception as exc:  # a bug or a surprise must not kill the controller
            log.exception("reconcile failed")
            report = self._failure(-1, f"reconcile failed unexpectedly: {exc!r}", ())
        self.last_report = report
        self.splitter.set_supervisor_report({**report.to_dict(), "predictors": self.predictors()})
        self._write_targets()
        return report

    def prometheus_targets(self) -> list[dict[str, Any]]:
        """The file_sd groups of what is routed now: the splitter, then each routed predictor."""
        splitter = _scrape_address(self._server.host, self._server.port)
        groups: list[dict[str, Any]] = [{"targets": [splitter], "labels": {"role": "splitter"}}]
        for route in self.splitter.routes.routes():
            groups.append(
                {
                    "targets": [route.url.removeprefix("http://")],
                    "labels": {
                        "role": "predictor",
                        "revision": route.role,
                        "model_version": route.revision.model_version,
                    },
                }
            )
        return groups

    def _write_targets(self, stopped: bool = False) -> None:
        """Replace the targets file (empty once stopped); a failure is logged, never fatal to serving."""
        groups = [] if stopped else self.prometheus_targets()
        try:
            write_atomically(self.targets_path, json.dumps(groups, indent=2) + "\n")
        except OSError as exc:
            log.warning("cannot write the Prometheus targets file %s: %s", self.targets_path, exc)

    def _reconcile(self) -> ReconcileReport:
        self._file_signature = self._signature()
        try:
            desired = load_state(self.state_path)
        except TaxiMlopsError as exc:
            report = self._failure(
                -1, f"cannot read the deployment state, keeping the current routes: {exc}", ()
            )
            return replace(report, state_error=str(exc))
        wanted = [r for r in (desired.champion, desired.canary) if r is not None]
        for revision, process in list(self._processes.items()):
            if not process.alive():
                self._progress(
                    f"predictor {process.name} exited with status {process.process.returncode}; "
                    f"last log lines:\n{process.log_tail()}"
                )
                del self._processes[revision]
        new: list[PredictorProcess] = []
        failures: list[str] = []
        for revision in wanted:
            if revision not in self._processes:
                try:
                    process = self._launch(revision)
                except (OSError, LocalStackError) as exc:
                    failures.append(f"version {revision.model_version}: cannot start ({exc})")
                    continue
                self._processes[revision] = process
                new.append(process)
        not_ready, problems = self._wait_ready(new, wanted)
        failures += problems
        for process in not_ready:
            del self._processes[process.revision]
            process.stop(self.stop_grace)
        if failures:
            # Predictors that did become ready stay up: a retry reuses them, the next
            # successful reconcile retires them if the state no longer wants them.
            return self._failure(desired.generation, "; ".join(failures), tuple(failures))
        routes = RoutingTable.from_state(desired, lambda revision: self._processes[revision].url)
        changed = desired != self._routed_state or routes != self.splitter.routes
        self.splitter.apply_routes(routes)
        self._routed_state = desired
        self._failed_at = None
        stopped = self._retire([p for r, p in self._processes.items() if r not in wanted])
        started = tuple(p.name for p in new)
        if changed or started or stopped:
            message = f"routing {desired.describe()}"
            self._progress(message)
        else:
            message = f"up to date: {desired.describe()}"
        return ReconcileReport(True, desired.generation, routes.generation, message, started, stopped)

    def _failure(self, desired_generation: int, message: str, failed: tuple[str, ...]) -> ReconcileReport:
        self._failed_at = time.monotonic()
        routed = self.splitter.routes.generation
        self._progress(f"NOT applied (routing stays at generation {routed}): {message}")
        return ReconcileReport(False, desired_generation, routed, message, failed=failed)

    def _launch(self, revision: Revision) -> PredictorProcess:
        port = self._free_port()
        command = list(self.predictor_command(revision, port))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"predictor-v{revision.model_version}-{port}.log"
        with open(log_path, "ab") as log_file:
            process = subprocess.Popen(
                orphan_proof(command),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: we stop it (and its workers) ourselves
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        predictor = PredictorProcess(revision, PREDICTOR_HOST, port, process, log_path)
        self._progress(f"starting predictor {predictor.name}; log {log_path}")
        return predictor

    def _free_port(self) -> int:
        """A port from the pool (or an ephemeral one) that no predictor of ours holds and nobody listens on.

        A predictor binds its port seconds after we choose it, so "free now" is
        all we can know; the ``taken`` check keeps two starts of one reconcile apart.
        """
        taken = {p.port for p in self._processes.values()}
        pool = self.predictor_ports
        candidates: Iterable[int] = [p for p in pool if p not in taken] if pool else [0] * 20
        for port in candidates:
            with socket.socket() as probe:
                try:
                    # KServe listens on all interfaces, so the port must be free on all of them.
                    probe.bind(("", port))
                except OSError:
                    continue
                chosen = probe.getsockname()[1]
            if chosen not in taken:
                return chosen
        raise LocalStackError(f"no free predictor port among {list(pool or ())}")

    def _wait_ready(
        self, pending: list[PredictorProcess], wanted: list[Revision]
    ) -> tuple[list[PredictorProcess], list[str]]:
        """Wait (bounded) until every new predictor is ready: the ones that are not, and why."""
        failures: list[str] = []
        not_ready: list[PredictorProcess] = []
        waiting = list(pending)
        deadline = time.monotonic() + self.ready_timeout
        while waiting:
            for process in list(waiting):
                if not process.alive():
                    failures.append(
                        f"predictor {process.name} exited with status {process.process.returncode} "
                        f"before it was ready; last log lines:\n{process.log_tail()}"
                    )
                    waiting.remove(process)
                    not_ready.append(process)
                elif process.ready(self.model_name):
                    self._progress(
                        f"predictor {process.name} ready after {time.monotonic() - process.started_at:.1f} s"
                    )
                    waiting.remove(process)
            if not waiting:
                break
            if self._stopping.is_set():
                failures.append("the local stack is stopping")
                break
            if self._superseded(wanted):
                failures.append("the deployment state changed while predictors were starting")
                self._file_signature = _UNSEEN  # reconcile again on the next poll
                break
            if time.monotonic() > deadline:
                failures += [
                    f"predictor {p.name} not ready after {self.ready_timeout:g} s; last log lines:\n"
                    f"{p.log_tail()}"
                    for p in waiting
                ]
                break
            time.sleep(0.1)
        return not_ready + waiting, failures

    def _superseded(self, wanted: list[Revision]) -> bool:
        """True when the state file now wants other revisions than the ones being started."""
        if self._signature() == self._file_signature:
            return False
        try:
            latest = load_state(self.state_path)
        except TaxiMlopsError:
            return False
        return [r for r in (latest.champion, latest.canary) if r is not None] != wanted

    def _retire(self, processes: list[PredictorProcess]) -> tuple[str, ...]:
        """Let requests already sent to them finish (bounded), then stop them."""
        deadline = time.monotonic() + self.drain_timeout
        while any(self.splitter.in_flight(p.url) for p in processes) and time.monotonic() < deadline:
            time.sleep(0.02)
        for process in processes:
            self._processes.pop(process.revision, None)
            process.stop(self.stop_grace)
            self._progress(f"stopped predictor {process.name}")
        return tuple(p.name for p in processes)

    def _stop_all(self) -> None:
        processes = list(self._processes.values())
        self._processes.clear()
        for process in processes:
            process.stop(self.stop_grace)
            self._progress(f"stopped predictor {process.name}")


def _scrape_address(host: str, port: int) -> str:
    """Where a local scraper reaches a server listening on ``host`` (any-address means loopback)."""
    if host in ("", "0.0.0.0"):
        host = PREDICTOR_HOST
    elif host == "::":
        host = "::1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def run_local_stack(
    state_path: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int = 8080,
    predictor_ports: Sequence[int] | None = None,
    *,
    predictor_command: PredictorCommand = kserve_predictor_command,
    model_name: str = SERVED_MODEL_NAME,
    ready_timeout: float = 120.0,
    poll_interval: float = 0.5,
    log_dir: str | os.PathLike[str] | None = None,
    progress: Progress = print,
) -> None:
    """``taxi-mlops serve``: run the local stack until SIGINT or SIGTERM, then shut it down cleanly."""
    stop_requested = threading.Event()
    received: list[str] = []

    def request_stop(signum: int, _frame: object) -> None:
        received.append(signal.Signals(signum).name)
        stop_requested.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    stack = LocalStack(
        state_path,
        host=host,
        port=port,
        predictor_ports=predictor_ports,
        predictor_command=predictor_command,
        model_name=model_name,
        ready_timeout=ready_timeout,
        poll_interval=poll_interval,
        log_dir=log_dir,
        progress=progress,
    )
    try:
        stack.start(wait=False)
        progress(f"serving on {stack.url} (v1: {stack.url}/v1/models/{model_name}:predict); Ctrl-C stops")
        while not stop_requested.wait(1.0):
            pass
        progress(f"{received[0] if received else 'stop'} received: stopping the local stack")
    finally:
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    progress("local stack stopped")
