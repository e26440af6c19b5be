"""A retraining decision carried out for real through kfp.local: the pipeline on the decision's windows,
the gate on the same newest held-out trips, and a failed retraining that leaves the champion serving."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.tlc_fixtures import write_tlc_dir

from components.registry.versions import version_for_alias
from components.retraining.policy import RetrainingPolicy, Signals, decide
from pipelines.local_run import RunRequest, run_pipeline_locally
from pipelines.retrain import request_for, retrain
from pipelines.settings import Settings
from serving.deployment_state import load_state

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]
CANDIDATES = [{"name": "linear_regression", "params": {}}, {"name": "ridge", "params": {}}]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, Path]:
    root = tmp_path_factory.mktemp("retrain")
    data_dir = write_tlc_dir(root / "tlc", months=("2021-01", "2021-02", "2021-03"), rows=2000)
    settings = Settings.from_env(
        {
            "TAXI_MLOPS_STATE_DIR": str(root / "state"),
            "TAXI_MLOPS_CACHE_DIR": str(root / "cache"),
            "TAXI_MLOPS_TLC_BASE_URL": "http://127.0.0.1:9/trip-data",  # nothing may be downloaded
        }
    )
    first = run_pipeline_locally(
        settings,
        RunRequest(data_dir=str(data_dir), candidates=CANDIDATES, min_rows=500),
        progress=lambda _: None,
    )
    assert first["model_version"] == "1"
    return settings, data_dir


def _decision(now: str = "2021-03-20T00:00:00") -> dict:
    from datetime import datetime

    signals = Signals(
        now=datetime.fromisoformat(now),
        champion_version="1",
        verdicts=[{"verdict": "degraded", "segments": {"degraded": True}, "accuracy": {"rmse": 9.0}}],
        labelled_until=datetime(2021, 3, 20),
        labelled_since_training=4000,
    )
    decision = decide(
        signals, RetrainingPolicy(degraded_windows=1, train_days=30, holdout_days=10, min_post_change_days=10)
    ).to_dict()
    assert decision["kind"] == "retrain"
    return decision


def test_a_decision_becomes_a_windowed_run_whose_gate_is_recorded(world) -> None:
    settings, data_dir = world
    base = RunRequest(data_dir=str(data_dir), candidates=CANDIDATES, min_rows=200, min_improvement=0.0)
    decision = _decision()
    request = request_for(decision, base)
    assert (str(request.train_window.start), str(request.val_window.end)) == (
        "2021-02-08 00:00:00",
        "2021-03-20 00:00:00",
    )
    outcome = retrain(settings, decision, base)
    assert outcome.summary is not None and outcome.event["kind"] == "gate"
    data = outcome.summary["data"]
    assert (data["train"]["start"], data["val"]["start"], data["val"]["end"]) == (
        "2021-02-08T00:00:00", "2021-03-10T00:00:00", "2021-03-20T00:00:00",
    )  # fmt: skip
    gate = outcome.summary["gate"]
    assert outcome.event["passed"] is bool(outcome.summary["model_version"])
    assert gate["reason"] in outcome.event["reason"] and "held out" in outcome.event["reason"]
    if outcome.event["passed"]:  # the challenger waits for the canary judge, at the run's percent
        state = load_state(settings.deployment_state_path)
        assert state.canary.model_version == outcome.event["challenger_version"]


def test_a_failed_retraining_leaves_the_champion_serving_and_says_why(world, tmp_path: Path) -> None:
    settings, data_dir = world
    broken = tmp_path / "broken"
    broken.mkdir()
    for month in ("2021-01", "2021-02"):
        (broken / f"green_tripdata_{month}.parquet").symlink_to(data_dir / f"green_tripdata_{month}.parquet")
    (broken / "green_tripdata_2021-03.parquet").write_bytes(b"PAR1 not really parquet")
    before = load_state(settings.deployment_state_path)
    champion = version_for_alias(settings.tracking_uri, settings.model_name, "champion").version
    outcome = retrain(
        settings, _decision(), RunRequest(data_dir=str(broken), candidates=CANDIDATES, min_rows=200)
    )
    assert outcome.summary is None and outcome.event["passed"] is False
    assert outcome.event["reason"].startswith("retraining failed, the champion keeps serving:")
    assert "green_tripdata_2021-03.parquet" in outcome.event["reason"]
    assert load_state(settings.deployment_state_path) == before
    assert version_for_alias(settings.tracking_uri, settings.model_name, "champion").version == champion
