"""A month with too few rows left after cleaning stops the pipeline at ingest (issue #9, item 4).

Before ``too_few_rows``, a month in which 4 rows survived cleaning trained, became
champion v1 in a fresh state dir and was deployed. The e2e test runs the real
``taxi-mlops run`` (kfp.local, subprocess tasks, MLflow on sqlite) on such a month;
the other tests check, without running KFP, that ``--min-rows`` and the default reach
the pipeline.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from support.tlc_fixtures import clean_rows, make_trip_table, trip_file_name, with_values, write_trip_file

from components.data.cleaning_rules import DEFAULT_MIN_ROWS
from pipelines import local_run
from pipelines.cli import main
from pipelines.local_run import RunRequest, pipeline_arguments
from pipelines.settings import Settings


def _four_row_month(data_dir: Path, month: str = "2021-01") -> Path:
    """A real-schema green file of 40 rows of which exactly 4 pass every cleaning rule."""
    table = make_trip_table(month=month, rows=40)
    spoil = clean_rows(table, month)[4:]
    table = with_values(table, "DOLocationID", spoil, [266] * len(spoil))  # beyond the TLC zones
    path = data_dir / trip_file_name("green", month)
    pq.write_table(table, path)
    return path


@pytest.mark.e2e
def test_a_four_row_month_fails_at_ingest_and_registers_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "tlc"
    data_dir.mkdir()
    train_file = _four_row_month(data_dir)
    write_trip_file(data_dir, month="2021-02", rows=2000, seed=1)  # a healthy validation month
    state_dir = tmp_path / "state"
    env = {
        **os.environ,
        "TAXI_MLOPS_STATE_DIR": str(state_dir),
        "TAXI_MLOPS_CACHE_DIR": str(tmp_path / "cache"),
        "TAXI_MLOPS_TLC_BASE_URL": "http://127.0.0.1:9/trip-data",  # nothing may be downloaded
    }
    env.pop("MLFLOW_TRACKING_URI", None)

    completed = subprocess.run(
        [
            str(Path(sys.executable).with_name("taxi-mlops")),
            "run",
            "--data-dir",
            str(data_dir),
            "--candidates",
            "linear_regression",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )

    assert completed.returncode == 1, completed.stdout + completed.stderr
    assert "step ingest_train failed: IngestError: " in completed.stderr
    assert (
        f"{train_file}: [too_few_rows] kept 4 of 40 rows of green 2021-01 after cleaning "
        "(missing_values=1, zone_out_of_range=29, distance_out_of_range=0, pickup_outside_month=3, "
        f"duration_out_of_range=3), fewer than min_rows={DEFAULT_MIN_ROWS}"
    ) in completed.stderr
    # Nothing trained on it.
    for later in ("vectorize", "train", "evaluate", "register", "deploy"):
        assert f"] {later} " not in completed.stdout, completed.stdout

    settings = Settings.from_env({"TAXI_MLOPS_STATE_DIR": str(state_dir)})
    db = state_dir / "mlflow.db"
    assert settings.tracking_uri == f"sqlite:///{db}" and db.is_file()
    with sqlite3.connect(db) as connection:
        assert connection.execute("SELECT COUNT(*) FROM model_versions").fetchone() == (0,)
    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    assert client.search_model_versions(f"name = '{settings.model_name}'") == []
    # The run itself is on record, closed as FAILED by the exit handler.
    experiment = client.get_experiment_by_name(settings.experiment)
    runs = client.search_runs([experiment.experiment_id])
    assert [run.info.status for run in runs] == ["FAILED"]
    # No deployment state: `taxi-mlops serve` has nothing to roll out.
    assert not settings.deployment_state_path.exists()
    assert not settings.deployed_models_dir.exists() or not any(settings.deployed_models_dir.iterdir())


def test_the_pipeline_gets_the_default_minimum(tmp_path: Path) -> None:
    settings = Settings.from_env(env={}, state_dir=tmp_path)

    assert RunRequest().min_rows == DEFAULT_MIN_ROWS
    assert pipeline_arguments(settings, RunRequest(), "local-test")["min_rows"] == DEFAULT_MIN_ROWS
    assert pipeline_arguments(settings, RunRequest(min_rows=25), "local-test")["min_rows"] == 25


def test_run_passes_min_rows_to_the_pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[RunRequest] = []

    def fake_run(settings: Settings, request: RunRequest, **_: Any) -> dict[str, Any]:
        seen.append(request)
        raise local_run.PipelineRunError("stopped by the test")

    monkeypatch.setattr(local_run, "run_pipeline_locally", fake_run)
    runner = CliRunner()
    state = ["--state-dir", str(tmp_path / "state")]

    assert runner.invoke(main, ["run", *state, "--min-rows", "25"]).exit_code == 1
    assert runner.invoke(main, ["run", *state]).exit_code == 1
    assert [request.min_rows for request in seen] == [25, DEFAULT_MIN_ROWS]
    refused = runner.invoke(main, ["run", *state, "--min-rows", "0"])
    assert refused.exit_code == 2 and "--min-rows" in refused.output
    assert len(seen) == 2
    assert f"[default: {DEFAULT_MIN_ROWS}; x>=1]" in runner.invoke(main, ["run", "--help"]).output
