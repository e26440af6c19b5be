"""Property-based fuzzing of the predictor's input contract: any body gets an answer or a 4xx, never a 5xx.

Two levels, both with hypothesis:
- the request parser in this process (``parse_v1`` on decoded JSON and on raw bytes): it returns
  a batch or raises ``TripRequestError`` -- nothing else escapes;
- a live ``python -m serving`` on 127.0.0.1: 5,000 fuzzed v1 bodies and 5,000 fuzzed v2 bodies
  (10,000 requests, sequential, bounded by a deadline); every answer is 200 or a 4xx with
  ``{"error": ...}``, and a good request still answers the model's own minutes afterwards.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.model_fixtures import fit_fixture_model
from support.predictor_process import Server, free_port, launch_predictor, stop_processes, wait_ready

from components.features.trip_features import FEATURE_FIELDS
from components.models.duration_model import MODEL_FILE_NAME
from serving.trip_request import TripBatch, TripRequestError, parse_v1

pytestmark = pytest.mark.slow

V1 = "/v1/models/duration:predict"
V2 = "/v2/models/duration/infer"
LIVE_EXAMPLES = 5_000  # per protocol
FUZZ_SETTINGS = settings(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)

# Values a client might put where a zone id or a distance goes: edges, huge and odd numbers, wrong types.
NUMBERS = st.one_of(
    st.integers(min_value=-(10**6), max_value=10**6),
    st.integers(min_value=10**18, max_value=10**500),  # beyond int64 and float
    st.sampled_from([0, 1, 265, 266, -1, 500, 500.0001, 2**63, -(2**63) - 1]),
    st.floats(allow_nan=True, allow_infinity=True),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=12))
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELD_VALUE = st.one_of(NUMBERS, JSON_VALUES)
INSTANCE = st.one_of(
    st.fixed_dictionaries({name: FIELD_VALUE for name in FEATURE_FIELDS}),
    st.dictionaries(st.sampled_from([*FEATURE_FIELDS, "extra"]), FIELD_VALUE, max_size=4),
    JSON_VALUES,
)
# Near the contract, so that a good share of the bodies is answered (200) and the rest fail one rule.
ZONES = st.one_of(st.integers(min_value=0, max_value=270), NUMBERS)
MILES = st.one_of(st.floats(min_value=-1, max_value=600), NUMBERS)
PLAUSIBLE_TRIP = st.fixed_dictionaries({"PULocationID": ZONES, "DOLocationID": ZONES, "trip_distance": MILES})
V1_BODIES = st.one_of(
    st.fixed_dictionaries({"instances": st.lists(PLAUSIBLE_TRIP, min_size=1, max_size=5)}),
    st.fixed_dictionaries({"instances": st.lists(INSTANCE, max_size=5)}),
    st.fixed_dictionaries({"instances": JSON_VALUES}),
    JSON_VALUES,
)
V2_DATATYPES = st.sampled_from(["INT32", "INT64", "FP32", "FP64", "BYTES", "BOOL", "UINT8", "nonsense"])
V2_INPUT = st.fixed_dictionaries(
    {
        "name": st.one_of(st.sampled_from(FEATURE_FIELDS), st.text(max_size=8)),
        "shape": st.one_of(st.lists(st.integers(-2, 6), max_size=3), JSON_VALUES),
        "datatype": st.one_of(V2_DATATYPES, JSON_VALUES),
        "data": st.one_of(st.lists(FIELD_VALUE, max_size=5), JSON_VALUES),
    }
)


@st.composite
def plausible_v2(draw: st.DrawFn) -> dict[str, Any]:
    """Three well-formed inputs of one length n, with values near (and sometimes past) the contract."""
    n = draw(st.integers(min_value=1, max_value=5))
    values = {"PULocationID": ZONES, "DOLocationID": ZONES, "trip_distance": MILES}
    types = {"PULocationID": ["INT64", "INT32"], "DOLocationID": ["INT64", "INT32"]}
    types["trip_distance"] = ["FP64", "FP32", "INT64"]
    return {
        "inputs": [
            {
                "name": name,
                "shape": [n],
                "datatype": draw(st.sampled_from(types[name])),
                "data": draw(st.lists(strategy, min_size=n, max_size=n)),
            }
            for name, strategy in values.items()
        ]
    }


V2_BODIES = st.one_of(
    plausible_v2(),
    st.fixed_dictionaries({"inputs": st.lists(V2_INPUT, max_size=4)}),
    st.fixed_dictionaries({"id": st.text(max_size=5), "inputs": st.lists(V2_INPUT, max_size=4)}),
    JSON_VALUES,
)


def _dump(body: Any) -> bytes:
    # allow_nan: Python writes NaN/Infinity tokens, which real clients (json.dumps) send too.
    return json.dumps(body, allow_nan=True).encode()


@settings(FUZZ_SETTINGS, max_examples=5_000)
@given(body=V1_BODIES)
def test_the_v1_parser_answers_or_refuses_with_a_named_error(body: Any):
    try:
        batch = parse_v1(body)
    except TripRequestError as refused:
        assert str(refused)
        return
    assert isinstance(batch, TripBatch) and len(batch) >= 1
    assert ((batch.pickup >= 1) & (batch.pickup <= 265)).all()
    assert all(math.isfinite(d) and 0 <= d <= 500 for d in batch.distance)


@settings(FUZZ_SETTINGS, max_examples=5_000)
@given(raw=st.one_of(st.binary(max_size=64), V1_BODIES.map(_dump)))
def test_the_v1_parser_takes_any_bytes(raw: bytes):
    with contextlib.suppress(TripRequestError):  # anything else escaping fails the test
        parse_v1(raw)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Any]]:
    model, _, _ = fit_fixture_model(tmp_path_factory.mktemp("tlc"))
    folder = tmp_path_factory.mktemp("model")
    sha256 = model.save(folder / MODEL_FILE_NAME)
    port = free_port()
    args = ["--model-uri", str(folder), "--model-sha256", sha256, "--http_port", str(port)]
    process, stdout, stderr = launch_predictor(
        [*args, "--bind-host", "127.0.0.1"], tmp_path_factory.mktemp("logs")
    )
    server = Server(f"http://127.0.0.1:{port}", process, stdout, stderr)
    try:
        wait_ready(server)
        yield server, model
    finally:
        stop_processes(process)


def _fuzz_live(server: Server, path: str, bodies: st.SearchStrategy[Any]) -> Counter[int]:
    statuses: Counter[int] = Counter()
    session = requests.Session()

    @settings(FUZZ_SETTINGS, max_examples=LIVE_EXAMPLES)
    @given(body=bodies)
    def send(body: Any) -> None:
        answer = session.post(
            server.url + path, data=_dump(body), headers={"content-type": "application/json"}, timeout=10
        )
        statuses[answer.status_code] += 1
        assert answer.status_code < 500, (answer.status_code, answer.text[:300], _dump(body)[:300])
        if answer.status_code != 200:
            assert list(answer.json()) == ["error"], answer.text[:300]

    send()
    return statuses


def _assert_still_serves(server: Server, model: Any) -> None:
    trip = {"PULocationID": 43, "DOLocationID": 151, "trip_distance": 1.2}
    answer = requests.post(server.url + V1, json={"instances": [trip]}, timeout=10)
    assert answer.status_code == 200
    assert answer.json()["predictions"] == model.predict([trip]).tolist()


@pytest.mark.parametrize(("path", "bodies"), [(V1, V1_BODIES), (V2, V2_BODIES)], ids=["v1", "v2"])
def test_a_live_predictor_never_answers_a_fuzzed_body_with_a_5xx(live, path: str, bodies):
    server, model = live
    statuses = _fuzz_live(server, path, bodies)
    by_status = dict(sorted(statuses.items()))
    print(f"{path}: {sum(statuses.values())} fuzzed bodies, answers by status {by_status}")
    assert sum(statuses.values()) >= LIVE_EXAMPLES * 0.9  # hypothesis may skip a few duplicates
    assert all(status < 500 for status in statuses), statuses
    _assert_still_serves(server, model)
    assert server.process.poll() is None
