"""Deploy step: roll the registered version out, to the InferenceService or the local deployment."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from components.names import NAMESPACE
from components.registry import tracking
from pipelines.steps.notes import log
from pipelines.steps.task_process import task_step


@task_step
def deploy_step(
    *,
    registration: Mapping[str, Any],
    tracking_uri: str,
    parent_run_id: str,
    model_name: str,
    deployment_state_path: str,
    canary_percent: int,
    inference_service: str = "",
    inference_namespace: str = "",
) -> str:
    """Deploy what register registered; returns one sentence saying what happened.

    ``inference_service`` set: through the Kubernetes API with the pod's service
    account (the deployer Role), in ``inference_namespace``. Else to the local
    deployment state file, if one is given.
    """
    version = registration.get("model_version")
    if not version:
        message = "nothing registered, nothing to deploy"
    elif inference_service:
        from serving.cluster_rollout import ClusterTarget, connect, deploy_version
        from serving.kserve_deploy import IsvcRef

        target = ClusterTarget(
            api=connect(in_cluster=True),
            tracking_uri=tracking_uri,
            model_name=model_name,
            ref=IsvcRef(inference_service, inference_namespace or NAMESPACE),
        )
        message = deploy_version(target, str(version), int(canary_percent)).message
    elif not deployment_state_path:
        message = f"version {version} registered; no deployment target given, not deployed"
    else:
        from serving.rollout import RolloutTarget, deploy_version

        state_path = Path(deployment_state_path)
        target = RolloutTarget(state_path, state_path.parent / "models", tracking_uri, model_name)
        message = deploy_version(target, str(version), int(canary_percent)).message
    tracking.log_run_values(tracking_uri, parent_run_id, tags={tracking.DEPLOYMENT_TAG: message})
    log.info("deploy: %s", message)
    return message
