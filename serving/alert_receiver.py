"""Our Alertmanager webhook receiver: every alert it is sent, appended to ``alerts.jsonl``.

``taxi-mlops observe`` runs it (``python -m serving.alert_receiver``) on 127.0.0.1
and points Alertmanager's ``webhook_configs`` at ``POST /alerts``. It is the end of
the alert path (rule fires -> Alertmanager -> here) and the start of the next one:
the retraining policy reads ``alerts.jsonl`` and acts on alerts labelled
``action: retrain-candidate``.

- ``POST /alerts``: one Alertmanager webhook notification, payload ``version: "4"``
  (Alertmanager's ``notify/webhook`` Message: ``receiver``, ``status``, ``alerts``,
  ``groupLabels``, ``commonLabels``, ``commonAnnotations``, ``externalURL``,
  ``groupKey``, ``truncatedAlerts``; each alert ``status``, ``labels``,
  ``annotations``, ``startsAt``, ``endsAt``, ``generatorURL``, ``fingerprint``).
  Each alert becomes one line: the alert's own fields as Alertmanager sent them,
  plus ``receivedAt``, ``receiver`` and ``groupKey``. The lines of one notification
  are written with one ``write`` and fsync'd before the 200, so an answered
  notification is on disk, and Alertmanager retries one that was not answered.
  A body that is not such a payload gets a 4xx naming the field, and nothing of
  it is written; the receiver keeps serving.
- ``GET /alerts``: ``{"alerts": [...]}``, every recorded line in order (a torn last
  line from a killed receiver is skipped).
- ``GET /healthz``: ``{"status": "ok"}``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final

from components.errors import TaxiMlopsError
from components.storage.json_records import append_records, read_records

#: Under the state folder: ``<state>/alerts/alerts.jsonl`` (the retraining issue reads it).
ALERTS_DIR_NAME: Final = "alerts"
ALERTS_FILE_NAME: Final = "alerts.jsonl"
WEBHOOK_VERSION: Final = "4"
ALERT_STATUSES: Final = ("firing", "resolved")
#: A notification carries at most Alertmanager's max_alerts (0 = all) alerts; 1 MiB is thousands.
MAX_BODY_BYTES: Final = 1024 * 1024
_OPTIONAL_ALERT_FIELDS: Final = ("endsAt", "generatorURL", "fingerprint")


class WebhookPayloadError(TaxiMlopsError):
    """A webhook body that is not an Alertmanager version 4 notification (names the field)."""


def parse_notification(body: bytes) -> dict[str, Any]:
    """The notification in ``body``, checked against the version 4 webhook schema."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WebhookPayloadError(f"body is not JSON ({exc})") from exc
    if not isinstance(payload, dict):
        raise WebhookPayloadError("body must be a JSON object (an Alertmanager webhook notification)")
    if payload.get("version") != WEBHOOK_VERSION:
        raise WebhookPayloadError(
            f"version: expected {WEBHOOK_VERSION!r} (Alertmanager's webhook payload), got "
            f"{payload.get('version')!r}"
        )
    _text(payload, "receiver", "receiver")
    _text(payload, "groupKey", "groupKey")
    _status(payload, "status")
    for name in ("groupLabels", "commonLabels", "commonAnnotations"):
        if name in payload:
            _labels(payload[name], name)
    if "externalURL" in payload:
        _text(payload, "externalURL", "externalURL")
    truncated = payload.get("truncatedAlerts", 0)
    if isinstance(truncated, bool) or not isinstance(truncated, int) or truncated < 0:
        raise WebhookPayloadError(f"truncatedAlerts: expected a count, got {truncated!r}")
    alerts = payload.get("alerts")
    if not isinstance(alerts, list) or not alerts:
        raise WebhookPayloadError("alerts: expected a non-empty list of alerts")
    for index, alert in enumerate(alerts):
        where = f"alerts[{index}]"
        if not isinstance(alert, dict):
            raise WebhookPayloadError(f"{where}: expected an object")
        _status(alert, f"{where}.status")
        labels = _labels(alert.get("labels"), f"{where}.labels")
        if not labels.get("alertname"):
            raise WebhookPayloadError(f"{where}.labels: no alertname")
        _labels(alert.get("annotations", {}), f"{where}.annotations")
        _timestamp(_text(alert, "startsAt", f"{where}.startsAt"), f"{where}.startsAt")
        for name in _OPTIONAL_ALERT_FIELDS:  # always sent by Alertmanager 0.25, but not needed here
            if name in alert:
                _text(alert, name, f"{where}.{name}")
        if "endsAt" in alert:
            _timestamp(alert["endsAt"], f"{where}.endsAt")
    return payload


def alert_records(payload: Mapping[str, Any], received_at: datetime | None = None) -> list[dict[str, Any]]:
    """One record per alert of a checked notification: what ``alerts.jsonl`` holds."""
    moment = (received_at or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="milliseconds")
    context = {"receivedAt": moment, "receiver": payload["receiver"], "groupKey": payload["groupKey"]}
    return [{**context, **alert} for alert in payload["alerts"]]


class AlertLog:
    """``alerts.jsonl``: appended whole notifications at a time, fsync'd; read back line by line."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def append(self, records: Sequence[Mapping[str, Any]]) -> None:
        with self._lock:  # one notification's records stay together, between threads too
            append_records(self.path, records)

    def read(self) -> list[dict[str, Any]]:
        return read_records(self.path, _record)


def _record(text: str, source: str) -> dict[str, Any]:
    record = json.loads(text)  # a torn line raises ValueError and is skipped
    if not isinstance(record, dict):
        raise ValueError(f"{source}: not an alert record")
    return record


class _Handler(BaseHTTPRequestHandler):
    server: _ReceiverServer
    protocol_version = "HTTP/1.1"  # keep-alive: Alertmanager reuses its connection

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] != "/alerts":
            self.close_connection = True  # its body is not read: the connection cannot be reused
            self._reply(HTTPStatus.NOT_FOUND, {"error": f"no route for POST {self.path}; post to /alerts"})
            return
        length = self.headers.get("content-length")
        if length is None or not length.isdigit():
            self.close_connection = True
            self._reply(HTTPStatus.LENGTH_REQUIRED, {"error": "send the body with a Content-Length"})
            return
        if int(length) > MAX_BODY_BYTES:
            self.close_connection = True
            limit = MAX_BODY_BYTES
            self._reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": f"body over {limit} bytes"})
            return
        body = self.rfile.read(int(length))
        try:
            payload = parse_notification(body)
        except WebhookPayloadError as exc:
            self._reply(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
            return
        records = alert_records(payload)
        try:
            self.server.alert_log.append(records)
        except OSError as exc:
            # Not recorded: a 5xx makes Alertmanager send the notification again later.
            self._reply(HTTPStatus.SERVICE_UNAVAILABLE, {"error": f"{self.server.alert_log.path}: {exc}"})
            return
        self._reply(HTTPStatus.OK, {"recorded": len(records)})

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/alerts":
            self._reply(HTTPStatus.OK, {"alerts": self.server.alert_log.read()})
        elif path == "/healthz":
            self._reply(HTTPStatus.OK, {"status": "ok"})
        else:
            self._reply(HTTPStatus.NOT_FOUND, {"error": f"no route for GET {self.path}"})

    def _reply(self, status: HTTPStatus, document: Mapping[str, Any]) -> None:
        body = json.dumps(document).encode("utf-8")
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        # One line per request on stderr (the observe log), like an access log.
        sys.stderr.write(f"alert-receiver: {self.address_string()} {format % args}\n")


class _ReceiverServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], alert_log: AlertLog) -> None:
        super().__init__(address, _Handler)
        self.alert_log = alert_log


def serve(host: str, port: int, alerts_file: Path) -> None:
    """Serve until SIGTERM or SIGINT."""
    server = _ReceiverServer((host, port), AlertLog(alerts_file))

    def stop(_signum: int, _frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    sys.stderr.write(
        f"alert-receiver: listening on http://{host}:{server.server_port}, writing {alerts_file}\n"
    )
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()


def _text(document: Mapping[str, Any], name: str, where: str) -> str:
    value = document.get(name)
    if not isinstance(value, str):
        raise WebhookPayloadError(f"{where}: expected a string, got {value!r}"[:300])
    return value


def _status(document: Mapping[str, Any], where: str) -> None:
    value = document.get("status")
    if value not in ALERT_STATUSES:
        raise WebhookPayloadError(
            f"{where}: expected one of {', '.join(ALERT_STATUSES)}, got {value!r}"[:300]
        )


def _labels(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise WebhookPayloadError(f"{where}: expected an object of string values")
    return value


def _timestamp(value: str, where: str) -> None:
    """RFC 3339 with a zone, as Go writes it (nanoseconds are fine: Python reads them to microseconds)."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None or "T" not in value.upper():
        raise WebhookPayloadError(f"{where}: not an RFC 3339 time with a zone: {value!r}"[:300])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serving.alert_receiver", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9095)
    parser.add_argument("--alerts-file", type=Path, required=True, help="the alerts.jsonl to append to")
    args = parser.parse_args(argv)
    serve(args.host, args.port, args.alerts_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
