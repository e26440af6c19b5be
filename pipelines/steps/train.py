"""Train step: fit one candidate in its own nested MLflow run and save its model file."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from components.features.design_matrix import load_design_matrix, load_vectorizer
from components.models.train import fit_candidate
from components.registry import tracking
from pipelines.steps.notes import log
from pipelines.steps.task_process import task_step


@task_step
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


def _lineage_params(data_reports: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    # Counts come back from KFP's artifact metadata as floats (a protobuf Struct's numbers): 61920.0.
    params: dict[str, str] = {}
    for report in data_reports:
        files = [report]
        if "files" in report:  # a window of event time (components.data.window_ingest): its span and rows
            side = report.get("side", "window")
            params[f"data.{side}.window"] = f"{report['start']}/{report['end']}"
            params[f"data.{side}.rows"] = str(int(report["rows_kept"]))
            files = report["files"]
        for file in files:
            prefix = f"data.{file['color']}.{file['month']}"
            params[f"{prefix}.source"] = str(file["source"])
            params[f"{prefix}.sha256"] = str(file["sha256"])
            if file is report:  # a whole month; a window's rows per file may share a file with the other side
                params[f"{prefix}.rows"] = str(int(report["rows_kept"]))
    return params
