"""``taxi-mlops autopilot`` (the live loop), one pass at a time through the CLI, on a real local state.

The champion is trained for real (kfp.local); February's traffic is written with the
predictor's own prediction-log writer (the champion's predictions, as a served month would
leave them); alerts arrive in ``alerts.jsonl`` as the Alertmanager receiver writes them;
months land in the data folder as files. Each pass is ``autopilot --once`` in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support.tlc_fixtures import write_tlc_dir

from components.data.ingest import load_month
from components.data.trip_ids import trip_ids
from components.models.duration_model import MODEL_FILE_NAME, load_duration_model
from components.monitoring.prediction_log import PredictionLogWriter
from components.names import SERVED_MODEL_NAME
from pipelines.local_run import RunRequest, run_pipeline_locally
from pipelines.settings import Settings
from serving.alert_receiver import ALERTS_DIR_NAME, ALERTS_FILE_NAME, AlertLog
from serving.deployment_state import load_state

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]
REPO = Path(__file__).resolve().parents[1]
CANDIDATES = [{"name": "linear_regression", "params": {}}]


@pytest.fixture
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, Path, dict[str, str]]:
    # One world per test (a champion trained for each, ~30 s): the tests hold no order between them.
    root = tmp_path_factory.mktemp("live")
    env = {
        "TAXI_MLOPS_STATE_DIR": str(root / "state"),
        "TAXI_MLOPS_CACHE_DIR": str(root / "cache"),
        "TAXI_MLOPS_TLC_BASE_URL": "http://127.0.0.1:9/trip-data",
    }
    settings = Settings.from_env(env)
    source = write_tlc_dir(root / "source", months=("2021-01", "2021-02"), rows=3000)
    data = root / "data"  # what the loop watches: January only, at first
    data.mkdir()
    (data / "green_tripdata_2021-01.parquet").symlink_to(source / "green_tripdata_2021-01.parquet")
    run_pipeline_locally(
        settings,
        RunRequest(data_dir=str(source), candidates=CANDIDATES, min_rows=200),
        progress=lambda _: None,
    )
    champion = load_state(settings.deployment_state_path).champion
    model = load_duration_model(Path(champion.model_uri) / MODEL_FILE_NAME, champion.sha256)
    trips, _ = load_month("green", "2021-02", data_dir=source)
    ids = trip_ids(trips, "green")
    minutes = model.predict(trips[["PULocationID", "DOLocationID", "trip_distance"]])
    writer = PredictionLogWriter(settings.prediction_log_dir)
    for i, row in enumerate(trips.itertuples()):
        writer.put_batch(
            request_id=str(ids[i]),
            event_time=row.pickup_datetime.to_pydatetime(),
            model_name=SERVED_MODEL_NAME,
            model_version=champion.model_version,
            revision="champion",
            pickup=np.array([row.PULocationID]),
            dropoff=np.array([row.DOLocationID]),
            distance=np.array([row.trip_distance]),
            minutes=np.array([minutes[i]]),
        )
    writer.close()
    return settings, data, {**os.environ, **env}


def _once(data: Path, env: dict[str, str], *extra: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "autopilot", "--once", "--data-dir", str(data),
         "--candidates", "linear_regression", "--monitor-hours", "96", *extra],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


def _timeline(settings: Settings) -> list[dict]:
    path = settings.state_dir / "autopilot" / "timeline.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_live_loop_wakes_on_the_monitor_alerts_new_months_and_requests(world) -> None:
    settings, data, env = world
    first = _once(data, env)
    assert "autopilot: monitor verdict" in first  # no labels yet: nothing confirmed, nothing retrained
    (decision,) = _timeline(settings)
    assert decision["kind"] == "no_retrain" and decision["wakes"][0].startswith("monitor verdict")

    # A month lands: its labels are joined to the log, and the loop looks again.
    (data / "green_tripdata_2021-02.parquet").symlink_to(
        (data.parent / "source" / "green_tripdata_2021-02.parquet").resolve()
    )
    second = _once(data, env)
    assert "labels of green 2021-02: labelled" in second
    assert (settings.labels_dir / "green-2021-02.parquet").exists()
    assert _timeline(settings)[-1]["wakes"] == ["month 2021-02 landed in the data source"]

    # An alert the receiver wrote, read once: the second pass does not act on it again.
    alerts = AlertLog(settings.state_dir / ALERTS_DIR_NAME / ALERTS_FILE_NAME)
    labels = {"alertname": "TaxiAccuracyDegraded", "action": "retrain-candidate", "model_version": "1"}
    alerts.append([{"status": "firing", "labels": labels}])
    _once(data, env)
    assert _timeline(settings)[-1]["wakes"] == ["alert TaxiAccuracyDegraded for model version 1"]
    count = len(_timeline(settings))
    _once(data, env)
    assert len(_timeline(settings)) == count  # no wake, no decision

    # A request retrains on the newest labelled windows; the gate's verdict is recorded.
    asked = _once(data, env, "--retrain-now", "a person asked")
    events = _timeline(settings)[count:]
    assert [e["kind"] for e in events] == ["retrain", "gate"], asked
    assert events[0]["trigger"] == "requested" and "a person asked" in events[0]["reason"]
    assert events[1]["decision_seq"] == events[0]["seq"]


def test_a_corrupt_month_landing_is_an_alert_and_nothing_trains(world) -> None:
    settings, data, env = world
    _once(data, env)  # the loop's first pass: the months already there are what it starts from
    (data / "green_tripdata_2021-03.parquet").write_bytes(b"PAR1 truncated PAR1")
    before = load_state(settings.deployment_state_path)
    out = _once(data, env)
    assert "ALERT TaxiTrainingDataUnreadable" in out
    alert = next(e for e in reversed(_timeline(settings)) if e.get("alert"))
    assert "month 2021-03 landed but cannot be read" in alert["reason"]
    assert load_state(settings.deployment_state_path).champion == before.champion

    # The file is downloaded again: the next pass lifts the block, joins the month's labels, lands it.
    march = write_tlc_dir(data.parent / "march", months=("2021-03",), rows=500)
    (data / "green_tripdata_2021-03.parquet").unlink()
    (data / "green_tripdata_2021-03.parquet").symlink_to(march / "green_tripdata_2021-03.parquet")
    mended = _once(data, env)
    assert "RESOLVED TaxiTrainingDataUnreadable" in mended and "labels of green 2021-03" in mended
    resolved = next(e for e in reversed(_timeline(settings)) if e.get("alert_resolved"))
    assert "month 2021-03 can be read now" in resolved["reason"]
    assert _timeline(settings)[-1]["wakes"] == ["month 2021-03 landed in the data source (readable again)"]
    assert "RESOLVED" not in _once(data, env)  # once
