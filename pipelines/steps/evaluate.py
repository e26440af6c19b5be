"""Evaluate step: score every candidate and the champion, pick the winner, gate it, write the report."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from components.data.ingest import read_clean_trips
from components.evaluation.evaluate import evaluate_candidates
from components.evaluation.report import render_evaluation_report
from components.features.trip_features import TARGET_COLUMN
from components.models.duration_model import load_duration_model
from components.registry import tracking
from components.registry.versions import champion_model
from components.storage.atomic_write import write_atomically
from pipelines.steps.notes import log
from pipelines.steps.task_process import task_step


@task_step
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
    html = render_evaluation_report(summary, validation_trips[TARGET_COLUMN].to_numpy(), predictions, context)
    write_atomically(report_path, html)
    _log_evaluation(tracking_uri, parent_run_id, summary, html)
    log.info("winner %s; gate: %s", evaluation.winner, evaluation.gate.reason)
    return summary


def _log_evaluation(tracking_uri: str, run_id: str, summary: Mapping[str, Any], html: str) -> None:
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
