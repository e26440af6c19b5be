"""The predictor as deployed: real ``python -m serving`` processes on 127.0.0.1.

Two servers run side by side for the whole module, started exactly the way the
local canary stack starts them (no gRPC port): a "champion" (version 3,
``--model-sha256``) and a "challenger" (version 4, sha256 from the sidecar file,
``--max-batch-rows 5``). Every refused request is followed by a good one on the
same server, so a bad body can never leave the server unable to answer.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from support.model_fixtures import client_records, fit_fixture_model
from support.predictor_process import (
    STARTUP_SECONDS,
    Server,
    free_port,
    launch_predictor,
    stop_processes,
    wait_ready,
)

from components.models.duration_model import MODEL_FILE_NAME, TripDurationModel, load_duration_model

pytestmark = pytest.mark.timeout(120)

JSON = {"content-type": "application/json"}
V1 = "/v1/models/duration:predict"
V2 = "/v2/models/duration/infer"


@dataclass(frozen=True)
class Built:
    folder: Path  # holds trip_duration_model.zip
    sha256: str
    model: TripDurationModel  # loaded back from the file, as the server loads it
    records: list[dict[str, Any]]  # 20 real validation trips, as a client sends them


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    model, _, validation = fit_fixture_model(tmp_path_factory.mktemp("tlc"))
    folder = tmp_path_factory.mktemp("model")
    sha256 = model.save(folder / MODEL_FILE_NAME)
    records = client_records(validation)
    return Built(folder, sha256, load_duration_model(folder / MODEL_FILE_NAME, sha256), records)


@pytest.fixture(scope="module")
def servers(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    challenger_dir = tmp_path_factory.mktemp("challenger-model")
    shutil.copyfile(built.folder / MODEL_FILE_NAME, challenger_dir / MODEL_FILE_NAME)
    (challenger_dir / f"{MODEL_FILE_NAME}.sha256").write_text(f"{built.sha256}  {MODEL_FILE_NAME}\n")
    ports = {"champion": free_port(), "challenger": free_port()}
    commands = {
        # Exactly the canary stack's command line.
        "champion": [
            *("--model_name", "duration", "--model-uri", str(built.folder), "--model-sha256", built.sha256),
            *("--model-version", "3", "--http_port", str(ports["champion"]), "--bind-host", "127.0.0.1"),
        ],
        "challenger": [
            *("--model_name", "duration", "--model-uri", str(challenger_dir), "--model-version", "4"),
            *("--http_port", str(ports["challenger"]), "--max-batch-rows", "5"),
        ],
    }
    started: dict[str, Server] = {}
    try:
        # Both start at once: they must not compete for any port but their own.
        for role, args in commands.items():
            process, stdout, stderr = launch_predictor(args, tmp_path_factory.mktemp(f"{role}-logs"))
            started[role] = Server(f"http://127.0.0.1:{ports[role]}", process, stdout, stderr)
        for server in started.values():
            wait_ready(server)
        yield started
    finally:
        stop_processes(*(server.process for server in started.values()))


@pytest.fixture(scope="module")
def champion(servers: dict[str, Server]) -> Server:
    return servers["champion"]


@pytest.fixture(scope="module")
def challenger(servers: dict[str, Server]) -> Server:
    return servers["challenger"]


def _v2_body(records: list[dict[str, Any]], **datatypes: str) -> dict[str, Any]:
    types = {"PULocationID": "INT64", "DOLocationID": "INT64", "trip_distance": "FP64", **datatypes}
    return {
        "id": "req-1",
        "inputs": [
            {
                "name": name,
                "shape": [len(records)],
                "datatype": types[name],
                "data": [r[name] for r in records],
            }
            for name in ("PULocationID", "DOLocationID", "trip_distance")
        ],
    }


def _post(server: Server, path: str, body: Any, headers: dict[str, str] | None = None) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(f"{server.url}{path}", data=data, headers=headers or JSON, timeout=30)


def _assert_good_request_still_works(server: Server, built: Built) -> None:
    answer = _post(server, V1, {"instances": built.records[:3]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"] == built.model.predict(built.records[:3]).tolist()


# ------------------------------------------------------------------ answers


def test_v1_answers_equal_the_models_own_predictions(champion: Server, built: Built):
    answer = _post(champion, V1, {"instances": built.records})
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-model-version"] == "3"
    assert answer.json() == {"predictions": built.model.predict(built.records).tolist()}


def test_v2_answers_equal_the_models_own_predictions(champion: Server, built: Built):
    answer = _post(champion, V2, _v2_body(built.records))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model_name"] == "duration"
    assert body["model_version"] == "3"
    assert body["id"] == "req-1"
    [output] = body["outputs"]
    assert output["name"] == "duration"
    assert output["datatype"] == "FP64"
    assert output["shape"] == [len(built.records)]
    assert output["data"] == built.model.predict(built.records).tolist()


def test_v2_accepts_int32_ids_and_fp32_distance(champion: Server, built: Built):
    # JSON numbers are the same numbers whatever the declared width: same minutes.
    answer = _post(
        champion,
        V2,
        _v2_body(built.records, PULocationID="INT32", DOLocationID="INT32", trip_distance="FP32"),
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == built.model.predict(built.records).tolist()


def test_integral_float_ids_and_extra_fields_are_accepted(champion: Server, built: Built):
    sent = [
        {**r, "PULocationID": float(r["PULocationID"]), "pickup_datetime": "2021-02-01 08:00"}
        for r in built.records[:5]
    ]
    answer = _post(champion, V1, {"instances": sent})
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"] == built.model.predict(built.records[:5]).tolist()


def test_challenger_serves_its_own_version_beside_the_champion(challenger: Server, built: Built):
    answer = _post(challenger, V1, {"instances": built.records[:2]})
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-model-version"] == "4"
    assert answer.json()["predictions"] == built.model.predict(built.records[:2]).tolist()


# --------------------------------------------------------------- health


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v2/health/live", {"live": True}),
        ("/v2/health/ready", {"ready": True}),
        ("/v2/models/duration/ready", {"name": "duration", "ready": True}),
        ("/v1/models/duration", {"name": "duration", "ready": True}),
    ],
)
def test_health_endpoints(champion: Server, path: str, expected: dict[str, Any]):
    answer = requests.get(f"{champion.url}{path}", timeout=5)
    assert answer.status_code == 200, answer.text
    assert answer.json() == expected


def test_unknown_model_is_404(champion: Server):
    answer = requests.get(f"{champion.url}/v2/models/other/ready", timeout=5)
    assert answer.status_code == 404


def test_v2_metadata_describes_the_inputs(champion: Server):
    answer = requests.get(f"{champion.url}/v2/models/duration", timeout=5)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert [i["name"] for i in body["inputs"]] == ["PULocationID", "DOLocationID", "trip_distance"]
    assert body["outputs"] == [{"name": "duration", "datatype": "FP64", "shape": [-1]}]


# -------------------------------------------------------------- refusals


def _instances(records: list[dict[str, Any]], row: int, **change: Any) -> dict[str, Any]:
    """Three good trips with ``change`` applied to ``row`` (a value of ... removes the field)."""
    trips = [dict(r) for r in records[:3]]
    for key, value in change.items():
        if value is ...:
            del trips[row][key]
        else:
            trips[row][key] = value
    return {"instances": trips}


def _raw_v1_with_token(records: list[dict[str, Any]], row: int, token: str) -> bytes:
    """A v1 body whose ``row`` has trip_distance set to a bare JSON token (NaN, Infinity)."""
    body = json.dumps(_instances(records, row, trip_distance=12345.678))
    return body.replace("12345.678", token).encode()


BIG_INT = 10**400


def _nested(depth: int, key: str) -> bytes:
    return (f'{{"{key}":' + "[" * depth + "]" * depth + "}").encode()


def _raw_v1_with_big_int(records: list[dict[str, Any]], field: str) -> bytes:
    """A v1 body whose row 1 has ``field`` set to a 401-digit JSON integer."""
    return json.dumps(_instances(records, 1, **{field: 12345})).replace("12345", str(BIG_INT)).encode()


# (case id, body builder, content-type, status, substrings the error must contain)
V1_REFUSALS: list[tuple[str, Any, str, int, list[str]]] = [
    ("not-json", lambda r: b"{not json", "application/json", 400, ["Unrecognized request format"]),
    ("not-json-text-plain", lambda r: b"{not json", "text/plain", 400, ["body is not JSON"]),
    ("no-instances", lambda r: {"trips": r[:1]}, "application/json", 400, ['no "instances"']),
    ("instances-not-a-list", lambda r: {"instances": r[0]}, "application/json", 400, ['"instances"']),
    (
        "instance-not-an-object",
        lambda r: {"instances": [r[0], [130, 205, 3.5]]},
        "application/json",
        400,
        ["instances (row 1)", "array"],
    ),
    (
        "missing-field",
        lambda r: _instances(r, 1, DOLocationID=...),
        "application/json",
        400,
        ["DOLocationID (row 1)", "missing field"],
    ),
    (
        "string-distance",
        lambda r: _instances(r, 2, trip_distance="3.5"),
        "application/json",
        400,
        ["trip_distance (row 2)", "string"],
    ),
    (
        "bool-id",
        lambda r: _instances(r, 0, PULocationID=True),
        "application/json",
        400,
        ["PULocationID (row 0)", "boolean"],
    ),
    (
        "null-distance",
        lambda r: _instances(r, 1, trip_distance=None),
        "application/json",
        400,
        ["trip_distance (row 1)", "null"],
    ),
    (
        "null-id",
        lambda r: _instances(r, 2, DOLocationID=None),
        "application/json",
        400,
        ["DOLocationID (row 2)", "null"],
    ),
    (
        "id-zero",
        lambda r: _instances(r, 1, PULocationID=0),
        "application/json",
        400,
        ["PULocationID (row 1)", "outside the TLC zones 1..265"],
    ),
    (
        "id-266",
        lambda r: _instances(r, 0, DOLocationID=266),
        "application/json",
        400,
        ["DOLocationID (row 0)", "outside the TLC zones 1..265"],
    ),
    (
        "fractional-id",
        lambda r: _instances(r, 2, PULocationID=130.5),
        "application/json",
        400,
        ["PULocationID (row 2)", "integer"],
    ),
    (
        "string-id",
        lambda r: _instances(r, 0, PULocationID="130"),
        "application/json",
        400,
        ["PULocationID (row 0)", "string"],
    ),
    (
        "negative-distance",
        lambda r: _instances(r, 1, trip_distance=-0.5),
        "application/json",
        400,
        ["trip_distance (row 1)", "negative"],
    ),
    (
        "absurd-distance",
        lambda r: _instances(r, 2, trip_distance=501.0),
        "application/json",
        400,
        ["trip_distance (row 2)", "500 miles"],
    ),
    (
        "nan-distance",
        lambda r: _raw_v1_with_token(r, 1, "NaN"),
        "application/json",
        400,
        ["trip_distance (row 1)", "finite"],
    ),
    (
        "infinite-distance",
        lambda r: _raw_v1_with_token(r, 2, "Infinity"),
        "application/json",
        400,
        ["trip_distance (row 2)", "finite"],
    ),
    ("empty-batch", lambda r: {"instances": []}, "application/json", 400, ["instances", "empty batch"]),
    # Used to be 500s (RecursionError, OverflowError) that also cost the next request its connection.
    ("nested-6000-deep", lambda r: _nested(6000, "instances"), "application/json", 400, ["nests too deeply"]),
    (
        "400-digit-zone",
        lambda r: _raw_v1_with_big_int(r, "PULocationID"),
        "application/json",
        400,
        ["PULocationID (row 1)", "401-digit number", "TLC zones"],
    ),
    (
        "400-digit-distance",
        lambda r: _raw_v1_with_big_int(r, "trip_distance"),
        "application/json",
        400,
        ["trip_distance (row 1)", "401-digit number", "miles"],
    ),
    (
        "batch-over-default-limit",
        lambda r: {"instances": [r[0]] * 10_001},
        "application/json",
        400,
        ["instances", "10001 trips", "limit of 10000"],
    ),
]


@pytest.mark.parametrize(
    ("make_body", "content_type", "status", "parts"),
    [pytest.param(*case[1:], id=case[0]) for case in V1_REFUSALS],
)
def test_v1_refusals(champion: Server, built: Built, make_body, content_type: str, status: int, parts):
    answer = _post(champion, V1, make_body(built.records), {"content-type": content_type})
    assert answer.status_code == status, answer.text
    message = answer.json()["error"]
    for part in parts:
        assert part in message
    _assert_good_request_still_works(champion, built)


def _v2_changed(records: list[dict[str, Any]], name: str, **change: Any) -> dict[str, Any]:
    body = _v2_body(records[:3])
    for infer_input in body["inputs"]:
        if infer_input["name"] == name:
            infer_input.update(change)
    return body


def _v2_value(records: list[dict[str, Any]], name: str, row: int, value: Any) -> dict[str, Any]:
    body = _v2_body(records[:3])
    for infer_input in body["inputs"]:
        if infer_input["name"] == name:
            infer_input["data"][row] = value
    return body


def _v2_without(records: list[dict[str, Any]], name: str) -> dict[str, Any]:
    body = _v2_body(records[:3])
    body["inputs"] = [i for i in body["inputs"] if i["name"] != name]
    return body


def _raw_v2_nan(records: list[dict[str, Any]]) -> bytes:
    return json.dumps(_v2_value(records, "trip_distance", 1, 12345.678)).replace("12345.678", "NaN").encode()


V2_REFUSALS: list[tuple[str, Any, int, list[str]]] = [
    # FastAPI validates the v2 envelope before KServe or the model see it; its 422 {"detail": [...]}
    # is answered in the one shape too (serving/error_responses.py).
    ("not-json", lambda r: b"{not json", 400, ["body is not JSON", "application/json"]),
    ("input-without-data", lambda r: _v2_changed(r, "trip_distance", data=None), 400, ["inputs.2.data"]),
    ("nested-6000-deep", lambda r: _nested(6000, "inputs"), 400, ["error parsing the body"]),
    (
        "400-digit-zone",
        lambda r: _v2_value(r, "DOLocationID", 2, BIG_INT),
        400,
        ["DOLocationID (row 2)", "401-digit number"],
    ),
    (
        "400-digit-distance",
        lambda r: _v2_value(r, "trip_distance", 0, BIG_INT),
        400,
        ["trip_distance (row 0)", "401-digit number"],
    ),
    ("missing-input", lambda r: _v2_without(r, "trip_distance"), 400, ["trip_distance", "missing input"]),
    (
        "unequal-lengths",
        lambda r: _v2_changed(r, "trip_distance", shape=[2], data=[1.0, 2.0]),
        400,
        ["same length", "PULocationID=3", "trip_distance=2"],
    ),
    (
        "float-datatype-for-id",
        lambda r: _v2_changed(r, "PULocationID", datatype="FP64"),
        400,
        ["PULocationID", "datatype FP64", "INT32 or INT64"],
    ),
    (
        "string-distance",
        lambda r: _v2_value(r, "trip_distance", 1, "3.5"),
        400,
        ["trip_distance (row 1)", "string"],
    ),
    ("bool-id", lambda r: _v2_value(r, "DOLocationID", 2, True), 400, ["DOLocationID (row 2)", "boolean"]),
    ("null-id", lambda r: _v2_value(r, "PULocationID", 0, None), 400, ["PULocationID (row 0)", "null"]),
    ("nan-distance", _raw_v2_nan, 400, ["trip_distance (row 1)", "finite"]),
    (
        "id-out-of-range",
        lambda r: _v2_value(r, "PULocationID", 1, 300),
        400,
        ["PULocationID (row 1)", "outside the TLC zones"],
    ),
    (
        "negative-distance",
        lambda r: _v2_value(r, "trip_distance", 0, -2.0),
        400,
        ["trip_distance (row 0)", "negative"],
    ),
    (
        "two-dimensional-shape",
        lambda r: _v2_changed(r, "DOLocationID", shape=[3, 1]),
        400,
        ["DOLocationID", "shape must be [n]"],
    ),
    (
        "shape-disagrees-with-data",
        lambda r: _v2_changed(r, "DOLocationID", shape=[4]),
        400,
        ["DOLocationID", "shape says 4 values but data holds 3"],
    ),
    (
        "empty-batch",
        lambda r: _v2_body([]),
        400,
        ["PULocationID", "empty batch"],
    ),
]


@pytest.mark.parametrize(
    ("make_body", "status", "parts"), [pytest.param(*case[1:], id=case[0]) for case in V2_REFUSALS]
)
def test_v2_refusals(champion: Server, built: Built, make_body, status: int, parts):
    answer = _post(champion, V2, make_body(built.records))
    assert answer.status_code == status, answer.text
    message = answer.json()["error"]
    for part in parts:
        assert part in message
    _assert_good_request_still_works(champion, built)


@pytest.mark.parametrize(
    ("method", "path", "status", "parts"),
    [
        # GET on :predict used to reach the model-metadata route: "model duration:predict does not exist".
        ("GET", V1, 405, ["GET is not allowed", "POST"]),
        ("GET", V2, 405, ["GET is not allowed", "POST"]),
        ("PUT", V2, 405, ["PUT is not allowed", "POST"]),
        ("DELETE", "/v2/models/duration", 405, ["Method Not Allowed"]),
        ("GET", "/no/such/path", 404, ["Not Found"]),
        ("POST", "/v1/models/other:predict", 404, ["other"]),
    ],
)
def test_wrong_methods_and_paths_get_the_one_error_shape(
    champion: Server, built: Built, method: str, path: str, status: int, parts: list[str]
):
    answer = requests.request(method, f"{champion.url}{path}", data=b"{}", headers=JSON, timeout=30)
    assert answer.status_code == status, answer.text
    assert list(answer.json()) == ["error"]
    for part in parts:
        assert part in answer.json()["error"]
    if status == 405 and path in (V1, V2):
        assert answer.headers["allow"] == "POST"
    _assert_good_request_still_works(champion, built)


def _listening_addresses(pid: int, port: int) -> set[str]:
    import psutil

    process = psutil.Process(pid)
    return {
        conn.laddr.ip
        for proc in (process, *process.children(recursive=True))
        # psutil >= 6 calls it net_connections; 5.x only has connections.
        for conn in getattr(proc, "net_connections", proc.connections)(kind="inet")
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port
    }


def test_the_stack_command_listens_on_loopback_only_and_the_container_default_on_all(
    servers: dict[str, Server],
):
    champion, challenger = servers["champion"], servers["challenger"]
    assert _listening_addresses(champion.process.pid, int(champion.url.rsplit(":", 1)[1])) == {"127.0.0.1"}
    assert _listening_addresses(challenger.process.pid, int(challenger.url.rsplit(":", 1)[1])) == {"0.0.0.0"}


def test_configured_batch_limit(challenger: Server, built: Built):
    for path, body in ((V1, {"instances": built.records[:6]}), (V2, _v2_body(built.records[:6]))):
        answer = _post(challenger, path, body)
        assert answer.status_code == 400, answer.text
        assert "batch of 6 trips is larger than the limit of 5" in answer.json()["error"]
    exactly_at_limit = _post(challenger, V1, {"instances": built.records[:5]})
    assert exactly_at_limit.status_code == 200, exactly_at_limit.text


# ------------------------------------------------------- metrics and logs


def _metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and all(f'{k}="{v}"' in match[1] for k, v in labels.items()):
            return float(match[2])
    raise AssertionError(f"no {name} with {labels} in /metrics")


def test_metrics_are_labelled_with_the_model_version(servers: dict[str, Server], built: Built):
    for role, version in (("champion", "3"), ("challenger", "4")):
        server = servers[role]
        before = requests.get(f"{server.url}/metrics", timeout=5).text
        assert _post(server, V1, {"instances": built.records[:4]}).status_code == 200
        assert _post(server, V1, {"instances": []}).status_code == 400
        after = requests.get(f"{server.url}/metrics", timeout=5).text
        labels = {"model_name": "duration", "model_version": version}
        rows = "trip_duration_predictions_total"
        assert _metric(after, rows, **labels) - _metric(before, rows, **labels) == 4
        requests_total = "trip_duration_requests_total"
        assert _metric(after, requests_total, **labels, outcome="ok") >= 1
        assert _metric(after, requests_total, **labels, outcome="invalid") >= 1
        assert _metric(after, "trip_duration_request_seconds_count", **labels) >= 1
        assert _metric(after, "trip_duration_model_info", **labels, sha256=built.sha256) == 1
        # KServe's own latency histograms are on the same registry.
        assert _metric(after, "request_predict_seconds_count", model_name="duration") >= 1
        # Each server reports only its own version.
        other = "4" if version == "3" else "3"
        assert f'model_version="{other}"' not in after


def test_inference_requests_are_counted_by_status_class_and_timed_whole(champion: Server, built: Built):
    """The series the 5xx-rate and p99 alert rules read: only inference paths count, by status class."""
    labels = {"model_name": "duration", "model_version": "3"}
    counted = "trip_duration_http_requests_total"
    before = requests.get(f"{champion.url}/metrics", timeout=5).text
    assert _post(champion, V1, {"instances": built.records[:4]}).status_code == 200
    assert _post(champion, V2, _v2_body(built.records[:2])).status_code == 200
    assert _post(champion, V1, {"instances": []}).status_code == 400
    assert requests.get(f"{champion.url}{V1}", timeout=5).status_code == 405  # PostOnlyPaths, inside us
    for probe in ("/v2/health/ready", "/v2/models/duration/ready", "/metrics"):  # not traffic
        assert requests.get(f"{champion.url}{probe}", timeout=5).status_code == 200
    after = requests.get(f"{champion.url}/metrics", timeout=5).text

    def delta(name: str, **extra: str) -> float:
        return _metric(after, name, **labels, **extra) - _metric(before, name, **labels, **extra)

    assert delta(counted, status_class="2xx") == 2
    assert delta(counted, status_class="4xx") == 2
    assert delta(counted, status_class="5xx") == 0
    assert _metric(after, counted, **labels, status_class="5xx") == 0  # exists before the first 5xx
    assert delta("trip_duration_http_request_seconds_count") == 4
    assert delta("trip_duration_http_request_seconds_sum") > 0
    assert _metric(after, "trip_duration_http_request_seconds_bucket", **labels, le="+Inf") >= 4


def test_a_request_that_raises_counts_as_5xx_and_a_cancelled_one_not_at_all():
    """The middleware under Starlette's own error handling, in process (a real predictor cannot be
    made to raise on demand): a handler that raises is a 5xx (Starlette's outermost error
    middleware writes the 500 after we see the exception), and 2xx/4xx are counted as answered."""
    import asyncio

    import httpx
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from serving.predictor import HTTP_LATENCY, HTTP_REQUESTS, InferenceRequestMetrics

    async def boom(_request: object) -> JSONResponse:
        raise RuntimeError("model exploded")

    async def fine(_request: object) -> JSONResponse:
        return JSONResponse({"predictions": [1.0]})

    async def refused(_request: object) -> JSONResponse:
        return JSONResponse({"error": "no"}, status_code=400)

    app = Starlette(
        routes=[
            Route("/v1/models/boom:predict", boom, methods=["POST"]),
            Route("/v1/models/fine:predict", fine, methods=["POST"]),
            Route("/v1/models/refused:predict", refused, methods=["POST"]),
            Route("/v2/health/ready", fine),
        ]
    )
    app.add_middleware(InferenceRequestMetrics, model_name="duration", model_version="raises-test")

    def value(status_class: str) -> float:
        return HTTP_REQUESTS.labels("duration", "raises-test", status_class)._value.get()

    async def run() -> list[int]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return [
                (await client.post(path)).status_code
                for path in (
                    "/v1/models/boom:predict",
                    "/v1/models/fine:predict",
                    "/v1/models/refused:predict",
                    "/v1/models/boom:predict",
                )
            ] + [(await client.get("/v2/health/ready")).status_code]

    assert asyncio.run(run()) == [500, 200, 400, 500, 200]
    assert (value("2xx"), value("4xx"), value("5xx")) == (1, 1, 2)
    assert HTTP_LATENCY.labels("duration", "raises-test")._sum.get() > 0

    async def cancelled() -> None:
        async def never_answers(_scope: object, _receive: object, _send: object) -> None:
            await asyncio.sleep(10)

        middleware = InferenceRequestMetrics(never_answers, "duration", "cancel-test")
        task = asyncio.create_task(middleware({"type": "http", "path": "/v1/models/x:predict"}, None, None))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancelled())
    counts = [HTTP_REQUESTS.labels("duration", "cancel-test", c)._value.get() for c in ("2xx", "4xx", "5xx")]
    assert counts == [0, 0, 0]


def test_one_log_line_per_request(champion: Server, built: Built):
    before = champion.log_lines()
    calls = [
        lambda: _post(champion, V1, {"instances": built.records[:2]}),
        lambda: _post(champion, V1, _instances(built.records, 1, trip_distance="x")),
        lambda: _post(champion, V1, b"{not json"),
        lambda: _post(champion, V2, _v2_body(built.records[:2])),
        lambda: _post(champion, V2, _v2_without(built.records, "DOLocationID")),
        lambda: requests.get(f"{champion.url}/v2/health/ready", timeout=5),
    ]
    for call in calls:
        call()
    deadline = time.monotonic() + 5
    while champion.log_lines() - before < len(calls) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # room for any extra line (traceback, timing) to show up
    assert champion.log_lines() - before == len(calls), champion.stdout.read_text()[-2000:]


# ------------------------------------------------------------ start-up refusals


def _run_to_exit(args: list[str], logs: Path) -> tuple[int, str]:
    process, _, stderr = launch_predictor(args, logs)
    try:
        code = process.wait(timeout=STARTUP_SECONDS)
    finally:
        stop_processes(process)
    return code, stderr.read_text()


def test_tampered_model_file_stops_the_server(built: Built, tmp_path: Path):
    folder = tmp_path / "model"
    folder.mkdir()
    payload = bytearray((built.folder / MODEL_FILE_NAME).read_bytes())
    payload[len(payload) // 3] ^= 0x20
    (folder / MODEL_FILE_NAME).write_bytes(bytes(payload))
    args = ["--model-uri", str(folder), "--model-sha256", built.sha256, "--model-version", "3"]
    code, stderr = _run_to_exit([*args, "--http_port", str(free_port())], tmp_path / "logs")
    assert code != 0
    assert "not starting" in stderr
    assert f"does not match the recorded {built.sha256}" in stderr


def test_model_without_recorded_sha256_stops_the_server(built: Built, tmp_path: Path):
    code, stderr = _run_to_exit(
        ["--model-uri", str(built.folder), "--http_port", str(free_port())], tmp_path / "logs"
    )
    assert code != 0
    assert "no recorded sha256" in stderr


# -------------------------------------------------------------- in process


def test_ready_only_after_load(built: Built):
    from kserve.errors import ModelNotReady

    from serving.predictor import ModelSpec, TripDurationPredictor

    predictor = TripDurationPredictor(ModelSpec(str(built.folder), sha256=built.sha256, model_version="9"))
    assert predictor.name == "duration"
    assert predictor.ready is False
    with pytest.raises(ModelNotReady):
        predictor.predict({"instances": built.records[:1]})
    assert predictor.load() is True
    assert predictor.ready is True
    answer = predictor.predict({"instances": built.records}, {}, {})
    np.testing.assert_array_equal(answer["predictions"], built.model.predict(built.records))


def test_v2_numpy_backed_inputs_are_checked_too(built: Built):
    # gRPC and the binary tensor extension hand the model numpy-decoded inputs, not JSON lists.
    from kserve.protocol.infer_type import InferInput, InferRequest

    from serving.trip_request import TripRequestError, parse_v2

    def tensor(name: str, values: np.ndarray, datatype: str) -> InferInput:
        infer_input = InferInput(name, [len(values)], datatype)
        infer_input.set_data_from_numpy(values, binary_data=False)
        return infer_input

    records = built.records[:2]
    ids = {k: np.array([r[k] for r in records], dtype=np.int32) for k in ("PULocationID", "DOLocationID")}
    distance = np.array([r["trip_distance"] for r in records])
    request = InferRequest(
        "duration",
        [
            tensor("PULocationID", ids["PULocationID"], "INT32"),
            tensor("DOLocationID", ids["DOLocationID"], "INT32"),
            tensor("trip_distance", distance, "FP64"),
        ],
    )
    np.testing.assert_array_equal(
        built.model.predict(parse_v2(request).frame()), built.model.predict(records)
    )
    request.inputs[2].set_data_from_numpy(np.array([distance[0], np.inf]), binary_data=False)
    with pytest.raises(TripRequestError, match=r"trip_distance \(row 1\): must be a finite number"):
        parse_v2(request)
