"""Move a registered model version through a deployment: deploy, promote, roll back.

Each action changes two records together: the deployment state (which
revision serves how much traffic; ``serving.deployment_state``) and the MLflow
aliases (``champion`` serves production, ``challenger`` is the canary). The
state file changes first, under its lock; the aliases then follow it, so the
registry always names what is actually being served. Every action is
idempotent: repeating it changes nothing and says so.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from components.errors import TaxiMlopsError
from components.models.duration_model import MODEL_FILE_NAME
from components.registry.tracking import client_for
from components.registry.versions import SHA256_TAG, fetch_model_file
from components.storage.checksums import file_sha256
from serving.deployment_state import Revision, Transition, promote, rollback, update_state
from serving.deployment_state import deploy as deploy_transition
from serving.registry_aliases import aliases_after_deploy, aliases_follow_champion


class UnknownVersionError(TaxiMlopsError, ValueError):
    """The registry has no such version of the model."""


@dataclass(frozen=True)
class RolloutTarget:
    """Where a deployment lives locally and which registry it follows."""

    state_path: Path  # the deployment state file the local stack reconciles
    models_dir: Path  # verified copies of deployed model files, one folder per version
    tracking_uri: str
    model_name: str


def deploy_version(target: RolloutTarget, version: str, canary_percent: int) -> Transition:
    """Deploy registered ``version``: the first deployment becomes champion, later ones a canary."""
    revision = _stage_revision(target, str(version))
    transition = update_state(
        target.state_path, lambda state: deploy_transition(state, revision, canary_percent)
    )
    aliases_after_deploy(target.tracking_uri, target.model_name, transition.state, revision.model_version)
    return transition


def promote_canary(target: RolloutTarget) -> Transition:
    """The canary takes all traffic and the ``champion`` alias; ``challenger`` is cleared."""
    transition = update_state(target.state_path, promote)
    aliases_follow_champion(target.tracking_uri, target.model_name, transition.state)
    return transition


def rollback_canary(target: RolloutTarget) -> Transition:
    """The canary gets no traffic; ``champion`` stays where it is and ``challenger`` is cleared."""
    transition = update_state(target.state_path, rollback)
    aliases_follow_champion(target.tracking_uri, target.model_name, transition.state)
    return transition


def _stage_revision(target: RolloutTarget, version: str) -> Revision:
    """Copy the version's verified model file next to the state file; predictors load it from there."""
    from mlflow.exceptions import MlflowException

    client = client_for(target.tracking_uri)
    try:
        model_version = client.get_model_version(target.model_name, version)
    except MlflowException as exc:
        raise UnknownVersionError(f"model {target.model_name!r} has no version {version}") from exc
    folder = target.models_dir / f"v{version}"
    recorded = model_version.tags.get(SHA256_TAG, "")
    staged = folder / MODEL_FILE_NAME
    if recorded and staged.is_file() and file_sha256(staged) == recorded:
        # Already staged (deploying again is a no-op): keep the file a running predictor came from.
        return Revision(model_version=version, model_uri=str(folder), sha256=recorded)
    staging = target.models_dir / f".v{version}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    fetched = fetch_model_file(target.tracking_uri, model_version, dest_dir=staging / "download")
    # Refuses a file whose sha256 differs from the one recorded at registration. Checking the
    # bytes is enough (they are the registered ones, which registration loaded); parsing the
    # model here would import its estimator's library (xgboost: ~1 s) only to throw it away.
    fetched.verify()
    shutil.copyfile(fetched.path, staging / MODEL_FILE_NAME)
    (staging / f"{MODEL_FILE_NAME}.sha256").write_text(fetched.sha256 + "\n", encoding="utf-8")
    shutil.rmtree(staging / "download")
    shutil.rmtree(folder, ignore_errors=True)
    staging.replace(folder)
    return Revision(model_version=version, model_uri=str(folder), sha256=fetched.sha256)
