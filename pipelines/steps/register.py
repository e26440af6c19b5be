"""Register step: when the gate passed, the winner becomes a registered MLflow model version."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from components.data.ingest import read_clean_trips
from components.models.duration_model import load_duration_model
from components.monitoring.reference_profile import PROFILE_FILE_NAME, build_reference_profile, save_profile
from components.registry import tracking
from components.registry.registration import register_winner
from components.storage.s3 import S3Connection
from pipelines.steps.notes import log
from pipelines.steps.task_process import task_step


@task_step
def register_step(
    *,
    winner_path: str,
    evaluation: Mapping[str, Any],
    val_trips_path: str,
    train_trips_path: str,
    tracking_uri: str,
    parent_run_id: str,
    model_name: str,
    model_store_uri: str = "",
) -> dict[str, Any]:
    """Register the winner when the gate passed; returns the run's summary (evaluation + registration).

    With ``model_store_uri`` the file goes to the model store (S3 credentials
    from the environment) before the version exists; empty means local mode.
    """

    winner = load_duration_model(winner_path, expected_sha256=None)
    val_trips = read_clean_trips(val_trips_path)
    profile_path = Path(winner_path).with_name(PROFILE_FILE_NAME)
    if evaluation["gate"]["passed"]:
        profile = build_reference_profile(winner, read_clean_trips(train_trips_path), val_trips)
        save_profile(profile, profile_path)
    registration = register_winner(
        tracking_uri=tracking_uri,
        model_name=model_name,
        model_file=Path(winner_path),
        gate=evaluation["gate"],
        input_example=val_trips,
        run_id=str(winner.metadata.get("mlflow_run_id") or parent_run_id),
        version_tags={
            "candidate": winner.candidate,
            "rmse": f"{evaluation['gate']['challenger_rmse']:.6f}",
            "pipeline_run": parent_run_id,
        },
        model_store_uri=model_store_uri,
        s3=S3Connection.from_env() if model_store_uri else None,
        reference_profile=profile_path if evaluation["gate"]["passed"] else None,
    )
    tracking.log_run_values(
        tracking_uri,
        parent_run_id,
        tags={
            "registered_version": registration.model_version or "none",
            "registered_alias": registration.alias or "none",
        },
    )
    summary = {**dict(evaluation), "registration": registration.to_dict()}
    tracking.client_for(tracking_uri).log_text(
        parent_run_id, json.dumps(summary, indent=2), tracking.SUMMARY_ARTIFACT
    )
    log.info("registration: %s", registration.reason)
    return summary
