"""Behavioural tests of the registered winner (in the style of Made-With-ML's tests/model).

Not "is the RMSE good" but "does the model behave like a trip-duration model":
directional (longer trips do not take less time), invariance (the spelling of a
zone id does not change the answer), minimum functionality (well-known trips
land in a plausible range).

The model under test is the winner of a small real run of the pipeline
(kfp.local, two candidates), taken from the MLflow registry by its champion
alias and checked against its recorded sha256, exactly as serving takes it;
the served path is a real KServe predictor process started on
``models:/taxi-trip-duration@champion``. Once on the real green 2021-01/02
months (skipped when ../shared is absent) and once on generated TLC files.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pytest
import requests
from support.predictor_process import Server, free_port, launch_predictor, stop_processes, wait_ready
from support.tlc_fixtures import write_tlc_dir

from components.data.ingest import load_month
from components.models.duration_model import TripDurationModel
from components.names import SERVED_MODEL_NAME
from components.registry.versions import CHAMPION, fetch_model_file, version_for_alias
from pipelines.local_run import RunRequest, run_pipeline_locally
from pipelines.settings import Settings

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

CANDIDATES = [{"name": "linear_regression", "params": {}}, {"name": "target_encoded_xgboost", "params": {}}]
V1 = f"/v1/models/{SERVED_MODEL_NAME}:predict"
#: Miles, increasing, within what the common (mostly neighbouring-zone) pairs are ever driven.
DISTANCES = (0.5, 1.0, 2.0, 3.0, 5.0, 8.0)
#: Beyond the data: 12 miles between neighbouring zones is a trip those pairs never saw.
FAR_BEYOND_THE_DATA = 12.0
#: Trips anyone who has taken a green cab would recognise, with generous bounds (minutes).
#: Medians on green 2021-02: 74->75 1.3 mi 7.4 min; 41->41 0.6 mi 4.1 min; 130->205 3.1 mi 14.6 min;
#: 7->132 14 mi 29 min.
WELL_KNOWN_TRIPS = [
    ("East Harlem North -> East Harlem South", 74, 75, 1.3, (3.0, 13.0)),
    ("within Central Harlem", 41, 41, 0.6, (2.0, 9.0)),
    ("Jamaica -> Saint Albans", 130, 205, 3.1, (8.0, 24.0)),
    ("Astoria -> JFK Airport", 7, 132, 14.0, (18.0, 55.0)),
]


@dataclass(frozen=True)
class Winner:
    data: str  # "real" or "generated"
    candidate: str
    model: TripDurationModel  # the registered champion's file, sha256-checked
    validation: pd.DataFrame  # the cleaned validation month
    tracking_uri: str
    model_name: str


@pytest.fixture(scope="module", params=["real", "generated"])
def winner(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Winner:
    root = tmp_path_factory.mktemp(f"behaviour-{request.param}")
    if request.param == "real":
        data_dir = request.getfixturevalue("shared_tlc_dir")
    else:
        data_dir = write_tlc_dir(root / "tlc", months=("2021-01", "2021-02"), rows=3000)
    settings = Settings.from_env(
        {
            "TAXI_MLOPS_STATE_DIR": str(root / "state"),
            "TAXI_MLOPS_CACHE_DIR": str(root / "cache"),
            "TAXI_MLOPS_TLC_BASE_URL": "http://127.0.0.1:9/trip-data",  # nothing is downloaded
        }
    )
    request_ = RunRequest(data_dir=str(data_dir), candidates=CANDIDATES, deploy=False)
    summary = run_pipeline_locally(settings, request_, progress=lambda _line: None)
    assert summary["alias"] == CHAMPION, summary["gate"]
    version = version_for_alias(settings.tracking_uri, settings.model_name, CHAMPION)
    assert version is not None
    model = fetch_model_file(settings.tracking_uri, version, CHAMPION, root / "champion").load()
    validation, _ = load_month("green", "2021-02", data_dir=data_dir)
    return Winner(
        request.param, summary["winner"], model, validation, settings.tracking_uri, settings.model_name
    )


@pytest.fixture(scope="module")
def served(winner: Winner, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The KServe predictor, loading the champion from the registry by its alias."""
    port = free_port()
    args = ["--model_name", SERVED_MODEL_NAME, "--model-uri", f"models:/{winner.model_name}@{CHAMPION}"]
    process, stdout, stderr = launch_predictor(
        [*args, "--http_port", str(port)],
        tmp_path_factory.mktemp("behaviour-predictor"),
        env={"MLFLOW_TRACKING_URI": winner.tracking_uri},
    )
    server = Server(f"http://127.0.0.1:{port}", process, stdout, stderr)
    try:
        wait_ready(server)
        yield server
    finally:
        stop_processes(process)


def _served_minutes(server: Server, instances: list[dict[str, Any]]) -> np.ndarray:
    response = requests.post(server.url + V1, json={"instances": instances}, timeout=30)
    assert response.status_code == 200, response.text
    return np.asarray(response.json()["predictions"], dtype=np.float64)


def _common_pairs(validation: pd.DataFrame, count: int) -> list[tuple[int, int]]:
    pairs = validation.groupby(["PULocationID", "DOLocationID"]).size().nlargest(count).index
    return [(int(pu), int(do)) for pu, do in pairs]


# --------------------------------------------------------------------------- directional


def test_longer_trips_do_not_take_less_time(winner: Winner, served: Server) -> None:
    pairs = _common_pairs(winner.validation, 25)
    grid = [
        {"PULocationID": pu, "DOLocationID": do, "trip_distance": miles}
        for miles in DISTANCES
        for pu, do in pairs
    ]
    minutes = winner.model.predict(grid).reshape(len(DISTANCES), len(pairs))
    # The served path answers the same numbers as the model itself (one feature function).
    np.testing.assert_array_equal(_served_minutes(served, grid), minutes.ravel())
    mean_by_distance = minutes.mean(axis=1)
    assert np.all(np.diff(mean_by_distance) >= 0), dict(
        zip(DISTANCES, mean_by_distance.round(2), strict=True)
    )
    # Not flat either: 0.5 -> 8 miles is a much longer ride.
    assert mean_by_distance[-1] - mean_by_distance[0] >= 10.0, mean_by_distance


@pytest.mark.xfail(
    strict=True,
    reason="known limitation: beyond the distances a pair was ever driven, the trees stop extrapolating "
    "(real data: mean 32.1 min at 8 mi, 29.2 min at 12 mi). A monotone constraint on distance fixes it "
    "but costs 0.15 RMSE (6.05 -> 6.20); strict, so fixing it turns this test red as a reminder.",
)
def test_far_beyond_the_data_longer_trips_still_take_longer(winner: Winner) -> None:
    if winner.data != "real":
        pytest.skip("the limitation was measured on the real months")
    pairs = _common_pairs(winner.validation, 25)
    grid = [
        {"PULocationID": pu, "DOLocationID": do, "trip_distance": miles}
        for miles in (DISTANCES[-1], FAR_BEYOND_THE_DATA)
        for pu, do in pairs
    ]
    near, far = winner.model.predict(grid).reshape(2, len(pairs)).mean(axis=1)
    assert far >= near


# --------------------------------------------------------------------------- invariance


def test_zone_id_spelling_does_not_change_the_minutes(winner: Winner, served: Server) -> None:
    pu, do = _common_pairs(winner.validation, 1)[0]
    spellings = [(pu, do), (str(pu), str(do)), (float(pu), float(do))]  # 130, "130", 130.0
    trips = pd.DataFrame(
        {
            "PULocationID": pd.Series([s[0] for s in spellings], dtype=object),
            "DOLocationID": pd.Series([s[1] for s in spellings], dtype=object),
            "trip_distance": [2.4] * len(spellings),
        }
    )
    minutes = winner.model.predict(trips)
    assert minutes[0] == minutes[1] == minutes[2]
    # Through the predictor: integer and integral-float ids are the same trip. A string id is
    # refused by the serving contract (a 400 naming the field), never silently re-typed.
    numeric = [
        {"PULocationID": a, "DOLocationID": b, "trip_distance": 2.4} for a, b in (spellings[0], spellings[2])
    ]
    served_minutes = _served_minutes(served, numeric)
    assert served_minutes[0] == served_minutes[1] == minutes[0]
    refused = requests.post(
        served.url + V1, json={"instances": [{**numeric[0], "PULocationID": str(pu)}]}, timeout=30
    )
    assert refused.status_code == 400 and "PULocationID (row 0)" in refused.json()["error"]


def test_fields_the_model_does_not_use_change_nothing(winner: Winner, served: Server) -> None:
    pu, do = _common_pairs(winner.validation, 1)[0]
    trip = {"PULocationID": pu, "DOLocationID": do, "trip_distance": 1.7}
    extra = {**trip, "fare_amount": 99.0, "passenger_count": 6, "store_and_fwd_flag": "Y"}
    plain, decorated = _served_minutes(served, [trip, extra])
    assert plain == decorated


# --------------------------------------------------------------------------- minimum functionality


@pytest.mark.parametrize(("label", "pu", "do", "miles", "bounds"), WELL_KNOWN_TRIPS, ids=lambda v: str(v))
def test_well_known_trips_take_plausible_minutes(
    winner: Winner, served: Server, label: str, pu: int, do: int, miles: float, bounds: tuple[float, float]
) -> None:
    if winner.data != "real":
        pytest.skip("zone geography is real-data knowledge; the generated zones mean nothing")
    (minutes,) = _served_minutes(served, [{"PULocationID": pu, "DOLocationID": do, "trip_distance": miles}])
    low, high = bounds
    assert low <= minutes <= high, f"{label}: {miles} mi predicted {minutes:.1f} min"


def test_every_prediction_is_a_duration(winner: Winner) -> None:
    minutes = winner.model.predict(winner.validation)
    assert np.all(np.isfinite(minutes))
    # Cleaning kept 1..60 minute trips; a model answering far outside that has learned nothing useful.
    assert np.quantile(minutes, 0.001) > -1.0 and np.quantile(minutes, 0.999) < 90.0
