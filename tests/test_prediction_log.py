"""The prediction log: the writer on its own, then real ``python -m serving`` processes writing it.

Writer tests check the record round-trip, rotation by rows and by age, that a
full queue drops and counts without blocking, that ``.tmp`` segments are never
read and a damaged segment is named, and that several threads can log at once.
The live tests start a predictor with ``--prediction-log-dir`` and compare the
log with the answers the client got, then ``kill -9`` one under load.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import requests
from support.model_fixtures import client_records, fit_fixture_model
from support.predictor_process import Server, free_port, launch_predictor, stop_processes, wait_ready

from components.models.duration_model import MODEL_FILE_NAME
from components.monitoring import prediction_log
from components.monitoring.prediction_log import (
    SCHEMA,
    PredictionLogError,
    PredictionLogWriter,
    read_prediction_log,
    segment_paths,
)

pytestmark = pytest.mark.timeout(180)

V1 = "/v1/models/duration:predict"
V2 = "/v2/models/duration/infer"
T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


def _put(writer: PredictionLogWriter, request_id: str, rows: int = 1, **overrides: Any) -> bool:
    fields: dict[str, Any] = {
        "request_id": request_id,
        "event_time": T0,
        "model_name": "duration",
        "model_version": "3",
        "revision": "champion",
        "pickup": np.arange(1, rows + 1, dtype=np.int64),
        "dropoff": np.arange(100, 100 + rows, dtype=np.int64),
        "distance": np.linspace(0.5, 2.5, rows),
        "minutes": np.linspace(5.25, 9.75, rows),
    }
    return writer.put_batch(**{**fields, **overrides})


def _wait_for(condition: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


# ------------------------------------------------------------------ the writer


def test_records_round_trip_exactly(tmp_path: Path):
    writer = PredictionLogWriter(tmp_path, flush_seconds=0.05)
    later = T0 + timedelta(seconds=7, microseconds=123)
    assert _put(writer, "one", revision="canary", event_time=later, model_version="4")
    assert _put(writer, "batch", rows=3)
    writer.close()
    frame = read_prediction_log(tmp_path)
    assert frame["request_id"].tolist() == ["one", "batch#0", "batch#1", "batch#2"]
    assert frame["event_time"].tolist() == [pd.Timestamp(later), *[pd.Timestamp(T0)] * 3]
    assert frame["revision"].tolist() == ["canary", "champion", "champion", "champion"]
    assert frame["model_version"].tolist() == ["4", "3", "3", "3"]
    assert frame["model_name"].unique().tolist() == ["duration"]
    assert frame["PULocationID"].tolist() == [1, 1, 2, 3]
    assert frame["DOLocationID"].tolist() == [100, 100, 101, 102]
    assert frame["trip_distance"].tolist() == [0.5, 0.5, 1.5, 2.5]
    assert frame["minutes"].tolist() == [5.25, 5.25, 7.5, 9.75]
    assert (frame["logged_at"] >= pd.Timestamp(T0)).all()
    # Every segment on disk carries exactly the one schema.
    for path in segment_paths(tmp_path):
        assert pq.read_schema(path).equals(SCHEMA, check_metadata=False)
    stats = writer.stats()
    assert (stats.records_written, stats.records_dropped, stats.write_errors) == (4, 0, 0)


def test_since_and_until_select_on_event_time(tmp_path: Path):
    writer = PredictionLogWriter(tmp_path, flush_seconds=0.05)
    for minute in range(5):
        _put(writer, f"m{minute}", event_time=T0 + timedelta(minutes=minute))
    writer.close()
    window = read_prediction_log(tmp_path, since=T0 + timedelta(minutes=1), until=T0 + timedelta(minutes=3))
    assert window["request_id"].tolist() == ["m1", "m2"]
    # A naive bound is UTC.
    naive = read_prediction_log(tmp_path, since=datetime(2024, 3, 1, 12, 4))
    assert naive["request_id"].tolist() == ["m4"]


def test_segments_rotate_by_rows(tmp_path: Path):
    writer = PredictionLogWriter(tmp_path, flush_seconds=60, max_rows=10, start=False)
    for i in range(35):
        assert _put(writer, f"r{i}")
    writer.start()
    _wait_for(lambda: len(segment_paths(tmp_path)) == 3)  # 10 + 10 + 10 written, 5 waiting for the age
    writer.close()
    sizes = [pq.read_metadata(path).num_rows for path in segment_paths(tmp_path)]
    assert sizes == [10, 10, 10, 5]
    assert writer.stats().segments_written == 4
    assert read_prediction_log(tmp_path)["request_id"].tolist() == [f"r{i}" for i in range(35)]


def test_segments_rotate_by_bytes(tmp_path: Path):
    writer = PredictionLogWriter(tmp_path, flush_seconds=60, max_bytes=1, start=False)
    for i in range(3):
        _put(writer, f"b{i}")
    writer.start()
    _wait_for(lambda: len(segment_paths(tmp_path)) == 3)
    writer.close()


def test_segments_rotate_by_age_while_the_writer_runs(tmp_path: Path):
    writer = PredictionLogWriter(tmp_path, flush_seconds=0.2)
    _put(writer, "first")
    _wait_for(lambda: len(segment_paths(tmp_path)) == 1, seconds=10)
    _put(writer, "second")
    _wait_for(lambda: len(segment_paths(tmp_path)) == 2, seconds=10)
    # Readable while the writer is still running: only complete segments are there.
    assert read_prediction_log(tmp_path)["request_id"].tolist() == ["first", "second"]
    writer.close()


def test_a_full_queue_drops_and_counts_without_blocking(tmp_path: Path):
    writer = PredictionLogWriter(tmp_path, queue_batches=2, flush_seconds=0.05, start=False)
    # The writer is not started, so a put that waited for room would wait forever: a thread that
    # is still alive after 10 s is a blocked request path (no timing of how fast it returned).
    accepted: list[bool] = []
    putter = threading.Thread(
        target=lambda: accepted.extend(_put(writer, f"q{i}", rows=2) for i in range(5)), daemon=True
    )
    putter.start()
    putter.join(timeout=10)
    assert not putter.is_alive(), "put_batch blocked on a full queue"
    assert accepted == [True, True, False, False, False]
    stats = writer.stats()
    assert (stats.records_dropped_queue_full, stats.records_written) == (6, 0)
    writer.close()  # a paused writer still writes what it had queued
    assert read_prediction_log(tmp_path)["request_id"].tolist() == ["q0#0", "q0#1", "q1#0", "q1#1"]
    assert writer.stats().records_written == 4
    assert not _put(writer, "after-close")
    assert writer.stats().records_dropped_queue_full == 7


def test_a_failed_write_is_counted_and_the_writer_carries_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    real_write = prediction_log.pq.write_table
    calls = {"n": 0}

    def failing_once(*args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(28, "No space left on device")
        real_write(*args, **kwargs)

    monkeypatch.setattr(prediction_log.pq, "write_table", failing_once)
    writer = PredictionLogWriter(tmp_path, flush_seconds=0.05)
    _put(writer, "lost", rows=2)
    _wait_for(lambda: writer.stats().write_errors == 1)
    _put(writer, "kept")
    writer.close()
    stats = writer.stats()
    assert (stats.write_errors, stats.records_dropped_write_error, stats.records_written) == (1, 2, 1)
    assert read_prediction_log(tmp_path)["request_id"].tolist() == ["kept"]
    assert not list(tmp_path.glob("*.tmp")), "a failed write left its temp file"


def test_tmp_segments_are_never_read_and_a_damaged_segment_is_named(tmp_path: Path):
    writer = PredictionLogWriter(tmp_path, flush_seconds=0.05)
    _put(writer, "whole")
    writer.close()
    [segment] = segment_paths(tmp_path)
    # What a kill mid-write leaves: half a file under the temp name.
    half = segment.read_bytes()[: segment.stat().st_size // 2]
    (tmp_path / f"part-29990101T000000000000Z-1-000000.parquet{prediction_log.TMP_SUFFIX}").write_bytes(half)
    assert read_prediction_log(tmp_path)["request_id"].tolist() == ["whole"]
    damaged = tmp_path / "part-29990101T000000000000Z-2-000000.parquet"
    damaged.write_bytes(half)
    with pytest.raises(PredictionLogError, match=damaged.name):
        read_prediction_log(tmp_path)
    skipped = read_prediction_log(tmp_path, on_corrupt="skip")
    assert skipped["request_id"].tolist() == ["whole"]
    assert skipped.attrs["skipped_segments"] == [str(damaged)]


def test_a_missing_directory_is_named(tmp_path: Path):
    with pytest.raises(PredictionLogError, match="nowhere"):
        read_prediction_log(tmp_path / "nowhere")


def test_many_threads_log_at_once(tmp_path: Path):
    writer = PredictionLogWriter(tmp_path, flush_seconds=0.02, max_rows=64)

    def client(thread: int) -> None:
        for i in range(250):
            assert _put(writer, f"t{thread}-{i}", rows=1 + i % 3)

    threads = [threading.Thread(target=client, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writer.close()
    frame = read_prediction_log(tmp_path)
    expected = sum(1 + i % 3 for i in range(250)) * 8
    assert len(frame) == expected == writer.stats().records_written
    assert frame["request_id"].is_unique
    assert writer.stats().segments_written == len(segment_paths(tmp_path)) > 1


# ------------------------------------------------------------------ live predictors


@dataclass(frozen=True)
class Built:
    folder: Path
    sha256: str
    records: list[dict[str, Any]]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    model, _, validation = fit_fixture_model(tmp_path_factory.mktemp("tlc"))
    folder = tmp_path_factory.mktemp("model")
    sha256 = model.save(folder / MODEL_FILE_NAME)
    records = client_records(validation)
    return Built(folder, sha256, records)


def _start(built: Built, log_dir: Path, logs: Path) -> Server:
    port = free_port()
    args = [
        *("--model-uri", str(built.folder), "--model-sha256", built.sha256, "--model-version", "7"),
        *("--http_port", str(port), "--bind-host", "127.0.0.1", "--prediction-log-dir", str(log_dir)),
    ]
    process, stdout, stderr = launch_predictor(args, logs)
    server = Server(f"http://127.0.0.1:{port}", process, stdout, stderr)
    wait_ready(server)
    return server


@pytest.fixture(scope="module")
def logged(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    log_dir = tmp_path_factory.mktemp("prediction-log")
    server = _start(built, log_dir, tmp_path_factory.mktemp("logged-logs"))
    try:
        yield server, log_dir
    finally:
        stop_processes(server.process)


def _v2_body(records: list[dict[str, Any]]) -> dict[str, Any]:
    types = {"PULocationID": "INT64", "DOLocationID": "INT64", "trip_distance": "FP64"}
    return {
        "inputs": [
            {"name": name, "shape": [len(records)], "datatype": kind, "data": [r[name] for r in records]}
            for name, kind in types.items()
        ]
    }


def _minutes(path: str, answer: requests.Response) -> list[float]:
    body = answer.json()
    return body["predictions"] if path == V1 else body["outputs"][0]["data"]


def test_the_log_holds_exactly_the_answered_trips(logged: tuple[Server, Path], built: Built):
    server, log_dir = logged
    trips = built.records
    cases: list[tuple[str, dict[str, Any], dict[str, str]]] = [
        (V1, {"instances": trips[:1]}, {}),
        (V1, {"instances": trips[1:2]}, {"x-request-id": "client-1", "x-event-time": "2024-03-01T12:00:05Z"}),
        (V1, {"instances": trips[2:5]}, {"ce-id": "event-9"}),
        (V2, _v2_body(trips[5:6]), {"x-request-id": "client-2", "x-taxi-revision": "canary"}),
        (V2, _v2_body(trips[6:8]), {"x-event-time": "2024-03-01T13:00:00"}),
    ]
    expected: list[dict[str, Any]] = []
    for path, body, headers in cases:
        answer = requests.post(f"{server.url}{path}", json=body, headers=headers, timeout=30)
        assert answer.status_code == 200, answer.text
        request_id = answer.headers["x-request-id"]
        assert request_id == headers.get("x-request-id", headers.get("ce-id", request_id))
        sent = body["instances"] if path == V1 else _v2_rows(body)
        for row, (trip, minutes) in enumerate(zip(sent, _minutes(path, answer), strict=True)):
            expected.append(
                {
                    "request_id": request_id if len(sent) == 1 else f"{request_id}#{row}",
                    "revision": headers.get("x-taxi-revision", "unknown"),
                    "model_version": answer.headers["x-model-version"],
                    "minutes": minutes,
                    **trip,
                }
            )
    # Refused requests are not logged (and still name their request id).
    refused = requests.post(
        f"{server.url}{V1}",
        json={"instances": [{"PULocationID": 1}]},
        headers={"x-request-id": "bad"},
        timeout=30,
    )
    assert refused.status_code == 400
    _wait_for(lambda: len(read_prediction_log(log_dir)) >= len(expected))
    time.sleep(1.5)  # one more flush interval: nothing else may show up
    frame = read_prediction_log(log_dir)
    columns = [
        "request_id",
        "revision",
        "model_version",
        "minutes",
        "PULocationID",
        "DOLocationID",
        "trip_distance",
    ]
    got = frame[columns].to_dict("records")
    assert sorted(got, key=lambda r: r["request_id"]) == sorted(expected, key=lambda r: r["request_id"])
    assert set(frame["model_name"]) == {"duration"}
    by_id = frame.set_index("request_id")["event_time"]
    assert by_id["client-1"] == pd.Timestamp("2024-03-01T12:00:05Z")
    assert by_id[f"{expected[-1]['request_id']}"] == pd.Timestamp("2024-03-01T13:00:00Z")
    generated = by_id[expected[0]["request_id"]]
    assert abs(generated - pd.Timestamp.now(tz="UTC")) < pd.Timedelta(minutes=1)
    metrics = requests.get(f"{server.url}/metrics", timeout=10).text
    assert _records_metric(metrics, "written") == len(expected)
    assert _records_metric(metrics, "dropped_queue_full") == 0
    assert 'trip_duration_prediction_log_segments_total{model_name="duration",model_version="7"}' in metrics


def _v2_rows(body: dict[str, Any]) -> list[dict[str, Any]]:
    columns = {item["name"]: item["data"] for item in body["inputs"]}
    return [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]


def _records_metric(text: str, outcome: str) -> float:
    prefix = 'trip_duration_prediction_log_records_total{model_name="duration",model_version="7"'
    for line in text.splitlines():
        if line.startswith(prefix) and f'outcome="{outcome}"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no prediction log records line for outcome {outcome} in /metrics")


def test_kill_9_under_load_leaves_a_clean_log(built: Built, tmp_path: Path):
    log_dir = tmp_path / "prediction-log"
    server = _start(built, log_dir, tmp_path / "logs")
    answered: dict[str, float] = {}  # request id -> when the answer arrived (monotonic)
    stop = threading.Event()

    def client(name: str) -> None:
        session = requests.Session()
        i = 0
        while not stop.is_set():
            request_id = f"{name}-{i}"
            i += 1
            try:
                answer = session.post(
                    f"{server.url}{V1}",
                    data=json.dumps({"instances": built.records[i % 20 : i % 20 + 1]}),
                    headers={"content-type": "application/json", "x-request-id": request_id},
                    timeout=5,
                )
            except requests.RequestException:
                return  # the server is gone
            if answer.status_code == 200:
                answered[request_id] = time.monotonic()

    threads = [threading.Thread(target=client, args=(f"c{n}",)) for n in range(2)]
    try:
        for thread in threads:
            thread.start()
        time.sleep(3.0)
        server.process.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        server.process.wait(timeout=10)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
        stop_processes(server.process)
    assert len(answered) > 100, "the load was too light to mean anything"
    frame = read_prediction_log(log_dir)  # raises if any complete-named segment were partial
    logged = set(frame["request_id"])
    assert logged <= set(answered), "the log holds requests that were never answered"
    missing = set(answered) - logged
    oldest_missing = min((answered[r] for r in missing), default=killed_at)
    lost_seconds = killed_at - oldest_missing
    # One flush interval (1 s) plus the fsync and scheduling on a shared 2-core machine.
    assert lost_seconds < 1.6, (
        f"{len(missing)} answered records missing, the oldest {lost_seconds:.2f} s before the kill"
    )
