"""The traffic splitter with real upstream processes on 127.0.0.1: split, headers, errors, counters.

The upstreams here are tiny stdlib HTTP servers speaking the KServe v1/v2
shapes (``FAKE_PREDICTOR``), started as separate processes so the proxy's
connection handling is exercised for real. ``test_local_stack.py`` reuses them
and also runs the real predictor.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

import httpx
import pytest

from serving.deployment_state import Revision
from serving.traffic_splitter import (
    CANARY,
    CHAMPION,
    Route,
    RoutingTable,
    SplitterServer,
    TrafficSplitter,
    split_point,
)

FAKE_PREDICTOR = r"""
import json, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
port, version = int(args["--http_port"]), args.get("--model-version", "0")
if "broken" in args.get("--model-uri", ""):
    print(f"fake predictor: cannot serve {args['--model-uri']}: no model file", file=sys.stderr)
    sys.exit(1)
if "slow" in args.get("--model-uri", ""):
    time.sleep(30)  # a model that takes long to load

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like a real predictor
    wbufsize = 1 << 16  # one write per response (headers + body): no Nagle/delayed-ACK stalls
    disable_nagle_algorithm = True

    def log_message(self, *_):
        pass

    def reply(self, status, document):
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.send_header("x-upstream-port", str(port))
        self.send_header("x-model-version", version)  # as the real predictor does
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path in ("/v2/health/ready", "/v2/models/duration/ready"):
            self.reply(200, {"name": "duration", "ready": True})
        else:
            self.reply(404, {"error": f"Model with name {self.path} does not exist."})

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("content-length", 0)))
        self.served = getattr(self, "served", 0) + 1  # requests on this connection
        if self.path == "/v1/models/dropper:predict" and self.served > 1:
            # What uvicorn did after a 500: the keep-alive connection is gone when it is reused.
            self.close_connection = True
            return
        if self.path == "/v1/models/dropper:predict":
            self.path = "/v1/models/duration:predict"
        if self.path == "/v1/models/boom:predict":
            return self.reply(500, {"error": "boom"})
        if self.path not in ("/v1/models/duration:predict", "/v2/models/duration/infer"):
            return self.reply(404, {"error": f"no model at {self.path}"})
        try:
            trips = json.loads(raw)["instances"]
        except (ValueError, KeyError, TypeError):
            return self.reply(400, {"error": "expected {\"instances\": [...]}"})
        self.reply(200, {"predictions": [1.0 * len(trips)], "model_version": version})

ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fake_predictor_command(revision: Revision, port: int) -> list[str]:
    """Same flags as ``python -m serving``, served by ``FAKE_PREDICTOR``."""
    return [
        sys.executable,
        "-c",
        FAKE_PREDICTOR,
        "--http_port",
        str(port),
        "--model-version",
        revision.model_version,
        "--model-uri",
        revision.model_uri,
    ]


def wait_ready(url: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/v2/health/ready", timeout=1).status_code == 200:
                return
        time.sleep(0.02)
    raise TimeoutError(f"{url} not ready after {timeout} s")


@contextlib.contextmanager
def running(command: Sequence[str]) -> Iterator[subprocess.Popen]:
    process = subprocess.Popen(command, start_new_session=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)


def rev(version: str) -> Revision:
    return Revision(model_version=version, model_uri=f"/models/{version}", sha256=f"{int(version):064x}")


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, str]]:
    """Two fake predictors: model version 1 (champion) and 2 (canary), as base URLs."""
    urls = {version: f"http://127.0.0.1:{free_port()}" for version in ("1", "2")}
    with contextlib.ExitStack() as stack:
        for version, url in urls.items():
            stack.enter_context(running(fake_predictor_command(rev(version), int(url.rsplit(":", 1)[1]))))
        for url in urls.values():
            wait_ready(url)
        yield urls


@contextlib.contextmanager
def fake_upstream(revision: Revision, port: int) -> Iterator[str]:
    """One more fake predictor for ``revision`` on ``port``, ready; stopped on exit."""
    url = f"http://127.0.0.1:{port}"
    with running(fake_predictor_command(revision, port)):
        wait_ready(url)
        yield url


def table(upstreams: dict[str, str], canary_percent: int, generation: int = 1) -> RoutingTable:
    """Champion version 1 and canary version 2 (also routed, maybe at 0%)."""
    champion, canary = Route(CHAMPION, rev("1"), upstreams["1"]), Route(CANARY, rev("2"), upstreams["2"])
    return RoutingTable(champion, canary, canary_percent, generation)


@pytest.fixture
def splitter_server() -> Iterator[SplitterServer]:
    server = SplitterServer(TrafficSplitter(seed=7), port=0)
    server.start()
    try:
        yield server
    finally:
        server.stop()


PREDICT = "/v1/models/duration:predict"
TRIP = {"instances": [{"PULocationID": 43, "DOLocationID": 151, "trip_distance": 1.2}]}


def test_split_follows_canary_percent_and_counts_match(upstreams, splitter_server):
    splitter_server.splitter.apply_routes(table(upstreams, canary_percent=20))
    n, p = 2000, 0.20
    seen: Counter[tuple[str, str]] = Counter()
    with httpx.Client(base_url=splitter_server.url, timeout=10) as client:
        for _ in range(n):
            response = client.post(PREDICT, json=TRIP)
            assert response.status_code == 200
            revision, version = response.headers["x-taxi-revision"], response.headers["x-model-version"]
            assert response.json()["model_version"] == version  # the header tells the truth
            seen[(revision, version)] += 1
        status = client.get("/status").json()
    assert set(seen) == {(CHAMPION, "1"), (CANARY, "2")}
    bound = 3 * math.sqrt(n * p * (1 - p))  # ~54 requests
    assert abs(seen[(CANARY, "2")] - n * p) <= bound, seen
    counted = {(row["revision"], row["model_version"]): row["requests"] for row in status["revisions"]}
    assert counted == dict(seen)
    assert status["canary_percent"] == 20 and status["champion_percent"] == 80
    assert status["champion"]["model_version"] == "1" and status["canary"]["model_version"] == "2"
    for row in status["revisions"]:
        assert row["errors"] == 0 and row["latency_ms"]["p50"] is not None


def test_same_seed_same_sequence(upstreams):
    def run() -> list[str]:
        server = SplitterServer(TrafficSplitter(table(upstreams, 50), seed=123), port=0)
        server.start()
        try:
            with httpx.Client(base_url=server.url) as client:
                return [client.post(PREDICT, json=TRIP).headers["x-taxi-revision"] for _ in range(40)]
        finally:
            server.stop()

    first = run()
    assert first == run() and set(first) == {CHAMPION, CANARY}


def test_a_named_request_meets_the_same_revision_in_any_order_and_at_any_seed(upstreams):
    """The split of requests with an id is a hash, not a coin: a replay's canary sees the same trips."""
    ids = [f"green-2021-03-{n:06d}" for n in range(300)]

    def run(seed: int, order: list[str], header: str) -> dict[str, str]:
        server = SplitterServer(TrafficSplitter(table(upstreams, 30), seed=seed), port=0)
        server.start()
        try:
            with httpx.Client(base_url=server.url) as client:
                return {
                    i: client.post(PREDICT, json=TRIP, headers={header: i}).headers["x-taxi-revision"]
                    for i in order
                }
        finally:
            server.stop()

    first = run(1, ids, "x-request-id")
    assert run(2, ids[::-1], "x-request-id") == first
    assert run(3, ids, "ce-id") == first  # a CloudEvent's id names the request as well
    canary = sum(role == CANARY for role in first.values())
    assert abs(canary - 90) <= 3 * math.sqrt(300 * 0.3 * 0.7), canary  # still 30% of the trips
    # Keyed by the canary's version: the next canary is judged on a share of its own.
    others = [i for i in ids if split_point(i.encode(), "3") * 100 < 30]
    mine = [i for i in ids if first[i] == CANARY]
    assert others != mine and len(set(others) & set(mine)) < len(mine)


def test_upstream_4xx_passes_through_and_next_request_works(upstreams, splitter_server):
    splitter_server.splitter.apply_routes(table(upstreams, canary_percent=0))
    with httpx.Client(base_url=splitter_server.url) as client:
        bad = client.post(PREDICT, content=b"{not json", headers={"content-type": "application/json"})
        assert bad.status_code == 400
        assert bad.json() == {"error": 'expected {"instances": [...]}'}
        assert bad.headers["x-taxi-revision"] == CHAMPION
        missing = client.post("/v1/models/n%6Fpe:predict?verbose=1", json=TRIP)
        assert missing.status_code == 404  # path and query reach the upstream byte for byte:
        assert missing.json() == {"error": "no model at /v1/models/n%6Fpe:predict?verbose=1"}
        good = client.post(PREDICT, json=TRIP)
        assert good.status_code == 200 and good.json()["predictions"] == [1.0]
        boom = client.post("/v1/models/boom:predict", json=TRIP)
        assert boom.status_code == 500
        v2 = client.post("/v2/models/duration/infer", json=TRIP)
        assert v2.status_code == 200 and v2.headers["x-model-version"] == "1"
        status = client.get("/status").json()
    (row,) = [row for row in status["revisions"] if row["revision"] == CHAMPION]
    assert (row["requests"], row["client_errors"], row["errors"]) == (5, 2, 1)


def test_a_dead_revision_costs_no_request_its_share_goes_to_the_live_one(upstreams, splitter_server):
    dead = f"http://127.0.0.1:{free_port()}"
    splitter_server.splitter.apply_routes(
        RoutingTable(Route(CHAMPION, rev("1"), upstreams["1"]), Route(CANARY, rev("9"), dead), 100, 3)
    )
    with httpx.Client(base_url=splitter_server.url) as client:
        first = client.post(PREDICT, json=TRIP)
        # The first request finds the canary dead and is answered by the champion instead.
        assert first.status_code == 200, first.text
        assert first.headers["x-taxi-revision"] == CHAMPION
        assert first.headers["x-taxi-failover-from"] == CANARY
        # From then on the canary's 100% go straight to the champion while its probe fails.
        later = [client.post(PREDICT, json=TRIP) for _ in range(20)]
        assert {(r.status_code, r.headers["x-taxi-revision"]) for r in later} == {(200, CHAMPION)}
        assert all("x-taxi-failover-from" not in r.headers for r in later)
        status = client.get("/status").json()
        metrics = client.get("/metrics").text
    assert status[CANARY]["healthy"] is False
    assert dead.rsplit(":", 1)[1] in status[CANARY]["last_error"]
    assert status[CHAMPION]["healthy"] is True
    (canary_row,) = [row for row in status["revisions"] if row["revision"] == CANARY]
    assert (canary_row["routed"], canary_row["healthy"], canary_row["failovers"]) == (True, False, 1)
    assert 'taxi_splitter_revision_healthy{revision="canary",model_version="9"} 0' in metrics
    assert 'taxi_splitter_revision_healthy{revision="champion",model_version="1"} 1' in metrics
    assert 'taxi_splitter_failovers_total{revision="canary",model_version="9"} 1' in metrics
    assert "taxi_splitter_generation 3" in metrics


def test_a_revision_is_routed_again_once_its_probe_passes(upstreams, splitter_server):
    port = free_port()
    revived = f"http://127.0.0.1:{port}"
    splitter_server.splitter.apply_routes(
        RoutingTable(Route(CHAMPION, rev("1"), upstreams["1"]), Route(CANARY, rev("9"), revived), 100, 4)
    )
    with httpx.Client(base_url=splitter_server.url) as client:
        assert client.post(PREDICT, json=TRIP).headers["x-taxi-revision"] == CHAMPION
        with fake_upstream(rev("9"), port):
            deadline = time.monotonic() + 10
            while client.get("/status").json()[CANARY]["healthy"] is False:
                assert time.monotonic() < deadline, "the probe never saw the canary come back"
                time.sleep(0.05)
            assert client.post(PREDICT, json=TRIP).headers["x-taxi-revision"] == CANARY


def test_with_no_live_revision_the_502_names_the_one_tried(splitter_server):
    dead = f"http://127.0.0.1:{free_port()}"
    splitter_server.splitter.apply_routes(RoutingTable(Route(CHAMPION, rev("7"), dead), None, 0, 3))
    with httpx.Client(base_url=splitter_server.url) as client:
        response = client.post(PREDICT, json=TRIP)
        assert response.status_code == 502
        error = response.json()
        assert error["revision"] == CHAMPION and error["model_version"] == "7"
        assert "champion revision (model version 7)" in error["error"] and dead in error["error"]
        assert response.headers["x-taxi-revision"] == CHAMPION
        metrics = client.get("/metrics").text
    assert 'taxi_splitter_errors_total{revision="champion",model_version="7"} 1' in metrics


def test_no_champion_means_503_and_unhealthy(splitter_server):
    with httpx.Client(base_url=splitter_server.url) as client:
        assert client.get("/healthz").status_code == 503
        response = client.post(PREDICT, json=TRIP)
        assert response.status_code == 503 and "no champion" in response.json()["error"]
        assert client.get("/status").json()["unrouted_requests"] == 1
        assert client.get("/elsewhere").status_code == 404


def test_reload_switches_every_following_request(upstreams, splitter_server):
    splitter = splitter_server.splitter
    with httpx.Client(base_url=splitter_server.url) as client:
        splitter.apply_routes(table(upstreams, canary_percent=100))
        assert {client.post(PREDICT, json=TRIP).headers["x-model-version"] for _ in range(50)} == {"2"}
        splitter.apply_routes(RoutingTable(Route(CHAMPION, rev("1"), upstreams["1"]), None, 0, 5))
        assert {client.post(PREDICT, json=TRIP).headers["x-taxi-revision"] for _ in range(50)} == {CHAMPION}
        assert client.get("/healthz").json() == {"status": "ok", "generation": 5}


def test_routing_table_refuses_half_states(upstreams):
    with pytest.raises(ValueError, match="needs a champion"):
        RoutingTable(None, Route(CANARY, rev("2"), upstreams["2"]), 10)
    with pytest.raises(ValueError, match="no canary"):
        RoutingTable(Route(CHAMPION, rev("1"), upstreams["1"]), None, 10)


def test_status_json_is_plain_json(upstreams, splitter_server):
    splitter_server.splitter.apply_routes(table(upstreams, canary_percent=0))
    document = json.loads(httpx.get(splitter_server.url + "/status").text)
    assert document["champion"]["url"] == upstreams["1"]
    assert document["canary"]["in_flight"] == 0


def test_a_keep_alive_connection_the_predictor_dropped_is_retried_on_a_fresh_one(upstreams, splitter_server):
    splitter_server.splitter.apply_routes(table(upstreams, canary_percent=0))
    with httpx.Client(base_url=splitter_server.url) as client:
        answers = [client.post("/v1/models/dropper:predict", json=TRIP) for _ in range(30)]
        status = client.get("/status").json()
    # Every request after the first on a pooled connection is dropped unanswered upstream.
    assert [a.status_code for a in answers] == [200] * 30
    (row,) = [row for row in status["revisions"] if row["revision"] == CHAMPION]
    assert (row["requests"], row["errors"]) == (30, 0)
    assert status[CHAMPION]["healthy"] is True  # a dropped connection is not a dead predictor


def _raw_exchange(url: str, head: bytes, body_parts: Sequence[bytes]) -> bytes:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head)
        for part in body_parts:
            try:
                sock.sendall(part)
            except (BrokenPipeError, ConnectionResetError):
                break  # refused early: the splitter stopped reading
        sock.settimeout(10)
        return sock.recv(65536)


@pytest.fixture
def small_limit_server(upstreams) -> Iterator[SplitterServer]:
    server = SplitterServer(TrafficSplitter(table(upstreams, canary_percent=0), max_body_bytes=1000), port=0)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_a_body_over_the_limit_is_refused_with_413_before_it_is_read(small_limit_server):
    # Announced as 20 MB, of which only 2 KB are ever sent: the answer cannot wait for the rest.
    head = (
        f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Content-Length: 20000000\r\n\r\n"
    ).encode()
    answer = _raw_exchange(small_limit_server.url, head, [b"x" * 2048])
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"larger than the limit of 1000 bytes" in answer
    with httpx.Client(base_url=small_limit_server.url) as client:
        assert client.post(PREDICT, json=TRIP).status_code == 200  # and it keeps serving


def test_a_chunked_body_is_refused_as_soon_as_it_passes_the_limit(small_limit_server):
    head = f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    chunk = b"400\r\n" + b"x" * 1024 + b"\r\n"  # 1 KB chunks, never terminated
    answer = _raw_exchange(small_limit_server.url, head, [chunk, chunk])
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    with httpx.Client(base_url=small_limit_server.url) as client:
        small = {"instances": [TRIP["instances"][0]] * 3}
        assert client.post(PREDICT, json=small).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", PREDICT, "POST"),
        ("PUT", "/v2/models/duration/infer", "POST"),
        ("DELETE", "/v2/models/duration", "GET, HEAD"),
        ("POST", "/status", "GET, HEAD"),
        ("POST", "/metrics", "GET, HEAD"),
    ],
)
def test_a_method_a_path_does_not_take_is_405(upstreams, splitter_server, method: str, path: str, allow: str):
    splitter_server.splitter.apply_routes(table(upstreams, canary_percent=0))
    with httpx.Client(base_url=splitter_server.url) as client:
        response = client.request(method, path)
        assert response.status_code == 405
        assert response.headers["allow"] == allow
        assert list(response.json()) == ["error"] and method in response.json()["error"]
        assert client.post(PREDICT, json=TRIP).status_code == 200
        rows = client.get("/status").json()["revisions"]
    assert sum(row["requests"] for row in rows) == 1  # nothing was forwarded


def _drift_verdict(version: str = "3") -> dict:
    """A stored monitor verdict, as ``components.monitoring.monitor`` writes it (drift on distance)."""
    feature = {"statistic": 0.31, "threshold": 0.05, "effect": 0.31, "min_effect": 0.1, "drifted": True}
    return {
        "model_version": version,
        "window": {"start": "2021-03-01T00:00:00+00:00", "end": "", "predictions": 2000, "labelled": 0},
        "verdict": "drift",
        "drift": {"detected": True, "features": {"trip_distance": feature}},
        "accuracy": {"rmse": None, "baseline_rmse": 6.04, "degraded": False, "label_coverage": 0.0},
    }


def test_metrics_serve_the_newest_monitor_verdict_and_say_when_it_is_unreadable(upstreams, tmp_path):
    """What the local Prometheus scrapes for the drift rules: the verdict stored in the monitor folder,
    read at each scrape; an unreadable one is readable=0 and costs neither routing nor the other series."""
    from prometheus_client.parser import text_string_to_metric_families

    from components.monitoring.verdict_store import LATEST_FILE, save_verdict

    monitor_dir = tmp_path / "monitor"
    server = SplitterServer(TrafficSplitter(table(upstreams, 0), monitor_dir=monitor_dir), port=0)
    server.start()

    def scrape(client: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = client.get("/metrics").text
        return {  # parsing the whole exposition is what Prometheus does: it must stay valid
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            before = scrape(client)
            assert before[("taxi_monitor_verdict_readable", ())] == 1
            assert not [name for name, _ in before if name.startswith("taxi_monitor_drift")]  # no verdict yet

            save_verdict(monitor_dir, _drift_verdict("3"))
            stored = scrape(client)
            version = (("model_version", "3"),)
            assert stored[("taxi_monitor_drift_detected", version)] == 1
            feature = (("feature", "trip_distance"), ("model_version", "3"))
            assert stored[("taxi_monitor_feature_drifted", feature)] == 1
            assert stored[("taxi_monitor_drift_effect", feature)] == pytest.approx(0.31)
            assert stored[("taxi_monitor_last_run_timestamp_seconds", version)] == pytest.approx(
                time.time(), abs=120
            )
            assert ("taxi_splitter_generation", ()) in stored  # beside the splitter's own series

            (monitor_dir / LATEST_FILE).write_text('{"verdict": "dri', encoding="utf-8")  # torn by hand
            broken = scrape(client)
            assert broken[("taxi_monitor_verdict_readable", ())] == 0
            assert ("taxi_monitor_drift_detected", version) not in broken
            assert client.post(PREDICT, json=TRIP).status_code == 200

            save_verdict(monitor_dir, {**_drift_verdict("4"), "verdict": "ok"})
            assert scrape(client)[("taxi_monitor_verdict_readable", ())] == 1
    finally:
        server.stop()


def test_metrics_serve_the_canary_judges_decisions(upstreams, tmp_path):
    """The canary rollback alert's series, from the judge's decision files, read at each scrape."""
    from prometheus_client.parser import text_string_to_metric_families

    from components.canary.decision_store import save_decision

    canary_dir = tmp_path / "canary"
    server = SplitterServer(TrafficSplitter(table(upstreams, 0), canary_dir=canary_dir), port=0)
    server.start()
    decision = {
        "champion": "1",
        "canary": "2",
        "percent": 10,
        "verdict": "fail",
        "action": "rollback",
        "next_percent": 0,
        "checks": [{"name": "error_rate", "value": 0.1, "limit": 0.01, "passed": False, "detail": ""}],
        "reason": "rolled back: error_rate",
        "evaluated_at": "2026-12-01T12:00:00+00:00",
    }
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            assert "taxi_canary" not in client.get("/metrics").text  # no decision yet, no series
            save_decision(canary_dir, decision)
            families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
            assert families["taxi_canary_analysis_percent"].samples[0].value == 0
            rolled = families["taxi_canary_last_rollback_timestamp_seconds"].samples[0].value
            assert rolled == datetime(2026, 12, 1, 12, tzinfo=UTC).timestamp()
            assert "taxi_splitter_generation" in families
    finally:
        server.stop()
