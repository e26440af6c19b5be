"""The cluster's inference-log sink: KServe's payload logger in, prediction-log segments in MinIO out.

``python -m serving.inference_log_sink`` (the pipeline image, root Dockerfile: it has
``serving/``, pyarrow and the MinIO client; manifests/base/inference-log-sink runs it
as a plain Deployment, like MLflow). On a cluster every predictor revision is an
InferenceService with ``spec.predictor.logger`` (``serving.kserve_deploy``); this
server receives what the logger sends and writes the same records the local
predictor writes (``components.monitoring.prediction_log.SCHEMA``).

What KServe's logger sends and what it leaves out is in ``serving.logger_events``
(read at kserve v0.19.0, with file:line). In short: a request event and, for a 200, a
response event with the same ``Ce-Id``; the client's ``X-Request-Id``/``X-Event-Time``
come along in ``Ce-Metadata`` and the revision's model version in ``Ce-Annotations``
because the InferenceService asks for them (``serving.kserve_deploy``).

Which revision answered, champion or canary, the logger cannot say: it is not a property
of a Knative revision (a promote makes the canary the champion without a new revision), so
nothing on the pod can carry it. The InferenceService says it
(``serving.kserve_deploy.state_from_isvc``, the reading ``taxi-mlops status`` uses). With
``--revision-roles isvc`` the sink reads it (its Role allows ``get`` only) every few
seconds and labels each record with its version's role; otherwise, or for a version that
is neither, ``unknown``, as the predictor writes without a splitter. The label is the role
when the pair arrived, so a trip answered within one refresh of a promote or rollback can
carry the old role.

Durability: each answered trip goes through the predictor's own
:class:`~components.monitoring.prediction_log.PredictionLogWriter` into a spool folder
(an emptyDir); each complete segment is uploaded to ``names.PREDICTION_LOG_URI`` under
its own name with ``upload_file`` (size and sha256 checked) and deleted only after that.
On start, complete segments a killed sink left behind are uploaded first and ``.tmp``
remains are removed, so a killed sink loses at most its unflushed second (and the halves
still waiting for their pair). Uploads that fail are retried with backoff; while the
spool holds more than ``--max-spool-bytes`` new trips are dropped and counted.

``/metrics``: ``trip_duration_prediction_log_records{outcome}`` under the predictor's
family and outcome values (``written``, ``dropped_queue_full``, ``dropped_write_error``,
plus the sink's ``dropped_spool_full``), so one alert covers both; the sink's own
``inference_log_sink_*`` counters; and the newest monitor verdict's gauges
(``verdict_metrics``), read from ``names.MONITOR_URI``/latest.json in the background.
``/healthz`` answers 503 once a worker thread has died.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final

import pyarrow.parquet as pq
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from components.errors import StorageError
from components.monitoring.prediction_log import (
    DEFAULT_FLUSH_SECONDS,
    TMP_SUFFIX,
    UNKNOWN_REVISION,
    PredictionLogWriter,
    segment_paths,
)
from components.monitoring.verdict_metrics import verdict_metrics_text
from components.monitoring.verdict_store import LATEST_FILE, VerdictStoreError, parse_verdict
from components.names import (
    INFERENCE_LOG_SINK_PORT,
    METRICS_PATH,
    MONITOR_URI,
    PREDICTION_LOG_URI,
    SERVED_MODEL_NAME,
)
from components.storage.object_transfer import ObjectStoreError, read_object, upload_file
from components.storage.s3 import S3Connection
from serving.kserve_deploy import GROUP, PLURAL, VERSION, IsvcRef, state_from_isvc
from serving.logger_events import (
    AnsweredTrips,
    EventRefused,
    LoggedEvent,
    PendingPairs,
    answered_trips,
    parse_event,
)

log = logging.getLogger("taxi_mlops.inference_log_sink")

HEALTH_PATH: Final = "/healthz"
DEFAULT_SPOOL_DIR: Final = "/var/spool/inference-log"
DEFAULT_PENDING_TTL_SECONDS: Final = 30.0
DEFAULT_MAX_PENDING: Final = 20_000
# A predictor request holds at most 10,000 trips (serving.trip_request): well under this.
DEFAULT_MAX_BODY_BYTES: Final = 8 * 1024 * 1024
DEFAULT_MAX_SPOOL_BYTES: Final = 512 * 1024 * 1024
DEFAULT_VERDICT_REFRESH_SECONDS: Final = 30.0
DEFAULT_ROLE_REFRESH_SECONDS: Final = 5.0

# --------------------------------------------------------------------------- roles


class RevisionRoles:
    """Version -> ``champion``/``canary`` from the live InferenceService, refreshed in the background.

    ``fetch`` returns the InferenceService (or None when there is none). Without a
    fetch, or for a version that is neither, the role is ``unknown``. A failed read
    keeps the last good roles and is counted.
    """

    def __init__(self, fetch: Callable[[], Mapping[str, Any] | None] | None, refresh_seconds: float) -> None:
        self.fetch = fetch
        self.refresh_seconds = refresh_seconds
        self._roles: dict[str, str] = {}
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="revision-roles", daemon=True)

    def start(self) -> None:
        if self.fetch is not None:
            self.refresh()
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def alive(self) -> bool:
        return self.fetch is None or self._thread.is_alive()

    def role(self, model_version: str) -> str:
        return self._roles.get(model_version, UNKNOWN_REVISION)

    def refresh(self) -> None:
        assert self.fetch is not None
        try:
            state = state_from_isvc(self.fetch())
        except Exception as exc:  # an unreachable API or a foreign InferenceService: keep what we had
            self.errors += 1
            log.warning("revision roles not refreshed: %s", exc)
            return
        roles = {}
        if state.champion is not None:
            roles[state.champion.model_version] = "champion"
        if state.canary is not None:
            roles[state.canary.model_version] = "canary"
        self._roles = roles

    def _run(self) -> None:
        while not self._stop.wait(self.refresh_seconds):
            self.refresh()


def isvc_fetcher(ref: IsvcRef = IsvcRef()) -> Callable[[], Mapping[str, Any] | None]:  # noqa: B008
    """Read ``ref`` with the pod's service account, else the kubeconfig (KUBECONFIG)."""
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    try:
        config.load_incluster_config()
        api = client.CustomObjectsApi()
    except config.ConfigException:
        api = client.CustomObjectsApi(config.new_client_from_config())

    def fetch() -> Mapping[str, Any] | None:
        try:
            return api.get_namespaced_custom_object(
                GROUP, VERSION, ref.namespace, PLURAL, ref.name, _request_timeout=10
            )
        except ApiException as exc:
            if exc.status == HTTPStatus.NOT_FOUND:
                return None
            raise

    return fetch


# --------------------------------------------------------------------------- the spool -> MinIO


class SegmentUploader:
    """Uploads complete spool segments to ``log_uri``/<name>, deleting each only once it checked out.

    ``submit`` is the writer's ``on_segment`` hook (it counts and enqueues). One thread
    uploads in order; a failed upload is retried after a backoff that doubles up to
    ``max_backoff``. ``recover`` hands over what a previous process left in the spool.
    """

    def __init__(
        self,
        conn: S3Connection,
        spool: Path,
        log_uri: str,
        *,
        count_written: Callable[[Path], None],
        backoff: float = 1.0,
        max_backoff: float = 30.0,
    ) -> None:
        self.conn = conn
        self.spool = spool
        self.log_uri = log_uri.rstrip("/")
        self.count_written = count_written
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.uploads = self.upload_errors = self.recovered = 0
        self._queue: queue.Queue[Path | None] = queue.Queue()
        self._spool_bytes = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="segment-uploader", daemon=True)

    @property
    def spool_bytes(self) -> int:
        with self._lock:
            return self._spool_bytes

    def pending(self) -> int:
        return self._queue.qsize()

    def recover(self) -> None:
        """Queue the complete segments already in the spool; drop ``.tmp`` remains of a kill (never data)."""
        for tmp in self.spool.glob(f"*{TMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)
        for path in segment_paths(self.spool):
            self.recovered += 1
            self._enqueue(path)

    def submit(self, path: Path) -> None:
        # Counted here, on the writer's thread, not when its turn to upload comes: while MinIO is
        # unreachable the uploads wait, but the records are written all the same.
        self.count_written(path)
        self._enqueue(path)

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self, timeout: float) -> None:
        """Upload what is queued (until ``timeout``), then stop; what is left stays in the spool."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _enqueue(self, path: Path) -> None:
        with self._lock:
            self._spool_bytes += path.stat().st_size
        self._queue.put(path)

    def _run(self) -> None:
        while True:
            path = self._queue.get()
            if path is None:
                return
            self._upload_until_done(path)

    def _upload_until_done(self, path: Path) -> None:
        delay = self.backoff
        size = path.stat().st_size
        while True:
            try:
                upload_file(
                    self.conn, path, f"{self.log_uri}/{path.name}", content_type="application/parquet"
                )
            except (ObjectStoreError, StorageError, OSError) as exc:
                self.upload_errors += 1
                log.warning("segment %s not uploaded yet (retry in %.0f s): %s", path.name, delay, exc)
                time.sleep(delay)
                delay = min(delay * 2, self.max_backoff)
                continue
            path.unlink(missing_ok=True)
            with self._lock:
                self.uploads += 1
                self._spool_bytes -= size
            return


# --------------------------------------------------------------------------- the monitor's verdict


class VerdictCache:
    """The newest verdict at ``monitor_uri``/latest.json, re-read every ``refresh_seconds`` in the background.

    A scrape never waits for MinIO. ``(None, True)`` while there is none yet;
    ``(None, False)`` after a failed read (unreachable store, not a verdict).
    """

    def __init__(self, conn: S3Connection, monitor_uri: str, refresh_seconds: float) -> None:
        self.conn = conn
        self.uri = f"{monitor_uri.rstrip('/')}/{LATEST_FILE}"
        self.refresh_seconds = refresh_seconds
        self._state: tuple[dict[str, Any] | None, bool] = (None, True)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="verdict-cache", daemon=True)

    def get(self) -> tuple[dict[str, Any] | None, bool]:
        return self._state

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def refresh(self) -> None:
        try:
            text = read_object(self.conn, self.uri, limit=1 << 20, attempts=1).decode("utf-8")
            self._state = (parse_verdict(text, self.uri), True)
        except ObjectStoreError as exc:
            self._state = (None, True) if exc.missing else (None, False)
            if not exc.missing:
                log.warning("monitor verdict not read: %s", exc)
        except (VerdictStoreError, UnicodeDecodeError) as exc:
            self._state = (None, False)
            log.warning("monitor verdict not readable: %s", exc)

    def _run(self) -> None:
        while True:
            self.refresh()
            if self._stop.wait(self.refresh_seconds):
                return


# --------------------------------------------------------------------------- the sink


@dataclass(frozen=True)
class SinkSettings:
    spool_dir: Path
    log_uri: str = PREDICTION_LOG_URI
    monitor_uri: str = MONITOR_URI
    pending_ttl_seconds: float = DEFAULT_PENDING_TTL_SECONDS
    max_pending: int = DEFAULT_MAX_PENDING
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_spool_bytes: int = DEFAULT_MAX_SPOOL_BYTES
    flush_seconds: float = DEFAULT_FLUSH_SECONDS
    verdict_refresh_seconds: float = DEFAULT_VERDICT_REFRESH_SECONDS


class InferenceLogSink:
    """Events in (``handle_event``), prediction-log segments out, counters for ``/metrics``."""

    def __init__(self, settings: SinkSettings, conn: S3Connection, roles: RevisionRoles) -> None:
        self.settings = settings
        self.roles = roles
        self.pending = PendingPairs(settings.pending_ttl_seconds, settings.max_pending)
        self._lock = threading.Lock()
        self.events: collections.Counter[str] = collections.Counter()
        self.refused: collections.Counter[str] = collections.Counter()
        self.unpaired: collections.Counter[str] = collections.Counter()
        # (model_name, model_version, outcome) -> trips
        self.records: collections.Counter[tuple[str, str, str]] = collections.Counter()
        spool = Path(settings.spool_dir)
        spool.mkdir(parents=True, exist_ok=True)
        self.uploader = SegmentUploader(conn, spool, settings.log_uri, count_written=self._count_written)
        self.uploader.recover()  # before the writer starts: only the old segments are in the spool now
        self.writer = PredictionLogWriter(
            spool, flush_seconds=settings.flush_seconds, on_segment=self.uploader.submit
        )
        self.verdict = VerdictCache(conn, settings.monitor_uri, settings.verdict_refresh_seconds)
        self._stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap, name="pending-reaper", daemon=True)

    def start(self) -> None:
        self.uploader.start()
        self.verdict.start()
        self.roles.start()
        self._reaper.start()

    def close(self, timeout: float = 20.0) -> None:
        self._stop.set()
        self.roles.stop()
        self.verdict.stop()
        self.writer.close()
        self.uploader.close(timeout)

    def healthy(self) -> bool:
        # The log writer's thread survives its own write errors (it counts them instead).
        return (
            all(part.alive() for part in (self.uploader, self.verdict, self.roles))
            and self._reaper.is_alive()
        )

    def handle_event(self, headers: Message, body: bytes) -> dict[str, Any]:
        """Take one event; the answer's body on success, :class:`EventRefused` otherwise (counted)."""
        try:
            event = parse_event(headers, body)
        except EventRefused as refused:
            self._count(self.refused, refused.reason)
            raise
        self._count(self.events, event.half)
        offer = self.pending.offer(event)
        self._count_lost(offer.lost)
        if offer.pair is None:
            return {"accepted": event.half, "paired": False}
        try:
            answered = answered_trips(*offer.pair)
        except EventRefused as refused:
            self._count(self.refused, refused.reason)
            raise
        self._log(answered)
        return {"accepted": event.half, "paired": True, "trips": len(answered.minutes)}

    def _log(self, answered: AnsweredTrips) -> None:
        key = (answered.model_name, answered.model_version)
        rows = len(answered.minutes)
        if self.uploader.spool_bytes > self.settings.max_spool_bytes:
            self._count(self.records, (*key, "dropped_spool_full"), rows)
            return
        queued = self.writer.put_batch(
            request_id=answered.request_id,
            event_time=answered.event_time,
            model_name=answered.model_name,
            model_version=answered.model_version,
            revision=self.roles.role(answered.model_version),
            pickup=answered.trips.pickup,
            dropoff=answered.trips.dropoff,
            distance=answered.trips.distance,
            minutes=answered.minutes,
        )
        if not queued:
            self._count(self.records, (*key, "dropped_queue_full"), rows)

    def _count_written(self, path: Path) -> None:
        # Read back from the segment itself, so "written" is what is on disk, per version.
        try:
            table = pq.read_table(path, columns=["model_name", "model_version"])
        except Exception as exc:  # the upload will fail on it too and say so
            log.warning("cannot count the records of %s: %s", path, exc)
            return
        counts = collections.Counter(
            zip(
                table.column("model_name").to_pylist(), table.column("model_version").to_pylist(), strict=True
            )
        )
        with self._lock:
            for (name, version), rows in counts.items():
                self.records[(name, version, "written")] += rows

    def _count_lost(self, lost: Sequence[LoggedEvent]) -> None:
        for event in lost:
            self._count(self.unpaired, event.half)

    def _count(self, counter: collections.Counter[Any], key: Any, amount: int = 1) -> None:
        with self._lock:
            counter[key] += amount

    def _reap(self) -> None:
        # Expired halves are counted even when no further event arrives to push them out.
        while not self._stop.wait(min(1.0, self.settings.pending_ttl_seconds)):
            self._count_lost(self.pending.expire())

    # ---- /metrics

    def metrics_text(self) -> str:
        registry = CollectorRegistry()
        registry.register(_SinkCollector(self))
        document, readable = self.verdict.get()
        return generate_latest(registry).decode("utf-8") + verdict_metrics_text(document, readable=readable)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "events": dict(self.events),
                "refused": dict(self.refused),
                "unpaired": dict(self.unpaired),
                "records": dict(self.records),
            }


class _SinkCollector(Collector):
    def __init__(self, sink: InferenceLogSink) -> None:
        self.sink = sink

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        sink = self.sink
        counts = sink.snapshot()
        stats = sink.writer.stats()
        records = CounterMetricFamily(
            "trip_duration_prediction_log_records",
            "Prediction log records by outcome: written, dropped_queue_full, dropped_write_error, "
            "dropped_spool_full (the sink's spool is full while MinIO is unreachable).",
            labels=("model_name", "model_version", "outcome"),
        )
        versions = {(name, version) for name, version, _ in counts["records"]}
        for name, version in sorted(versions):
            for outcome in ("written", "dropped_queue_full", "dropped_spool_full"):
                records.add_metric(
                    [name, version, outcome], counts["records"].get((name, version, outcome), 0)
                )
        # A failed segment write is counted by the writer for all versions at once.
        records.add_metric([SERVED_MODEL_NAME, "", "dropped_write_error"], stats.records_dropped_write_error)
        yield records
        events = CounterMetricFamily(
            "inference_log_sink_events", "Logger events accepted, by half.", labels=("type",)
        )
        for half in ("request", "response"):
            events.add_metric([half], counts["events"].get(half, 0))
        yield events
        refused = CounterMetricFamily(
            "inference_log_sink_refused_events",
            "Events (or the pairs they completed) refused with a 4xx, by reason.",
            labels=("reason",),
        )
        for reason, value in sorted(counts["refused"].items()):
            refused.add_metric([reason], value)
        yield refused
        unpaired = CounterMetricFamily(
            "inference_log_sink_unpaired_events",
            "Halves that never met their other half in time (a refused request has no response).",
            labels=("type",),
        )
        for half in ("request", "response"):
            unpaired.add_metric([half], counts["unpaired"].get(half, 0))
        yield unpaired
        uploader = sink.uploader
        for name, help_text, value in (
            ("inference_log_sink_segment_uploads", "Segments uploaded and checked.", uploader.uploads),
            (
                "inference_log_sink_segment_upload_errors",
                "Failed segment upload attempts (each is retried).",
                uploader.upload_errors,
            ),
            (
                "inference_log_sink_recovered_segments",
                "Segments found in the spool at start (left by a killed sink).",
                uploader.recovered,
            ),
            (
                "inference_log_sink_role_errors",
                "Failed reads of the InferenceService's roles.",
                sink.roles.errors,
            ),
        ):
            family = CounterMetricFamily(name, help_text)
            family.add_metric([], value)
            yield family
        for name, help_text, value in (
            ("inference_log_sink_pending_events", "Halves waiting for their other half.", len(sink.pending)),
            ("inference_log_sink_spool_segments", "Segments waiting for upload.", uploader.pending()),
            ("inference_log_sink_spool_bytes", "Bytes of segments waiting for upload.", uploader.spool_bytes),
        ):
            gauge = GaugeMetricFamily(name, help_text)
            gauge.add_metric([], value)
            yield gauge


# --------------------------------------------------------------------------- HTTP


def make_server(sink: InferenceLogSink, host: str, port: int) -> ThreadingHTTPServer:
    """The sink's HTTP server: POST / (events), GET /metrics, GET /healthz."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the agent's workers reuse their connections

        def do_POST(self) -> None:
            if self.path.split("?")[0] != "/":
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no {self.path}; events are posted to /"})
                return
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                self.close_connection = True
                self._json(HTTPStatus.LENGTH_REQUIRED, {"error": "Content-Length is required"})
                return
            if int(length) > sink.settings.max_body_bytes:
                self.close_connection = True  # the body is not read: this connection cannot go on
                sink._count(sink.refused, "too_large")
                self._json(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    {"error": f"body of {length} bytes is over {sink.settings.max_body_bytes}"},
                )
                return
            body = self.rfile.read(int(length))
            try:
                answer = sink.handle_event(self.headers, body)
            except EventRefused as refused:
                self._json(refused.status, {"error": str(refused)})
                return
            except Exception as exc:  # never lose the server to one event
                log.exception("event not handled")
                sink._count(sink.refused, "internal_error")
                self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(exc).__name__}: {exc}"})
                return
            self._json(HTTPStatus.OK, answer)

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            if path == METRICS_PATH:
                self._send(HTTPStatus.OK, sink.metrics_text().encode(), "text/plain; version=0.0.4")
            elif path == HEALTH_PATH:
                healthy = sink.healthy()
                status = HTTPStatus.OK if healthy else HTTPStatus.SERVICE_UNAVAILABLE
                self._json(status, {"status": "ok" if healthy else "a worker thread stopped"})
            elif path == "/":
                self._json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "POST events to /"}, allow="POST")
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no {path}"})

        def _json(self, status: int, body: dict[str, Any], allow: str | None = None) -> None:
            self._send(status, json.dumps(body).encode(), "application/json", allow)

        def _send(self, status: int, data: bytes, content_type: str, allow: str | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            if allow:
                self.send_header("Allow", allow)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug(format, *args)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serving.inference_log_sink",
        description="Receive KServe payload-logger CloudEvents and write prediction-log segments to S3.",
    )
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    parser.add_argument("--port", type=int, default=INFERENCE_LOG_SINK_PORT)
    parser.add_argument("--spool-dir", type=Path, default=Path(DEFAULT_SPOOL_DIR))
    parser.add_argument(
        "--log-uri", default=PREDICTION_LOG_URI, help="where segments go (s3://bucket/prefix)"
    )
    parser.add_argument("--monitor-uri", default=MONITOR_URI, help="where the monitor's latest.json is")
    parser.add_argument("--pending-ttl", type=float, default=DEFAULT_PENDING_TTL_SECONDS)
    parser.add_argument("--max-pending", type=int, default=DEFAULT_MAX_PENDING)
    parser.add_argument("--max-spool-bytes", type=int, default=DEFAULT_MAX_SPOOL_BYTES)
    parser.add_argument("--flush-seconds", type=float, default=DEFAULT_FLUSH_SECONDS)
    parser.add_argument("--verdict-refresh-seconds", type=float, default=DEFAULT_VERDICT_REFRESH_SECONDS)
    parser.add_argument(
        "--revision-roles",
        choices=("none", "isvc"),
        default="none",
        help="isvc: label records champion/canary from the InferenceService (needs get on it)",
    )
    parser.add_argument("--role-refresh-seconds", type=float, default=DEFAULT_ROLE_REFRESH_SECONDS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        conn = S3Connection.from_env()
        fetch = isvc_fetcher() if args.revision_roles == "isvc" else None
    except Exception as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    settings = SinkSettings(
        spool_dir=args.spool_dir,
        log_uri=args.log_uri,
        monitor_uri=args.monitor_uri,
        pending_ttl_seconds=args.pending_ttl,
        max_pending=args.max_pending,
        max_spool_bytes=args.max_spool_bytes,
        flush_seconds=args.flush_seconds,
        verdict_refresh_seconds=args.verdict_refresh_seconds,
    )
    sink = InferenceLogSink(settings, conn, RevisionRoles(fetch, args.role_refresh_seconds))
    server = make_server(sink, args.host, args.port)
    sink.start()
    stopping = threading.Event()

    def stop(signum: int, _frame: Any) -> None:
        if not stopping.is_set():
            stopping.set()
            threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info(
        "listening on %s:%d, spool %s -> %s (%d old segments to upload)",
        args.host,
        server.server_address[1],
        args.spool_dir,
        args.log_uri,
        sink.uploader.recovered,
    )
    try:
        server.serve_forever()
    finally:
        server.server_close()
        sink.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
