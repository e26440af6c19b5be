"""The local stand-in for KServe's traffic split: one HTTP endpoint in front of champion and canary.

On a cluster, Knative routes ``canaryTrafficPercent`` of an InferenceService's
requests to the latest (canary) revision and the rest to the last promoted
(champion) one. Locally this reverse proxy does the same between two predictor
processes, so a client sees one URL whatever the deployment looks like:

* every ``/v1/...`` and ``/v2/...`` request is sent to the canary with
  probability ``canary_percent / 100`` and to the champion otherwise, and the
  response says where it went (``x-taxi-revision``, ``x-model-version``);
* upstream answers, 4xx included, are passed through unchanged; an upstream
  that cannot be reached gives 502 (504 on timeout) with a JSON error naming
  the revision; with no champion at all the answer is 503;
* ``GET /status`` (JSON) and ``GET /metrics`` (Prometheus text) count requests,
  errors and upstream latency per revision, ``GET /healthz`` says whether a
  champion is routed.

The routing table is one immutable object swapped in by ``apply_routes``; each
request reads it once, so a reload is never half-applied. The proxy is a bare
ASGI app over one pooled ``aiohttp`` session (keep-alive to every upstream),
served by uvicorn with uvloop/httptools: on loopback it adds well under 2 ms.
"""

from __future__ import annotations

import json
import math
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import uvicorn
import yarl

from serving.deployment_state import DeploymentState, Revision

CHAMPION = "champion"
CANARY = "canary"
REVISION_HEADER = "x-taxi-revision"
VERSION_HEADER = "x-model-version"
PROXIED_PREFIXES = ("/v1/", "/v2/")

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
_DROP_FROM_REQUEST = _HOP_BY_HOP | {"host"}
# The splitter's own stamp is authoritative (a predictor may send x-model-version itself).
_DROP_FROM_RESPONSE = _HOP_BY_HOP | {REVISION_HEADER, VERSION_HEADER}


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


def _quantile(ordered: list[float], q: float) -> float | None:
    """Nearest-rank quantile; ``None`` before the first request."""
    if not ordered:
        return None
    return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)], 3)


class TrafficSplitter:
    """ASGI app: splits ``/v1`` and ``/v2`` traffic between champion and canary per the routing table.

    ``seed`` makes the split reproducible (tests); ``latency_window`` bounds the
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
    ) -> None:
        self._routes = routes or RoutingTable()
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
                    "requests": counters.requests,
                    "errors": counters.errors,
                    "client_errors": counters.client_errors,
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
        }

    def metrics_text(self) -> str:
        """Prometheus text exposition of the same counters."""
        table = self._routes
        lines = [
            "# HELP taxi_splitter_requests_total Requests forwarded to a revision.",
            "# TYPE taxi_splitter_requests_total counter",
        ]
        items = list(self._counters.items())
        for (role, version), counters in items:
            lines.append(f"taxi_splitter_requests_total{{{_labels(role, version)}}} {counters.requests}")
        lines += [
            "# HELP taxi_splitter_errors_total Upstream 5xx answers, unreachable upstreams and timeouts.",
            "# TYPE taxi_splitter_errors_total counter",
        ]
        for (role, version), counters in items:
            lines.append(f"taxi_splitter_errors_total{{{_labels(role, version)}}} {counters.errors}")
        lines += [
            "# HELP taxi_splitter_client_errors_total Upstream 4xx answers (passed through).",
            "# TYPE taxi_splitter_client_errors_total counter",
        ]
        for (role, version), counters in items:
            lines.append(
                f"taxi_splitter_client_errors_total{{{_labels(role, version)}}} {counters.client_errors}"
            )
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
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if kind != "http":
            return
        path: str = scope["path"]
        if path.startswith(PROXIED_PREFIXES):
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
                if self._session is not None:
                    await self._session.close()
                    self._session = None
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _new_session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=0, limit_per_host=self._max_connections, keepalive_timeout=30, ttl_dns_cache=None
        )
        # No decompression and no invented Accept-Encoding/User-Agent: bytes go through as sent.
        return aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            auto_decompress=False,
            skip_auto_headers=("Accept-Encoding", "User-Agent"),
        )

    def _pick(self, table: RoutingTable) -> Route | None:
        if table.canary is not None and self._rng.random() * 100 < table.canary_percent:
            return table.canary
        return table.champion

    async def _proxy(self, scope: Scope, receive: Receive, send: Send) -> None:
        table = self._routes  # read once: this request sees one consistent table
        route = self._pick(table)
        if route is None:
            self._unrouted += 1
            await _send_json(send, 503, {"error": "no champion revision is ready; nothing is deployed yet"})
            return
        body = await _read_body(receive)
        # The path exactly as the client sent it (encoded=True: no re-quoting on the way).
        raw_path = scope.get("raw_path") or scope["path"].encode()
        target = route.url + raw_path.decode("latin-1")
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in scope["headers"]
            if name.decode("latin-1").lower() not in _DROP_FROM_REQUEST
        ]
        stamp = [
            (REVISION_HEADER.encode(), route.role.encode()),
            (VERSION_HEADER.encode(), route.revision.model_version.encode()),
        ]
        session = self._session or self._new_session_outside_lifespan()
        counters = self._counters_for(route)
        self._in_flight[route.url] = self._in_flight.get(route.url, 0) + 1
        started = time.perf_counter()
        try:
            async with session.request(
                scope["method"],
                yarl.URL(target, encoded=True),
                data=body or None,
                headers=headers,
                allow_redirects=False,
            ) as upstream:
                payload = await upstream.read()
                status = upstream.status
                response_headers = [
                    (name, value)
                    for name, value in upstream.raw_headers
                    if name.decode("latin-1").lower() not in _DROP_FROM_RESPONSE
                ]
        except TimeoutError:
            counters.record(504, _ms_since(started))
            await _send_error(send, 504, route, f"timed out after {self._timeout.total:g} s", stamp)
            return
        except aiohttp.ClientError as exc:
            counters.record(502, _ms_since(started))
            await _send_error(send, 502, route, f"unreachable ({exc.__class__.__name__}: {exc})", stamp)
            return
        finally:
            self._in_flight[route.url] -= 1
        counters.record(status, _ms_since(started))
        await _send(send, status, payload, None, [*response_headers, *stamp])

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


def _labels(role: str, version: str) -> str:
    escaped = version.replace("\\", "\\\\").replace('"', '\\"')
    return f'revision="{role}",model_version="{escaped}"'


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
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
