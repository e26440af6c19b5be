"""The local stand-in for KServe's traffic split: one HTTP endpoint in front of champion and canary.

On a cluster, Knative routes ``canaryTrafficPercent`` of an InferenceService's
requests to the latest (canary) revision and the rest to the last promoted
(champion) one. Locally this reverse proxy does the same between two predictor
processes, so a client sees one URL whatever the deployment looks like:

* every ``/v1/...`` and ``/v2/...`` request is sent to the canary with
  probability ``canary_percent / 100`` and to the champion otherwise, and the
  response says where it went (``x-taxi-revision``, ``x-model-version``). A
  request that names itself (``x-request-id``, else ``ce-id``) is placed by a
  hash of that id and the canary's version instead of a coin, so the same trips
  split the same way on every run whatever the order or concurrency they arrive
  in (a replay's timeline is reproducible) and a retried request meets the same
  revision; Knative's own split on a cluster is a coin per request;
* upstream answers, 4xx included, are passed through unchanged; with no
  champion at all the answer is 503;
* a request never pays for another one's failure. Predictions are deterministic
  functions of the body and change nothing, so forwarding one twice is safe: a
  pooled keep-alive connection the predictor has closed is retried once on a
  fresh connection, and a predictor that refuses connections is marked unhealthy
  and its share goes to the other live revision until its readiness probe passes
  (``serving/revision_health.py``). Only when no revision can answer does the
  client get 502 (504 on timeout), with a JSON error naming the revision;
* a body over ``max_body_bytes`` is refused with 413 before it is read (by its
  Content-Length, or as soon as a chunked body passes the limit), and a method a
  path does not take gets 405 with ``Allow``;
* ``GET /status`` (JSON) and ``GET /metrics`` (Prometheus text) count requests,
  errors and upstream latency per revision, ``GET /healthz`` says whether a
  champion is routed. With a ``monitor_dir``, ``/metrics`` also serves the newest
  monitor verdict stored there as gauges (``components.monitoring.verdict_metrics``,
  the same series the cluster's inference-log sink serves), read at each scrape;
  a verdict that cannot be read is ``taxi_monitor_verdict_readable 0``. With a
  ``canary_dir``, the canary judge's decisions too (``components.canary.decision_metrics``);
  with an ``autopilot_dir``, the local retraining loop's state (``components.retraining.loop_metrics``).

The routing table is one immutable object swapped in by ``apply_routes``; each
request reads it once, so a reload is never half-applied. The proxy is a bare
ASGI app over one pooled ``aiohttp`` session (keep-alive to every upstream),
served by uvicorn with uvloop/httptools: on loopback it adds well under 2 ms.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import uvicorn
import yarl

from components.canary.decision_metrics import decision_metrics_from
from components.monitoring.verdict_metrics import verdict_metrics_text
from components.monitoring.verdict_store import VerdictStoreError, load_latest
from components.names import (
    CANARY_REVISION,
    CHAMPION_REVISION,
    CLOUDEVENT_ID_HEADER,
    MODEL_VERSION_HEADER,
    REQUEST_ID_HEADER,
    REVISION_HEADER,
)
from components.retraining.loop_metrics import loop_metrics_from
from serving.deployment_state import DeploymentState, Revision
from serving.error_responses import POST_ONLY_SUFFIXES
from serving.revision_health import RevisionHealth

log = logging.getLogger(__name__)

CHAMPION = CHAMPION_REVISION
CANARY = CANARY_REVISION
PROXIED_PREFIXES = ("/v1/", "/v2/")
# Predict / explain / infer paths (by suffix: POST_ONLY_SUFFIXES, the predictor's own rule) take POST
# only; every other path GET or HEAD.
READ_METHODS = ("GET", "HEAD")
#: The predictor refuses batches over 10,000 trips; 10,000 v1 instances with long keys are ~1.5 MB.
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# Hop-by-hop headers belong to one connection and are never forwarded (RFC 9110 7.6.1);
# content-length is recomputed for the body actually sent.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)
# A client's own x-taxi-revision is dropped: only the splitter says which revision answers.
_DROP_FROM_REQUEST = _HOP_BY_HOP | {"host", REVISION_HEADER}
# The splitter's own stamp is authoritative (a predictor may send x-model-version itself).
_DROP_FROM_RESPONSE = _HOP_BY_HOP | {REVISION_HEADER, MODEL_VERSION_HEADER}


@dataclass(frozen=True)
class Route:
    """Where one revision is served: its role, the revision itself and the predictor's base URL."""

    role: str
    revision: Revision
    url: str

    def describe(self) -> str:
        return f"{self.role} revision (model version {self.revision.model_version}) at {self.url}"


@dataclass(frozen=True)
class RoutingTable:
    """Everything a request needs to pick an upstream; replaced whole, never edited."""

    champion: Route | None = None
    canary: Route | None = None
    canary_percent: int = 0
    generation: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.canary_percent <= 100:
            raise ValueError(f"canary_percent must be 0..100, got {self.canary_percent}")
        if self.canary is not None and self.champion is None:
            raise ValueError("a canary route needs a champion route")
        if self.canary is None and self.canary_percent:
            raise ValueError(f"canary_percent is {self.canary_percent} but there is no canary route")

    @classmethod
    def from_state(cls, state: DeploymentState, url_of: Callable[[Revision], str]) -> RoutingTable:
        """The table for a deployment state, given where each revision's predictor listens."""
        champion = Route(CHAMPION, state.champion, url_of(state.champion)) if state.champion else None
        canary = Route(CANARY, state.canary, url_of(state.canary)) if state.canary else None
        return cls(champion, canary, state.canary_percent, state.generation)

    def routes(self) -> tuple[Route, ...]:
        return tuple(route for route in (self.champion, self.canary) if route is not None)


class RevisionCounters:
    """Requests, errors and a bounded window of upstream latencies for one (role, model version)."""

    def __init__(self, window: int) -> None:
        self.requests = 0
        self.errors = 0  # upstream 5xx, unreachable or timed out
        self.client_errors = 0  # upstream 4xx, passed through
        self.failovers = 0  # requests it could not take that the other revision answered
        self.latencies_ms: deque[float] = deque(maxlen=window)
        self.latency_sum_ms = 0.0

    def record(self, status: int, latency_ms: float) -> None:
        self.requests += 1
        if status >= 500:
            self.errors += 1
        elif status >= 400:
            self.client_errors += 1
        self.latencies_ms.append(latency_ms)
        self.latency_sum_ms += latency_ms

    def quantiles(self) -> dict[str, float | None]:
        ordered = sorted(self.latencies_ms)
        return {"p50": _quantile(ordered, 0.50), "p99": _quantile(ordered, 0.99)}


def split_point(request_id: bytes, canary_version: str) -> float:
    """Where a named request falls in [0, 1): below ``canary_percent / 100`` it goes to the canary.

    Keyed by the canary's version, so each canary is judged on its own share of the trips,
    not on the same ids as the canary before it.
    """
    digest = hashlib.blake2b(request_id, digest_size=8, key=canary_version.encode()[:64]).digest()
    return int.from_bytes(digest, "big") / 2**64


_REQUEST_ID = REQUEST_ID_HEADER.encode()
_CLOUDEVENT_ID = CLOUDEVENT_ID_HEADER.encode()


def _request_id(scope: Scope) -> bytes | None:
    """The request's own id (``x-request-id``, else ``ce-id``; ASGI names are lower-case), if it sent one."""
    event_id = None
    for name, value in scope["headers"]:
        if name == _REQUEST_ID and value:
            return value
        if name == _CLOUDEVENT_ID and value and event_id is None:
            event_id = value
    return event_id


def _quantile(ordered: list[float], q: float) -> float | None:
    """Nearest-rank quantile; ``None`` before the first request."""
    if not ordered:
        return None
    return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)], 3)


class TrafficSplitter:
    """ASGI app: splits ``/v1`` and ``/v2`` traffic between champion and canary per the routing table.

    ``seed`` makes the coin for requests without an id reproducible (tests); ``latency_window`` bounds the
    memory used for percentiles; ``upstream_timeout`` is per request, seconds.
    ``apply_routes`` may be called from any thread.
    """

    def __init__(
        self,
        routes: RoutingTable | None = None,
        *,
        seed: int | None = None,
        upstream_timeout: float = 30.0,
        latency_window: int = 2048,
        max_connections_per_upstream: int = 64,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        health: RevisionHealth | None = None,
        monitor_dir: str | os.PathLike[str] | None = None,
        canary_dir: str | os.PathLike[str] | None = None,
        autopilot_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self._routes = routes or RoutingTable()
        self._monitor_dir = Path(monitor_dir) if monitor_dir is not None else None
        self._canary_dir = Path(canary_dir) if canary_dir is not None else None
        self._autopilot_dir = Path(autopilot_dir) if autopilot_dir is not None else None
        self._verdict_problem = ""  # the last unreadable-verdict reason logged (logged once, not per scrape)
        self._max_body_bytes = max_body_bytes
        self._health = health or RevisionHealth()
        self._health_table: RoutingTable | None = None  # the table whose URLs _health tracks
        self._fresh_session: aiohttp.ClientSession | None = None
        self._rng = random.Random(seed)
        self._timeout = aiohttp.ClientTimeout(total=upstream_timeout)
        self._window = latency_window
        self._max_connections = max_connections_per_upstream
        self._session: aiohttp.ClientSession | None = None
        self._counters: dict[tuple[str, str], RevisionCounters] = {}
        self._in_flight: dict[str, int] = {}
        self._unrouted = 0
        self._supervisor: Mapping[str, Any] = {}
        self._reloads = 0

    # ------------------------------------------------------------------ control (any thread)

    @property
    def routes(self) -> RoutingTable:
        return self._routes

    def apply_routes(self, routes: RoutingTable) -> None:
        """Switch every following request to ``routes`` at once (requests in flight finish where they are)."""
        self._routes = routes
        self._reloads += 1

    def in_flight(self, url: str) -> int:
        """Requests currently waiting on the upstream at ``url``: the supervisor drains before stopping it."""
        return self._in_flight.get(url, 0)

    def set_supervisor_report(self, report: Mapping[str, Any]) -> None:
        """What the supervisor last did (shown under ``supervisor`` in ``/status``)."""
        self._supervisor = dict(report)

    # ------------------------------------------------------------------ reports

    def status(self) -> dict[str, Any]:
        """The ``/status`` document: routes, percentages, per-revision counters, supervisor report."""
        table = self._routes
        routed = {(route.role, route.revision.model_version) for route in table.routes()}
        healthy = {
            (route.role, route.revision.model_version): self._health.is_healthy(route.url)
            for route in table.routes()
        }
        return {
            "generation": table.generation,
            "canary_percent": table.canary_percent if table.canary else 0,
            "champion_percent": (100 - table.canary_percent) if table.champion else 0,
            CHAMPION: self._route_status(table.champion),
            CANARY: self._route_status(table.canary),
            "revisions": [
                {
                    "revision": role,
                    "model_version": version,
                    "routed": (role, version) in routed,
                    # Routed but unreachable: its share goes to the other revision until it is ready.
                    "healthy": healthy.get((role, version), False),
                    "requests": counters.requests,
                    "errors": counters.errors,
                    "client_errors": counters.client_errors,
                    "failovers": counters.failovers,
                    "latency_ms": counters.quantiles(),
                }
                for (role, version), counters in self._counters.items()
            ],
            "unrouted_requests": self._unrouted,
            "route_reloads": self._reloads,
            "supervisor": dict(self._supervisor),
        }

    def _route_status(self, route: Route | None) -> dict[str, Any] | None:
        if route is None:
            return None
        return {
            "model_version": route.revision.model_version,
            "model_uri": route.revision.model_uri,
            "sha256": route.revision.sha256,
            "url": route.url,
            "in_flight": self.in_flight(route.url),
            **self._health.of(route.url).report(),
        }

    def metrics_text(self) -> str:
        """Prometheus text exposition of the same counters."""
        table = self._routes
        items = list(self._counters.items())
        lines: list[str] = []
        for name, help_text, count_of in _REVISION_COUNTERS:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
            for (role, version), counters in items:
                lines.append(f"{name}{{{_labels(role, version)}}} {count_of(counters)}")
        lines += [
            "# HELP taxi_splitter_revision_healthy 1 when a routed revision's predictor is reachable.",
            "# TYPE taxi_splitter_revision_healthy gauge",
        ]
        for route in table.routes():
            healthy = 1 if self._health.is_healthy(route.url) else 0
            labels = _labels(route.role, route.revision.model_version)
            lines.append(f"taxi_splitter_revision_healthy{{{labels}}} {healthy}")
        lines += [
            "# HELP taxi_splitter_upstream_latency_ms Upstream round trip; quantiles over the recent window.",
            "# TYPE taxi_splitter_upstream_latency_ms summary",
        ]
        for (role, version), counters in items:
            labels = _labels(role, version)
            for name, value in counters.quantiles().items():
                if value is not None:
                    quantile = "0.5" if name == "p50" else "0.99"
                    lines.append(
                        f'taxi_splitter_upstream_latency_ms{{{labels},quantile="{quantile}"}} {value}'
                    )
            lines.append(f"taxi_splitter_upstream_latency_ms_sum{{{labels}}} {counters.latency_sum_ms:.3f}")
            lines.append(f"taxi_splitter_upstream_latency_ms_count{{{labels}}} {counters.requests}")
        lines += [
            "# HELP taxi_splitter_unrouted_requests_total Requests answered 503: no champion routed.",
            "# TYPE taxi_splitter_unrouted_requests_total counter",
            f"taxi_splitter_unrouted_requests_total {self._unrouted}",
            "# HELP taxi_splitter_canary_percent Share of traffic sent to the canary.",
            "# TYPE taxi_splitter_canary_percent gauge",
            f"taxi_splitter_canary_percent {table.canary_percent if table.canary else 0}",
            "# HELP taxi_splitter_generation Deployment state generation currently routed.",
            "# TYPE taxi_splitter_generation gauge",
            f"taxi_splitter_generation {table.generation}",
        ]
        canary = decision_metrics_from(self._canary_dir) if self._canary_dir is not None else ""
        autopilot = loop_metrics_from(self._autopilot_dir) if self._autopilot_dir is not None else ""
        return "\n".join(lines) + "\n" + self._verdict_text() + canary + autopilot

    def _verdict_text(self) -> str:
        """The newest stored verdict's gauges ("" without a monitor folder)."""
        if self._monitor_dir is None:
            return ""
        try:
            document, readable = load_latest(self._monitor_dir), True
        except VerdictStoreError as exc:
            document, readable = None, False
            if str(exc) != self._verdict_problem:
                log.warning("monitor verdict not exposed: %s", exc)
            self._verdict_problem = str(exc)
        else:
            self._verdict_problem = ""
        return verdict_metrics_text(document, readable=readable)

    # ------------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if kind != "http":
            return
        path: str = scope["path"]
        method: str = scope["method"]
        allowed = _allowed_methods(path)
        if allowed is not None and method not in allowed:
            await _send_json(
                send,
                405,
                {"error": f"{method} is not allowed on {path}; use {' or '.join(allowed)}"},
                [(b"allow", ", ".join(allowed).encode())],
            )
        elif path.startswith(PROXIED_PREFIXES):
            await self._proxy(scope, receive, send)
        elif path == "/status":
            await _send_json(send, 200, self.status())
        elif path == "/metrics":
            await _send(send, 200, self.metrics_text().encode(), b"text/plain; version=0.0.4; charset=utf-8")
        elif path == "/healthz":
            table = self._routes
            ready = table.champion is not None
            body = {"status": "ok" if ready else "no champion routed", "generation": table.generation}
            await _send_json(send, 200 if ready else 503, body)
        else:
            await _send_json(send, 404, {"error": f"no route for {path}; the splitter serves /v1/, /v2/"})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._session = self._new_session()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._health.close()
                for session in (self._session, self._fresh_session):
                    if session is not None:
                        await session.close()
                self._session = self._fresh_session = None
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _new_session(self, fresh_connections: bool = False) -> aiohttp.ClientSession:
        # The retry session opens a new connection every time (force_close); the main one keeps them.
        keep_alive: dict[str, Any] = {"force_close": True} if fresh_connections else {"keepalive_timeout": 30}
        connector = aiohttp.TCPConnector(
            limit=0, limit_per_host=self._max_connections, ttl_dns_cache=None, **keep_alive
        )
        # No decompression and no invented Accept-Encoding/User-Agent: bytes go through as sent.
        return aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            auto_decompress=False,
            skip_auto_headers=("Accept-Encoding", "User-Agent"),
        )

    def _pick(self, table: RoutingTable, request_id: bytes | None) -> Route | None:
        chosen = table.champion
        if table.canary is not None:
            share = (
                self._rng.random()
                if request_id is None
                else split_point(request_id, table.canary.revision.model_version)
            )
            if share * 100 < table.canary_percent:
                chosen = table.canary
        if chosen is not None and not self._health.is_healthy(chosen.url):
            other = _other(table, chosen)
            if other is not None and self._health.is_healthy(other.url):
                return other
        return chosen

    async def _proxy(self, scope: Scope, receive: Receive, send: Send) -> None:
        table = self._routes  # read once: this request sees one consistent table
        if table is not self._health_table:
            self._health.forget_except({route.url for route in table.routes()})
            self._health_table = table
        route = self._pick(table, _request_id(scope))
        if route is None:
            self._unrouted += 1
            await _send_json(send, 503, {"error": "no champion revision is ready; nothing is deployed yet"})
            return
        body = await _read_limited_body(scope, receive, self._max_body_bytes)
        if body is None:
            limit = self._max_body_bytes
            message = f"request body is larger than the limit of {limit} bytes; send fewer trips per request"
            await _send_json(send, 413, {"error": message})
            return
        # The path exactly as the client sent it (encoded=True: no re-quoting on the way).
        raw_path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        if scope.get("query_string"):
            raw_path += "?" + scope["query_string"].decode("latin-1")
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in scope["headers"]
            if name.decode("latin-1").lower() not in _DROP_FROM_REQUEST
        ]
        request = _Forward(scope["method"], raw_path, headers, body)
        failed: Route | None = None
        outcome = await self._forward(route, request)
        if outcome.unreachable:
            other = _other(table, route)
            if other is not None and self._health.is_healthy(other.url):
                # The other revision serves the same contract: it answers this request instead.
                self._counters_for(route).failovers += 1
                failed, route = route, other
                outcome = await self._forward(route, request)
        stamp = [
            (REVISION_HEADER.encode(), route.role.encode()),
            (MODEL_VERSION_HEADER.encode(), route.revision.model_version.encode()),
        ]
        self._counters_for(route).record(outcome.status, outcome.latency_ms)
        if outcome.problem:
            await _send_error(send, outcome.status, route, outcome.problem, stamp)
            return
        extra = [(b"x-taxi-failover-from", failed.role.encode())] if failed is not None else []
        await _send(send, outcome.status, outcome.payload, None, [*outcome.headers, *stamp, *extra])

    async def _forward(self, route: Route, request: _Forward) -> _Outcome:
        """One request to one revision: on a pooled connection, once more on a fresh one if that was dead."""
        session = self._session or self._new_session_outside_lifespan()
        self._in_flight[route.url] = self._in_flight.get(route.url, 0) + 1
        started = time.perf_counter()
        try:
            try:
                return await self._send_upstream(session, route, request, started)
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as stale:
                if isinstance(stale, aiohttp.ClientConnectorError):
                    raise  # refused: nothing listens there; a fresh connection would be refused too
                # The pooled connection was closed under us (the predictor dropped a keep-alive
                # connection, or died mid-request). Safe to send again: a prediction changes nothing.
                fresh = self._fresh_session or self._new_fresh_session()
                return await self._send_upstream(fresh, route, request, started)
        except TimeoutError:
            problem = f"timed out after {self._timeout.total:g} s"
            return _Outcome(504, b"", [], _ms_since(started), problem)
        except aiohttp.ClientError as exc:
            problem = f"unreachable ({exc.__class__.__name__}: {exc})"
            self._health.mark_down(route.url, problem, self._fresh_session or self._new_fresh_session())
            return _Outcome(502, b"", [], _ms_since(started), problem, unreachable=True)
        finally:
            self._in_flight[route.url] -= 1

    async def _send_upstream(
        self, session: aiohttp.ClientSession, route: Route, request: _Forward, started: float
    ) -> _Outcome:
        async with session.request(
            request.method,
            yarl.URL(route.url + request.raw_path, encoded=True),
            data=request.body or None,
            # The revision goes on the request as well, so the predictor can log which one answered
            # (per forward, not per request: a failover is answered by the other revision).
            headers=[*request.headers, (REVISION_HEADER, route.role)],
            allow_redirects=False,
        ) as upstream:
            payload = await upstream.read()
            response_headers = [
                (name, value)
                for name, value in upstream.raw_headers
                if name.decode("latin-1").lower() not in _DROP_FROM_RESPONSE
            ]
            return _Outcome(upstream.status, payload, response_headers, _ms_since(started))

    def _new_fresh_session(self) -> aiohttp.ClientSession:
        self._fresh_session = self._new_session(fresh_connections=True)
        return self._fresh_session

    def _new_session_outside_lifespan(self) -> aiohttp.ClientSession:
        # Servers run without lifespan events (e.g. some test harnesses) still get one pooled session.
        self._session = self._new_session()
        return self._session

    def _counters_for(self, route: Route) -> RevisionCounters:
        key = (route.role, route.revision.model_version)
        counters = self._counters.get(key)
        if counters is None:
            counters = self._counters[key] = RevisionCounters(self._window)
        return counters


@dataclass(frozen=True)
class _Forward:
    """A request as the splitter forwards it (the same bytes to whichever revision takes it)."""

    method: str
    raw_path: str
    headers: list[tuple[str, str]]
    body: bytes


@dataclass(frozen=True)
class _Outcome:
    """What one revision did with a request: its answer, or the problem (502/504) if it gave none."""

    status: int
    payload: bytes
    headers: list[tuple[bytes, bytes]]
    latency_ms: float
    problem: str = ""
    unreachable: bool = False  # nothing answered there: the other revision may take the request


def _other(table: RoutingTable, route: Route) -> Route | None:
    return table.canary if route is table.champion else table.champion


def _allowed_methods(path: str) -> tuple[str, ...] | None:
    """The methods a path takes; None for paths the splitter does not serve (they get 404)."""
    if path.startswith(PROXIED_PREFIXES):
        return ("POST",) if path.endswith(POST_ONLY_SUFFIXES) else READ_METHODS
    if path in ("/status", "/metrics", "/healthz"):
        return READ_METHODS
    return None


# The per-revision counters of /metrics: name, help, and where each revision's count lives.
_REVISION_COUNTERS: tuple[tuple[str, str, Callable[[RevisionCounters], int]], ...] = (
    ("taxi_splitter_requests_total", "Requests forwarded to a revision.", lambda c: c.requests),
    (
        "taxi_splitter_errors_total",
        "Upstream 5xx answers, unreachable upstreams and timeouts.",
        lambda c: c.errors,
    ),
    (
        "taxi_splitter_client_errors_total",
        "Upstream 4xx answers (passed through).",
        lambda c: c.client_errors,
    ),
    (
        "taxi_splitter_failovers_total",
        "Requests a revision could not take, answered by the other.",
        lambda c: c.failovers,
    ),
)


def _labels(role: str, version: str) -> str:
    escaped = version.replace("\\", "\\\\").replace('"', '\\"')
    return f'revision="{role}",model_version="{escaped}"'


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


async def _read_limited_body(scope: Scope, receive: Receive, limit: int) -> bytes | None:
    """The request body, or None as soon as it is known to exceed ``limit`` bytes (nothing more is read)."""
    for name, value in scope["headers"]:
        if name.lower() == b"content-length":
            try:
                if int(value) > limit:
                    return None
            except ValueError:
                pass  # uvicorn refuses a malformed Content-Length before we get here
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _send(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes | None,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    raw = [(b"content-length", str(len(body)).encode())]
    if content_type is not None:
        raw.append((b"content-type", content_type))
    raw.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def _send_json(
    send: Send, status: int, document: Any, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    await _send(send, status, json.dumps(document).encode(), b"application/json", headers)


async def _send_error(
    send: Send, status: int, route: Route, problem: str, headers: Iterable[tuple[bytes, bytes]]
) -> None:
    document = {
        "error": f"{route.describe()} is {problem}",
        "revision": route.role,
        "model_version": route.revision.model_version,
    }
    await _send_json(send, status, document, headers)


class SplitterServer:
    """Runs a ``TrafficSplitter`` under uvicorn in a background thread (the supervisor owns the main one).

    The listening socket is bound in ``start()``, so a busy port fails there
    with a clear error, and ``port=0`` picks a free one (see ``.port``).
    """

    def __init__(self, splitter: TrafficSplitter, host: str = "127.0.0.1", port: int = 8080) -> None:
        self.splitter = splitter
        self.host = host
        self.port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise OSError(
                exc.errno, f"traffic splitter cannot listen on {self.host}:{self.port}: {exc}"
            ) from exc
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.splitter,
            log_level="warning",
            access_log=False,
            lifespan="on",
            server_header=False,  # the upstream's own server/date headers are passed through
            date_header=False,
            timeout_keep_alive=30,
            proxy_headers=False,
            backlog=2048,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,  # uvicorn's own loop choice (uvloop); no signal handlers off main
            kwargs={"sockets": [sock]},
            name=f"traffic-splitter:{self.port}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"traffic splitter did not start on {self.url}")
            time.sleep(0.01)

    def stop(self, timeout: float = 10.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self._server = None
        self._thread = None
