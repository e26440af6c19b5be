"""Move a registered model version through a deployment: deploy, promote, roll back.

Each action changes two records together: the deployment state (which
revision serves how much traffic; ``serving.deployment_state``) and the MLflow
aliases (``champion`` serves production, ``challenger`` is the canary). The
state file changes first and the aliases follow it, both under the state file's
lock: with the aliases written after the lock was released, a ``promote`` could
slip in between a ``deploy``'s state write and its alias write, and the deploy
then set ``challenger`` on a version that was already champion (seen: 4 of 10
races). Every action is idempotent: repeating it changes nothing and says so.
The alias step reconciles from the state (``aliases_follow_state``), so it also
repairs aliases that a command killed between its two writes left behind.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from components.errors import TaxiMlopsError
from components.models.duration_model import MODEL_FILE_NAME
from components.registry.recovery import pending_owner
from components.registry.tracking import client_for
from components.registry.versions import PENDING, PENDING_TAG, SHA256_TAG, fetch_model_file, is_pending
from components.storage.checksums import file_sha256
from serving.deployment_state import (
    DeploymentState,
    Revision,
    Transition,
    load_state,
    promote,
    rollback,
    set_percent,
    update_state,
    with_state,
)
from serving.deployment_state import deploy as deploy_transition
from serving.registry_aliases import aliases_follow_state


class UnknownVersionError(TaxiMlopsError, ValueError):
    """The registry has no such version of the model."""


class PendingVersionError(TaxiMlopsError):
    """The version's registration has not finished; it cannot be deployed."""


@dataclass(frozen=True)
class RolloutTarget:
    """Where a deployment lives locally and which registry it follows."""

    state_path: Path  # the deployment state file the local stack reconciles
    models_dir: Path  # verified copies of deployed model files, one folder per version
    tracking_uri: str
    model_name: str


def deploy_version(target: RolloutTarget, version: str, canary_percent: int) -> Transition:
    """Deploy registered ``version``: the first deployment becomes champion, later ones a canary."""
    # A state file it could not update anyway stops the deploy before it downloads a model.
    load_state(target.state_path)
    revision = _stage_revision(target, str(version))
    return update_state(
        target.state_path,
        lambda state: deploy_transition(state, revision, canary_percent),
        then=_aliases_follow(target),
    )


def promote_canary(target: RolloutTarget) -> Transition:
    """The canary takes all traffic and the ``champion`` alias; ``challenger`` is cleared."""
    return update_state(target.state_path, promote, then=_aliases_follow(target))


def set_canary_percent(target: RolloutTarget, canary_percent: int) -> Transition:
    """The canary's next traffic step (the canary judge's ``set_percent``); aliases stay."""
    return update_state(
        target.state_path, lambda state: set_percent(state, canary_percent), then=_aliases_follow(target)
    )


def rollback_canary(target: RolloutTarget) -> Transition:
    """The canary gets no traffic; ``champion`` stays where it is and ``challenger`` is cleared."""
    return update_state(target.state_path, rollback, then=_aliases_follow(target))


def reconcile_aliases(target: RolloutTarget) -> list[str]:
    """Bring the aliases in line with the state file (under its lock); one sentence per moved alias.

    ``status`` and ``serve`` call this first: a rollout killed between its state
    write and its alias writes is finished here. Raises ``DeploymentStateError``
    when the state file cannot be read (nothing is touched then).
    """
    moved: list[str] = []
    with_state(target.state_path, lambda state: moved.extend(_follow(target, state)))
    return moved


def _aliases_follow(target: RolloutTarget) -> Callable[[DeploymentState], None]:
    """The ``then`` of a rollout's ``update_state``: runs while the state lock is held."""

    def follow(state: DeploymentState) -> None:
        _follow(target, state)

    return follow


def _follow(target: RolloutTarget, state: DeploymentState) -> list[str]:
    return aliases_follow_state(target.tracking_uri, target.model_name, state)


def _stage_revision(target: RolloutTarget, version: str) -> Revision:
    """Copy the version's verified model file next to the state file; predictors load it from there."""
    from mlflow.exceptions import MlflowException

    client = client_for(target.tracking_uri)
    try:
        model_version = client.get_model_version(target.model_name, version)
    except MlflowException as exc:
        raise UnknownVersionError(f"model {target.model_name!r} has no version {version}") from exc
    if is_pending(model_version):
        owner = pending_owner(model_version)
        raise PendingVersionError(
            f"model {target.model_name!r} version {version} is still being registered "
            f"({PENDING_TAG}={PENDING}, {owner.describe() if owner else 'owner unknown'}); "
            "deploy it once its run has finished"
        )
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
