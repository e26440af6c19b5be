"""Benchmark: serving single rides, our KServe predictor vs the course's Flask + gunicorn app (and MLflow's).

Not a test. In one run on this machine it

1. trains one model (default ``target_encoded_xgboost``, the production winner) on
   green 2021-01 / validates on 2021-02 from ``--data-dir`` (generated TLC-like
   files from ``tests/support/tlc_fixtures`` when the real ones are absent), saves it
   with ``TripDurationModel.save`` and samples real validation rides as request
   bodies;
2. calibrates the load client against a trivial HTTP endpoint (a few lines of
   asyncio answering a fixed body), with and without keep-alive, so the table
   can show the client could go faster than any server it measures;
3. every implementation in turn, phase by phase, round after round (all stay up;
   the idle ones use no CPU):

   * **ours**: ``python -m serving ... --http_port P`` (KServe, 1 uvicorn worker),
     ``POST /v1/models/duration:predict`` with ``{"instances": [ride]}``;
   * **baseline**: ``bench/serving_baseline_flask.py`` under gunicorn with
     1 sync worker (the course's default), ``POST /predict`` with ``ride``;

   * **ours-logged** (``--prediction-log on|both``): ours with ``--prediction-log-dir``,
     every answered trip recorded; ``both`` runs it beside the unlogged one, so the
     ratio logged/unlogged is measured round by round (what the log costs);
   * **mlflow** (``--mlflow-baseline``): the same model file registered by
     ``components.registry.registration.register_winner`` in a sqlite registry beside
     it, served by ``mlflow models serve -m models:/duration/1 --env-manager local
     --workers 1`` (MLflow's uvicorn + FastAPI scoring server), ``POST /invocations``
     with ``{"dataframe_records": [ride]}``: the server a user of the registry reaches for;

   all load the same model file (sha256-checked) and must answer the same
   minutes for the same rides before anything is timed. Then:

   * **throughput**: closed loop, a fixed number of requests in flight
     (``--concurrency``, default 8 and 32), ``--duration`` seconds after a warm-up;
   * **latency**: open loop at fixed rates (``--rates``, default 50, 100, 200 req/s):
     requests leave on a fixed schedule whether or not earlier ones have
     answered, so a slow server cannot slow the offered load down (no
     coordinated omission); at most ``--max-inflight`` outstanding (more are
     counted as dropped), each with ``--request-timeout``.

   Latency is measured from the moment a request is handed to the HTTP client
   to the last byte of its answer; a failed request counts with the time it
   took to fail, so timeouts raise the percentiles instead of vanishing.

The load client is a separate process (asyncio + aiohttp, uvloop when present;
its startup heap is frozen before each measured phase so a garbage collection
cannot stall the answers in flight, and any collection during the phase is
timed). Each phase reports the client's own CPU time and GC pauses, the
server's CPU time per request (its process and children, read from /proc
through psutil), the CPU everything else on the machine used meanwhile, the
client's send lag behind schedule (open loop) and the 1-minute load average.

    python bench/bench_serving.py                     # ~3 minutes
    python bench/bench_serving.py --quick             # ~1 minute
    python bench/bench_serving.py --rates 50,100,200 --concurrency 8,32 --duration 10 --json-out out.json
    python bench/bench_serving.py --prediction-log both --mlflow-baseline   # the monitoring issue's run

Traffic goes to 127.0.0.1 only. Every loop is bounded in count and time, and
every process this script starts is stopped on exit, on Ctrl-C and on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import itertools
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
DEFAULT_DATA_DIR = Path(os.environ.get("TAXI_TLC_DATA_DIR", REPO.parent / "shared" / "data" / "tlc"))
HOST = "127.0.0.1"  # the only address this script ever sends to
COLOR, TRAIN_MONTH, VAL_MONTH = "green", "2021-01", "2021-02"
MODEL_FILE = "trip_duration_model.zip"
MODEL_INFO_FILE = "bench_model.json"
MODEL_NAME = "duration"
FIELDS = ("PULocationID", "DOLocationID", "trip_distance")

GOAL_THROUGHPUT_RATIO = 2.0  # ours / baseline, single-row requests
GOAL_P99_MS = 15.0  # ours, single-row requests ...
GOAL_RATE = 100.0  # ... at this open-loop rate

GOAL_LOGGED_THROUGHPUT = 0.9  # ours with the prediction log / ours without, max throughput

IMPLS = ("ours", "ours-logged", "baseline", "mlflow")
IMPL_LABELS = {
    "ours": "ours: KServe predictor",
    "ours-logged": "ours + prediction log",
    "baseline": "baseline: Flask+gunicorn",
    "mlflow": "mlflow models serve",
}
OURS = ("ours", "ours-logged")  # our predictor, without and with --prediction-log-dir
BASELINES = ("baseline", "mlflow")
MLFLOW_DB = "mlflow.db"
SERVER_START_TIMEOUT_S = 180.0
SERVER_STOP_TIMEOUT_S = 15.0
MAX_REQUESTS_PER_PHASE = 2_000_000
TRIVIAL_MAX_LIFETIME_S = 900.0


# ============================================================================ shared helpers
def _percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..1) of already sorted values."""
    if not sorted_values:
        return None
    rank = max(0, min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[rank]


def _pdeathsig() -> None:
    """In a child before exec: be SIGKILLed when the bench process dies, however it dies."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def _child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, **(extra or {})}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return env


def _result_line(stdout: str) -> dict[str, Any]:
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line.removeprefix("RESULT "))
    raise ValueError("no RESULT line")


# ============================================================================ child: build
def _acceptable(ride: dict[str, Any]) -> bool:
    """A ride the predictor accepts (its own validators), so both servers get the same valid input."""
    from serving.trip_request import TripRequestError, location_id, trip_distance

    try:
        location_id(ride["PULocationID"], "PULocationID", 0)
        location_id(ride["DOLocationID"], "DOLocationID", 0)
        trip_distance(ride["trip_distance"], "trip_distance", 0)
    except TripRequestError:
        return False
    return True


def bench_months(spec: dict[str, Any], out: Path) -> tuple[Path, str]:
    """The folder with the two months (the real files, else generated ones in ``out``) and what it is."""
    out.mkdir(parents=True, exist_ok=True)
    data_dir = Path(spec["data_dir"])
    names = [f"{COLOR}_tripdata_{m}.parquet" for m in (TRAIN_MONTH, VAL_MONTH)]
    if all((data_dir / name).is_file() for name in names):
        return data_dir, f"real TLC files in {data_dir}"
    sys.path.insert(0, str(REPO / "tests"))
    from support.tlc_fixtures import write_tlc_dir

    generated = write_tlc_dir(out / "generated_tlc", rows=spec["generated_rows"], seed=spec["seed"])
    return generated, f"GENERATED ({spec['generated_rows']} rows/month; real files absent from --data-dir)"


def sample_rides(trips: Any, n: int, seed: int) -> list[dict[str, Any]]:
    """Up to ``n`` acceptable rides of cleaned ``trips`` (a DataFrame) in a seeded random order, as JSON
    numbers (ids are strings in the cleaned frame)."""
    import numpy as np  # in the child processes only: the parent never loads the science stack

    rng = np.random.default_rng(seed)
    rides: list[dict[str, Any]] = []
    for i in rng.permutation(len(trips)):
        row = trips.iloc[int(i)]
        ride = {
            "PULocationID": int(row["PULocationID"]),
            "DOLocationID": int(row["DOLocationID"]),
            "trip_distance": float(row["trip_distance"]),
        }
        if _acceptable(ride):
            rides.append(ride)
        if len(rides) >= n:
            break
    return rides


def child_build(spec: dict[str, Any]) -> None:
    """Train, save the model, sample request rides; print RESULT {...}."""
    import pandas as pd

    from components.data.ingest import load_month
    from components.features.design_matrix import vectorize_trips
    from components.models.train import fit_candidate

    out = Path(spec["model_dir"])
    data_dir, data_source = bench_months(spec, out)
    started = time.perf_counter()
    train, _ = load_month(COLOR, TRAIN_MONTH, data_dir=data_dir)
    val, _ = load_month(COLOR, VAL_MONTH, data_dir=data_dir)
    vectorizer, train_matrix, val_matrix = vectorize_trips(train, val)
    model, scores = fit_candidate(spec["candidate"], {}, vectorizer, train_matrix, val_matrix)
    sha256 = model.save(out / MODEL_FILE)
    build_s = time.perf_counter() - started

    # Request bodies: real validation rides.
    rides = sample_rides(val, spec["n_rides"], spec["seed"])
    expected = model.predict(pd.DataFrame(rides, columns=list(FIELDS))).tolist()
    info = {
        "path": str(out / MODEL_FILE),
        "sha256": sha256,
        "candidate": spec["candidate"],
        "data_source": data_source,
        "train_rows": int(train_matrix.n_rows),
        "val_rows": int(val_matrix.n_rows),
        "val_rmse": scores.rmse,
        "build_s": build_s,
        "rides": rides,
        "expected_minutes": expected,
    }
    (out / MODEL_INFO_FILE).write_text(json.dumps(info))
    print("RESULT " + json.dumps({k: v for k, v in info.items() if k not in ("rides", "expected_minutes")}))


def child_register(spec: dict[str, Any]) -> None:
    """Register the saved model as version 1 of MODEL_NAME in a sqlite MLflow registry beside it,
    through the project's own ``register_winner`` (the pyfunc ``mlflow models serve`` loads)."""
    import pandas as pd

    from components.evaluation.gate import gate_against_champion
    from components.registry import tracking
    from components.registry.registration import register_winner

    out = Path(spec["model_dir"])
    info = json.loads((out / MODEL_INFO_FILE).read_text())
    uri = f"sqlite:///{out / MLFLOW_DB}"
    experiment = tracking.ensure_experiment(uri, "bench-serving", (out / "mlartifacts").as_uri())
    run_id = tracking.client_for(uri).create_run(experiment).info.run_id
    gate = gate_against_champion(info["candidate"], info["val_rmse"], None, None, 0.01)
    registration = register_winner(
        tracking_uri=uri,
        model_name=MODEL_NAME,
        model_file=Path(info["path"]),
        gate=gate.__dict__,
        input_example=pd.DataFrame(info["rides"], columns=list(FIELDS)),
        run_id=run_id,
        version_tags={"candidate": info["candidate"]},
    )
    if registration.sha256 != info["sha256"]:
        raise SystemExit(f"registered {registration.sha256}, the model file is {info['sha256']}")
    info["mlflow"] = {
        "tracking_uri": uri,
        "model_uri": f"models:/{MODEL_NAME}/{registration.model_version}",
        "version": registration.model_version,
    }
    (out / MODEL_INFO_FILE).write_text(json.dumps(info))
    print("RESULT " + json.dumps(info["mlflow"]))


# ============================================================================ child: trivial server
_TRIVIAL_BODY = b'{"duration": 12.5}'


class _TrivialHttp(asyncio.Protocol):
    """Answers every HTTP/1.1 request with a fixed 200; ``/close...`` paths also close the connection."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        for _ in range(1000):  # bounded: at most 1000 pipelined requests per read
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            lines = self.buffer[:head_end].decode("latin-1").split("\r\n")
            length = 0
            for line in lines[1:]:
                key, _, value = line.partition(":")
                if key.strip().lower() == "content-length":
                    length = int(value.strip())
            total = head_end + 4 + length
            if len(self.buffer) < total:
                return
            self.buffer = self.buffer[total:]
            close = " /close" in lines[0]
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            head += b"Content-Length: %d\r\n" % len(_TRIVIAL_BODY)
            head += b"Connection: close\r\n\r\n" if close else b"\r\n"
            self.transport.write(head + _TRIVIAL_BODY)  # type: ignore[attr-defined]
            if close:
                self.transport.close()
                return


def child_trivial(spec: dict[str, Any]) -> None:
    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_TrivialHttp, HOST, spec["port"], backlog=4096)
        print("READY", flush=True)
        async with server:
            await asyncio.sleep(spec.get("max_lifetime_s", TRIVIAL_MAX_LIFETIME_S))

    _run_async(serve())


def _run_async(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


# ============================================================================ child: load client
class _PhaseStats:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors = 0
        self.error_samples: dict[str, int] = {}
        self.dropped = 0

    def add(self, ok: bool, latency: float, error: str | None) -> None:
        # A failed request counts with the time it took to fail (at most the request timeout),
        # so timeouts push the percentiles up instead of vanishing from them.
        self.latencies.append(latency)
        if ok:
            return
        self.errors += 1
        if error is not None and (error in self.error_samples or len(self.error_samples) < 5):
            self.error_samples[error] = self.error_samples.get(error, 0) + 1

    @property
    def count(self) -> int:
        return len(self.latencies)


class _CpuWatch:
    """CPU seconds of this process, of the watched server processes and of the whole machine."""

    def __init__(self, server_pids: Sequence[int]) -> None:
        import psutil

        self.psutil = psutil
        self.servers = []
        for pid in server_pids:
            with contextlib.suppress(psutil.Error):
                self.servers.append(psutil.Process(pid))

    def snapshot(self) -> dict[str, Any]:
        me = os.times()
        server_s = 0.0
        alive = 0
        for proc in self.servers:
            with contextlib.suppress(self.psutil.Error):
                t = proc.cpu_times()
                server_s += t.user + t.system
                alive += 1
        machine = self.psutil.cpu_times()
        idle = machine.idle + getattr(machine, "iowait", 0.0)
        return {
            "wall": time.perf_counter(),
            "client_s": me.user + me.system,
            "server_s": server_s,
            "servers_alive": alive,
            "machine_busy_s": sum(machine) - idle,
            "steal_s": getattr(machine, "steal", 0.0),
            "load1": os.getloadavg()[0],
        }

    @staticmethod
    def delta(a: dict[str, Any], b: dict[str, Any], n_servers: int) -> dict[str, Any]:
        wall = b["wall"] - a["wall"]
        client = b["client_s"] - a["client_s"]
        server = b["server_s"] - a["server_s"]
        busy = b["machine_busy_s"] - a["machine_busy_s"]
        return {
            "elapsed_s": wall,
            "client_cpu_s": client,
            "client_cpu_util": client / wall if wall > 0 else None,  # of one core
            "server_cpu_s": server,
            "server_cpu_util": server / wall if wall > 0 else None,
            "servers_lost": n_servers - min(a["servers_alive"], b["servers_alive"]),
            # everything else: other processes on the machine (and this bench's parent, ~idle)
            "other_cpu_s": max(0.0, busy - client - server),
            "steal_s": b["steal_s"] - a["steal_s"],
            "load1_start": a["load1"],
            "load1_end": b["load1"],
        }


class _GcPauses:
    """gc callback: the longest and the total time the collector stopped this process."""

    def __init__(self) -> None:
        self.started = 0.0
        self.longest = 0.0
        self.total = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
            return
        pause = time.perf_counter() - self.started
        self.longest = max(self.longest, pause)
        self.total += pause


async def _client_main(spec: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    url = spec["url"]
    if not url.startswith(f"http://{HOST}:"):
        raise SystemExit(f"refusing to send traffic to {url}: only {HOST} is allowed")
    bodies = [body.encode() for body in spec["bodies"]]
    headers = {"Content-Type": "application/json"}
    max_inflight = spec["max_inflight"]
    timeout = aiohttp.ClientTimeout(total=spec["request_timeout"])
    watch = _CpuWatch(spec.get("server_pids", []))
    counter = itertools.count()

    async def one(session: aiohttp.ClientSession, stats: _PhaseStats) -> None:
        body = bodies[next(counter) % len(bodies)]
        started = time.perf_counter()
        try:
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                status = resp.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            stats.add(False, time.perf_counter() - started, f"{type(exc).__name__}: {exc}"[:160])
            return
        latency = time.perf_counter() - started
        stats.add(status == 200, latency, None if status == 200 else f"HTTP {status}")

    async def closed_loop(session: aiohttp.ClientSession, seconds: float) -> _PhaseStats:
        stats = _PhaseStats()
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < deadline and stats.count < MAX_REQUESTS_PER_PHASE:
                await one(session, stats)

        await asyncio.gather(*(worker() for _ in range(spec["concurrency"])))
        return stats

    async def open_loop(session: aiohttp.ClientSession, seconds: float, lags: list[float]) -> _PhaseStats:
        stats = _PhaseStats()
        rate = spec["rate"]
        n_total = min(MAX_REQUESTS_PER_PHASE, max(1, round(rate * seconds)))
        pending: set[asyncio.Task[None]] = set()
        start = time.perf_counter() + 0.005
        for i in range(n_total):
            target = start + i / rate
            delay = target - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            lags.append(time.perf_counter() - target)
            if len(pending) >= max_inflight:
                stats.dropped += 1
                continue
            task = asyncio.create_task(one(session, stats))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:  # bounded drain: every request has its own timeout too
            _, late = await asyncio.wait(set(pending), timeout=spec["request_timeout"] + 2.0)
            for task in late:
                task.cancel()
                stats.add(False, spec["request_timeout"], "unfinished at the end of the phase")
        return stats

    connector = aiohttp.TCPConnector(limit=max_inflight, limit_per_host=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        if spec["warmup"] > 0:
            if spec["mode"] == "closed":
                await closed_loop(session, spec["warmup"])
            else:
                await open_loop(session, spec["warmup"], [])
        lags: list[float] = []
        # A full collection of this process's startup heap takes tens of ms and would stall
        # every request in flight; freeze that heap so the phase's collections are cheap,
        # and time every collection that still happens during the phase.
        gc.collect()
        gc.freeze()
        pauses = _GcPauses()
        gc.callbacks.append(pauses)
        before = watch.snapshot()
        if spec["mode"] == "closed":
            stats = await closed_loop(session, spec["duration"])
        else:
            stats = await open_loop(session, spec["duration"], lags)
        after = watch.snapshot()
        gc.callbacks.remove(pauses)

    cpu = _CpuWatch.delta(before, after, len(watch.servers))
    lat = sorted(stats.latencies)
    lags.sort()
    ms = 1000.0
    n_ok = len(lat) - stats.errors
    result = {
        "mode": spec["mode"],
        "concurrency": spec.get("concurrency"),
        "offered_rate": spec.get("rate"),
        "ok": n_ok,
        "errors": stats.errors,
        "error_samples": stats.error_samples,
        "dropped": stats.dropped,
        "throughput": n_ok / cpu["elapsed_s"] if cpu["elapsed_s"] > 0 else 0.0,
        "p50_ms": _ms(_percentile(lat, 0.50)),
        "p90_ms": _ms(_percentile(lat, 0.90)),
        "p99_ms": _ms(_percentile(lat, 0.99)),
        "p999_ms": _ms(_percentile(lat, 0.999)),
        "max_ms": _ms(lat[-1] if lat else None),
        "mean_ms": sum(lat) / len(lat) * ms if lat else None,
        "send_lag_p50_ms": _ms(_percentile(lags, 0.50)),
        "send_lag_p99_ms": _ms(_percentile(lags, 0.99)),
        "send_lag_max_ms": _ms(lags[-1] if lags else None),
        **cpu,
    }
    result["client_gc_max_ms"] = pauses.longest * ms
    result["client_gc_total_ms"] = pauses.total * ms
    n = stats.count
    result["client_cpu_us_per_req"] = cpu["client_cpu_s"] / n * 1e6 if n else None
    result["server_cpu_ms_per_req"] = cpu["server_cpu_s"] / n * 1e3 if n and watch.servers else None
    return result


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


def child_client(spec: dict[str, Any]) -> None:
    print("RESULT " + json.dumps(_run_async(_client_main(spec))), flush=True)


# ============================================================================ parent: processes
class Processes:
    """Every process the bench starts; each runs in its own session so its whole group can be stopped."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen[Any]] = []

    def start(self, cmd: list[str], log: Path | None, env: dict[str, str], cwd: Path = REPO) -> Any:
        out = open(log, "wb") if log else subprocess.PIPE  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT if log else subprocess.PIPE,
            start_new_session=True,
            preexec_fn=_pdeathsig,
            text=log is None,
        )
        if log:
            out.close()
        self.running.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[Any]) -> None:
        """SIGTERM the process group, SIGKILL it if it has not gone after SERVER_STOP_TIMEOUT_S."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=SERVER_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=SERVER_STOP_TIMEOUT_S)
        # the group may still hold a worker whose master has exited
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc in self.running:
            self.running.remove(proc)

    def stop_all(self) -> None:
        for proc in list(reversed(self.running)):
            with contextlib.suppress(Exception):
                self.stop(proc)

    def run(self, cmd: list[str], env: dict[str, str], timeout: float, what: str) -> dict[str, Any]:
        """Run a child to completion (bounded) and return its RESULT line."""
        proc = self.start(cmd, None, env)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop(proc)
            raise SystemExit(f"{what}: no answer within {timeout:.0f} s; stopped it") from None
        self.running.remove(proc)
        if proc.returncode != 0:
            raise SystemExit(f"{what} failed (exit {proc.returncode}):\n{stderr[-4000:]}")
        try:
            return _result_line(stdout)
        except ValueError:
            raise SystemExit(f"{what} printed no result:\n{stdout[-2000:]}\n{stderr[-2000:]}") from None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _http(method: str, url: str, body: bytes | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    assert url.startswith(f"http://{HOST}:")
    req = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _log_tail(log: Path, n: int = 3000) -> str:
    try:
        return log.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


# ============================================================================ parent: the two servers
class Server:
    """One implementation under test: how to start it, probe it and talk to it."""

    def __init__(
        self,
        impl: str,
        model: dict[str, Any],
        port: int,
        omp_threads: int | None,
        prediction_log_dir: Path | None = None,
    ) -> None:
        self.impl = impl
        self.model = model
        self.port = port
        base = f"http://{HOST}:{port}"
        extra = {} if omp_threads is None else {"OMP_NUM_THREADS": str(omp_threads)}
        if impl in OURS:
            self.cmd = [
                sys.executable, "-m", "serving",
                "--model_name", MODEL_NAME,
                "--model-uri", str(Path(model["path"]).parent),
                "--model-sha256", model["sha256"],
                "--model-version", "1",
                "--http_port", str(port),
                "--workers", "1",
            ]  # fmt: skip
            if impl == "ours-logged":
                assert prediction_log_dir is not None
                self.cmd += ["--prediction-log-dir", str(prediction_log_dir)]
            self.env = _child_env(extra)
            self.url = f"{base}/v1/models/{MODEL_NAME}:predict"
            self.ready_url: str | None = f"{base}/v2/models/{MODEL_NAME}/ready"
            self.body: Callable[[dict[str, Any]], str] = lambda ride: json.dumps({"instances": [ride]})
            self.minutes: Callable[[Any], float] = lambda answer: answer["predictions"][0]
            self.metrics_url: str | None = f"{base}/metrics"
        elif impl == "mlflow":
            # MLflow's own scoring server (uvicorn + FastAPI) for the same registered version,
            # one worker, in this environment (--env-manager local: no conda, no virtualenv).
            registry = model["mlflow"]
            self.cmd = [
                sys.executable, "-m", "mlflow", "models", "serve",
                "-m", registry["model_uri"],
                "--env-manager", "local",
                "--workers", "1",
                "--host", HOST,
                "--port", str(port),
            ]  # fmt: skip
            # It starts `uvicorn` from PATH: the one beside this interpreter.
            path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
            self.env = _child_env({**extra, "MLFLOW_TRACKING_URI": registry["tracking_uri"], "PATH": path})
            self.url = f"{base}/invocations"
            self.ready_url = f"{base}/ping"
            self.body = lambda ride: json.dumps({"dataframe_records": [ride]})
            self.minutes = lambda answer: answer["predictions"][0]
            self.metrics_url = None
        else:
            self.cmd = [
                sys.executable, "-m", "gunicorn",
                "--workers", "1",
                "--worker-class", "sync",
                "--bind", f"{HOST}:{port}",
                "--chdir", str(BENCH),
                "serving_baseline_flask:app",
            ]  # fmt: skip
            self.env = _child_env(
                {**extra, "BASELINE_MODEL_PATH": model["path"], "BASELINE_MODEL_SHA256": model["sha256"]}
            )
            self.url = f"{base}/predict"
            self.ready_url = None  # the course's app has no health endpoint: probe /predict
            self.body = json.dumps
            self.minutes = lambda answer: answer["duration"]
            self.metrics_url = None

    def wait_ready(self, proc: subprocess.Popen[Any], log: Path) -> float:
        started = time.monotonic()
        probe = self.body(self.model["rides"][0]).encode()
        while time.monotonic() - started < SERVER_START_TIMEOUT_S:
            if proc.poll() is not None:
                raise SystemExit(f"{self.impl} server exited ({proc.returncode}):\n{_log_tail(log)}")
            with contextlib.suppress(OSError):
                if self.ready_url is None or _http("GET", self.ready_url, timeout=2.0)[0] == 200:
                    status, _ = _http("POST", self.url, probe, timeout=10.0)
                    if status == 200:
                        return time.monotonic() - started
            time.sleep(0.2)
        raise SystemExit(
            f"{self.impl} server not ready within {SERVER_START_TIMEOUT_S:.0f} s:\n{_log_tail(log)}"
        )

    def check_answers(self, n: int = 25) -> int:
        """Both servers must give, ride by ride, the minutes the model itself gives."""
        rides, expected = self.model["rides"], self.model["expected_minutes"]
        for ride, want in list(zip(rides, expected, strict=True))[:n]:
            status, raw = _http("POST", self.url, self.body(ride).encode())
            if status != 200:
                raise SystemExit(f"{self.impl}: HTTP {status} for {ride}: {raw[:300]!r}")
            got = float(self.minutes(json.loads(raw)))
            if not math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9):
                raise SystemExit(f"{self.impl}: {ride} -> {got} minutes, the model says {want}")
        return min(n, len(rides))


def _server_pids(proc: subprocess.Popen[Any]) -> list[int]:
    import psutil

    root = psutil.Process(proc.pid)
    return [root.pid, *(child.pid for child in root.children(recursive=True))]


# ============================================================================ parent: phases
def run_client(
    procs: Processes, args: argparse.Namespace, url: str, bodies: list[str], mode: str, value: float,
    server_pids: list[int], what: str, duration: float | None = None,
) -> dict[str, Any]:  # fmt: skip
    duration = args.duration if duration is None else duration
    spec = {
        "url": url,
        "bodies": bodies,
        "mode": mode,
        "duration": duration,
        "warmup": args.warmup,
        "request_timeout": args.request_timeout,
        "max_inflight": args.max_inflight,
        "server_pids": server_pids,
    }
    spec["concurrency" if mode == "closed" else "rate"] = int(value) if mode == "closed" else value
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "client", "--spec", json.dumps(spec)]
    bound = args.warmup + duration + 2 * args.request_timeout + 60.0
    return procs.run(cmd, _child_env(), bound, what)


def calibrate(procs: Processes, args: argparse.Namespace, bodies: list[str], logs: Path) -> dict[str, Any]:
    """The client's own ceiling: closed loop at the highest concurrency against a trivial endpoint."""
    port = _free_port()
    spec = json.dumps({"port": port, "max_lifetime_s": TRIVIAL_MAX_LIFETIME_S})
    log = logs / "trivial.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "trivial", "--spec", spec]
    proc = procs.start(cmd, log, _child_env())
    try:
        deadline = time.monotonic() + 30.0
        while "READY" not in _log_tail(log) and time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"trivial server exited:\n{_log_tail(log)}")
            time.sleep(0.05)
        concurrency = max(args.concurrency)
        out = {}
        for name, path in (("keepalive", "/"), ("close", "/close")):
            out[name] = run_client(
                procs, args, f"http://{HOST}:{port}{path}", bodies, "closed", concurrency,
                [proc.pid], f"calibration ({name})", args.calibration_duration,
            )  # fmt: skip
            _progress(f"  client vs trivial endpoint, {name:<9}: {out[name]['throughput']:8.0f} req/s")
        return out
    finally:
        procs.stop(proc)


@dataclass
class RunningServer:
    impl: str
    server: Server
    proc: Any
    log: Path
    pids: list[int]
    bodies: list[str]
    start_s: float
    answers_checked: int


def start_server(
    procs: Processes, args: argparse.Namespace, impl: str, model: dict[str, Any], logs: Path
) -> RunningServer:
    server = Server(impl, model, _free_port(), args.omp_num_threads, logs / "prediction-log")
    log = logs / f"{impl}.log"
    proc = procs.start(server.cmd, log, server.env)
    start_s = server.wait_ready(proc, log)
    checked = server.check_answers()
    _progress(f"{IMPL_LABELS[impl]}: ready in {start_s:.1f} s, {checked} answers match the model")
    bodies = [server.body(ride) for ride in model["rides"]]
    return RunningServer(impl, server, proc, log, _server_pids(proc), bodies, start_s, checked)


def bench_interleaved(
    procs: Processes, args: argparse.Namespace, servers: Sequence[RunningServer]
) -> dict[str, Any]:
    """Every phase runs against each server in turn, round after round.

    Both servers stay up (the idle one uses no CPU), so the two measurements of a
    phase are seconds apart: a machine that gets slower or faster over minutes (a
    VM's neighbours) moves both, and the per-round ratio stays honest. The order
    alternates between rounds so neither server always goes first.
    """
    results: dict[str, Any] = {
        s.impl: {"impl": s.impl, "start_s": s.start_s, "answers_checked": s.answers_checked, "phases": []}
        for s in servers
    }
    all_pids = [pid for s in servers for pid in s.pids]
    phases = [("closed", float(c)) for c in args.concurrency] + [("open", r) for r in args.rates]
    for round_no in range(1, args.rounds + 1):
        order = servers if round_no % 2 else list(reversed(servers))
        for mode, value in phases:
            for s in order:
                _wait_idle(all_pids)
                load = f"c={value:g}" if mode == "closed" else f"{value:g}/s"
                what = f"{s.impl} round {round_no} {load}"
                r = run_client(procs, args, s.server.url, s.bodies, mode, value, s.pids, what)
                r["round"] = round_no
                results[s.impl]["phases"].append(r)
                _progress(
                    f"  {what:<28}: {r['throughput']:8.1f} req/s  p50 {_f(r['p50_ms'])} ms"
                    f"  p99 {_f(r['p99_ms'])} ms  errors {r['errors']}  dropped {r['dropped']}"
                )
    return results


def prediction_log_stats(servers: Sequence[RunningServer], results: dict[str, Any]) -> dict[str, Any]:
    """What the logged server says it did with its records (its /metrics), and its segment files.

    A logging cost measured while the log dropped records would be no cost at all: the
    drops are shown beside the throughput. Warm-ups and the answer checks are logged too,
    so ``written`` exceeds the requests answered in the measured phases."""
    out: dict[str, Any] = {}
    for s in servers:
        if s.impl != "ours-logged" or s.server.metrics_url is None:
            continue
        status, raw = _http("GET", s.server.metrics_url)
        outcomes: dict[str, float] = {}
        for line in raw.decode(errors="replace").splitlines():
            if line.startswith("trip_duration_prediction_log_records") and 'outcome="' in line:
                outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
                outcomes[outcome] = outcomes.get(outcome, 0.0) + float(line.rsplit(" ", 1)[1])
        folder = s.log.parent / "prediction-log"
        out = {
            "metrics_status": status,
            "records": outcomes,
            "segments_so_far": len(list(folder.glob("*.parquet"))) if folder.is_dir() else 0,
            "answered_in_measured_phases": sum(p["ok"] for p in results[s.impl]["phases"]),
        }
    return out


def _wait_idle(pids: Sequence[int], limit_s: float = 20.0) -> float:
    """Wait (at most limit_s) until the server uses < 10% of a core over 0.5 s.

    A phase the server could not keep up with leaves requests queued in it;
    they must not be served on the next phase's time.
    """
    import psutil

    servers = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            servers.append(psutil.Process(pid))

    def cpu() -> float:
        total = 0.0
        for proc in servers:
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                total += t.user + t.system
        return total

    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        before = cpu()
        time.sleep(0.5)
        if cpu() - before < 0.05:
            break
    return time.monotonic() - started


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


# ============================================================================ parent: model
def build_model(procs: Processes, args: argparse.Namespace, model_dir: Path) -> dict[str, Any]:
    info_file = model_dir / MODEL_INFO_FILE
    if info_file.is_file() and (model_dir / MODEL_FILE).is_file():
        info = json.loads(info_file.read_text())
        if info.get("candidate") == args.candidate:
            _progress(f"model: reusing {model_dir / MODEL_FILE} (sha256 {info['sha256'][:12]})")
            return info
    spec = {
        "model_dir": str(model_dir),
        "data_dir": str(args.data_dir),
        "candidate": args.candidate,
        "n_rides": args.rides,
        "seed": args.seed,
        "generated_rows": args.generated_rows,
    }
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "build", "--spec", json.dumps(spec)]
    _progress(f"model: training {args.candidate} ...")
    procs.run(cmd, _child_env(), 1800.0, "model build")
    return json.loads(info_file.read_text())


def register_model(procs: Processes, model: dict[str, Any], model_dir: Path) -> dict[str, Any]:
    """The model as an MLflow registered version (for ``mlflow models serve``), once per model dir."""
    if "mlflow" in model and (model_dir / MLFLOW_DB).is_file():
        _progress(f"mlflow: reusing {model['mlflow']['model_uri']} in {model_dir / MLFLOW_DB}")
        return model
    spec = json.dumps({"model_dir": str(model_dir)})
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "register", "--spec", spec]
    _progress("mlflow: registering the model (sqlite registry beside it) ...")
    procs.run(cmd, _child_env(), 600.0, "model registration")
    return json.loads((model_dir / MODEL_INFO_FILE).read_text())


# ============================================================================ parent: report
def _phase(
    results: dict[str, Any], impl: str, mode: str, value: float, round_no: int
) -> dict[str, Any] | None:
    for p in results.get(impl, {}).get("phases", []):
        load = p["concurrency"] if mode == "closed" else p["offered_rate"]
        if p["mode"] == mode and load == value and p.get("round", 1) == round_no:
            return p
    return None


def _closed(result: dict[str, Any], round_no: int) -> list[dict[str, Any]]:
    return [p for p in result["phases"] if p["mode"] == "closed" and p.get("round", 1) == round_no]


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


#: (numerator, denominator, goal on the median of the per-round max-throughput ratio)
RATIO_GOALS: tuple[tuple[str, str, float], ...] = (
    ("ours", "baseline", GOAL_THROUGHPUT_RATIO),
    ("ours-logged", "baseline", GOAL_THROUGHPUT_RATIO),
    ("ours", "mlflow", GOAL_THROUGHPUT_RATIO),
    ("ours-logged", "mlflow", GOAL_THROUGHPUT_RATIO),
    ("ours-logged", "ours", GOAL_LOGGED_THROUGHPUT),
)


def summarize(results: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Ratios per round (every server measured seconds apart), and the goals on their median."""
    rounds = range(1, args.rounds + 1)
    summary: dict[str, Any] = {"throughput_ratio": {}, "goals": {}, "max_throughput": {}}
    for impl in results:
        summary["max_throughput"][impl] = [
            max((p["throughput"] for p in _closed(results[impl], r)), default=0.0) for r in rounds
        ]
    best = summary["max_throughput"]
    for top, bottom, goal in RATIO_GOALS:
        if top not in results or bottom not in results:
            continue
        pair = f"{top}/{bottom}"
        summary["throughput_ratio"][pair] = {}
        for c in args.concurrency:
            ratios = []
            for r in rounds:
                a, b = _phase(results, top, "closed", c, r), _phase(results, bottom, "closed", c, r)
                if a and b and b["throughput"] > 0:
                    ratios.append(a["throughput"] / b["throughput"])
            summary["throughput_ratio"][pair][str(c)] = ratios
        per_round = [o / b for o, b in zip(best[top], best[bottom], strict=True) if b > 0]
        if per_round:
            ratio = _median(per_round)
            what = "unlogged max throughput" if bottom == "ours" else f"{bottom}'s max throughput"
            summary["goals"][f"throughput {pair}"] = {
                "goal": f"{top} >= {goal:g}x the {what} (median of rounds)",
                "ratio": ratio,
                "per_round": per_round,
                "met": ratio >= goal,
            }
    for impl in OURS:
        at_goal = [p for r in rounds if (p := _phase(results, impl, "open", GOAL_RATE, r))]
        if not at_goal:
            continue
        worst = max(at_goal, key=lambda p: math.inf if p["p99_ms"] is None else p["p99_ms"])
        saturated = any(_saturated(p) for p in at_goal)
        others = {
            other: max(
                (p["p99_ms"] for r in rounds if (p := _phase(results, other, "open", GOAL_RATE, r))),
                key=lambda v: math.inf if v is None else v,
                default=None,
            )
            for other in results
            if other != impl
        }
        summary["goals"][f"p99 {impl}"] = {
            "goal": f"{impl} p99 < {GOAL_P99_MS:g} ms at {GOAL_RATE:g} req/s (every round)",
            "p99_ms": worst["p99_ms"],
            "p99_ms_per_round": [p["p99_ms"] for p in at_goal],
            "p99_ms_median": _median([p["p99_ms"] for p in at_goal if p["p99_ms"] is not None] or [math.inf]),
            "others_worst_p99_ms": others,
            "saturated": saturated,
            "met": worst["p99_ms"] is not None and worst["p99_ms"] < GOAL_P99_MS and not saturated,
        }
    return summary


def _saturated(p: dict[str, Any]) -> bool:
    """An open-loop phase the server could not keep up with (fell behind, dropped or failed requests)."""
    return bool(p["dropped"] or p["errors"] or p["throughput"] < 0.95 * p["offered_rate"])


def print_report(report: dict[str, Any]) -> None:
    meta, results, summary, calib = (
        report["meta"],
        report["results"],
        report["summary"],
        report["calibration"],
    )
    print()
    print(
        f"serving benchmark: single-row requests, 1 worker each, {HOST}, {meta['cpus']} CPUs, "
        f"Python {meta['python']}, load average at start {meta['loadavg_start'][0]:.2f}"
    )
    model = meta["model"]
    print(f"model: {model['candidate']} sha256 {model['sha256'][:12]}, {model['data_source']}")
    print(f"OMP_NUM_THREADS for both servers: {meta['omp_num_threads'] or 'unset (library default)'}")
    if calib:
        ka, cl = calib["keepalive"], calib["close"]
        print(
            f"client ceiling vs a trivial endpoint (concurrency {ka['concurrency']}): "
            f"keep-alive {ka['throughput']:.0f} req/s "
            f"({_f(ka['client_cpu_us_per_req'], 0)} us client CPU/req), "
            f"new connection per request {cl['throughput']:.0f} req/s "
            f"({_f(cl['client_cpu_us_per_req'], 0)} us/req)"
        )
    head = (
        f"{'implementation, round':<30}{'load':>9}{'req/s':>9}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}"
        f"{'max ms':>9}{'err':>6}{'drop':>6}{'srv ms/req':>11}{'srv cpu':>8}{'cli cpu':>8}{'other':>7}"
        f"{'lag99':>7}{'load1':>6}"
    )
    print()
    print(head)
    print("-" * len(head))
    impl_order = {impl: i for i, impl in enumerate(results)}
    for mode in ("closed", "open"):
        rows = [(impl, p) for impl, r in results.items() for p in r["phases"] if p["mode"] == mode]
        rows.sort(
            key=lambda row: (
                row[1]["concurrency"] if mode == "closed" else row[1]["offered_rate"],
                row[1].get("round", 1),
                impl_order[row[0]],
            )
        )
        for impl, p in rows:
            load = f"c={p['concurrency']}" if mode == "closed" else f"{p['offered_rate']:g}/s"
            mark = "*" if mode == "open" and _saturated(p) else ""
            label = f"{IMPL_LABELS[impl]} r{p.get('round', 1)}"
            print(
                f"{label:<30}{load:>9}{p['throughput']:>8.1f}{mark:1}{_f(p['p50_ms']):>9}"
                f"{_f(p['p90_ms']):>9}{_f(p['p99_ms']):>9}{_f(p['max_ms']):>9}{p['errors']:>6}"
                f"{p['dropped']:>6}{_f(p['server_cpu_ms_per_req']):>11}{_pct(p['server_cpu_util']):>8}"
                f"{_pct(p['client_cpu_util']):>8}{p['other_cpu_s'] / p['elapsed_s']:>7.2f}"
                f"{_f(p['send_lag_p99_ms']):>7}{p['load1_end']:>6.2f}"
            )
        print()
    print(
        "load: c=N closed loop with N requests in flight; R/s open loop at R requests/s. "
        "* = the server could not keep up (achieved < 95% of offered, or drops/errors).\n"
        "srv ms/req: server CPU per request; srv/cli cpu: share of one core; other: cores used by "
        "everything else meanwhile; lag99: p99 client send lag behind schedule (ms)."
    )
    print()
    for pair, per_c in summary["throughput_ratio"].items():
        ratios = "; ".join(f"c={c}: " + " ".join(f"x{v:.2f}" for v in values) for c, values in per_c.items())
        print(f"throughput {pair} per round: {ratios or '-'}")
    for name, g in summary["goals"].items():
        if name.startswith("throughput"):
            rounds_text = ", ".join(f"x{v:.2f}" for v in g["per_round"])
            verdict = "MET" if g["met"] else f"NOT MET (x{g['ratio']:.2f})"
            print(f"goal {g['goal']}: x{g['ratio']:.2f} (rounds: {rounds_text}) -> {verdict}")
            continue
        p99 = g["p99_ms"]
        if g["met"]:
            verdict = "MET"
        elif p99 is None:
            verdict = "NOT MET (no successful request)"
        else:
            verdict = f"NOT MET ({p99 / GOAL_P99_MS:.1f}x the goal, {p99 - GOAL_P99_MS:+.1f} ms)"
            verdict += "; the server could not keep up with the rate" if g["saturated"] else ""
        rounds_text = ", ".join(_f(v) for v in g["p99_ms_per_round"])
        others = ", ".join(f"{impl} {_f(v)}" for impl, v in g["others_worst_p99_ms"].items())
        print(
            f"goal {g['goal']}: worst {_f(p99)} ms (rounds: {rounds_text}; "
            f"others' worst: {others}) -> {verdict}"
        )
    if report.get("prediction_log"):
        print(f"prediction log of ours-logged: {report['prediction_log']}")
    print(f"client headroom: {report['client_check']}")
    others = max(p["other_cpu_s"] / p["elapsed_s"] for r in results.values() for p in r["phases"])
    print(
        f"load average at end {meta['loadavg_end'][0]:.2f} (it counts this bench's own server and client); "
        f"other processes used at most {others:.2f} cores in any phase"
        + (" -- NOISY: rerun on a quiet machine" if others > 0.25 else " (quiet)")
    )


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def client_check(calib: dict[str, Any], results: dict[str, Any]) -> str:
    """One line: could the client have gone faster than in any phase it drove?"""
    phases = [p for r in results.values() for p in r["phases"]]
    if not phases:
        return "-"
    busiest = max(p["client_cpu_util"] or 0.0 for p in phases)
    fastest = max(max(p["throughput"] for p in phases), 1e-9)
    parts = [f"client CPU <= {busiest * 100:.0f}% of one core in every phase"]
    if calib:
        ceiling = min(calib["keepalive"]["throughput"], calib["close"]["throughput"])
        parts.append(
            f"its ceiling vs a trivial endpoint ({ceiling:.0f} req/s, worst of keep-alive/close) is "
            f"x{ceiling / fastest:.1f} the fastest server rate measured ({fastest:.0f} req/s)"
        )
    lag = max((p["send_lag_p99_ms"] or 0.0 for p in phases if p["mode"] == "open"), default=0.0)
    parts.append(f"open-loop send lag p99 <= {lag:.2f} ms")
    # A client GC pause delays the answers in flight: it matters where it is not small next to
    # the latencies measured (saturated phases queue for seconds, a 20 ms pause is noise there).
    gc_max = max(p.get("client_gc_max_ms") or 0.0 for p in phases)
    gc_hurt = [p for p in phases if (p.get("client_gc_max_ms") or 0.0) > max(5.0, 0.1 * (p["p50_ms"] or 0.0))]
    parts.append(f"longest client GC pause {gc_max:.1f} ms ({len(gc_hurt)} phase(s) where it matters)")
    ok = busiest < 0.8 and (not calib or ceiling >= 2 * fastest) and not gc_hurt
    return ("OK: " if ok else "WARNING, the client may have limited the results: ") + "; ".join(parts)


# ============================================================================ main
def _csv(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        values = [kind(x.strip()) for x in text.split(",") if x.strip()]
        if not values or (kind is not str and any(v <= 0 for v in values)):
            raise argparse.ArgumentTypeError(f"expected positive comma-separated values, got {text!r}")
        return values

    return parse


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="TLC files (green 2021-01/02)")
    p.add_argument("--candidate", default="target_encoded_xgboost", help="candidate model to train and serve")
    p.add_argument("--model-dir", type=Path, default=None, help="keep/reuse the model here (default: temp)")
    p.add_argument("--quick", action="store_true", help="short phases (3 s, 0.5 s warm-up)")
    p.add_argument("--duration", type=float, default=None, help="seconds per measured phase (default 10)")
    p.add_argument("--warmup", type=float, default=None, help="warm-up seconds before each phase (default 2)")
    p.add_argument("--rates", type=_csv(float), default=[50.0, 100.0, 200.0], help="open-loop req/s")
    p.add_argument("--concurrency", type=_csv(int), default=[8, 32], help="closed-loop requests in flight")
    p.add_argument("--impls", type=_csv(str), default=["ours", "baseline"], help=f"any of {','.join(IMPLS)}")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds of every phase (default 3)")
    p.add_argument("--request-timeout", type=float, default=10.0, help="seconds before a request fails")
    p.add_argument("--max-inflight", type=int, default=256, help="open loop: outstanding requests cap")
    p.add_argument("--rides", type=int, default=1000, help="distinct validation rides cycled as requests")
    p.add_argument("--omp-num-threads", type=int, default=None, help="set OMP_NUM_THREADS in both servers")
    p.add_argument(
        "--prediction-log",
        choices=("on", "off", "both"),
        nargs="?",
        const="on",
        default="off",
        help="our server logs every prediction (on; alone = on), not (off, default), or both servers\n"
        "side by side (both: ours and ours-logged, to measure what the log costs)",
    )
    p.add_argument(
        "--mlflow-baseline",
        action="store_true",
        help="also `mlflow models serve` (one worker) of the same model, registered in a sqlite registry",
    )
    p.add_argument("--no-calibration", action="store_true", help="skip the trivial-endpoint client check")
    p.add_argument("--generated-rows", type=int, default=20_000, help="rows/month if data is generated")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--keep-logs", type=Path, default=None, help="copy server logs into this directory")
    p.add_argument("--json-out", type=Path, default=None)
    p.add_argument("--child", choices=("build", "register", "client", "trivial"), help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return args
    unknown = set(args.impls) - set(IMPLS)
    if unknown:
        p.error(f"--impls: unknown {', '.join(sorted(unknown))}; choose from {', '.join(IMPLS)}")
    impls = list(dict.fromkeys(args.impls))
    if "ours" in impls and args.prediction_log != "off":
        # on: our server is the logged one; both: the two side by side, unlogged first.
        at = impls.index("ours")
        impls[at : at + 1] = ["ours-logged"] if args.prediction_log == "on" else ["ours", "ours-logged"]
    if args.mlflow_baseline and "mlflow" not in impls:
        impls.append("mlflow")
    args.impls = list(dict.fromkeys(impls))
    args.duration = args.duration or (3.0 if args.quick else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 2.0)
    args.calibration_duration = 2.0 if args.quick else 5.0
    args.rounds = args.rounds or (1 if args.quick else 3)
    if not 0 < args.duration <= 600 or not 0 <= args.warmup <= 120:
        p.error("--duration must be in (0, 600] s and --warmup in [0, 120] s")
    return args


def check_dependencies(impls: Sequence[str]) -> None:
    needed = {"aiohttp": "the load client", "psutil": "server CPU accounting"}
    if "baseline" in impls:
        needed |= {"flask": "the baseline app", "gunicorn": "the baseline's server"}
    missing = []
    for module, why in needed.items():
        try:
            __import__(module)
        except ImportError:
            missing.append(f"{module} ({why})")
    if missing:
        raise SystemExit(f"missing: {', '.join(missing)}; install the dev extra: pip install -e '.[dev]'")


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for dist in (
        "kserve",
        "fastapi",
        "uvicorn",
        "flask",
        "gunicorn",
        "xgboost",
        "mlflow",
        "pandas",
        "numpy",
        "aiohttp",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        spec = json.loads(args.spec)
        children = {"build": child_build, "register": child_register, "client": child_client}
        {**children, "trivial": child_trivial}[args.child](spec)
        return 0
    check_dependencies(args.impls)

    def on_sigterm(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)
    procs = Processes()
    scratch = Path(tempfile.mkdtemp(prefix="bench_serving_"))
    if args.keep_logs:
        args.keep_logs.mkdir(parents=True, exist_ok=True)
    try:
        loadavg_start = os.getloadavg()
        if loadavg_start[0] > 1.0:
            _progress(f"note: 1-minute load average is {loadavg_start[0]:.2f}: other work is running")
        model_dir = args.model_dir or scratch / "model"
        model = build_model(procs, args, model_dir)
        if "mlflow" in args.impls:
            model = register_model(procs, model, model_dir)
        calib: dict[str, Any] = {}
        if not args.no_calibration:
            _progress("calibrating the load client ...")
            calib = calibrate(procs, args, [json.dumps({"instances": [r]}) for r in model["rides"]], scratch)
        servers = [start_server(procs, args, impl, model, scratch) for impl in args.impls]
        log_stats: dict[str, Any] = {}
        try:
            results = bench_interleaved(procs, args, servers)
            log_stats = prediction_log_stats(servers, results)
        finally:
            for running in servers:
                procs.stop(running.proc)
                if args.keep_logs:
                    shutil.copy(running.log, Path(args.keep_logs) / running.log.name)
        report = {
            "meta": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
                "versions": _versions(),
                "omp_num_threads": args.omp_num_threads or os.environ.get("OMP_NUM_THREADS"),
                "loadavg_start": loadavg_start,
                "loadavg_end": os.getloadavg(),
                "duration_s": args.duration,
                "rounds": args.rounds,
                "warmup_s": args.warmup,
                "model": {k: v for k, v in model.items() if k not in ("rides", "expected_minutes")},
                "n_rides": len(model["rides"]),
            },
            "calibration": calib,
            "results": results,
            "prediction_log": log_stats,
        }
        report["summary"] = summarize(results, args)
        report["client_check"] = client_check(calib, results)
        print_report(report)
        if args.json_out:
            args.json_out.write_text(json.dumps(report, indent=2))
            print(f"wrote {args.json_out}")
        return 0
    except KeyboardInterrupt:
        _progress("interrupted: stopping every process this bench started")
        return 130
    finally:
        procs.stop_all()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
