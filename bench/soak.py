"""Soak: the local serving stack under a steady open-loop load for minutes, with faults injected.

Not a test. In one run on this machine it

1. trains two revisions of one candidate (default ``target_encoded_xgboost``, the
   production winner) on green 2021-01, validated on 2021-02 from ``--data-dir``
   (generated TLC-like files from ``tests/support/tlc_fixtures`` when the real
   ones are absent): two fits with different seeds (``random_state``; ``alpha``
   for models without one), saved as two model files, so they are two versions
   with distinct answers. Real validation rides become the request bodies, and
   each model's own minutes for every ride are kept to check the answers;
2. writes a deployment state (``serving.deployment_state``: champion v1, canary
   v2 at ``--canary-percent``) in a temporary state directory, registers both
   versions in that directory's own MLflow registry (sqlite; aliases champion and
   challenger, as ``serve`` checks them against the state file) and starts
   **``taxi-mlops serve --state-dir ...`` as a subprocess**: the real command line,
   the process a user runs, with the splitter and the supervisor in it and one
   ``python -m serving`` KServe predictor child per revision. An in-process
   ``LocalStack`` would share this script's interpreter, heap and GIL with the
   stack, so its RSS and latencies would not be the product's; a subprocess has
   its own, and its RSS (splitter + supervisor) and each predictor's RSS are
   read from /proc through psutil, every ``--rss-interval`` seconds;
3. drives it from a separate load-client process (asyncio + aiohttp, uvloop when
   present) in an **open loop** at ``--rate`` requests/s for ``--duration``
   seconds: requests leave on schedule whether or not earlier ones have answered
   (no coordinated omission), at most ``--max-inflight`` are outstanding (more
   are counted as *dropped*), each has ``--request-timeout``. Every 200 must
   carry the minutes the model named in its ``x-model-version`` header gives for
   that ride, else it counts as a *wrong answer*;
4. injects faults at their times (``--fault KIND[@SECONDS]``, repeatable):
   ``kill-canary`` / ``kill-champion`` = ``kill -9`` of that revision's predictor
   (its pid from the splitter's ``/status``, checked to be a child of the serve
   process), then waits for the supervisor to restart it and the splitter to
   route to it again; ``corrupt-state`` = overwrite the state file with garbage,
   check on every ``/status`` poll that the routing stays the last good one
   (generation, versions, percent), restore the file after ``--corrupt-seconds``
   and check the supervisor accepts it again;
5. prints, per ``--window`` (default one minute): requests, answers by status
   (errors: non-200, no answer, dropped, wrong answer), the canary's share,
   failovers, p50/p99/max latency, the client's send lag and the load average;
   then totals, RSS (MB) of every process at start / middle / end with the
   largest relative change, what each fault did, the splitter's ``/status`` at
   the end, and one verdict line against the goals: **0 errors** and **RSS flat
   within 5 %**. Misses are printed as misses.

RSS "start" is a process's first sample once it has served ``--warmup`` seconds
of load (allocator pools, connection buffers and caches fill in the first
seconds; that is not a leak); "idle" (before any load) is shown too. A predictor
restarted by a fault is a new process with its own start / middle / end.

    python bench/soak.py                 # acceptance: 10 min, 200 req/s, 20% canary, kill -9 canary at 300 s
    python bench/soak.py --quick         # 60 s, 10 s windows
    python bench/soak.py --duration 40 --rate 100 --fault kill-canary@15
    python bench/soak.py --fault kill-champion@200 --fault corrupt-state@400 --json-out soak.json
    python bench/soak.py --model-dir /tmp/soak-models    # keep the two models, reuse them next time

Traffic goes to 127.0.0.1 only. Every loop is bounded in count and time, and
every process this script starts (the client, ``taxi-mlops serve`` and, through
it, the predictors) is stopped on exit, on Ctrl-C and on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Shared with the serving benchmark (same directory): process handling, percentiles, the ride filter.
from bench_serving import (
    COLOR,
    DEFAULT_DATA_DIR,
    FIELDS,
    HOST,
    REPO,
    TRAIN_MONTH,
    VAL_MONTH,
    Processes,
    _child_env,
    _free_port,
    _GcPauses,
    _http,
    _log_tail,
    _percentile,
    _progress,
    _run_async,
    bench_months,
    sample_rides,
)

MODEL_FILE = "trip_duration_model.zip"
MODELS_INFO_FILE = "soak_models.json"
PREDICT_PATH = "/v1/models/duration:predict"
FAULT_KINDS = ("kill-canary", "kill-champion", "corrupt-state", "none")
VERSIONS = ("1", "2")  # v1 champion, v2 canary

GOAL_ERRORS = 0
GOAL_RSS_CHANGE = 0.05  # relative, any process, start -> middle and start -> end

MAX_DURATION_S = 6 * 3600.0
MAX_RATE = 5000.0
MAX_REQUESTS = 10_000_000
SERVE_READY_TIMEOUT_S = 300.0
CLIENT_START_TIMEOUT_S = 60.0
RECOVERY_TIMEOUT_S = 180.0  # a killed predictor must be back (restarted and routed) within this
BUILD_TIMEOUT_S = 1800.0
GARBAGE = b'\x00\xff{"format": "taxi-mlops/deployment-state", this is not JSON \x81\x82 garbage'
MB = 1024.0 * 1024.0
LAG_NOISY_MS = 10.0  # client send lag p99 above this: the client (so the machine) was starved of CPU


# ============================================================================ child: build
def _revision_overrides(candidate: str) -> list[dict[str, Any]]:
    """Hyperparameter overrides for v1 and v2: the defaults, then another seed (or alpha)."""
    from components.models.candidates import resolve_params

    defaults = resolve_params(candidate, {})
    if "random_state" in defaults:
        return [{}, {"random_state": int(defaults["random_state"]) + 1}]
    if "alpha" in defaults:
        return [{}, {"alpha": float(defaults["alpha"]) * 10.0}]
    return [{}, {}]  # no seed to vary (linear_regression): two files of the same fit


def child_build(spec: dict[str, Any]) -> None:
    """Fit two revisions, save them, sample request rides with each model's minutes; print RESULT."""
    import pandas as pd

    from components.data.ingest import load_month
    from components.features.design_matrix import vectorize_trips
    from components.models.train import fit_candidate

    out = Path(spec["model_dir"])
    data_dir, data_source = bench_months(spec, out)
    train, _ = load_month(COLOR, TRAIN_MONTH, data_dir=data_dir)
    val, _ = load_month(COLOR, VAL_MONTH, data_dir=data_dir)
    vectorizer, train_matrix, val_matrix = vectorize_trips(train, val)

    rides = sample_rides(val, spec["n_rides"], spec["seed"])
    frame = pd.DataFrame(rides, columns=list(FIELDS))

    revisions = []
    for version, overrides in zip(VERSIONS, _revision_overrides(spec["candidate"]), strict=True):
        started = time.perf_counter()
        model, scores = fit_candidate(spec["candidate"], overrides, vectorizer, train_matrix, val_matrix)
        folder = out / f"v{version}"
        sha256 = model.save(folder / MODEL_FILE)
        revisions.append(
            {
                "model_version": version,
                "model_uri": str(folder),
                "sha256": sha256,
                "overrides": overrides,
                "val_rmse": scores.rmse,
                "fit_s": time.perf_counter() - started,
                "expected_minutes": model.predict(frame).tolist(),
            }
        )
    info = {
        "candidate": spec["candidate"],
        "data_source": data_source,
        "train_rows": int(train_matrix.n_rows),
        "val_rows": int(val_matrix.n_rows),
        "n_rides_wanted": spec["n_rides"],
        "seed": spec["seed"],
        "rides": rides,
        "revisions": revisions,
    }
    (out / MODELS_INFO_FILE).write_text(json.dumps(info))
    print("RESULT " + json.dumps({"revisions": [r["sha256"] for r in revisions]}), flush=True)


# ============================================================================ child: register
def child_register(spec: dict[str, Any]) -> None:
    """Register v1 and v2 in the state directory's own MLflow registry, aliases as the state says.

    ``taxi-mlops serve`` brings the registry's aliases in line with the state file before it
    starts, so the versions the state names must exist there (as after ``taxi-mlops run`` +
    ``deploy``). The registry is a fresh sqlite file in the temporary state directory; the
    versions point at the model folders and carry their sha256, as registered ones do.
    """
    from components.registry.tracking import client_for
    from components.registry.versions import CHALLENGER, CHAMPION, SHA256_TAG
    from pipelines.settings import Settings

    settings = Settings.from_env(state_dir=spec["state_dir"])
    client = client_for(settings.tracking_uri)
    client.create_registered_model(settings.model_name)
    for rev, alias in zip(spec["revisions"], (CHAMPION, CHALLENGER), strict=True):
        version = client.create_model_version(
            settings.model_name, rev["model_uri"], tags={SHA256_TAG: rev["sha256"]}
        )
        if str(version.version) != rev["model_version"]:
            raise SystemExit(f"registry numbered it {version.version}, expected {rev['model_version']}")
        client.set_registered_model_alias(settings.model_name, alias, version.version)
    print("RESULT " + json.dumps({"tracking_uri": settings.tracking_uri, "model": settings.model_name}))


# ============================================================================ child: load client
class _Window:
    """What happened to the requests scheduled in one window of the run."""

    def __init__(self, index: int, start_s: float, end_s: float) -> None:
        self.index = index
        self.start_s = start_s
        self.end_s = end_s
        self.scheduled = 0
        self.finished = 0
        self.dropped = 0
        self.outcomes: Counter[str] = Counter()
        self.revisions: Counter[str] = Counter()
        self.failovers = 0
        self.latencies = array("d")
        self.lags = array("d")
        self.closed = False  # the schedule has moved past this window
        self.emitted = False

    def complete(self) -> bool:
        return self.closed and self.finished + self.dropped == self.scheduled

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        lags = sorted(self.lags)
        ok = self.outcomes.get("ok", 0)
        return {
            "index": self.index,
            "start_s": self.start_s,
            "end_s": self.end_s,
            "scheduled": self.scheduled,
            "ok": ok,
            "errors": self.scheduled - ok,
            "outcomes": dict(self.outcomes) | ({"dropped": self.dropped} if self.dropped else {}),
            "revisions": dict(self.revisions),
            "failovers": self.failovers,
            "ok_per_s": ok / (self.end_s - self.start_s) if self.end_s > self.start_s else None,
            "p50_ms": _ms(_percentile(lat, 0.50)),
            "p99_ms": _ms(_percentile(lat, 0.99)),
            "max_ms": _ms(lat[-1] if lat else None),
            "lag_p99_ms": _ms(_percentile(lags, 0.99)),
            "load1": os.getloadavg()[0],
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


async def _client_main(spec: dict[str, Any]) -> None:
    import aiohttp

    url = spec["url"]
    if not url.startswith(f"http://{HOST}:"):
        raise SystemExit(f"refusing to send traffic to {url}: only {HOST} is allowed")
    out = open(spec["out"], "a", encoding="utf-8")  # noqa: SIM115 - closed at the end of this function
    bodies = [json.dumps({"instances": [ride]}).encode() for ride in spec["rides"]]
    expected: dict[str, list[float]] = spec["expected"]
    headers = {"Content-Type": "application/json"}
    rate, duration, window_s = spec["rate"], spec["duration"], spec["window"]
    n_total = min(MAX_REQUESTS, max(1, round(rate * duration)))
    n_windows = max(1, math.ceil(duration / window_s - 1e-9))
    windows = [_Window(w, w * window_s, min(duration, (w + 1) * window_s)) for w in range(n_windows)]
    totals: Counter[str] = Counter()
    all_latencies = array("d")
    max_inflight = spec["max_inflight"]
    timeout = aiohttp.ClientTimeout(total=spec["request_timeout"])

    def write(kind: str, document: dict[str, Any]) -> None:
        out.write(f"{kind} {json.dumps(document)}\n")
        out.flush()

    def emit_if_complete(w: _Window) -> None:
        if not w.emitted and w.complete():
            w.emitted = True
            write("WINDOW", w.summary())
            w.latencies = array("d")  # free it: the totals keep their own copy
            w.lags = array("d")

    def finish(w: _Window, outcome: str, latency: float) -> None:
        # A failed request counts with the time it took to fail, so timeouts raise the percentiles.
        w.outcomes[outcome] += 1
        totals[outcome] += 1
        w.latencies.append(latency)
        all_latencies.append(latency)
        w.finished += 1
        emit_if_complete(w)

    async def one(session: aiohttp.ClientSession, i: int, w: _Window) -> None:
        ride = i % len(bodies)
        started = time.perf_counter()
        try:
            async with session.post(url, data=bodies[ride], headers=headers) as resp:
                raw = await resp.read()
                status = resp.status
                revision = resp.headers.get("x-taxi-revision", "?")
                version = resp.headers.get("x-model-version", "?")
                failover = resp.headers.get("x-taxi-failover-from")
        except TimeoutError:
            finish(w, "no answer (timeout)", time.perf_counter() - started)
            return
        except (aiohttp.ClientError, OSError) as exc:
            finish(w, f"no answer ({type(exc).__name__})", time.perf_counter() - started)
            return
        latency = time.perf_counter() - started
        w.revisions[revision] += 1
        if failover:
            w.failovers += 1
        if status != 200:
            finish(w, f"HTTP {status}", latency)
            return
        try:
            minutes = float(json.loads(raw)["predictions"][0])
            want = expected[version][ride]
            right = math.isclose(minutes, want, rel_tol=1e-9, abs_tol=1e-9)
        except (ValueError, KeyError, IndexError, TypeError):
            right = False
        finish(w, "ok" if right else "wrong answer", latency)

    pending: set[asyncio.Task[None]] = set()
    connector = aiohttp.TCPConnector(limit=max_inflight, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        # The startup heap (aiohttp, the bodies) is frozen: a full collection of it would stall
        # every request in flight. Every collection that still happens is timed.
        gc.collect()
        gc.freeze()
        pauses = _GcPauses()
        gc.callbacks.append(pauses)
        cpu_start = os.times()
        start_wall = time.time() + 0.05
        start = time.perf_counter() + 0.05
        write("START", {"epoch": start_wall, "n_total": n_total})
        current = 0
        for i in range(n_total):
            due = i / rate
            w_index = min(n_windows - 1, int(due // window_s))
            while current < w_index:  # the schedule left window `current`
                windows[current].closed = True
                emit_if_complete(windows[current])
                current += 1
            w = windows[w_index]
            delay = start + due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            w.lags.append(time.perf_counter() - start - due)
            w.scheduled += 1
            if len(pending) >= max_inflight:
                w.dropped += 1
                totals["dropped"] += 1
                continue
            task = asyncio.create_task(one(session, i, w))
            pending.add(task)
            task.add_done_callback(pending.discard)
        for w in windows:
            w.closed = True
            emit_if_complete(w)
        if pending:  # bounded drain: every request has its own timeout too
            _, late = await asyncio.wait(set(pending), timeout=spec["request_timeout"] + 5.0)
            for task in late:
                task.cancel()
            if late:
                await asyncio.gather(*late, return_exceptions=True)
        for w in windows:  # requests cancelled above never finished: count them as unanswered
            missing = w.scheduled - w.dropped - w.finished
            if missing > 0:
                w.outcomes["no answer (unfinished at the end)"] += missing
                totals["no answer (unfinished at the end)"] += missing
                w.finished += missing
            emit_if_complete(w)
        elapsed = time.perf_counter() - start
        cpu_end = os.times()
        gc.callbacks.remove(pauses)
    lat = sorted(all_latencies)
    client_cpu = (cpu_end.user + cpu_end.system) - (cpu_start.user + cpu_start.system)
    ok = totals.get("ok", 0)
    write(
        "RESULT",
        {
            "scheduled": n_total,
            "ok": ok,
            "errors": n_total - ok,
            "outcomes": dict(totals),
            "elapsed_s": elapsed,
            "ok_per_s": ok / elapsed if elapsed > 0 else None,
            "p50_ms": _ms(_percentile(lat, 0.50)),
            "p99_ms": _ms(_percentile(lat, 0.99)),
            "p999_ms": _ms(_percentile(lat, 0.999)),
            "max_ms": _ms(lat[-1] if lat else None),
            "client_cpu_s": client_cpu,
            "client_cpu_util": client_cpu / elapsed if elapsed > 0 else None,
            "client_gc_max_ms": pauses.longest * 1000.0,
            "client_gc_total_ms": pauses.total * 1000.0,
        },
    )
    out.close()


def child_client(spec: dict[str, Any]) -> None:
    _run_async(_client_main(spec))


# ============================================================================ parent: helpers
def _get_json(url: str, timeout: float = 3.0) -> dict[str, Any] | None:
    """GET a JSON document from the stack, or None when it does not answer (that is recorded)."""
    try:
        status, raw = _http("GET", url, timeout=timeout)
    except OSError:
        return None
    if status != 200:
        return None
    with contextlib.suppress(ValueError):
        return json.loads(raw)
    return None


def _routing(status: dict[str, Any]) -> dict[str, Any]:
    """What a request is routed by: generation, percent, the champion's and canary's versions."""
    return {
        "generation": status.get("generation"),
        "canary_percent": status.get("canary_percent"),
        "champion": (status.get("champion") or {}).get("model_version"),
        "canary": (status.get("canary") or {}).get("model_version"),
    }


def _predictor_pids(status: dict[str, Any]) -> dict[str, int]:
    """model_version -> pid of its live predictor, from the supervisor's last report."""
    return {
        str(p["model_version"]): int(p["pid"])
        for p in (status.get("supervisor") or {}).get("predictors", [])
        if p.get("alive")
    }


def _serve_command() -> list[str]:
    """The installed ``taxi-mlops`` console script next to this interpreter, else its module."""
    script = Path(sys.executable).with_name("taxi-mlops")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    found = shutil.which("taxi-mlops")
    return [found] if found else [sys.executable, "-m", "pipelines.cli"]


@dataclass
class ProcessTrack:
    """RSS samples of one process of the stack."""

    pid: int
    label: str
    first_seen_s: float
    samples: list[tuple[float, int]] = field(default_factory=list)
    gone_at_s: float | None = None
    killed_by_fault: bool = False
    killed_at_s: float | None = None


class Soak:
    """The parent: stack, faults and RSS samples on one time base (seconds since the load started)."""

    def __init__(self, args: argparse.Namespace, procs: Processes, scratch: Path) -> None:
        self.args = args
        self.procs = procs
        self.scratch = scratch
        self.state_dir = scratch / "state"
        self.state_path = self.state_dir / "deployment" / "state.json"
        self.serve: subprocess.Popen[Any] | None = None
        self.serve_log = scratch / "serve.log"
        self.url = ""
        self.t0: float | None = None  # time.monotonic() when the client's schedule began
        self.tracks: dict[int, ProcessTrack] = {}
        self.events: list[dict[str, Any]] = []
        self.status_misses = 0
        self.status_polls = 0
        self.last_status: dict[str, Any] | None = None
        self.versions_by_pid: dict[int, str] = {}
        self.known_pids: set[int] = set()  # every predictor pid this run saw under its serve process
        self.good_state: bytes | None = None
        self.registry: dict[str, Any] = {}

    def now(self) -> float:
        return -1.0 if self.t0 is None else time.monotonic() - self.t0

    def event(self, what: str, **details: Any) -> None:
        entry = {"t_s": round(self.now(), 2), "what": what, **details}
        self.events.append(entry)
        _progress(f"  [{entry['t_s']:7.1f} s] {what}")

    # ------------------------------------------------------------------ the stack
    def write_state(self, models: dict[str, Any]) -> None:
        from serving.deployment_state import Revision, deploy, update_state

        v1, v2 = (
            Revision(r["model_version"], r["model_uri"], r["sha256"]) for r in models["revisions"]
        )  # fmt: skip
        update_state(self.state_path, lambda s: deploy(s, v1, 0))
        update_state(self.state_path, lambda s: deploy(s, v2, self.args.canary_percent))
        self.good_state = self.state_path.read_bytes()
        spec_path = self.scratch / "register_spec.json"
        spec_path.write_text(json.dumps({"state_dir": str(self.state_dir), "revisions": models["revisions"]}))
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            "register",
            "--spec-file",
            str(spec_path),
        ]
        self.registry = self.procs.run(cmd, self.env(), 300.0, "registering the two versions")

    def env(self) -> dict[str, str]:
        """Children that touch the registry or serve: this run's state directory and its registry only."""
        env = _child_env({"PYTHONUNBUFFERED": "1"})
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "TAXI_MLOPS_STATE_DIR"):
            env.pop(name, None)
        return env

    def start_stack(self) -> float:
        port = _free_port()
        self.url = f"http://{HOST}:{port}"
        cmd = [
            *_serve_command(),
            "serve",
            "--host",
            HOST,
            "--port",
            str(port),
            "--state-dir",
            str(self.state_dir),
        ]
        _progress(f"stack: {' '.join(cmd)}")
        started = time.monotonic()
        self.serve = self.procs.start(cmd, self.serve_log, self.env())
        while time.monotonic() - started < SERVE_READY_TIMEOUT_S:
            if self.serve.poll() is not None:
                raise SystemExit(
                    f"taxi-mlops serve exited ({self.serve.returncode}):\n{_log_tail(self.serve_log)}"
                )
            status = _get_json(f"{self.url}/status", timeout=2.0)
            if status is not None and self._all_ready(status):
                self.last_status = status
                self._learn_pids(status)
                return time.monotonic() - started
            time.sleep(0.5)
        raise SystemExit(
            f"the stack was not ready within {SERVE_READY_TIMEOUT_S:.0f} s:\n{_log_tail(self.serve_log)}"
        )

    def _all_ready(self, status: dict[str, Any]) -> bool:
        supervisor = status.get("supervisor") or {}
        routing = _routing(status)
        pids = _predictor_pids(status)
        return bool(
            supervisor.get("ok")
            and routing["champion"] == "1"
            and routing["canary"] == "2"
            and routing["canary_percent"] == self.args.canary_percent
            and set(pids) == set(VERSIONS)
            and all((status.get(role) or {}).get("healthy") for role in ("champion", "canary"))
        )

    def _learn_pids(self, status: dict[str, Any]) -> None:
        for version, pid in _predictor_pids(status).items():
            self.versions_by_pid[pid] = version

    def check_answers(self, models: dict[str, Any], per_version: int = 5, limit: int = 400) -> dict[str, int]:
        """Before the soak: both revisions answer through the splitter with their model's own minutes."""
        rides = models["rides"]
        expected = {r["model_version"]: r["expected_minutes"] for r in models["revisions"]}
        seen: Counter[str] = Counter()
        for i in range(limit):
            ride = rides[i % len(rides)]
            body = json.dumps({"instances": [ride]}).encode()
            try:
                with urllib_open(urllib_request(f"{self.url}{PREDICT_PATH}", body)) as resp:
                    version = resp.headers.get("x-model-version")
                    minutes = float(json.loads(resp.read())["predictions"][0])
            except OSError as exc:  # urllib's HTTPError (non-2xx) is an OSError too
                raise SystemExit(f"the stack did not answer {ride} with 200: {exc}") from None
            if version not in expected:
                raise SystemExit(f"answer from unknown model version {version!r} (x-model-version)")
            want = expected[version][i % len(rides)]
            if not math.isclose(minutes, want, rel_tol=1e-9, abs_tol=1e-9):
                raise SystemExit(f"version {version} answered {minutes} for {ride}; its model says {want}")
            seen[version] += 1
            if all(seen[v] >= per_version for v in VERSIONS) or (
                self.args.canary_percent == 0 and seen["1"] >= per_version
            ):
                break
        return dict(seen)

    # ------------------------------------------------------------------ RSS
    def sample_rss(self) -> None:
        import psutil

        assert self.serve is not None
        t = self.now()
        try:
            root = psutil.Process(self.serve.pid)
            found = [(root, None)] + [(child, child.ppid()) for child in root.children(recursive=True)]
        except psutil.Error:
            return
        alive = set()
        for proc, ppid in found:
            try:
                rss = proc.memory_info().rss
            except psutil.Error:
                continue
            alive.add(proc.pid)
            track = self.tracks.get(proc.pid)
            if track is None:
                track = self.tracks[proc.pid] = ProcessTrack(proc.pid, "", t)
                if ppid == self.serve.pid:
                    self.known_pids.add(proc.pid)
            track.label = self._label(proc.pid, ppid)
            track.samples.append((t, rss))
        for track in self.tracks.values():
            if track.gone_at_s is None and track.pid not in alive:
                track.gone_at_s = t
                if not track.killed_by_fault:
                    self.event(f"process {track.label} (pid {track.pid}) is gone, not by a fault of this run")

    def _label(self, pid: int, ppid: int | None) -> str:
        assert self.serve is not None
        if pid == self.serve.pid:
            return "splitter+supervisor (taxi-mlops serve)"
        version = self.versions_by_pid.get(pid)
        if ppid == self.serve.pid:
            if version is None:
                return "predictor (version not yet reported)"
            routing = _routing(self.last_status or {})
            role = {routing["champion"]: "champion", routing["canary"]: "canary"}.get(version, "?")
            return f"predictor v{version} ({role})"
        parent = self.versions_by_pid.get(ppid or -1)
        return f"child of predictor v{parent}" if parent else f"child of pid {ppid}"

    # ------------------------------------------------------------------ status
    def poll_status(self) -> dict[str, Any] | None:
        self.status_polls += 1
        status = _get_json(f"{self.url}/status", timeout=3.0)
        if status is None:
            self.status_misses += 1
            self.event("GET /status: no answer from the splitter")
            return None
        previous = self.last_status
        self.last_status = status
        self._learn_pids(status)
        if previous is not None:
            for role in ("champion", "canary"):
                was = (previous.get(role) or {}).get("healthy")
                now = (status.get(role) or {}).get("healthy")
                if was != now:
                    self.event(f"splitter: {role} {'healthy' if now else 'UNHEALTHY (routed around)'}")
            if _routing(previous) != _routing(status):
                self.event(f"routing changed: {_routing(previous)} -> {_routing(status)}")
            if _predictor_pids(previous) != _predictor_pids(status):
                self.event(f"predictor pids: {_predictor_pids(previous)} -> {_predictor_pids(status)}")
            ok_before = (previous.get("supervisor") or {}).get("ok")
            ok_now = (status.get("supervisor") or {}).get("ok")
            if ok_before != ok_now:
                message = (status.get("supervisor") or {}).get("message", "")
                self.event(f"supervisor report ok={ok_now}: {message[:200]}")
        return status


def urllib_request(url: str, body: bytes) -> Any:
    import urllib.request

    assert url.startswith(f"http://{HOST}:")
    return urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})


def urllib_open(req: Any, timeout: float = 10.0) -> Any:
    import urllib.request

    return urllib.request.urlopen(req, timeout=timeout)


# ============================================================================ parent: faults
@dataclass
class Fault:
    kind: str
    at_s: float
    fired_at_s: float | None = None
    result: dict[str, Any] = field(default_factory=dict)
    done: bool = False  # nothing more to watch
    # kill: what was killed and what came back
    role: str = ""
    version: str = ""
    pid: int | None = None
    failovers_before: int = 0
    # corrupt-state: when to restore, what the routing must stay
    restore_at_s: float | None = None
    routing_before: dict[str, Any] | None = None
    polls_during: int = 0
    polls_changed: int = 0
    noticed_at_s: float | None = None
    restored_at_s: float | None = None

    @property
    def name(self) -> str:
        return f"{self.kind}@{self.at_s:g}"


def _role_failovers(status: dict[str, Any] | None, role: str) -> int:
    return sum(
        int(row.get("failovers", 0))
        for row in (status or {}).get("revisions", [])
        if row.get("revision") == role
    )


def fire(soak: Soak, fault: Fault) -> None:
    import psutil

    fault.fired_at_s = soak.now()
    status = soak.poll_status() or soak.last_status or {}
    if fault.kind.startswith("kill-"):
        fault.role = fault.kind.removeprefix("kill-")
        fault.version = str((status.get(fault.role) or {}).get("model_version") or "")
        pid = _predictor_pids(status).get(fault.version)
        assert soak.serve is not None
        if pid is None:
            fault.result = {"error": f"no live {fault.role} predictor in /status; nothing killed"}
            fault.done = True
            soak.event(f"fault {fault.name}: {fault.result['error']}")
            return
        try:  # only ever a process this run started: a child of our serve process
            if psutil.Process(pid).ppid() != soak.serve.pid:
                raise psutil.Error(f"pid {pid} is not a child of serve (pid {soak.serve.pid})")
        except psutil.Error as exc:
            fault.result = {"error": f"refusing to kill pid {pid}: {exc}"}
            fault.done = True
            soak.event(f"fault {fault.name}: {fault.result['error']}")
            return
        fault.pid = pid
        fault.failovers_before = _role_failovers(status, fault.role)
        if pid in soak.tracks:
            soak.tracks[pid].killed_by_fault = True
            soak.tracks[pid].killed_at_s = round(soak.now(), 1)
        os.kill(pid, signal.SIGKILL)
        soak.event(f"fault {fault.name}: kill -9 {fault.role} predictor v{fault.version} pid {pid}")
        return
    # corrupt-state
    fault.routing_before = _routing(status)
    fault.restore_at_s = fault.fired_at_s + soak.args.corrupt_seconds
    with open(soak.state_path, "wb") as handle:  # in place, as a bad editor or a full disk would
        handle.write(GARBAGE)
    soak.event(
        f"fault {fault.name}: state file overwritten with {len(GARBAGE)} bytes of garbage; "
        f"restoring it in {soak.args.corrupt_seconds:g} s"
    )


def watch(soak: Soak, fault: Fault, status: dict[str, Any] | None) -> None:
    """After a fault fired: follow the stack on each /status poll until the fault is over."""
    t = soak.now()
    if fault.done or fault.fired_at_s is None:
        return
    if fault.kind.startswith("kill-"):
        if status is None:
            return
        pid_now = _predictor_pids(status).get(fault.version)
        healthy = bool((status.get(fault.role) or {}).get("healthy"))
        if pid_now not in (None, fault.pid) and healthy:
            fault.result = {
                "killed_pid": fault.pid,
                "version": fault.version,
                "role": fault.role,
                "new_pid": pid_now,
                "recovered_after_s": round(t - fault.fired_at_s, 2),
                "failovers": _role_failovers(status, fault.role) - fault.failovers_before,
            }
            fault.done = True
            soak.event(
                f"fault {fault.name}: {fault.role} v{fault.version} back as pid {pid_now}, routed and "
                f"healthy {fault.result['recovered_after_s']:.1f} s after the kill "
                f"({fault.result['failovers']} requests failed over meanwhile)"
            )
        elif t - fault.fired_at_s > RECOVERY_TIMEOUT_S:
            fault.result = {"killed_pid": fault.pid, "error": f"not back after {RECOVERY_TIMEOUT_S:.0f} s"}
            fault.done = True
            soak.event(f"fault {fault.name}: NOT RECOVERED within {RECOVERY_TIMEOUT_S:.0f} s")
        return
    # corrupt-state
    if fault.restored_at_s is None:
        if status is not None:
            fault.polls_during += 1
            if _routing(status) != fault.routing_before:
                fault.polls_changed += 1
            supervisor = status.get("supervisor") or {}
            if fault.noticed_at_s is None and supervisor.get("ok") is False:
                fault.noticed_at_s = t
                fault.result["supervisor_message"] = str(supervisor.get("message", ""))[:300]
        if fault.restore_at_s is not None and t >= fault.restore_at_s:
            restore_state(soak)
            fault.restored_at_s = t
            soak.event(f"fault {fault.name}: state file restored")
        return
    if (
        status is not None
        and (status.get("supervisor") or {}).get("ok")
        and _routing(status) == fault.routing_before
    ):
        fault.result |= {
            "noticed_after_s": None
            if fault.noticed_at_s is None
            else round(fault.noticed_at_s - fault.fired_at_s, 2),
            "polls_while_corrupt": fault.polls_during,
            "polls_with_other_routing": fault.polls_changed,
            "routing_kept": fault.polls_changed == 0,
            "accepted_again_after_s": round(t - fault.restored_at_s, 2),
            "routing": fault.routing_before,
        }
        fault.done = True
        soak.event(
            f"fault {fault.name}: supervisor accepts the restored file "
            f"{fault.result['accepted_again_after_s']:.1f} s after the restore; routing kept in "
            f"{fault.polls_during - fault.polls_changed}/{fault.polls_during} polls while corrupt"
        )
    elif t - fault.restored_at_s > RECOVERY_TIMEOUT_S:
        fault.result["error"] = f"the restored state was not accepted within {RECOVERY_TIMEOUT_S:.0f} s"
        fault.done = True


def restore_state(soak: Soak) -> None:
    """Put the last good state file back atomically (temp file + rename, as the project writes it)."""
    if soak.good_state is None:
        return
    tmp = soak.state_path.with_name(soak.state_path.name + ".soak-restore")
    tmp.write_bytes(soak.good_state)
    os.replace(tmp, soak.state_path)


# ============================================================================ parent: the run
def run_load(soak: Soak, models: dict[str, Any], faults: list[Fault]) -> dict[str, Any]:
    args = soak.args
    out_path = soak.scratch / "client.jsonl"
    spec = {
        "url": f"{soak.url}{PREDICT_PATH}",
        "rides": models["rides"],
        "expected": {r["model_version"]: r["expected_minutes"] for r in models["revisions"]},
        "rate": args.rate,
        "duration": args.duration,
        "window": args.window,
        "max_inflight": args.max_inflight,
        "request_timeout": args.request_timeout,
        "out": str(out_path),
    }
    spec_path = soak.scratch / "client_spec.json"
    spec_path.write_text(json.dumps(spec))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "client", "--spec-file", str(spec_path)]
    client_log = soak.scratch / "client.log"
    client = soak.procs.start(cmd, client_log, _child_env())
    windows: list[dict[str, Any]] = []
    result: dict[str, Any] | None = None
    offset = 0

    def read_lines() -> list[tuple[str, dict[str, Any]]]:
        nonlocal offset
        try:
            with open(out_path, "rb") as handle:
                handle.seek(offset)
                chunk = handle.read()
        except FileNotFoundError:
            return []
        end = chunk.rfind(b"\n")
        if end < 0:
            return []
        offset += end + 1
        lines = []
        for line in chunk[: end + 1].decode().splitlines():
            kind, _, payload = line.partition(" ")
            lines.append((kind, json.loads(payload)))
        return lines

    waited = time.monotonic()
    while soak.t0 is None:
        for kind, doc in read_lines():
            if kind == "START":
                soak.t0 = time.monotonic() - (time.time() - doc["epoch"])
        if client.poll() is not None:
            raise SystemExit(f"load client exited ({client.returncode}):\n{_log_tail(client_log)}")
        if time.monotonic() - waited > CLIENT_START_TIMEOUT_S:
            raise SystemExit(f"load client did not start within {CLIENT_START_TIMEOUT_S:.0f} s")
        time.sleep(0.05)
    _progress(f"load: {args.rate:g} req/s for {args.duration:g} s started")
    deadline = args.duration + args.request_timeout + 60.0
    next_rss = 0.0
    next_status = 0.0
    pending = sorted(faults, key=lambda f: f.at_s)
    while result is None:
        for kind, doc in read_lines():
            if kind == "WINDOW":
                windows.append(doc)
                _progress(_window_line(doc, soak.events))
            elif kind == "RESULT":
                result = doc
        if result is not None:
            break
        if client.poll() is not None:  # exited: whatever it wrote last is in the file by now
            for kind, doc in read_lines():
                if kind == "WINDOW":
                    windows.append(doc)
                elif kind == "RESULT":
                    result = doc
            if result is None:
                raise SystemExit(f"load client exited ({client.returncode}) early:\n{_log_tail(client_log)}")
            break
        t = soak.now()
        if t > deadline:
            soak.procs.stop(client)
            raise SystemExit(f"load client still running {deadline:.0f} s after the start; stopped it")
        if t >= next_rss:
            soak.sample_rss()
            next_rss += args.rss_interval
        watching = [f for f in faults if f.fired_at_s is not None and not f.done]
        if t >= next_status:
            status = soak.poll_status()
            for fault in watching:
                watch(soak, fault, status)
            next_status = t + (0.5 if watching else 2.0)
        while pending and pending[0].at_s <= t:
            fire(soak, pending.pop(0))
            next_status = t + 0.25
        time.sleep(0.05)
    soak.sample_rss()  # one more, right at the end of the load
    soak.procs.stop(client)
    with contextlib.suppress(OSError):
        client.wait(5)
    windows.sort(key=lambda w: w["index"])
    return {"windows": windows, "totals": result}


def finish_faults(soak: Soak, faults: list[Fault]) -> None:
    """After the load: a fault still being watched gets a bounded last chance, then its state is final."""
    deadline = time.monotonic() + 30.0
    while any(f.fired_at_s is not None and not f.done for f in faults) and time.monotonic() < deadline:
        status = soak.poll_status()
        for fault in faults:
            watch(soak, fault, status)
        time.sleep(0.5)
    for fault in faults:
        if fault.fired_at_s is None:
            fault.result = {"error": "never fired (the load ended first)"}
        elif not fault.done:
            fault.result.setdefault("error", "still not over 30 s after the load ended")
            if fault.kind == "corrupt-state" and fault.restored_at_s is None:
                restore_state(soak)


# ============================================================================ parent: report
def rss_rows(soak: Soak) -> list[dict[str, Any]]:
    """Per process: idle, start (after --warmup s of load), middle, end, peak, and the largest change."""
    warmup = soak.args.warmup
    rows = []
    for track in sorted(soak.tracks.values(), key=lambda t: t.first_seen_s):
        samples = track.samples
        idle = next((rss for t, rss in samples if t < 0), None)
        settle_from = max(warmup, track.first_seen_s + warmup)
        settled = [(t, rss) for t, rss in samples if t >= settle_from]
        row: dict[str, Any] = {
            "pid": track.pid,
            "process": track.label,
            "first_seen_s": round(track.first_seen_s, 1),
            "gone_at_s": None if track.gone_at_s is None else round(track.gone_at_s, 1),
            "killed_by_fault": track.killed_by_fault,
            "killed_at_s": track.killed_at_s,
            "idle_mb": None if idle is None else idle / MB,
            "samples": [(round(t, 1), rss) for t, rss in samples],
        }
        if len(settled) < 2:
            row["judged"] = False
            row["note"] = f"lived < {warmup:g} s under load after it started: not judged"
            rows.append(row)
            continue
        (t_start, start), (t_end, end) = settled[0], settled[-1]
        t_mid, mid = min(settled, key=lambda s: abs(s[0] - (t_start + t_end) / 2))
        change = max(abs(mid - start), abs(end - start)) / start
        row |= {
            "judged": True,
            "start_s": round(t_start, 1),
            "middle_s": round(t_mid, 1),
            "end_s": round(t_end, 1),
            "start_mb": start / MB,
            "middle_mb": mid / MB,
            "end_mb": end / MB,
            "peak_mb": max(rss for _, rss in settled) / MB,
            "change": change,
            "end_change": (end - start) / start,
        }
        rows.append(row)
    return rows


def _errors_text(outcomes: dict[str, int]) -> str:
    bad = {k: v for k, v in outcomes.items() if k != "ok" and v}
    return ", ".join(f"{k}: {v}" for k, v in sorted(bad.items(), key=lambda kv: -kv[1])) or "-"


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _share(revisions: dict[str, int], role: str) -> str:
    total = sum(revisions.values())
    return "-" if not total else f"{100.0 * revisions.get(role, 0) / total:.1f}"


def _events_in(events: list[dict[str, Any]], start: float, end: float) -> str:
    names = [e["what"].split(":")[0].removeprefix("fault ") for e in events if start <= e["t_s"] < end]
    return ", ".join(dict.fromkeys(n for n in names if "@" in n))


def _window_line(w: dict[str, Any], events: list[dict[str, Any]]) -> str:
    span = f"{w['start_s']:g}-{w['end_s']:g} s"
    return (
        f"{span:<12}{w['scheduled']:>8}{w['ok']:>8}{w['errors']:>7}  {_errors_text(w['outcomes'])[:34]:<34}"
        f"{_share(w['revisions'], 'canary'):>8}{w['failovers']:>7}{_f(w['p50_ms']):>9}{_f(w['p99_ms']):>9}"
        f"{_f(w['max_ms']):>9}{_f(w['lag_p99_ms']):>8}{w['load1']:>7.2f}  "
        f"{_events_in(events, w['start_s'], w['end_s'])}"
    )


def verdict(report: dict[str, Any]) -> dict[str, Any]:
    totals = report["load"]["totals"]
    judged = [r for r in report["rss"] if r["judged"]]
    worst = max(judged, key=lambda r: r["change"], default=None)
    faults_ok = all(
        "error" not in f["result"] and f["result"].get("routing_kept", True) for f in report["faults"]
    )
    out = {
        "errors": totals["errors"],
        "errors_met": totals["errors"] <= GOAL_ERRORS,
        "rss_max_change": None if worst is None else worst["change"],
        "rss_worst_process": None if worst is None else f"{worst['process']} pid {worst['pid']}",
        "rss_met": worst is not None and worst["change"] <= GOAL_RSS_CHANGE,
        "faults_ok": faults_ok,
        "status_misses": report["status_polls"]["misses"],
    }
    out["met"] = out["errors_met"] and out["rss_met"] and faults_ok and not out["status_misses"]
    return out


def print_report(report: dict[str, Any]) -> None:
    meta, load, models = report["meta"], report["load"], report["models"]
    totals = load["totals"]
    print()
    print(
        f"soak: `taxi-mlops serve` (splitter + {len(models['revisions'])} KServe predictors) on {HOST}, "
        f"open loop {meta['rate']:g} req/s for {meta['duration_s']:g} s, canary {meta['canary_percent']}%, "
        f"faults: {', '.join(f['name'] for f in report['faults']) or 'none'}"
    )
    print(
        f"machine: {meta['cpus']} CPUs, Python {meta['python']}, load average at start "
        f"{meta['loadavg_start'][0]:.2f}, at end {meta['loadavg_end'][0]:.2f}"
    )
    for rev in models["revisions"]:
        print(
            f"model v{rev['model_version']}: {models['candidate']} {rev['overrides'] or '(defaults)'} "
            f"sha256 {rev['sha256'][:12]}, validation RMSE {rev['val_rmse']:.3f} min"
        )
    print(
        f"data: {models['data_source']}; {len(models['rides'])} real validation rides cycled as requests, "
        f"every 200 checked against its version's own minutes; stack ready in {meta['stack_ready_s']:.1f} s"
    )
    print()
    head = (
        f"{'window':<12}{'sent':>8}{'ok':>8}{'errors':>7}  {'errors by status':<34}{'canary%':>8}"
        f"{'failov':>7}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'lag99':>8}{'load1':>7}  events"
    )
    print(head)
    print("-" * len(head))
    for w in load["windows"]:
        print(_window_line(w, report["events"]))
    print("-" * len(head))
    revisions: Counter[str] = Counter()
    for w in load["windows"]:
        revisions.update(w["revisions"])
    failovers = sum(w["failovers"] for w in load["windows"])
    print(
        f"{'total':<12}{totals['scheduled']:>8}{totals['ok']:>8}{totals['errors']:>7}  "
        f"{_errors_text(totals['outcomes'])[:34]:<34}{_share(dict(revisions), 'canary'):>8}{failovers:>7}"
        f"{_f(totals['p50_ms']):>9}{_f(totals['p99_ms']):>9}{_f(totals['max_ms']):>9}"
    )
    print(
        f"answers/s {_f(totals['ok_per_s'], 1)} (offered {meta['rate']:g}); "
        f"p99.9 {_f(totals['p999_ms'])} ms; "
        f"errors by status: {_errors_text(totals['outcomes'])}"
    )
    print(
        "sent: requests due in the window; errors: not a correct 200 (HTTP status, no answer, dropped at "
        f"{meta['max_inflight']} in flight, wrong answer); failov: answered by the other revision; "
        "lag99: client send lag p99 (ms)."
    )
    print()
    print(
        f"RSS MB (start = after {meta['warmup_s']:g} s of load; change = max |middle or end - start| / start)"
    )
    rhead = (
        f"{'process':<42}{'pid':>8}{'idle':>8}{'start':>8}{'middle':>8}{'end':>8}{'peak':>8}"
        f"{'change':>8}  note"
    )
    print(rhead)
    print("-" * len(rhead))
    for r in report["rss"]:
        note = []
        if r["killed_by_fault"]:
            note.append(f"killed by a fault at {r['killed_at_s']:g} s")
        elif r["gone_at_s"] is not None:
            note.append(f"GONE at {r['gone_at_s']:g} s")
        if r["first_seen_s"] > 0:
            note.append(f"started at {r['first_seen_s']:g} s")
        if not r["judged"]:
            note.append(r["note"])
            print(f"{r['process']:<42}{r['pid']:>8}{_f(r['idle_mb'], 1):>8}{'':>40}  {'; '.join(note)}")
            continue
        print(
            f"{r['process']:<42}{r['pid']:>8}{_f(r['idle_mb'], 1):>8}{r['start_mb']:>8.1f}"
            f"{r['middle_mb']:>8.1f}"
            f"{r['end_mb']:>8.1f}{r['peak_mb']:>8.1f}{100 * r['change']:>7.1f}%  {'; '.join(note)}"
        )
    print()
    for f in report["faults"]:
        print(f"fault {f['name']}: {json.dumps(f['result'])}")
    end = report["status_end"] or {}
    if end:
        routing = _routing(end)
        print(
            f"splitter /status at the end: generation {routing['generation']}, "
            f"champion v{routing['champion']} "
            f"healthy={(end.get('champion') or {}).get('healthy')}, canary v{routing['canary']} "
            f"healthy={(end.get('canary') or {}).get('healthy')} ({routing['canary_percent']}%), "
            f"supervisor ok={(end.get('supervisor') or {}).get('ok')}, "
            f"route reloads {end.get('route_reloads')}"
        )
        for row in end.get("revisions", []):
            print(
                f"  {row['revision']} v{row['model_version']}: requests {row['requests']}, "
                f"errors {row['errors']}, "
                f"client errors {row['client_errors']}, failovers {row['failovers']}, "
                f"latency p50/p99 {row['latency_ms']['p50']}/{row['latency_ms']['p99']} ms (recent window)"
            )
        counted = sum(int(row["requests"]) for row in end.get("revisions", []))
        answered = sum(sum(w["revisions"].values()) for w in load["windows"])
        checks = sum(meta["answers_checked_before"].values())
        same = "matches" if counted == answered + checks else "DOES NOT MATCH"
        print(
            f"  the splitter counted {counted} requests: {same} the client's {answered} answered "
            f"+ {checks} answer checks before the load"
        )
    else:
        print("splitter /status at the end: NO ANSWER")
    polls = report["status_polls"]
    print(f"/status polls during the run: {polls['count']}, unanswered {polls['misses']}")
    print(
        f"client: CPU {_f(100 * (totals['client_cpu_util'] or 0), 0)}% of one core, longest GC pause "
        f"{totals['client_gc_max_ms']:.1f} ms, "
        f"send lag p99 <= {_f(report['lag_p99_max_ms'])} ms in every window"
    )
    lagging = [w for w in load["windows"] if (w["lag_p99_ms"] or 0.0) > LAG_NOISY_MS]
    if lagging:
        spans = ", ".join(f"{w['start_s']:g}-{w['end_s']:g} s" for w in lagging)
        print(
            f"NOISY: the client itself fell behind its schedule (send lag p99 > {LAG_NOISY_MS:g} ms) "
            f"in {spans}: the machine was short of CPU there, so those latencies include waiting for a core"
        )
    v = report["verdict"]
    rss_text = (
        "no process judged"
        if v["rss_max_change"] is None
        else f"max change {100 * v['rss_max_change']:.1f}% ({v['rss_worst_process']})"
    )
    faults_text = "" if not report["faults"] else f"; faults handled: {'yes' if v['faults_ok'] else 'NO'}"
    print(
        f"verdict: errors {v['errors']} of {totals['scheduled']} (goal {GOAL_ERRORS}) -> "
        f"{'MET' if v['errors_met'] else 'NOT MET'}; RSS {rss_text} (goal <= {100 * GOAL_RSS_CHANGE:g}%) -> "
        f"{'MET' if v['rss_met'] else 'NOT MET'}{faults_text}"
        + (f"; /status unanswered {v['status_misses']} times" if v["status_misses"] else "")
        + (" => ALL GOALS MET" if v["met"] else " => MISSED")
    )


# ============================================================================ parent: models
def build_models(procs: Processes, args: argparse.Namespace, model_dir: Path) -> dict[str, Any]:
    info_file = model_dir / MODELS_INFO_FILE
    if info_file.is_file():
        info = json.loads(info_file.read_text())
        files_ok = all((Path(r["model_uri"]) / MODEL_FILE).is_file() for r in info.get("revisions", []))
        built_for = (info.get("candidate"), info.get("n_rides_wanted"), info.get("seed"))
        if built_for == (args.candidate, args.rides, args.seed) and files_ok:
            _progress(f"models: reusing {model_dir} ({args.candidate}, 2 revisions)")
            return info
    spec = {
        "model_dir": str(model_dir),
        "data_dir": str(args.data_dir),
        "candidate": args.candidate,
        "n_rides": args.rides,
        "seed": args.seed,
        "generated_rows": args.generated_rows,
    }
    spec_path = model_dir.parent / f"{model_dir.name}.build_spec.json"
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(json.dumps(spec))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "build", "--spec-file", str(spec_path)]
    _progress(f"models: training two {args.candidate} revisions ...")
    procs.run(cmd, _child_env(), BUILD_TIMEOUT_S, "model build")
    return json.loads(info_file.read_text())


# ============================================================================ main
def _fault(text: str) -> tuple[str, float | None]:
    kind, sep, at = text.partition("@")
    if kind not in FAULT_KINDS:
        raise argparse.ArgumentTypeError(f"unknown fault {kind!r}; choose from {', '.join(FAULT_KINDS)}")
    if not sep:
        return kind, None
    try:
        seconds = float(at)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: the time after @ must be seconds") from None
    return kind, seconds


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--rate", type=float, default=200.0, help="open-loop requests/s (default 200)")
    p.add_argument("--duration", type=float, default=None, help="seconds of load (default 600; --quick 60)")
    p.add_argument("--canary-percent", type=int, default=20, help="canary v2's share of traffic (default 20)")
    p.add_argument(
        "--fault",
        type=_fault,
        action="append",
        default=None,
        metavar="KIND[@S]",
        help="kill-canary, kill-champion, corrupt-state or none; @S = seconds after the load starts\n"
        "(repeatable; without @S faults are spread evenly, one alone mid-way; default kill-canary)",
    )
    p.add_argument(
        "--corrupt-seconds",
        type=float,
        default=None,
        help="corrupt-state lasts this (default 20; 10 below 120 s)",
    )
    p.add_argument("--window", type=float, default=None, help="report window, s (default 60; 10 below 240 s)")
    p.add_argument(
        "--warmup", type=float, default=None, help="s of load before RSS 'start' (default 10%%, <= 30)"
    )
    p.add_argument("--rss-interval", type=float, default=None, help="s between RSS samples (default <= 5)")
    p.add_argument("--quick", action="store_true", help="60 s of load, 10 s windows")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="TLC files (green 2021-01/02)")
    p.add_argument("--candidate", default="target_encoded_xgboost", help="candidate model of both revisions")
    p.add_argument(
        "--model-dir", type=Path, default=None, help="keep/reuse the two models here (default: temp)"
    )
    p.add_argument("--rides", type=int, default=1000, help="distinct validation rides cycled as requests")
    p.add_argument("--request-timeout", type=float, default=10.0, help="seconds before a request fails")
    p.add_argument(
        "--max-inflight", type=int, default=256, help="outstanding requests cap (more are dropped)"
    )
    p.add_argument("--generated-rows", type=int, default=20_000, help="rows/month if data is generated")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--keep-logs", type=Path, default=None, help="copy serve, predictor and client logs here")
    p.add_argument("--json-out", type=Path, default=None)
    p.add_argument("--child", choices=("build", "client", "register"), help=argparse.SUPPRESS)
    p.add_argument("--spec-file", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return args
    args.duration = args.duration or (60.0 if args.quick else 600.0)
    if not 0 < args.duration <= MAX_DURATION_S:
        p.error(f"--duration must be in (0, {MAX_DURATION_S:g}] s")
    if not 0 < args.rate <= MAX_RATE or args.rate * args.duration > MAX_REQUESTS:
        p.error(f"--rate must be in (0, {MAX_RATE:g}] and rate x duration <= {MAX_REQUESTS:,}")
    if not 0 <= args.canary_percent <= 100:
        p.error("--canary-percent must be 0..100")
    args.window = args.window or (60.0 if args.duration >= 240 and not args.quick else 10.0)
    args.warmup = args.warmup if args.warmup is not None else min(30.0, 0.1 * args.duration)
    args.rss_interval = args.rss_interval or min(5.0, max(0.5, args.duration / 20))
    args.corrupt_seconds = args.corrupt_seconds or (10.0 if args.duration < 120 else 20.0)
    if args.window <= 0 or args.duration / args.window > 10_000 or args.rss_interval <= 0:
        p.error("--window and --rss-interval must be > 0 (at most 10,000 windows)")
    if not 1 <= args.max_inflight <= 10_000 or not 0 < args.request_timeout <= 120:
        p.error("--max-inflight must be 1..10000 and --request-timeout in (0, 120] s")
    faults = args.fault if args.fault is not None else [("kill-canary", None)]
    if any(kind == "none" for kind, _ in faults):
        if len(faults) > 1:
            p.error("--fault none excludes other faults")
        faults = []
    untimed = [i for i, (_, at) in enumerate(faults) if at is None]
    resolved = []
    for i, (kind, at) in enumerate(faults):
        if at is None:
            at = args.duration * (untimed.index(i) + 1) / (len(untimed) + 1)
        if not 0 <= at < args.duration:
            p.error(f"fault {kind}@{at:g}: the time must be within the load, [0, {args.duration:g}) s")
        if kind == "corrupt-state" and at + args.corrupt_seconds >= args.duration:
            p.error(f"corrupt-state@{at:g} + {args.corrupt_seconds:g} s must end before {args.duration:g} s")
        resolved.append((kind, at))
    args.faults = resolved
    return args


def check_dependencies() -> None:
    missing = []
    for module, why in {"aiohttp": "the load client", "psutil": "RSS of the stack's processes"}.items():
        try:
            __import__(module)
        except ImportError:
            missing.append(f"{module} ({why})")
    if missing:
        raise SystemExit(f"missing: {', '.join(missing)}; install the dev extra: pip install -e '.[dev]'")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        spec = json.loads(args.spec_file.read_text())
        {"build": child_build, "client": child_client, "register": child_register}[args.child](spec)
        return 0
    check_dependencies()
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))  # serving.deployment_state, to write the state as the CLI does

    def on_sigterm(signum: int, frame: Any) -> None:
        _progress("SIGTERM: stopping every process this soak started")
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)
    procs = Processes()
    scratch = Path(tempfile.mkdtemp(prefix="soak_"))
    soak = Soak(args, procs, scratch)
    try:
        loadavg_start = os.getloadavg()
        if loadavg_start[0] > 1.0:
            _progress(f"note: 1-minute load average is {loadavg_start[0]:.2f}: other work is running")
        models = build_models(procs, args, args.model_dir or scratch / "models")
        soak.write_state(models)
        ready_s = soak.start_stack()
        seen = soak.check_answers(models)
        _progress(f"stack ready in {ready_s:.1f} s at {soak.url}; answers match each model: {seen}")
        soak.sample_rss()  # idle (t < 0)
        faults = [Fault(kind, at) for kind, at in args.faults]
        _progress(
            f"{'window':<12}{'sent':>8}{'ok':>8}{'errors':>7}  {'errors by status':<34}{'canary%':>8}"
            f"{'failov':>7}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'lag99':>8}{'load1':>7}  events"
        )
        load = run_load(soak, models, faults)
        finish_faults(soak, faults)
        status_end = soak.poll_status()
        try:
            metrics_status, metrics_raw = _http("GET", f"{soak.url}/metrics")
            metrics_text = metrics_raw.decode(errors="replace")
        except OSError as exc:
            metrics_status, metrics_text = None, f"no answer: {exc}"
        report: dict[str, Any] = {
            "meta": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
                "loadavg_start": loadavg_start,
                "loadavg_end": os.getloadavg(),
                "rate": args.rate,
                "duration_s": args.duration,
                "canary_percent": args.canary_percent,
                "window_s": args.window,
                "warmup_s": args.warmup,
                "rss_interval_s": args.rss_interval,
                "max_inflight": args.max_inflight,
                "request_timeout_s": args.request_timeout,
                "stack_ready_s": ready_s,
                "serve_command": _serve_command(),
                "answers_checked_before": seen,
                "registry": soak.registry,
            },
            "models": models
            | {
                "revisions": [
                    {k: v for k, v in r.items() if k != "expected_minutes"} for r in models["revisions"]
                ]
            },
            "load": load,
            "faults": [{"name": f.name, "kind": f.kind, "at_s": f.at_s, "result": f.result} for f in faults],
            "events": soak.events,
            "rss": rss_rows(soak),
            "status_end": status_end,
            "metrics_end": {"status": metrics_status, "text": metrics_text},
            "status_polls": {"count": soak.status_polls, "misses": soak.status_misses},
            "lag_p99_max_ms": max((w["lag_p99_ms"] or 0.0 for w in load["windows"]), default=None),
        }
        report["verdict"] = verdict(report)
        print_report(report)
        if args.json_out:
            args.json_out.write_text(json.dumps(report, indent=2))
            print(f"wrote {args.json_out}")
        return 0 if report["verdict"]["met"] else 1
    except KeyboardInterrupt:
        _progress("interrupted: stopping every process this soak started")
        return 130
    finally:
        stop_stack(soak)
        procs.stop_all()
        if args.keep_logs:
            keep_logs(soak, args.keep_logs)
        shutil.rmtree(scratch, ignore_errors=True)


def stop_stack(soak: Soak) -> None:
    """SIGTERM serve (it stops its predictors), then make sure no predictor of this run is left."""
    import psutil

    if soak.serve is not None:
        soak.procs.stop(soak.serve)
    deadline = time.monotonic() + 15.0
    for pid in sorted(soak.known_pids):  # only pids seen as children of our serve process
        try:
            proc = psutil.Process(pid)
            while proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
                time.sleep(0.1)
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                _progress(f"predictor pid {pid} outlived serve: SIGKILL")
                proc.kill()
        except psutil.Error:
            continue


def keep_logs(soak: Soak, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    sources = [soak.serve_log, soak.scratch / "client.log", soak.scratch / "client.jsonl"]
    sources += sorted((soak.state_dir / "deployment" / "logs").glob("*.log"))
    for source in sources:
        with contextlib.suppress(OSError):
            shutil.copy(source, target / source.name)


if __name__ == "__main__":
    sys.exit(main())
