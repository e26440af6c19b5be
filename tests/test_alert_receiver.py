"""Our Alertmanager webhook receiver as a real process on 127.0.0.1: what it records, what it refuses.

A valid version 4 notification is appended to alerts.jsonl (one line per alert) before
the 200, and listed by ``GET /alerts``; every malformed body gets a 4xx naming the
problem, leaves the file as it was, and the next good notification is recorded. The
last test has Debian's real Alertmanager (our generated config) deliver an alert to it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.predictor_process import free_port
from support.prometheus_binaries import require_binary

from serving.alert_receiver import parse_notification
from serving.local_stack import stop_process_group
from serving.observability import ObserveConfig, write_configs


def _alert(name: str = "TaxiDataDrift", status: str = "firing", **labels: str) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": name, "severity": "warning", "model_version": "7", **labels},
        "annotations": {"summary": f"{name} summary", "description": "what happened"},
        "startsAt": "2026-12-01T16:45:39.739266876Z",  # Go writes nanoseconds
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://127.0.0.1:9090/graph?g0.expr=taxi_monitor_drift_effect",
        "fingerprint": "1a30ba71cca2921f",
    }


def notification(*alerts: dict[str, Any], status: str = "firing") -> dict[str, Any]:
    """An Alertmanager 0.25 webhook body (notify/webhook Message, version 4)."""
    chosen = list(alerts) or [_alert()]
    return {
        "version": "4",
        "groupKey": '{}:{alertname="TaxiDataDrift", model_version="7"}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "taxi-mlops-receiver",
        "groupLabels": {"alertname": "TaxiDataDrift", "model_version": "7"},
        "commonLabels": {"alertname": "TaxiDataDrift"},
        "commonAnnotations": {},
        "externalURL": "http://127.0.0.1:9093",
        "alerts": chosen,
    }


def _wait_listening(url: str, process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"receiver exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    pytest.fail(f"receiver not listening on {url}")


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[str, Path, subprocess.Popen[bytes]]]:
    """``python -m serving.alert_receiver`` on a free port: (url, alerts.jsonl, process)."""
    port = free_port()
    alerts_file = tmp_path / "alerts" / "alerts.jsonl"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "serving.alert_receiver",
            "--port",
            str(port),
            "--alerts-file",
            str(alerts_file),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_listening(url, process)
        yield url, alerts_file, process
    finally:
        stop_process_group(process, 5.0)


def _lines(path: Path) -> list[dict[str, Any]]:
    return (
        [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []
    )


def test_a_notification_is_recorded_one_line_per_alert_and_listed(receiver) -> None:
    url, alerts_file, _ = receiver
    assert httpx.get(f"{url}/alerts").json() == {"alerts": []}
    body = notification(_alert(feature="trip_distance"), _alert(feature="prediction"))
    answer = httpx.post(f"{url}/alerts", json=body)
    assert answer.status_code == 200 and answer.json() == {"recorded": 2}
    lines = _lines(alerts_file)
    assert [line["labels"]["feature"] for line in lines] == ["trip_distance", "prediction"]
    first = lines[0]
    assert first["status"] == "firing" and first["labels"]["alertname"] == "TaxiDataDrift"
    assert first["receiver"] == "taxi-mlops-receiver" and first["groupKey"] == body["groupKey"]
    assert first["startsAt"] == body["alerts"][0]["startsAt"]  # kept exactly as Alertmanager sent it
    assert first["fingerprint"] == "1a30ba71cca2921f" and first["receivedAt"].endswith("+00:00")
    assert httpx.get(f"{url}/alerts").json() == {"alerts": lines}

    resolved = notification(_alert(status="resolved", feature="trip_distance"), status="resolved")
    assert httpx.post(f"{url}/alerts", json=resolved).json() == {"recorded": 1}
    assert [line["status"] for line in _lines(alerts_file)] == ["firing", "firing", "resolved"]


def _without(document: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in document.items() if k != key}


def _with_alert(**change: Any) -> dict[str, Any]:
    return notification({**_alert(), **change})


BAD_BODIES: list[tuple[str, bytes, str]] = [
    ("not JSON", b"{not json", "not JSON"),
    ("not UTF-8", b"\xff\xfe", "not JSON"),
    ("a list", b"[]", "JSON object"),
    ("version 3", json.dumps({**notification(), "version": "3"}).encode(), "version"),
    ("no version", json.dumps(_without(notification(), "version")).encode(), "version"),
    ("no receiver", json.dumps(_without(notification(), "receiver")).encode(), "receiver"),
    ("no groupKey", json.dumps(_without(notification(), "groupKey")).encode(), "groupKey"),
    ("bad status", json.dumps({**notification(), "status": "exploded"}).encode(), "status"),
    ("no alerts", json.dumps(_without(notification(), "alerts")).encode(), "alerts"),
    ("empty alerts", json.dumps({**notification(), "alerts": []}).encode(), "alerts"),
    ("alert not an object", json.dumps({**notification(), "alerts": ["x"]}).encode(), "alerts[0]"),
    ("alert bad status", json.dumps(_with_alert(status="pending")).encode(), "alerts[0].status"),
    ("labels not strings", json.dumps(_with_alert(labels={"alertname": "X", "n": 1})).encode(), "labels"),
    ("no alertname", json.dumps(_with_alert(labels={"severity": "warning"})).encode(), "alertname"),
    ("annotations a list", json.dumps(_with_alert(annotations=["x"])).encode(), "annotations"),
    ("startsAt not a time", json.dumps(_with_alert(startsAt="yesterday")).encode(), "startsAt"),
    ("startsAt without zone", json.dumps(_with_alert(startsAt="2026-12-01T16:45:39")).encode(), "startsAt"),
    ("endsAt a number", json.dumps(_with_alert(endsAt=5)).encode(), "endsAt"),
    ("truncatedAlerts negative", json.dumps({**notification(), "truncatedAlerts": -1}).encode(), "truncated"),
    ("commonLabels a string", json.dumps({**notification(), "commonLabels": "x"}).encode(), "commonLabels"),
]


@pytest.mark.parametrize(("what", "body", "named"), BAD_BODIES, ids=[case[0] for case in BAD_BODIES])
def test_every_bad_body_is_refused_in_process(what: str, body: bytes, named: str) -> None:
    from serving.alert_receiver import WebhookPayloadError

    with pytest.raises(WebhookPayloadError, match=named.replace("[", r"\[").replace("]", r"\]")):
        parse_notification(body)


def test_bad_bodies_get_4xx_record_nothing_and_the_receiver_keeps_serving(receiver) -> None:
    url, alerts_file, process = receiver
    assert httpx.post(f"{url}/alerts", json=notification()).status_code == 200
    recorded = alerts_file.read_bytes()
    with httpx.Client(base_url=url, timeout=10) as client:  # one keep-alive connection throughout
        for what, body, named in BAD_BODIES:
            answer = client.post("/alerts", content=body, headers={"content-type": "application/json"})
            assert answer.status_code == 400, what
            assert named.split("[")[0] in answer.json()["error"], (what, answer.json())
        assert client.post("/webhook", json=notification()).status_code == 404
        assert client.get("/nothing").status_code == 404
        assert client.post("/alerts", content=b"x" * (1024 * 1024 + 1)).status_code == 413
    # A chunked body (no Content-Length) is refused, not read forever.
    chunked = httpx.post(f"{url}/alerts", content=iter([b'{"version": "4"}']))
    assert chunked.status_code == 411
    assert alerts_file.read_bytes() == recorded  # nothing of any bad body was written
    assert process.poll() is None
    assert httpx.post(f"{url}/alerts", json=notification()).json() == {"recorded": 1}
    assert len(_lines(alerts_file)) == 2


def test_a_torn_last_line_is_skipped_and_the_next_alert_is_a_line_of_its_own(receiver) -> None:
    url, alerts_file, _ = receiver
    assert httpx.post(f"{url}/alerts", json=notification()).status_code == 200
    with alerts_file.open("ab") as log:
        log.write(b'{"status": "fir')  # a receiver killed mid-write
    assert httpx.post(f"{url}/alerts", json=notification(_alert("TaxiAccuracyDegraded"))).status_code == 200
    listed = httpx.get(f"{url}/alerts").json()["alerts"]
    assert [a["labels"]["alertname"] for a in listed] == ["TaxiDataDrift", "TaxiAccuracyDegraded"]


def test_sigterm_stops_it(receiver) -> None:
    _, _, process = receiver
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0


def test_the_real_alertmanager_delivers_to_it(receiver, tmp_path: Path) -> None:
    """Debian's Alertmanager with the config `taxi-mlops observe` writes: an alert posted to its API
    (as Prometheus does) reaches the receiver in Alertmanager's own payload, and is recorded."""
    url, alerts_file, _ = receiver
    alertmanager = require_binary("prometheus-alertmanager")
    config = ObserveConfig(
        state_dir=tmp_path / "state",
        deployment_dir=tmp_path / "state" / "deployment",
        alertmanager_port=free_port(),
        receiver_port=int(url.rsplit(":", 1)[1]),
        group_wait=0.5,
        group_interval=1.0,
    )
    _, alertmanager_yml = write_configs(config)
    process = subprocess.Popen(
        [
            alertmanager,
            f"--config.file={alertmanager_yml}",
            f"--storage.path={tmp_path / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{config.alertmanager_port}",
            "--cluster.listen-address=",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        posted = False
        while time.monotonic() < deadline and not posted:
            try:
                labels = {"alertname": "TaxiDataDrift", "model_version": "7", "action": "retrain-candidate"}
                answer = httpx.post(
                    f"{config.alertmanager_url}/api/v2/alerts",
                    json=[{"labels": labels, "annotations": {"summary": "drift"}}],
                    timeout=2,
                )
                posted = answer.status_code == 200
            except httpx.TransportError:
                time.sleep(0.1)
        assert posted, "Alertmanager did not take the alert"
        while time.monotonic() < deadline and not _lines(alerts_file):
            time.sleep(0.1)
        (line,) = _lines(alerts_file)
        assert line["labels"]["action"] == "retrain-candidate" and line["status"] == "firing"
        assert line["receiver"] == "taxi-mlops-receiver" and line["fingerprint"]
    finally:
        stop_process_group(process, 5.0)
