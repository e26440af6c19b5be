"""The MLflow aliases follow what is served: ``champion`` for production, ``challenger`` for the canary.

Local (``serving.rollout``) and cluster (``serving.cluster_rollout``) rollouts both
change the deployment first and then call these, so the registry always names
what is actually being served. The local rollout calls ``aliases_follow_state``
while it still holds the state file's lock, and again before ``status`` and
``serve``: the state file is the one source of truth, and reconciling from it is
idempotent, so neither a concurrent command nor one killed between its state
write and its alias writes leaves the two out of step.
"""

from __future__ import annotations

import contextlib

from components.registry.tracking import client_for
from components.registry.versions import CHALLENGER, CHAMPION, PREVIOUS
from serving.deployment_state import DeploymentState


def aliases_after_deploy(tracking_uri: str, model_name: str, state: DeploymentState, version: str) -> None:
    """``version`` just deployed: ``champion`` if it took all traffic, ``challenger`` if it is the canary."""
    client = client_for(tracking_uri)
    if state.champion is not None and state.champion.model_version == version:
        client.set_registered_model_alias(model_name, CHAMPION, version)
    elif state.canary is not None and state.canary.model_version == version:
        client.set_registered_model_alias(model_name, CHALLENGER, version)


def aliases_follow_champion(
    tracking_uri: str, model_name: str, state: DeploymentState, *, previous: str | None = None
) -> None:
    """After promote or rollback: ``champion`` on the serving version; no canary, no ``challenger``;
    after a promotion, ``previous`` on the champion it replaced."""
    if state.champion is None:
        return
    client = client_for(tracking_uri)
    client.set_registered_model_alias(model_name, CHAMPION, state.champion.model_version)
    if previous is not None and previous != state.champion.model_version:
        client.set_registered_model_alias(model_name, PREVIOUS, previous)
    if state.canary is None:
        from mlflow.exceptions import MlflowException

        with contextlib.suppress(MlflowException):  # already absent: clearing is idempotent
            client.delete_registered_model_alias(model_name, CHALLENGER)


def aliases_follow_state(tracking_uri: str, model_name: str, state: DeploymentState) -> list[str]:
    """Make the aliases what ``state`` says; returns one sentence per alias it had to move.

    ``champion`` names the state's champion, ``challenger`` its canary and ``previous``
    the champion its last promotion replaced. Without a
    canary, ``challenger`` is cleared only when it names the champion (a promoted
    canary) or the canary promote/rollback just retired: any other holder is a gate
    winner waiting for its canary, which is not the deployment's to take away.
    Nothing deployed: the registry is left alone (the first champion is registered
    before it is deployed). Reads first and writes only what differs.
    """
    if state.champion is None:
        return []
    from mlflow.exceptions import MlflowException

    from components.registry.versions import version_for_alias

    client = client_for(tracking_uri)

    def holder(alias: str) -> str | None:
        found = version_for_alias(tracking_uri, model_name, alias)
        return None if found is None else str(found.version)

    moved: list[str] = []
    wanted = {CHAMPION: state.champion.model_version}
    if state.canary is not None:
        wanted[CHALLENGER] = state.canary.model_version
    if state.previous_champion is not None:
        wanted[PREVIOUS] = state.previous_champion
    for alias, version in wanted.items():
        current = holder(alias)
        if current != version:
            client.set_registered_model_alias(model_name, alias, version)
            moved.append(f"alias {alias}: {_named(current)} -> version {version}")
    if state.canary is None:
        challenger = holder(CHALLENGER)
        if challenger is not None and challenger in {state.champion.model_version, state.retired_canary}:
            with contextlib.suppress(MlflowException):  # already absent: clearing is idempotent
                client.delete_registered_model_alias(model_name, CHALLENGER)
            moved.append(f"alias {CHALLENGER}: {_named(challenger)} -> none (no canary)")
    return moved


def _named(version: str | None) -> str:
    return "none" if version is None else f"version {version}"
