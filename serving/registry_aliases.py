"""The MLflow aliases follow what is served: ``champion`` for production, ``challenger`` for the canary.

Local (``serving.rollout``) and cluster (``serving.cluster_rollout``) rollouts both
change the deployment first and then call these, so the registry always names
what is actually being served.
"""

from __future__ import annotations

import contextlib

from components.registry.tracking import client_for
from components.registry.versions import CHALLENGER, CHAMPION
from serving.deployment_state import DeploymentState


def aliases_after_deploy(tracking_uri: str, model_name: str, state: DeploymentState, version: str) -> None:
    """``version`` just deployed: ``champion`` if it took all traffic, ``challenger`` if it is the canary."""
    client = client_for(tracking_uri)
    if state.champion is not None and state.champion.model_version == version:
        client.set_registered_model_alias(model_name, CHAMPION, version)
    elif state.canary is not None and state.canary.model_version == version:
        client.set_registered_model_alias(model_name, CHALLENGER, version)


def aliases_follow_champion(tracking_uri: str, model_name: str, state: DeploymentState) -> None:
    """After promote or rollback: ``champion`` on the serving version; no canary, no ``challenger``."""
    if state.champion is None:
        return
    client = client_for(tracking_uri)
    client.set_registered_model_alias(model_name, CHAMPION, state.champion.model_version)
    if state.canary is None:
        from mlflow.exceptions import MlflowException

        with contextlib.suppress(MlflowException):  # already absent: clearing is idempotent
            client.delete_registered_model_alias(model_name, CHALLENGER)
