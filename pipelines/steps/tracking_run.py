"""The pipeline's MLflow parent run: opened first, closed by the exit handler whatever happened."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from components.registry import tracking
from components.registry.process_owner import process_owner
from pipelines.steps.notes import log
from pipelines.steps.task_process import task_step


@task_step
def open_run_step(
    tracking_uri: str,
    experiment: str,
    run_name: str,
    kfp_job_id: str,
    params: Mapping[str, Any],
    artifact_location: str = "",
) -> str:
    # The run lives as long as the process that runs the pipeline: kfp.local starts each task
    # as a child of the `taxi-mlops run` process (on a cluster: of the pod's launcher, on a
    # host no local command judges). If it is SIGKILLed, the exit handler below never runs and
    # the next command closes the run from this owner tag (components.registry.recovery).
    run_id = tracking.open_pipeline_run(
        tracking_uri,
        experiment,
        run_name,
        kfp_job_id,
        params,
        artifact_location,
        owner=process_owner(os.getppid()).text(),
    )
    log.info("MLflow pipeline run %s in experiment %r", run_id, experiment)
    return run_id


@task_step
def close_run_step(
    tracking_uri: str, experiment: str, kfp_job_id: str, pipeline_state: str, error: str
) -> None:
    """Mark the parent run FINISHED or FAILED from the pipeline's final state."""
    run_id = tracking.find_pipeline_run(tracking_uri, experiment, tracking.KFP_JOB_TAG, kfp_job_id)
    if run_id is None:
        # The pipeline failed before it could open its run: nothing to close.
        log.info("no MLflow run for KFP job %s (pipeline state %s)", kfp_job_id, pipeline_state)
        return
    succeeded = pipeline_state.upper() in {"SUCCEEDED", "SUCCESS", "COMPLETE"}
    tracking.close_pipeline_run(tracking_uri, run_id, succeeded, "" if succeeded else error)
    log.info("MLflow pipeline run %s closed (%s)", run_id, pipeline_state)
