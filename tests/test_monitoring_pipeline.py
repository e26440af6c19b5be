"""The monitoring pipeline through kfp.local: real subprocess tasks, real MLflow (sqlite), real files and S3.

A registered version with its reference profile (``support.monitoring_state``), a
prediction log whose last twelve hours are drifted (distances x1.3), and the
compiled pipeline run by ``SubprocessRunner(use_venv=False)``: the verdict lands in
the monitor location, the HTML report is the task's artifact, the MLflow run and
the registered version carry the verdict. Then the same with the log, the labels
and the verdicts in a bucket of moto's S3 server, as on a cluster.
"""

# No "from __future__ import annotations": KFP reads the test component's real annotations.

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from kfp import dsl, local
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
from components.registry.tracking import VERSION_VERDICT_TAG
from components.storage.object_transfer import download_file, upload_file
from components.storage.s3 import S3Connection

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> Registered:
    return registered_ridge(tmp_path_factory.mktemp("monitoring"))


@pytest.fixture
def kfp_local(tmp_path: Path) -> Path:
    root = tmp_path / "kfp"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    return root


def _arguments(registered: Registered, **locations: str) -> dict:
    return {
        "tracking_uri": registered.tracking_uri,
        "experiment": "taxi-test",
        "model_name": registered.model_name,
        "last_hours": 12.0,
        **locations,
    }


def _monitoring_runs(registered: Registered) -> list:
    client = MlflowClient(tracking_uri=registered.tracking_uri, registry_uri=registered.tracking_uri)
    experiment = client.get_experiment_by_name("taxi-test-monitoring")
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def test_the_drifted_window_is_judged_drift_and_stored_reported_and_tagged(
    registered: Registered, kfp_local: Path, tmp_path: Path
):
    from pipelines.monitoring_pipeline import monitoring_pipeline

    log_dir, labels_dir = write_drifted_log(registered, tmp_path / "log", tmp_path / "labels")
    monitor_dir = tmp_path / "monitor"
    run = monitoring_pipeline(
        **_arguments(
            registered,
            prediction_log_uri=str(log_dir),
            labels_uri=str(labels_dir),
            monitor_uri=str(monitor_dir),
        )
    )
    assert run.output == "drift"

    latest = load_latest(monitor_dir)
    assert latest is not None and latest["verdict"] == "drift"
    assert latest["model_version"] == registered.version
    # The window is the twelve hours up to the newest event: the drifted trips only.
    assert latest["window"]["predictions"] == DRIFTED_TRIPS and latest["window"]["labelled"] == 0
    assert latest["window"]["end"] == DRIFT_END
    assert latest["window"]["start"] == "2021-03-07T22:24:45+00:00"
    assert latest["drift"]["features"]["trip_distance"]["drifted"]
    assert [v["evaluated_at"] for v in load_history(monitor_dir)] == [latest["evaluated_at"]]
    page = (monitor_dir / "report.html").read_text()
    assert "<html" in page.lower() and "drift" in page.lower()

    # The task's own artifacts: the same report as Output[HTML], the verdict as JSON and metrics.
    (html_artifact,) = [p for p in kfp_local.rglob("report") if p.is_file()]
    assert html_artifact.read_text() == page
    (verdict_artifact,) = [p for p in kfp_local.rglob("verdict_json") if p.is_file()]
    assert json.loads(verdict_artifact.read_text()) == latest

    (mlflow_run,) = _monitoring_runs(registered)
    assert mlflow_run.data.tags["verdict"] == "drift"
    assert mlflow_run.data.tags["model_version"] == registered.version
    assert mlflow_run.info.status == "FINISHED"
    client = MlflowClient(tracking_uri=registered.tracking_uri, registry_uri=registered.tracking_uri)
    assert {a.path for a in client.list_artifacts(mlflow_run.info.run_id)} == {"monitor.json", "report.html"}
    version = client.get_model_version(registered.model_name, registered.version)
    assert version.tags[VERSION_VERDICT_TAG] == "drift"


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def record_action(verdict: str, marker: str) -> None:
    """What the next issue's retraining would be: here it only leaves a mark."""
    with open(marker, "w", encoding="utf-8") as handle:
        handle.write(verdict)


def test_the_verdict_output_branches_a_later_task(registered: Registered, kfp_local: Path, tmp_path: Path):
    """dsl.If on the monitor task's verdict output: the branch runs for drift and not for ok."""
    from pipelines.kfp_components import VERDICT_OUTPUT, monitor

    log_dir, labels_dir = write_drifted_log(registered, tmp_path / "log", tmp_path / "labels")
    locations = {
        "prediction_log_uri": str(log_dir),
        "labels_uri": str(labels_dir),
        "monitor_uri": str(tmp_path / "monitor"),
    }

    @dsl.pipeline(name="act-on-drift")
    def act_on_drift(since: str, until: str, marker: str) -> None:
        judged = monitor(
            tracking_uri=registered.tracking_uri,
            experiment="taxi-test",
            artifact_location="",
            model_name=registered.model_name,
            model_alias="champion",
            model_version="",
            last_hours=0.0,
            since=since,
            until=until,
            **locations,
        ).set_caching_options(False)
        with dsl.If(judged.outputs[VERDICT_OUTPUT] == "drift"):
            record_action(verdict=judged.outputs[VERDICT_OUTPUT], marker=marker)

    calm_marker, drift_marker = tmp_path / "calm-action", tmp_path / "drift-action"
    act_on_drift(since="2021-03-01T00:00:00", until="2021-03-08T00:00:00", marker=str(calm_marker))
    act_on_drift(since="2021-03-08T00:00:00", until="", marker=str(drift_marker))
    assert not calm_marker.exists()
    assert drift_marker.read_text() == "drift"
    verdicts = [(v["verdict"], v["window"]["labelled"]) for v in load_history(tmp_path / "monitor")]
    assert verdicts == [("ok", CALM_TRIPS), ("drift", 0)]


# --------------------------------------------------------------------------- on S3, as on a cluster


@pytest.fixture
def s3_env(s3_conn: S3Connection, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Connection]:
    """moto's S3 as the task processes see MinIO on a cluster: endpoint and keys in their environment."""
    monkeypatch.setenv("S3_ENDPOINT_URL", f"http://{s3_conn.endpoint}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_conn.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_conn.secret_key)
    client = s3_conn.client()
    if not client.bucket_exists("monitoring"):
        client.make_bucket("monitoring")
    yield s3_conn


def test_on_s3_the_log_and_labels_are_read_and_the_verdicts_appended(
    registered: Registered, kfp_local: Path, s3_env: S3Connection, tmp_path: Path
):
    from components.names import LABELS_URI, MONITOR_URI, PREDICTION_LOG_URI
    from pipelines.cluster_pipeline import CLUSTER_MONITORING_DEFAULTS
    from pipelines.monitoring_pipeline import build_monitoring_pipeline

    log_dir, labels_dir = write_drifted_log(
        registered, tmp_path / "local" / "log", tmp_path / "local" / "labels"
    )
    for folder, prefix in ((log_dir, PREDICTION_LOG_URI), (labels_dir, LABELS_URI)):
        for path in sorted(folder.iterdir()):
            upload_file(s3_env, path, f"{prefix}/{path.name}")  # the .tmp too: it must be left alone
    earlier = {
        "verdict": "ok",
        "model_version": registered.version,
        "evaluated_at": "2021-03-07T23:00:00+00:00",
    }
    history = tmp_path / "earlier.jsonl"
    history.write_text(json.dumps(earlier) + "\n")
    upload_file(s3_env, history, f"{MONITOR_URI}/history.jsonl")

    # The cluster build's defaults name the monitoring bucket; only MLflow is this test's own.
    pipeline = build_monitoring_pipeline(CLUSTER_MONITORING_DEFAULTS)
    run = pipeline(
        tracking_uri=registered.tracking_uri, experiment="taxi-s3", model_name=registered.model_name
    )
    assert run.output == "drift"

    fetched = tmp_path / "fetched"
    for name in ("latest.json", "history.jsonl", "report.html"):
        download_file(s3_env, f"{MONITOR_URI}/{name}", fetched / name)
    latest = load_latest(fetched)
    assert latest is not None and latest["verdict"] == "drift"
    assert latest["window"]["predictions"] == DRIFTED_TRIPS  # the default window: the last 24 h, drifted only
    assert [v["verdict"] for v in load_history(fetched)] == ["ok", "drift"]
    assert load_history(fetched)[-1] == latest
    assert "<html" in (fetched / "report.html").read_text().lower()
