"""`taxi-mlops monitor`: the window options, and what one run leaves (verdict store, report, MLflow run).

The real command on a small real state (``support.monitoring_state``): a registered
version with its profile in a sqlite MLflow, a prediction log whose newest half day
is drifted, labels for the calm part.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from support.monitoring_state import (
    CALM_TRIPS,
    DRIFT_END,
    DRIFTED_TRIPS,
    Registered,
    registered_ridge,
    write_drifted_log,
)

from components.monitoring.verdict_store import load_history, load_latest
from components.registry.tracking import VERSION_RUN_TAG, VERSION_VERDICT_TAG
from pipelines.cli import main
from pipelines.settings import Settings


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> Registered:
    return registered_ridge(tmp_path_factory.mktemp("registry"))


@pytest.fixture
def state(registered: Registered, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A state folder of its own per test, with the log and labels where `serve` and `labels` put them."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registered.tracking_uri)  # the module's registry
    monkeypatch.setenv("TAXI_MLOPS_EXPERIMENT", f"cli-{tmp_path.name}")
    settings = Settings.from_env(state_dir=tmp_path / "state")
    write_drifted_log(registered, settings.prediction_log_dir, settings.labels_dir)
    return settings


def _monitor(settings: Settings, *args: str) -> str:
    result = CliRunner().invoke(main, ["monitor", "--state-dir", str(settings.state_dir), *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_last_hours_judges_the_hours_up_to_the_newest_event_and_saves_verdict_and_report(
    registered: Registered, state: Settings, tmp_path: Path
):
    json_out, html_out = tmp_path / "out" / "verdict.json", tmp_path / "out" / "report.html"
    args = ["--last-hours", "12", "--version", registered.version]
    output = _monitor(state, *args, "--json-out", str(json_out), "--html-out", str(html_out))

    assert f"version {registered.version}: {DRIFTED_TRIPS} predictions, 0 labelled; verdict DRIFT" in output
    assert f"  window         2021-03-07T22:24:45+00:00 .. {DRIFT_END}" in output
    assert "  trip_distance  DRIFT" in output
    assert state.monitor_dir == state.state_dir / "deployment" / "monitor"
    assert f"HTML report: {state.monitor_dir / 'report.html'}" in output
    assert f"HTML report: {html_out}" in output

    latest = load_latest(state.monitor_dir)
    assert latest is not None and latest == json.loads(json_out.read_text())
    assert latest["verdict"] == "drift" and latest["evaluated_at"]
    assert load_history(state.monitor_dir) == [latest]
    page = (state.monitor_dir / "report.html").read_text()
    assert html_out.read_text() == page and "<html" in page.lower()

    client = MlflowClient(tracking_uri=registered.tracking_uri, registry_uri=registered.tracking_uri)
    experiment = client.get_experiment_by_name(f"{state.experiment}-monitoring")
    (run,) = client.search_runs([experiment.experiment_id])
    assert f"MLflow run {run.info.run_id}" in output
    assert run.data.tags["verdict"] == "drift" and run.data.tags["window_end"] == DRIFT_END
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"monitor.json", "report.html"}
    version = client.get_model_version(registered.model_name, registered.version)
    assert version.tags[VERSION_VERDICT_TAG] == "drift"
    assert version.tags[VERSION_RUN_TAG] == run.info.run_id


def test_each_window_is_appended_and_the_newest_is_the_latest(registered: Registered, state: Settings):
    _monitor(state, "--month", "2021-03", "--version", registered.version)
    output = _monitor(
        state, "--since", "2021-03-01", "--until", "2021-03-07", "--version", registered.version
    )
    assert f"{CALM_TRIPS} predictions, {CALM_TRIPS} labelled; verdict OK" in output
    assert "  accuracy       RMSE" in output

    history = load_history(state.monitor_dir)
    windows = [(v["window"]["start"], v["window"]["end"], v["window"]["predictions"]) for v in history]
    assert windows == [
        ("2021-03-01T00:00:00+00:00", "2021-04-01T00:00:00+00:00", CALM_TRIPS + DRIFTED_TRIPS),
        ("2021-03-01T00:00:00+00:00", "2021-03-07T00:00:00+00:00", CALM_TRIPS),
    ]
    assert load_latest(state.monitor_dir) == history[-1]
    assert history[-1]["verdict"] == "ok" and history[-1]["accuracy"]["label_coverage"] == 1.0


def test_without_version_the_deployed_champion_is_judged(registered: Registered, state: Settings):
    from serving.deployment_state import DeploymentState, Revision, save_state

    result = CliRunner().invoke(main, ["monitor", "--state-dir", str(state.state_dir), "--last-hours", "1"])
    assert result.exit_code == 1
    assert result.output.splitlines()[-1] == "error: nothing is deployed: give --version"

    champion = Revision(registered.version, str(state.deployed_models_dir), "0" * 64)
    save_state(state.deployment_state_path, DeploymentState(champion=champion))
    output = _monitor(state, "--last-hours", "1")
    assert f"version {registered.version}: 240 predictions" in output  # 15 s apart: 4 a minute
    assert load_latest(state.monitor_dir)["verdict"] == "insufficient_data"  # under 500 trips


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--month", "2021-03", "--last-hours", "3"], "give one of --month or --last-hours"),
        (["--last-hours", "3", "--since", "2021-03-01"], "give one of --last-hours or --since/--until"),
        (["--last-hours", "0"], "is not in the range x>0"),
        (["--month", "March"], "month 'March' is not YYYY-MM"),
    ],
)
def test_one_window_and_a_valid_one(state: Settings, args: list[str], message: str):
    result = CliRunner().invoke(
        main, ["monitor", "--state-dir", str(state.state_dir), "--version", "1", *args]
    )
    assert result.exit_code in (1, 2)
    assert message in result.output
    assert not state.monitor_dir.exists()  # nothing judged, nothing stored


def test_cluster_needs_the_clusters_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = CliRunner().invoke(
        main, ["monitor", "--cluster", "--state-dir", str(tmp_path), "--last-hours", "1"]
    )
    assert result.exit_code == 2
    assert "--cluster needs MLFLOW_TRACKING_URI" in result.output
