"""A registration SIGKILLed at each of its stages leaves a state the next command repairs.

A real subprocess opens a pipeline run (owned by itself, as `taxi-mlops run`
owns its run) and registers a model; at the chosen stage it SIGKILLs itself
(``os.kill``; no handler, no ``finally`` runs). Then the real ``taxi-mlops
status`` (or ``deploy``) in another process repairs what was left: a pending
version is removed and says why, the RUNNING run is closed FAILED with the tag
``killed``; a finished registration stays. Owners that are alive, or on
another host, are left alone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from support.tlc_fixtures import write_tlc_dir

from components.data.ingest import load_month
from components.features.design_matrix import vectorize_trips
from components.models.duration_model import MODEL_FILE_NAME
from components.models.train import fit_candidate
from components.registry import tracking
from components.registry.leftovers import maybe_left_behind
from components.registry.process_owner import ProcessOwner
from components.registry.recovery import KILLED_TAG, close_dead_runs
from components.registry.versions import PENDING_TAG
from pipelines.settings import Settings

pytestmark = pytest.mark.timeout(300)
MODEL_NAME = "taxi-trip-duration"
CLI = str(Path(sys.executable).with_name("taxi-mlops"))
ROOT = Path(__file__).resolve().parent.parent

KILLED_REGISTRATION = textwrap.dedent(
    """
    import os, signal, sys, time
    import mlflow
    from mlflow.tracking import MlflowClient
    from components.data.ingest import load_month
    from components.registry import tracking
    from components.registry.process_owner import process_owner
    from components.registry.registration import register_winner
    from pathlib import Path

    tracking_uri, experiment, model_file, data_dir, stage = sys.argv[1:]

    def die(*_args, **_kwargs):
        if stage == "hold":
            print("holding", flush=True)
            time.sleep(120)
        os.kill(os.getpid(), signal.SIGKILL)

    if stage == "before_version":
        mlflow.register_model = die
    elif stage in ("before_alias", "hold"):
        MlflowClient.set_registered_model_alias = die
    elif stage == "before_complete":
        MlflowClient.delete_model_version_tag = die
    run_id = tracking.open_pipeline_run(
        tracking_uri, experiment, "run-" + stage, "job-" + stage, {}, owner=process_owner().text()
    )
    # As in the pipeline: the winner's model is logged under its own (finished) candidate run.
    with tracking.candidate_run(tracking_uri, run_id, "linear_regression") as candidate_run_id:
        pass
    val_trips, _ = load_month("green", "2021-02", data_dir=data_dir)
    register_winner(
        tracking_uri=tracking_uri, model_name="taxi-trip-duration", model_file=Path(model_file),
        gate={"passed": True, "champion_rmse": None, "reason": "no champion yet"},
        input_example=val_trips, run_id=candidate_run_id, version_tags={"pipeline_run": run_id},
    )
    die()  # after_registration: killed later, e.g. in the deploy step
    """
)


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("kill")
    data_dir = write_tlc_dir(root / "tlc")
    train_trips, _ = load_month("green", "2021-01", data_dir=data_dir)
    val_trips, _ = load_month("green", "2021-02", data_dir=data_dir)
    vectorizer, train, validation = vectorize_trips(train_trips, val_trips)
    model, _ = fit_candidate("linear_regression", None, vectorizer, train, validation)
    model.save(root / MODEL_FILE_NAME)
    return root / MODEL_FILE_NAME, data_dir


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "TAXI_MLOPS_STATE_DIR")}


def _start_registration(
    settings: Settings, model_and_data: tuple[Path, Path], stage: str
) -> subprocess.Popen:
    model_file, data_dir = model_and_data
    return subprocess.Popen(
        [sys.executable, "-c", KILLED_REGISTRATION, settings.tracking_uri, settings.experiment,
         str(model_file), str(data_dir), stage],
        cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args, "--state-dir", str(settings.state_dir)],
        capture_output=True, text=True, timeout=120, env=_env(), check=False,
    )  # fmt: skip


def _settings(tmp_path: Path) -> Settings:
    settings = Settings.from_env({"TAXI_MLOPS_STATE_DIR": str(tmp_path / "state")})
    settings.state_dir.mkdir(parents=True)
    # The experiment exists before the child runs, as the open-run task leaves it.
    tracking.ensure_experiment(settings.tracking_uri, settings.experiment, settings.artifact_location)
    return settings


def _versions(settings: Settings) -> list:
    client = MlflowClient(settings.tracking_uri, settings.tracking_uri)
    return client.search_model_versions(f"name = '{MODEL_NAME}'")


def _run(settings: Settings, stage: str):
    client = MlflowClient(settings.tracking_uri, settings.tracking_uri)
    run_id = tracking.find_pipeline_run(
        settings.tracking_uri, settings.experiment, tracking.PIPELINE_RUN_TAG, f"run-{stage}"
    )
    return client.get_run(run_id)


@pytest.mark.parametrize(
    ("stage", "version_left"),
    [
        ("before_version", None),  # model logged under the run, no version yet
        ("before_alias", "pending"),  # version row (pending), no alias
        ("before_complete", "pending"),  # version + alias champion, pending not cleared yet
        ("after_registration", "complete"),  # everything written; killed afterwards
    ],
)
def test_killed_registration_is_repaired_by_the_next_status(
    tmp_path: Path, model_and_data: tuple[Path, Path], stage: str, version_left: str | None
):
    settings = _settings(tmp_path)
    child = _start_registration(settings, model_and_data, stage)
    assert child.wait(120) == -signal.SIGKILL
    left = _versions(settings)
    assert [PENDING_TAG in v.tags for v in left] == {
        None: [],
        "pending": [True],
        "complete": [False],
    }[version_left]
    assert _run(settings, stage).info.status == "RUNNING"

    result = _cli(settings, "status", "--url", "http://127.0.0.1:9")
    assert result.returncode == 0, result.stderr
    recovered = [line for line in result.stdout.splitlines() if line.startswith("recovered: ")]
    run = _run(settings, stage)
    assert run.info.status == "FAILED"
    assert run.data.tags[KILLED_TAG] == f"no process left (pid {child.pid} on {os.uname().nodename})"
    assert f"closed MLflow run run-{stage}" in recovered[-1] and "killed, no process left" in recovered[-1]
    if version_left == "pending":
        alias = "alias champion" if stage == "before_complete" else "no alias"
        assert recovered[0] == (
            f"recovered: removed {MODEL_NAME} version 1: its registration "
            f"(pid {child.pid} on {os.uname().nodename}, {alias}) was killed before it finished"
        )
        assert _versions(settings) == []
    else:
        assert len(recovered) == 1
        client = MlflowClient(settings.tracking_uri, settings.tracking_uri)
        kept = [client.get_model_version(MODEL_NAME, v.version) for v in _versions(settings)]
        assert [(v.version, v.aliases) for v in kept] == [(1, ["champion"])] * (version_left == "complete")

    again = _cli(settings, "status", "--url", "http://127.0.0.1:9")
    assert again.returncode == 0 and "recovered:" not in again.stdout  # idempotent
    assert not maybe_left_behind(settings.tracking_uri)


def test_a_live_registration_is_left_alone_and_not_deployed(tmp_path: Path, model_and_data):
    """While its owner lives, a pending version is nobody's to remove, and deploy refuses it;
    once the owner is killed, `deploy` itself removes it and says so."""
    settings = _settings(tmp_path)
    child = _start_registration(settings, model_and_data, "hold")
    try:
        assert child.stdout.readline().strip() == "holding"
        status = _cli(settings, "status", "--url", "http://127.0.0.1:9")
        assert status.returncode == 0 and "recovered:" not in status.stdout
        refused = _cli(settings, "deploy", "--version", "1")
        assert refused.returncode == 1
        assert refused.stderr.strip() == (
            f"error: model '{MODEL_NAME}' version 1 is still being registered (registration=pending, "
            f"pid {child.pid} on {os.uname().nodename}); deploy it once its run has finished"
        )
        assert _run(settings, "hold").info.status == "RUNNING"
    finally:
        child.kill()
        child.wait(30)
    repaired = _cli(settings, "deploy", "--version", "1")
    assert repaired.returncode == 1
    assert f"recovered: removed {MODEL_NAME} version 1: its registration (pid {child.pid}" in repaired.stdout
    assert "recovered: closed MLflow run run-hold" in repaired.stdout
    assert repaired.stderr.strip() == f"error: model '{MODEL_NAME}' has no version 1"


def test_runs_of_other_hosts_and_live_processes_stay_running(tmp_path: Path):
    settings = _settings(tmp_path)
    uri, experiment = settings.tracking_uri, settings.experiment
    elsewhere = tracking.open_pipeline_run(
        uri, experiment, "elsewhere", "j1", {}, owner=ProcessOwner("another-host", 1, "").text()
    )
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.1)
        owner = ProcessOwner(os.uname().nodename, sleeper.pid, "").text()
        live = tracking.open_pipeline_run(uri, experiment, "live", "j2", {}, owner=owner)
        unowned = tracking.open_pipeline_run(uri, experiment, "unowned", "j3", {})
        assert close_dead_runs(uri, experiment) == []
        client = MlflowClient(uri, uri)
        assert {client.get_run(r).info.status for r in (elsewhere, live, unowned)} == {"RUNNING"}
    finally:
        sleeper.kill()
        sleeper.wait(10)
    closed = close_dead_runs(uri, experiment)
    assert len(closed) == 1 and "closed MLflow run live" in closed[0]
