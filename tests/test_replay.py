"""Trip ids and the replay client: real TLC-schema files, a real recording HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from support.tlc_fixtures import write_tlc_dir

from components.data.ingest import load_month
from components.data.trip_ids import trip_ids
from serving.replay import ReplayError, replay_trips

CLI = str(Path(sys.executable).with_name("taxi-mlops"))


@pytest.fixture(scope="module")
def month(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    data_dir = write_tlc_dir(tmp_path_factory.mktemp("tlc"))
    trips, _ = load_month("green", "2021-01", data_dir=data_dir)
    return data_dir, trips


def test_ids_are_one_function_of_the_record(month):
    data_dir, trips = month
    ids = trip_ids(trips, "green")
    assert len(set(ids)) == len(ids) == len(trips)
    again, _ = load_month("green", "2021-01", data_dir=data_dir)
    assert (trip_ids(again, "green") == ids).all()  # another read of the file: the same ids
    shuffled = trips.sample(frac=1.0, random_state=3)
    assert dict(zip(shuffled.index, trip_ids(shuffled, "green"), strict=True)) == dict(
        zip(trips.index, ids, strict=True)
    )  # a trip's id does not depend on where it sits in the frame
    assert not set(trip_ids(trips, "yellow")) & set(ids)


def test_exact_duplicates_get_numbered_in_file_order(month):
    _, trips = month
    doubled = pd.concat([trips.head(3), trips.head(3), trips.head(1)], ignore_index=True)
    ids = list(trip_ids(doubled, "green"))
    first = ids[:3]
    assert ids[3:6] == [f"{i}-2" for i in first]
    assert ids[6] == f"{first[0]}-3"


class _Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[dict[str, Any]]
    status_for_zone: dict[int, int]

    def log_message(self, *_: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        trip = body["instances"][0]
        type(self).seen.append(
            {
                "path": self.path,
                "id": self.headers["x-request-id"],
                "time": self.headers["x-event-time"],
                **trip,
            }
        )
        status = type(self).status_for_zone.get(trip["PULocationID"], 200)
        answer = json.dumps({"predictions": [1.0]} if status == 200 else {"error": "no"}).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


@pytest.fixture
def recorder() -> Iterator[tuple[str, type[_Recorder]]]:
    handler = type("Recorder", (_Recorder,), {"seen": [], "status_for_zone": {}})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def test_every_trip_is_sent_once_with_its_id_and_pickup_time(month, recorder):
    _, trips = month
    url, handler = recorder
    ids = trip_ids(trips, "green")
    summary = replay_trips(url, trips, ids, rate=400, limit=120)
    assert (summary.sent, summary.ok, summary.refused, summary.failed) == (120, 120, 0, 0)
    seen = {row["id"]: row for row in handler.seen}
    assert sorted(seen) == sorted(ids[:120]) and len(handler.seen) == 120
    for position in (0, 57, 119):
        trip, row = trips.iloc[position], seen[ids[position]]
        assert row["path"] == "/v1/models/duration:predict"
        assert row["time"] == trip["pickup_datetime"].strftime("%Y-%m-%dT%H:%M:%S")
        assert (row["PULocationID"], row["DOLocationID"]) == (
            int(trip["PULocationID"]),
            int(trip["DOLocationID"]),
        )
        assert row["trip_distance"] == trip["trip_distance"]


def test_answers_are_counted_by_kind(month, recorder):
    _, trips = month
    url, handler = recorder
    head = trips.head(60)
    refused_zone = int(head["PULocationID"].iloc[0])
    handler.status_for_zone = {refused_zone: 400}
    expected_refused = int((pd.to_numeric(head["PULocationID"]) == refused_zone).sum())
    summary = replay_trips(url, head, trip_ids(head, "green"), rate=500)
    assert summary.refused == expected_refused >= 1
    assert summary.ok == 60 - expected_refused and summary.failed == 0
    assert summary.by_status == {200: 60 - expected_refused, 400: expected_refused}


def test_nothing_listening_counts_as_failed_not_as_a_crash(month):
    _, trips = month
    summary = replay_trips("http://127.0.0.1:9", trips.head(5), trip_ids(trips.head(5), "green"), rate=100)
    assert (summary.sent, summary.failed, summary.by_status) == (5, 5, {0: 5})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"rate": 0}, "rate"), ({"limit": 0}, "limit"), ({"url": "127.0.0.1:8080"}, "not an http")],
)
def test_bad_arguments_are_refused_by_name(month, kwargs: dict[str, Any], message: str):
    _, trips = month
    arguments = {"url": "http://127.0.0.1:9", **kwargs}
    url = arguments.pop("url")
    with pytest.raises(ReplayError, match=message):
        replay_trips(url, trips, trip_ids(trips, "green"), **arguments)


def test_the_cli_replays_a_month_and_fails_loudly_on_5xx(month, recorder):
    data_dir, trips = month
    url, handler = recorder
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    command = [
        CLI,
        "replay",
        "--month",
        "2021-01",
        "--data-dir",
        str(data_dir),
        "--url",
        url,
        "--limit",
        "25",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert "replayed: sent 25, ok 25, refused 0, failed 0" in done.stdout
    assert len(handler.seen) == 25
    handler.status_for_zone = {int(z): 503 for z in pd.to_numeric(trips["PULocationID"]).unique()}
    failing = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, check=False)
    assert failing.returncode == 1
    assert (
        failing.stderr.count("error:") == 1 and "25 of 25 requests got no answer or a 5xx" in failing.stderr
    )
