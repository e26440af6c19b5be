"""Deploy, promote and roll back: the deployment state file and the MLflow aliases move together.

Real MLflow (sqlite in tmp) and real files; the CLI is driven through click's runner.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import asdict
from pathlib import Path

import mlflow
import pytest
from click.testing import CliRunner
from support.tlc_fixtures import write_tlc_dir

from components.data.ingest import load_month
from components.errors import ModelIntegrityError
from components.evaluation.gate import gate_against_champion
from components.features.design_matrix import vectorize_trips
from components.models.duration_model import MODEL_FILE_NAME
from components.models.train import fit_candidate
from components.registry import tracking
from components.registry.registration import register_winner
from components.registry.versions import version_for_alias
from pipelines.cli import main
from pipelines.settings import Settings
from serving.deployment_state import deploy, load_state, rollback, update_state
from serving.rollout import (
    RolloutTarget,
    _stage_revision,
    deploy_version,
    promote_canary,
    reconcile_aliases,
    rollback_canary,
    set_canary_percent,
)

pytestmark = pytest.mark.timeout(300)
MODEL_NAME = "taxi-trip-duration"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory):
    """Versions 1 (champion) and 2 (challenger) in a state dir, as `taxi-mlops run` leaves them."""
    root = tmp_path_factory.mktemp("rollout")
    settings = Settings.from_env({"TAXI_MLOPS_STATE_DIR": str(root / "state")})
    previous_uri = os.environ.get("MLFLOW_TRACKING_URI")
    tracking.ensure_experiment(settings.tracking_uri, settings.experiment, settings.artifact_location)
    data_dir = write_tlc_dir(root / "tlc")
    train_trips, _ = load_month("green", "2021-01", data_dir=data_dir)
    val_trips, _ = load_month("green", "2021-02", data_dir=data_dir)
    vectorizer, train, validation = vectorize_trips(train_trips, val_trips)
    champion_rmse = None
    for name in ("linear_regression", "ridge"):
        model, result = fit_candidate(name, None, vectorizer, train, validation)
        path = root / name / MODEL_FILE_NAME
        model.save(path)
        parent = tracking.open_pipeline_run(settings.tracking_uri, settings.experiment, name, name, {})
        with tracking.candidate_run(settings.tracking_uri, parent, name) as run_id:
            pass
        gate = gate_against_champion(name, result.rmse, champion_rmse, "1" if champion_rmse else None, 0.0)
        register_winner(
            tracking_uri=settings.tracking_uri,
            model_name=MODEL_NAME,
            model_file=path,
            gate={**asdict(gate), "passed": True},
            input_example=val_trips,
            run_id=run_id,
            version_tags={"candidate": name},
        )
        champion_rmse = result.rmse
    yield settings
    mlflow.set_tracking_uri(previous_uri)  # type: ignore[arg-type]


def _target(settings: Settings) -> RolloutTarget:
    return RolloutTarget(
        settings.deployment_state_path, settings.deployed_models_dir, settings.tracking_uri, MODEL_NAME
    )


def _alias(settings: Settings, alias: str) -> str | None:
    version = version_for_alias(settings.tracking_uri, MODEL_NAME, alias)
    return None if version is None else str(version.version)


def test_deploy_promote_rollback_move_state_and_aliases_together(registry: Settings):
    target = _target(registry)
    first = deploy_version(target, "1", canary_percent=20)
    assert first.changed and "first deployment" in first.message
    state = load_state(target.state_path)
    assert state.champion.model_version == "1" and state.canary is None
    staged = Path(state.champion.model_uri) / MODEL_FILE_NAME
    assert staged.is_file()
    assert (staged.parent / f"{MODEL_FILE_NAME}.sha256").read_text().strip() == state.champion.sha256
    assert _alias(registry, "champion") == "1"

    again = deploy_version(target, "1", canary_percent=20)
    assert not again.changed and load_state(target.state_path).generation == state.generation

    canary = deploy_version(target, "2", canary_percent=25)
    state = load_state(target.state_path)
    assert canary.changed and state.canary.model_version == "2" and state.canary_percent == 25
    assert _alias(registry, "challenger") == "2" and _alias(registry, "champion") == "1"

    rolled_back = rollback_canary(target)
    state = load_state(target.state_path)
    assert rolled_back.changed and state.canary is None and state.champion.model_version == "1"
    assert _alias(registry, "challenger") is None and _alias(registry, "champion") == "1"
    assert not rollback_canary(target).changed

    deploy_version(target, "2", canary_percent=10)
    promoted = promote_canary(target)
    state = load_state(target.state_path)
    assert promoted.changed and state.champion.model_version == "2" and state.canary is None
    assert _alias(registry, "champion") == "2" and _alias(registry, "challenger") is None
    # The replaced champion keeps a one-step undo.
    assert state.previous_champion == "1" and _alias(registry, "previous") == "1"
    assert not promote_canary(target).changed


def test_set_canary_percent_steps_the_canary_and_keeps_aliases(registry: Settings, tmp_path: Path):
    target = RolloutTarget(tmp_path / "state.json", tmp_path / "models", registry.tracking_uri, MODEL_NAME)
    deploy_version(target, "1", canary_percent=0)
    deploy_version(target, "2", canary_percent=10)
    stepped = set_canary_percent(target, 25)
    state = load_state(target.state_path)
    assert stepped.changed and state.canary_percent == 25 and "10% -> 25%" in stepped.message
    assert _alias(registry, "challenger") == "2" and _alias(registry, "champion") == "1"
    assert not set_canary_percent(target, 25).changed


def test_unknown_version_is_refused(registry: Settings):
    with pytest.raises(ValueError, match="no version 99"):
        deploy_version(_target(registry), "99", canary_percent=20)


def test_tampered_registry_file_is_refused_at_deploy(registry: Settings, tmp_path):
    stored = sorted(Path(registry.state_dir, "mlartifacts").rglob(MODEL_FILE_NAME))
    assert stored, "the registry holds the model files"
    originals = {path: path.read_bytes() for path in stored}
    target = RolloutTarget(tmp_path / "state.json", tmp_path / "models", registry.tracking_uri, MODEL_NAME)
    try:
        for path, content in originals.items():
            path.write_bytes(content[:-1] + bytes([content[-1] ^ 0xFF]))
        with pytest.raises(ModelIntegrityError, match="sha256"):
            deploy_version(target, "1", canary_percent=20)
        assert not target.state_path.exists()
        assert not (target.models_dir / "v1").exists()
    finally:
        for path, content in originals.items():
            path.write_bytes(content)


def test_cli_commands_report_each_change(registry: Settings):
    runner = CliRunner()
    args = ["--state-dir", str(registry.state_dir)]
    result = runner.invoke(main, ["deploy", "--version", "1", "--canary-percent", "30", *args])
    assert result.exit_code == 0, result.output
    assert "version 1 is canary with 30%" in result.output
    result = runner.invoke(main, ["rollback", *args])
    assert result.exit_code == 0 and "rolled back canary version 1" in result.output
    result = runner.invoke(main, ["status", "--url", "http://127.0.0.1:9", *args])
    assert result.exit_code == 0
    assert "desired: champion version 2 (100%)" in result.output and "not answering" in result.output
    result = runner.invoke(main, ["deploy", "--version", "42", *args])
    assert result.exit_code == 1 and "no version 42" in result.output


RACE_WORKER = textwrap.dedent(
    """
    import json, random, sys, time
    from pathlib import Path
    from components.registry.tracking import client_for
    from serving.rollout import RolloutTarget, deploy_version, promote_canary

    state_path, models_dir, tracking_uri, model_name, seed = sys.argv[1:]
    target = RolloutTarget(Path(state_path), Path(models_dir), tracking_uri, model_name)
    client_for(tracking_uri).get_registered_model(model_name)  # open the store before the race
    jitter = random.Random(seed)
    print("ready", flush=True)
    for line in sys.stdin:
        verb, *args = line.split()
        time.sleep(jitter.uniform(0, 0.02))
        if verb == "deploy":
            transition = deploy_version(target, args[0], 20)
        else:
            transition = promote_canary(target)
        print(json.dumps(transition.message), flush=True)
    """
)


def test_deploy_racing_promote_leaves_state_and_aliases_in_step(registry: Settings, tmp_path: Path):
    """`deploy` and `promote` in two real processes, released together, 20 times: after each pair
    the aliases name exactly what the state file serves (champion; challenger = canary or none)."""
    target = RolloutTarget(tmp_path / "state.json", tmp_path / "models", registry.tracking_uri, MODEL_NAME)
    deploy_version(target, "1", canary_percent=0)
    deploy_version(target, "2", canary_percent=20)
    rollback_canary(target)  # challenger cleared: the race starts from agreement
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", RACE_WORKER, str(target.state_path), str(target.models_dir),
             registry.tracking_uri, MODEL_NAME, seed],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent,
        )
        for seed in ("deployer", "promoter")
    ]  # fmt: skip
    try:
        for worker in workers:
            assert worker.stdout.readline().strip() == "ready"
        agreed, orders = 0, set()
        for _ in range(20):
            state = load_state(target.state_path)
            other = "2" if state.champion.model_version == "1" else "1"
            workers[0].stdin.write(f"deploy {other}\n")
            workers[1].stdin.write("promote\n")
            for worker in workers:
                worker.stdin.flush()
            messages = [json.loads(worker.stdout.readline()) for worker in workers]
            state = load_state(target.state_path)
            orders.add("promoted" in messages[1])
            canary = state.canary.model_version if state.canary else None
            if (_alias(registry, "champion"), _alias(registry, "challenger")) == (
                state.champion.model_version,
                canary,
            ):
                agreed += 1
        assert agreed == 20
    finally:
        for worker in workers:
            worker.stdin.close()
            worker.wait(30)
    print(f"deploy || promote: {agreed}/20 in step; promote found a canary in some pairs: {orders}")


def test_status_finishes_a_rollout_killed_between_its_state_and_alias_writes(
    registry: Settings, tmp_path: Path
):
    """The state file is the source of truth: a deploy that wrote the state and died before the
    alias is completed by the next reconcile, once; a rolled-back canary loses challenger."""
    target = RolloutTarget(tmp_path / "state.json", tmp_path / "models", registry.tracking_uri, MODEL_NAME)
    deploy_version(target, "1", canary_percent=0)
    client = tracking.client_for(registry.tracking_uri)
    if _alias(registry, "challenger") is not None:
        client.delete_registered_model_alias(MODEL_NAME, "challenger")
    revision = _stage_revision(target, "2")
    update_state(target.state_path, lambda state: deploy(state, revision, 20))  # ... and killed here
    assert reconcile_aliases(target) == ["alias challenger: none -> version 2"]
    assert _alias(registry, "challenger") == "2" and reconcile_aliases(target) == []
    update_state(target.state_path, rollback)  # killed again before clearing challenger
    assert reconcile_aliases(target) == ["alias challenger: version 2 -> none (no canary)"]
    assert _alias(registry, "challenger") is None and _alias(registry, "champion") == "1"
