"""One function per pipeline step: read the step's input files, call the domain code, write outputs.

These are what the KFP components in ``components.kfp_components`` call, with
the artifact paths KFP hands them. Keeping the glue here (plain functions on
paths and JSON-able values) lets tests run every step without KFP, and keeps
the component bodies compiled into the pipeline YAML down to one call.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# Each step imports what it needs inside its function: a task runs one step in
# a fresh process, and ingest should not pay for importing MLflow or matplotlib.

log = logging.getLogger("taxi_mlops.steps")


def _notes_to_stdout() -> None:
    """Step notes go to stdout with a fixed prefix.

    The KFP UI shows them in the task's log, and the local runner turns them
    into progress lines.
    """
    if not log.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("[taxi-mlops] %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


_notes_to_stdout()
# Where the register step leaves the whole run's summary, in the parent MLflow run.
SUMMARY_ARTIFACT = "pipeline/summary.json"
# What the deploy step did, as a tag on the parent MLflow run.
DEPLOYMENT_TAG = "deployment"


def open_run_step(
    tracking_uri: str, experiment: str, run_name: str, kfp_job_id: str, params: Mapping[str, Any]
) -> str:
    from components import tracking

    run_id = tracking.open_pipeline_run(tracking_uri, experiment, run_name, kfp_job_id, params)
    log.info("MLflow pipeline run %s in experiment %r", run_id, experiment)
    return run_id


def close_run_step(
    tracking_uri: str, experiment: str, kfp_job_id: str, pipeline_state: str, error: str
) -> None:
    """Mark the parent run FINISHED or FAILED from the pipeline's final state."""
    from components import tracking

    run_id = tracking.find_pipeline_run(tracking_uri, experiment, tracking.KFP_JOB_TAG, kfp_job_id)
    if run_id is None:
        # The pipeline failed before it could open its run: nothing to close.
        log.info("no MLflow run for KFP job %s (pipeline state %s)", kfp_job_id, pipeline_state)
        return
    succeeded = pipeline_state.upper() in {"SUCCEEDED", "SUCCESS", "COMPLETE"}
    tracking.close_pipeline_run(tracking_uri, run_id, succeeded, "" if succeeded else error)
    log.info("MLflow pipeline run %s closed (%s)", run_id, pipeline_state)


def ingest_step(
    *,
    color: str,
    month: str,
    data_dir: str,
    s3_uri: str,
    cache_dir: str,
    tlc_base_url: str,
    trips_path: str,
) -> dict[str, Any]:
    """Fetch and clean one month; returns the ingest report (also logged as one line)."""
    from components.ingest import load_month, write_clean_trips
    from components.tlc_source import S3Connection

    s3 = S3Connection.from_env() if s3_uri else None
    trips, report = load_month(
        color,
        month,
        data_dir=data_dir or None,
        s3_uri=s3_uri or None,
        s3=s3,
        cache_dir=cache_dir or None,
        base_url=tlc_base_url,
    )
    write_clean_trips(trips, Path(trips_path))
    log.info("%s", report.summary_line())
    return report.to_dict()


def vectorize_step(
    *,
    train_trips_path: str,
    val_trips_path: str,
    train_matrix_path: str,
    val_matrix_path: str,
    vectorizer_path: str,
) -> dict[str, int]:
    from components.ingest import read_clean_trips
    from components.vectorize import save_design_matrix, save_vectorizer, vectorize_trips

    vectorizer, train, validation = vectorize_trips(
        read_clean_trips(train_trips_path), read_clean_trips(val_trips_path)
    )
    save_design_matrix(train_matrix_path, train.X, train.y)
    save_design_matrix(val_matrix_path, validation.X, validation.y)
    save_vectorizer(vectorizer_path, vectorizer)
    shape = {"features": int(train.X.shape[1]), "train_rows": train.n_rows, "val_rows": validation.n_rows}
    log.info("vectorized: %s", shape)
    return shape


def train_step(
    *,
    candidate: Mapping[str, Any],
    train_matrix_path: str,
    val_matrix_path: str,
    vectorizer_path: str,
    data_reports: Sequence[Mapping[str, Any]],
    tracking_uri: str,
    parent_run_id: str,
    model_path: str,
) -> dict[str, Any]:
    """Fit one candidate inside its own nested MLflow run and save the model file."""
    from components import tracking
    from components.train import fit_candidate
    from components.vectorize import load_design_matrix, load_vectorizer

    name = str(candidate["name"])
    overrides = dict(candidate.get("params") or {})
    with tracking.candidate_run(tracking_uri, parent_run_id, name) as run_id:
        model, result = fit_candidate(
            name,
            overrides,
            load_vectorizer(vectorizer_path),
            load_design_matrix(train_matrix_path),
            load_design_matrix(val_matrix_path),
        )
        model.metadata.update(
            {"train_seconds": result.train_seconds, "mlflow_run_id": run_id, "data": list(data_reports)}
        )
        sha256 = model.save(model_path)
        tracking.log_run_values(
            tracking_uri,
            run_id,
            params={"candidate": name, **result.params, **_lineage_params(data_reports)},
            metrics={"rmse": result.rmse, "mae": result.mae, "train_seconds": result.train_seconds},
            tags={"model_sha256": sha256},
        )
    log.info("%s: RMSE %.4f MAE %.4f (%.1fs)", name, result.rmse, result.mae, result.train_seconds)
    return {**result.to_dict(), "mlflow_run_id": run_id}


def evaluate_step(
    *,
    model_paths: Sequence[str],
    val_trips_path: str,
    tracking_uri: str,
    parent_run_id: str,
    model_name: str,
    min_improvement: float,
    report_path: str,
    winner_path: str,
    context: Mapping[str, str],
) -> dict[str, Any]:
    """Score all candidates and the champion on the validation month; copy the winner; write the report."""
    from components.duration_model import load_duration_model
    from components.evaluate import evaluate_candidates
    from components.ingest import read_clean_trips
    from components.registry import champion_model
    from components.report import render_evaluation_report

    validation_trips = read_clean_trips(val_trips_path)
    models = [load_duration_model(path, expected_sha256=None) for path in model_paths]
    with tempfile.TemporaryDirectory(prefix="taxi-mlops-champion-") as download_dir:
        champion_file = champion_model(tracking_uri, model_name, Path(download_dir))
        champion = champion_file.load() if champion_file else None
    evaluation, winner, predictions = evaluate_candidates(
        models,
        validation_trips,
        champion,
        champion_file.version if champion_file else None,
        min_improvement,
    )
    winner_source = model_paths[models.index(winner)]
    shutil.copyfile(winner_source, winner_path)
    summary = evaluation.to_dict()
    html = render_evaluation_report(
        summary, validation_trips["trip_duration_minutes"].to_numpy(), predictions, context
    )
    Path(report_path).write_text(html, encoding="utf-8")
    _log_evaluation(tracking_uri, parent_run_id, summary, html)
    log.info("winner %s; gate: %s", evaluation.winner, evaluation.gate.reason)
    return summary


def register_step(
    *,
    winner_path: str,
    evaluation: Mapping[str, Any],
    val_trips_path: str,
    tracking_uri: str,
    parent_run_id: str,
    model_name: str,
    model_store_uri: str = "",
) -> dict[str, Any]:
    """Register the winner when the gate passed; returns the run's summary (evaluation + registration).

    With ``model_store_uri`` the file goes to the model store (S3 credentials
    from the environment) before the version exists; empty means local mode.
    """
    from components import tracking
    from components.duration_model import load_duration_model
    from components.ingest import read_clean_trips
    from components.register import register_winner
    from components.tlc_source import S3Connection

    winner = load_duration_model(winner_path, expected_sha256=None)
    registration = register_winner(
        tracking_uri=tracking_uri,
        model_name=model_name,
        model_file=Path(winner_path),
        gate=evaluation["gate"],
        input_example=read_clean_trips(val_trips_path),
        run_id=str(winner.metadata.get("mlflow_run_id") or parent_run_id),
        version_tags={
            "candidate": winner.candidate,
            "rmse": f"{evaluation['gate']['challenger_rmse']:.6f}",
            "pipeline_run": parent_run_id,
        },
        model_store_uri=model_store_uri,
        s3=S3Connection.from_env() if model_store_uri else None,
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
    tracking.client_for(tracking_uri).log_text(parent_run_id, json.dumps(summary, indent=2), SUMMARY_ARTIFACT)
    log.info("registration: %s", registration.reason)
    return summary


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
        from serving.kserve_deploy import NAMESPACE, IsvcRef

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
    from components import tracking

    tracking.log_run_values(tracking_uri, parent_run_id, tags={DEPLOYMENT_TAG: message})
    log.info("deploy: %s", message)
    return message


def _lineage_params(data_reports: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    params: dict[str, str] = {}
    for report in data_reports:
        prefix = f"data.{report['color']}.{report['month']}"
        params[f"{prefix}.source"] = str(report["source"])
        params[f"{prefix}.sha256"] = str(report["sha256"])
        params[f"{prefix}.rows"] = str(report["rows_kept"])
    return params


def _log_evaluation(tracking_uri: str, run_id: str, summary: Mapping[str, Any], html: str) -> None:
    from components import tracking

    gate = summary["gate"]
    metrics = {f"{row['name']}_rmse": row["rmse"] for row in summary["candidates"]}
    metrics["winner_rmse"] = gate["challenger_rmse"]
    if gate["champion_rmse"] is not None:
        metrics["champion_rmse"] = gate["champion_rmse"]
    tracking.log_run_values(
        tracking_uri,
        run_id,
        metrics=metrics,
        tags={"winner": summary["winner"], "gate_passed": str(gate["passed"]), "gate_reason": gate["reason"]},
    )
    client = tracking.client_for(tracking_uri)
    client.log_text(run_id, html, "evaluation/report.html")
    client.log_text(run_id, json.dumps(summary, indent=2), "evaluation/summary.json")
