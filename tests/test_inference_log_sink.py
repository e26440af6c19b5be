"""The cluster's inference-log sink as a real process on 127.0.0.1, with a real S3 (moto) behind it.

Events are posted exactly as KServe's logger agent sends them (serving/logger_events.py
cites the upstream source): CloudEvents binary mode, a request event and, for an answered
request, a response event with the same Ce-Id, both with the request's Content-Type,
Ce-Metadata carrying the forwarded X-Request-Id / X-Event-Time, Ce-Annotations the revision's
model version. The bodies are what our predictor receives and answers (v1 ``instances`` /
``predictions``; v2 as KServe's ``InferResponse.to_rest`` writes it). The Kubernetes API, the
one thing that cannot exist here, is a fake JSON server (support/fake_json_api.py) that the
real ``kubernetes`` client in the sink reads through a kubeconfig.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from kserve.protocol.infer_type import InferOutput, InferResponse
from prometheus_client.parser import text_string_to_metric_families
from support.fake_json_api import serve_json
from support.merge_patch import merge_patch
from support.s3_server import moto_s3, upload_object

from components import names
from components.monitoring.prediction_log import read_prediction_log
from components.storage.object_transfer import download_prefix
from components.storage.s3 import S3Connection
from serving import kserve_deploy as kd
from serving import logger_events
from serving.deployment_state import Revision
from serving.logger_events import LoggedEvent, PendingPairs

pytestmark = pytest.mark.timeout(180)
REPO = Path(__file__).resolve().parents[1]
BUCKET = names.MONITORING_BUCKET
SHA = {"2": "2" * 64, "3": "3" * 64}
CHAMPION = Revision("2", f"s3://models/taxi-trip-duration/{SHA['2']}/", SHA["2"])
CANARY = Revision("3", f"s3://models/taxi-trip-duration/{SHA['3']}/", SHA["3"])


# --------------------------------------------------------------------------- what the agent sends


def _rfc3339(moment: datetime) -> str:
    # sdk-go writes Ce-Time in RFC 3339 with nanoseconds, UTC.
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"


def logger_event(
    half: str,
    event_id: str,
    body: bytes,
    *,
    version: str | None,
    client_headers: dict[str, str],
    when: datetime,
    content_type: str = "application/json",
) -> tuple[dict[str, str], bytes]:
    """Headers and body of one event as kserve v0.19.0's agent posts it (pkg/logger/worker.go)."""
    forwarded = {
        name: [client_headers[name.lower()]]
        for name in kd.LOGGED_REQUEST_HEADERS
        if name.lower() in client_headers
    }
    headers = {
        "Ce-Specversion": "1.0",
        "Ce-Id": event_id,
        "Ce-Type": logger_events.REQUEST_TYPE if half == "request" else logger_events.RESPONSE_TYPE,
        "Ce-Source": "http://localhost:9081/",
        "Ce-Time": _rfc3339(when),
        "Ce-Recordedtime": _rfc3339(when),
        "Ce-Inferenceservicename": names.INFERENCE_SERVICE,
        "Ce-Namespace": names.NAMESPACE,
        "Ce-Component": "predictor",
        "Ce-Endpoint": "",
        "Ce-Metadata": json.dumps(forwarded, separators=(",", ":")),
        "Content-Type": content_type,
    }
    if version is not None:
        headers["Ce-Annotations"] = json.dumps(
            {names.MODEL_VERSION_ANNOTATION: version}, separators=(",", ":")
        )
    return headers, body


@dataclass(frozen=True)
class Answered:
    """One request our predictor answered: what went in, what came out, what the log must hold."""

    event_id: str
    client_headers: dict[str, str]
    request: bytes
    response: bytes
    version: str
    trips: list[tuple[int, int, float]]
    minutes: list[float]
    arrived: datetime

    def events(self, with_version: bool = True) -> list[tuple[dict[str, str], bytes]]:
        version = self.version if with_version else None
        common = {"version": version, "client_headers": self.client_headers}
        return [
            logger_event("request", self.event_id, self.request, when=self.arrived, **common),
            logger_event(
                "response",
                self.event_id,
                self.response,
                when=self.arrived + timedelta(milliseconds=3),
                **common,
            ),
        ]


def v1_answer(event_id: str, version: str, trips: list[tuple[int, int, float]], **headers: str) -> Answered:
    minutes = [round(7.5 + i + d, 4) for i, (_, _, d) in enumerate(trips)]
    request = {"instances": [{"PULocationID": p, "DOLocationID": d, "trip_distance": x} for p, d, x in trips]}
    return Answered(
        event_id,
        {k.replace("_", "-"): v for k, v in headers.items()},
        json.dumps(request).encode(),
        json.dumps({"predictions": minutes}).encode(),
        version,
        trips,
        minutes,
        datetime.now(UTC).replace(microsecond=0),
    )


def v2_answer(event_id: str, version: str, trips: list[tuple[int, int, float]], **headers: str) -> Answered:
    minutes = [round(11.25 + i * 0.5 + d, 4) for i, (_, _, d) in enumerate(trips)]
    request = {
        "id": event_id,
        "inputs": [
            {
                "name": "PULocationID",
                "datatype": "INT64",
                "shape": [len(trips)],
                "data": [t[0] for t in trips],
            },
            {
                "name": "DOLocationID",
                "datatype": "INT64",
                "shape": [len(trips)],
                "data": [t[1] for t in trips],
            },
            {
                "name": "trip_distance",
                "datatype": "FP64",
                "shape": [len(trips)],
                "data": [t[2] for t in trips],
            },
        ],
    }
    output = InferOutput(name="duration", shape=[len(trips)], datatype="FP64")
    output.set_data_from_numpy(np.asarray(minutes, dtype=np.float64), binary_data=False)
    response, _ = InferResponse(
        response_id=event_id,
        model_name=names.SERVED_MODEL_NAME,
        model_version=version,
        infer_outputs=[output],
    ).to_rest()
    return Answered(
        event_id,
        {k.replace("_", "-"): v for k, v in headers.items()},
        json.dumps(request).encode(),
        json.dumps(response).encode(),
        version,
        trips,
        minutes,
        datetime.now(UTC).replace(microsecond=0),
    )


def expected_rows(answered: list[Answered], roles: dict[str, str]) -> pd.DataFrame:
    rows = []
    for a in answered:
        request_id = a.client_headers.get(names.REQUEST_ID_HEADER, a.event_id)
        sent_time = a.client_headers.get(names.EVENT_TIME_HEADER)
        event_time = datetime.fromisoformat(sent_time).replace(tzinfo=UTC) if sent_time else a.arrived
        for i, ((pu, do, distance), minutes) in enumerate(zip(a.trips, a.minutes, strict=True)):
            rows.append(
                {
                    "request_id": request_id if len(a.trips) == 1 else f"{request_id}#{i}",
                    "event_time": pd.Timestamp(event_time),
                    "model_name": names.SERVED_MODEL_NAME,
                    "model_version": a.version,
                    "revision": roles.get(a.version, "unknown"),
                    "PULocationID": pu,
                    "DOLocationID": do,
                    "trip_distance": distance,
                    "minutes": minutes,
                }
            )
    return pd.DataFrame(rows).sort_values("request_id").reset_index(drop=True)


# --------------------------------------------------------------------------- the sink process


@dataclass
class Sink:
    process: subprocess.Popen[bytes]
    port: int
    spool: Path
    stderr: Path

    def post(self, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request("POST", "/", body=body, headers=headers)
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()

    def get(self, path: str) -> tuple[int, str]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read().decode()
        finally:
            connection.close()

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, text = self.get("/metrics")
        assert status == 200
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics().get((name, tuple(sorted(labels.items()))), 0.0)

    def wait_for(self, what: str, condition: Any, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            assert self.process.poll() is None, f"sink exited: {self.stderr.read_text()[-2000:]}"
            time.sleep(0.1)
        raise AssertionError(f"sink never reached: {what}\n{self.stderr.read_text()[-2000:]}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            return self.process.wait(timeout=60)
        return self.process.returncode


def start_sink(
    tmp_path: Path,
    conn: S3Connection,
    *args: str,
    endpoint: str | None = None,
    env: dict[str, str] | None = None,
) -> Sink:
    spool = tmp_path / "spool"
    stderr = tmp_path / f"sink-{time.monotonic_ns()}.log"
    environment = {
        **{k: v for k, v in os.environ.items() if k != "KUBECONFIG"},
        "AWS_ACCESS_KEY_ID": conn.access_key,
        "AWS_SECRET_ACCESS_KEY": conn.secret_key,
        "S3_ENDPOINT_URL": f"http://{endpoint or conn.endpoint}",
        **(env or {}),
    }
    command = [sys.executable, "-m", "serving.inference_log_sink", "--host", "127.0.0.1", "--port", "0"]
    command += ["--spool-dir", str(spool), "--flush-seconds", "0.2", "--verdict-refresh-seconds", "0.3"]
    with stderr.open("wb") as err:
        process = subprocess.Popen(command + list(args), cwd=REPO, env=environment, stderr=err)
    sink = Sink(process, 0, spool, stderr)

    def listening() -> bool:
        found = re.search(r"listening on 127\.0\.0\.1:(\d+)", stderr.read_text())
        if found:
            sink.port = int(found.group(1))
        return found is not None

    sink.wait_for("listening", listening)
    sink.wait_for("healthy", lambda: sink.get("/healthz")[0] == 200)
    return sink


@pytest.fixture
def s3() -> Iterator[S3Connection]:
    with moto_s3() as conn:
        # moto keeps its buckets per process, not per server: start each test from an empty store.
        reset = http.client.HTTPConnection(*conn.endpoint.split(":"), timeout=30)
        reset.request("POST", "/moto-api/reset")
        assert reset.getresponse().status == 200
        reset.close()
        conn.client().make_bucket(BUCKET)
        yield conn


@pytest.fixture
def fake_isvc(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A fake Kubernetes API serving the InferenceService mid-canary (champion 2, canary 3 at 20%)."""
    isvc = merge_patch(kd.first_deployment(CHAMPION), kd.canary_patch(CANARY, CHAMPION, 20))
    path = f"/apis/{kd.API_VERSION}/namespaces/{names.NAMESPACE}/{kd.PLURAL}/{names.INFERENCE_SERVICE}"

    def handle(method: str, got: str, headers: Any, raw: str) -> tuple[int, Any]:
        if method == "GET" and got.split("?")[0] == path:
            return 200, isvc
        return 404, {"kind": "Status", "code": 404, "message": f"{method} {got} not here"}

    with serve_json(handle) as url:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "fake", "cluster": {"server": url}}],
                    "users": [{"name": "fake", "user": {"token": "t"}}],
                    "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
                    "current-context": "fake",
                }
            )
        )
        yield {"KUBECONFIG": str(kubeconfig)}


def logged(conn: S3Connection, tmp_path: Path) -> pd.DataFrame:
    folder = tmp_path / f"downloaded-{time.monotonic_ns()}"
    download_prefix(conn, names.PREDICTION_LOG_URI, folder, pattern="part-*.parquet", require_sha256=True)
    frame = read_prediction_log(folder)
    return frame.drop(columns=["logged_at"]).sort_values("request_id").reset_index(drop=True)


def post_all(sink: Sink, events: list[tuple[dict[str, str], bytes]]) -> list[tuple[int, dict[str, Any]]]:
    return [sink.post(headers, body) for headers, body in events]


# --------------------------------------------------------------------------- tests


def test_answered_pairs_become_the_prediction_log_in_the_bucket(tmp_path, s3, fake_isvc):
    answered = [
        v1_answer(
            "ce-1", "2", [(130, 205, 3.66)], x_request_id="trip-0001", x_event_time="2021-03-01T00:05:00"
        ),
        v1_answer("ce-2", "3", [(1, 2, 0.5), (264, 265, 12.25), (43, 43, 1.0)], x_request_id="trip-0002"),
        v2_answer(
            "ce-3", "2", [(100, 161, 2.0)], x_request_id="trip-0003", x_event_time="2021-03-02T10:00:00"
        ),
        v2_answer("ce-4", "3", [(7, 8, 9.5), (9, 10, 0.25)]),  # no client id: the agent's Ce-Id is logged
        v1_answer("ce-5", "9", [(50, 60, 4.0)], x_request_id="trip-0005"),  # a version the isvc does not name
    ]
    sink = start_sink(tmp_path, s3, "--revision-roles", "isvc", env=fake_isvc)
    try:
        events = [event for a in answered for event in a.events()]
        # Five workers send concurrently: some responses arrive before their requests.
        events[2], events[3] = events[3], events[2]
        events[6], events[7] = events[7], events[6]
        answers = post_all(sink, events)
        assert [status for status, _ in answers] == [200] * len(events)
        assert sum(body.get("trips", 0) for _, body in answers) == 8
        assert sum(body["paired"] for _, body in answers) == 5
        sink.wait_for(
            "all records uploaded",
            lambda: (
                sink.metric("inference_log_sink_spool_segments") == 0
                and sum(
                    sink.metric(
                        "trip_duration_prediction_log_records_total",
                        model_name="duration",
                        model_version=v,
                        outcome="written",
                    )
                    for v in ("2", "3", "9")
                )
                == 8
            ),
        )
        frame = logged(s3, tmp_path)
        pd.testing.assert_frame_equal(
            frame, expected_rows(answered, {"2": "champion", "3": "canary"}), check_dtype=False
        )
        assert not list(sink.spool.glob("part-*"))  # uploaded and checked, then deleted
        assert sink.metric("inference_log_sink_events_total", type="request") == 5
        assert sink.metric("inference_log_sink_events_total", type="response") == 5
    finally:
        assert sink.stop() == 0


def test_unpaired_and_malformed_events_are_counted_and_refused_and_the_sink_keeps_serving(tmp_path, s3):
    sink = start_sink(tmp_path, s3, "--pending-ttl", "0.5")
    try:
        good = v1_answer("ok-1", "3", [(130, 205, 3.66)], x_request_id="trip-9")
        request, response = good.events()
        refused_request = v1_answer("refused", "3", [(130, 205, 3.66)]).events()[0]  # a 400: no response
        lone_response = v1_answer("lonely", "3", [(1, 1, 1.0)]).events()[1]
        assert sink.post(*refused_request)[0] == 200
        assert sink.post(*lone_response)[0] == 200

        def broken(**changes: str | None) -> tuple[dict[str, str], bytes]:
            headers = dict(request[0])
            for name, value in changes.items():
                key = name.replace("_", "-").title()
                if value is None:
                    headers.pop(key)
                else:
                    headers[key] = value
            return headers, request[1]

        cases = [
            (broken(ce_id=None), 400, "ce-id is missing"),
            (broken(ce_type="com.example.other"), 400, "ce-type 'com.example.other'"),
            (broken(ce_specversion="0.3"), 400, "ce-specversion"),
            (broken(ce_metadata="{not json"), 400, "ce-metadata is not JSON"),
            (broken(ce_metadata='{"X-Request-Id": "a"}'), 400, "ce-metadata must map"),
            (broken(ce_time="yesterday"), 400, "ce-time 'yesterday'"),
            (broken(content_type="application/cloudevents+json"), 415, "structured CloudEvents"),
        ]
        for (headers, body), status, message in cases:
            got_status, answer = sink.post(headers, body)
            assert (got_status, message in answer["error"]) == (status, True), (message, answer)

        # Pairs that complete but cannot be logged: refused on the half that completes them.
        binary = logger_event(
            "request",
            "bin",
            b"\x00\x01binary",
            version="3",
            client_headers={},
            when=datetime.now(UTC),
            content_type="application/octet-stream",
        )
        assert sink.post(*binary)[0] == 200
        status, answer = sink.post(
            *logger_event(
                "response",
                "bin",
                b"\x00\x02",
                version="3",
                client_headers={},
                when=datetime.now(UTC),
                content_type="application/octet-stream",
            )
        )
        assert status == 415 and "not JSON" in answer["error"]
        liar = v2_answer("liar", "3", [(1, 2, 3.0)])
        liar_request, liar_response = liar.events()
        for headers, _ in (liar_request, liar_response):  # the revision's pods say 2, its answer says 3
            headers["Ce-Annotations"] = json.dumps({names.MODEL_VERSION_ANNOTATION: "2"})
        assert sink.post(*liar_request)[0] == 200
        status, answer = sink.post(*liar_response)
        assert status == 422 and "model_version '3'" in answer["error"] and "says '2'" in answer["error"]
        unversioned = v1_answer("old-revision", "3", [(1, 2, 3.0)]).events(with_version=False)
        assert sink.post(*unversioned[0])[0] == 200
        status, answer = sink.post(*unversioned[1])
        assert status == 422 and names.MODEL_VERSION_ANNOTATION in answer["error"]
        short = v1_answer("short", "3", [(1, 2, 3.0), (4, 5, 6.0)])
        short_request, short_response = short.events()
        assert sink.post(*short_request)[0] == 200
        status, answer = sink.post(short_response[0], json.dumps({"predictions": [1.0]}).encode())
        assert status == 400 and "must hold 2 minutes, got 1 values" in answer["error"]
        metadata_get = v1_answer("get", "3", [(1, 2, 3.0)]).events()
        assert sink.post(metadata_get[0][0], b"")[0] == 200  # GET /v1/models/duration goes through the agent
        status, answer = sink.post(metadata_get[1][0], b'{"name": "duration", "ready": true}')
        assert status == 400 and "not a prediction" in answer["error"]

        assert sink.get("/")[0] == 405
        assert sink.get("/nowhere")[0] == 404
        connection = http.client.HTTPConnection("127.0.0.1", sink.port, timeout=30)
        connection.putrequest("POST", "/")
        connection.putheader("Content-Length", str(64 * 1024 * 1024))
        connection.endheaders()
        too_large = connection.getresponse()
        assert too_large.status == 413 and "over" in json.loads(too_large.read())["error"]
        connection.close()

        # Still serving: the good pair is logged.
        assert [sink.post(*request)[0], sink.post(*response)[0]] == [200, 200]
        sink.wait_for(
            "the halves left alone expire",
            lambda: (
                sink.metric("inference_log_sink_unpaired_events_total", type="request") == 1
                and sink.metric("inference_log_sink_unpaired_events_total", type="response") == 1
            ),
        )
        sink.wait_for(
            "the good pair uploaded",
            lambda: (
                sink.metric("inference_log_sink_segment_uploads_total") >= 1
                and sink.metric("inference_log_sink_spool_segments") == 0
            ),
        )
        frame = logged(s3, tmp_path)
        assert frame["request_id"].tolist() == ["trip-9"]
        refused = {
            dict(labels)["reason"]: value
            for (name, labels), value in sink.metrics().items()
            if name == "inference_log_sink_refused_events_total"
        }
        assert refused == {
            "bad_header": 6,
            "structured_mode": 1,
            "bad_body": 2,
            "version_mismatch": 1,
            "no_model_version": 1,
            "not_a_prediction": 1,
            "too_large": 1,
        }
    finally:
        assert sink.stop() == 0


def test_a_killed_sink_leaves_segments_the_restarted_sink_uploads(tmp_path, s3):
    # MinIO unreachable (nothing listens there), so the first sink's segments stay in its spool.
    with serve_json(lambda *_: (503, {})) as dead_url:
        dead = dead_url.removeprefix("http://")
        first = start_sink(tmp_path, s3, endpoint=dead)
        answered = [v1_answer(f"k-{i}", "3", [(i + 1, 2, 1.5)], x_request_id=f"trip-k{i}") for i in range(6)]
        try:
            for a in answered:
                assert [status for status, _ in post_all(first, a.events())] == [200, 200]
            first.wait_for(
                "the records are in complete spool segments",
                lambda: (
                    first.metric(
                        "trip_duration_prediction_log_records_total",
                        model_name="duration",
                        model_version="3",
                        outcome="written",
                    )
                    == 6
                ),
            )
            first.wait_for(
                "a failed upload", lambda: first.metric("inference_log_sink_segment_upload_errors_total") >= 1
            )
        finally:
            first.process.send_signal(signal.SIGKILL)
            first.process.wait(timeout=30)
    left = sorted(p.name for p in first.spool.glob("part-*.parquet"))
    assert left, "the killed sink left no complete segment"
    (first.spool / "part-20990101T000000000000Z-1-000000.parquet.tmp").write_bytes(b"half a segment")

    second = start_sink(tmp_path, s3)
    try:
        second.wait_for(
            "the old segments uploaded", lambda: second.metric("inference_log_sink_spool_segments") == 0
        )
        assert second.metric("inference_log_sink_recovered_segments_total") == len(left)
        frame = logged(s3, tmp_path)
        assert sorted(frame["request_id"]) == sorted(f"trip-k{i}" for i in range(6))
        assert sorted(p.name for p in _bucket_objects(s3)) == left
        assert list(second.spool.iterdir()) == []  # uploaded ones deleted, the .tmp remains removed
    finally:
        assert second.stop() == 0


def _bucket_objects(conn: S3Connection) -> list[Path]:
    prefix = names.PREDICTION_LOG_URI.removeprefix(f"s3://{BUCKET}/") + "/"
    return [Path(o.object_name) for o in conn.client().list_objects(BUCKET, prefix=prefix)]


def test_metrics_share_the_predictor_counters_and_show_the_monitor_verdict(tmp_path, s3):
    from components.monitoring.prediction_log import PredictionLogWriter
    from serving.predictor import _PredictionLogMetrics

    sink = start_sink(tmp_path, s3)
    try:
        status, text = sink.get("/metrics")
        assert status == 200
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert families["taxi_monitor_verdict_readable"].samples[0].value == 1
        assert "taxi_monitor_verdict" not in families  # no verdict yet: none is claimed

        # The same family and outcome values as the predictor's /metrics: one alert rule covers both.
        writer = PredictionLogWriter(tmp_path / "predictor-log", start=False)
        predictor = {f.name: f for f in _PredictionLogMetrics(writer, ("duration", "3")).collect()}
        writer.close()
        ours = families["trip_duration_prediction_log_records"]
        theirs = predictor["trip_duration_prediction_log_records"]
        assert ours.type == theirs.type == "counter"
        predictor_outcomes = {s.labels["outcome"] for s in theirs.samples}
        assert predictor_outcomes == {"written", "dropped_queue_full", "dropped_write_error"}
        assert all(set(s.labels) == {"model_name", "model_version", "outcome"} for s in theirs.samples)

        for headers, body in v1_answer("m-1", "3", [(130, 205, 3.66)]).events():
            assert sink.post(headers, body)[0] == 200
        sink.wait_for(
            "a written record",
            lambda: (
                sink.metric(
                    "trip_duration_prediction_log_records_total",
                    model_name="duration",
                    model_version="3",
                    outcome="written",
                )
                == 1
            ),
        )
        ours = {f.name: f for f in text_string_to_metric_families(sink.get("/metrics")[1])}
        sampled = {s.labels["outcome"] for s in ours["trip_duration_prediction_log_records"].samples}
        assert predictor_outcomes <= sampled
        assert {s.labels["model_name"] for s in ours["trip_duration_prediction_log_records"].samples} == {
            "duration"
        }

        verdict = {
            "model_version": "3",
            "verdict": "drift",
            "evaluated_at": "2021-03-31T23:00:00+00:00",
            "window": {"start": "2021-03-01", "end": "2021-04-01", "predictions": 80349, "labelled": 0},
            "drift": {"detected": True, "features": {"trip_distance": {"drifted": True, "effect": 0.3}}},
            "accuracy": {"degraded": False},
        }
        upload_object(s3, BUCKET, f"{names.MONITOR_DIR_NAME}/latest.json", json.dumps(verdict).encode())
        sink.wait_for(
            "the verdict gauges",
            lambda: sink.metric("taxi_monitor_verdict", model_version="3", verdict="drift") == 1,
        )
        metrics = sink.metrics()
        assert metrics[("taxi_monitor_verdict", (("model_version", "3"), ("verdict", "ok")))] == 0
        assert metrics[("taxi_monitor_drift_detected", (("model_version", "3"),))] == 1
        assert (
            metrics[("taxi_monitor_feature_drifted", (("feature", "trip_distance"), ("model_version", "3")))]
            == 1
        )
        assert metrics[("taxi_monitor_verdict_readable", ())] == 1

        upload_object(s3, BUCKET, f"{names.MONITOR_DIR_NAME}/latest.json", b"{torn")
        sink.wait_for("an unreadable verdict", lambda: sink.metric("taxi_monitor_verdict_readable") == 0)
        assert sink.get("/healthz")[0] == 200
    finally:
        assert sink.stop() == 0


# --------------------------------------------------------------------------- in process


def _half(event_id: str, half: str) -> LoggedEvent:
    return LoggedEvent(event_id, half, None, {}, {}, b"")


def test_pending_pairs_are_bounded_in_number_and_time():
    now = [0.0]
    pending = PendingPairs(ttl_seconds=10, max_pending=2, clock=lambda: now[0])
    assert pending.offer(_half("a", "request")).pair is None
    assert pending.offer(_half("b", "response")).pair is None
    pushed = pending.offer(_half("c", "request"))
    assert [e.event_id for e in pushed.lost] == ["a"] and len(pending) == 2  # the oldest is pushed out
    paired = pending.offer(_half("b", "request"))
    assert paired.pair is not None and [e.half for e in paired.pair] == ["request", "response"]
    replaced = pending.offer(_half("c", "request"))
    assert [e.event_id for e in replaced.lost] == ["c"] and len(pending) == 1
    now[0] = 10.0
    assert [e.event_id for e in pending.expire()] == ["c"] and len(pending) == 0


def test_the_sink_reads_the_predictor_s_output_name():
    from serving.predictor import OUTPUT_NAME

    assert logger_events.OUTPUT_NAME == OUTPUT_NAME
