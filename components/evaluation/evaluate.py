"""Pick the winner among the candidates and gate it against the production champion.

Every model, the champion included, is scored by the same code on the same
cleaned validation trips, through the same raw-fields ``predict`` that serving
uses, so the comparison is apples to apples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from components.evaluation.gate import GateDecision, gate_against_champion
from components.features.trip_features import TARGET_COLUMN
from components.models.duration_model import TripDurationModel
from components.models.metrics import regression_metrics


@dataclass(frozen=True)
class CandidateScore:
    name: str
    rmse: float
    mae: float
    train_seconds: float
    params: dict[str, Any] = field(default_factory=dict)
    mlflow_run_id: str = ""


@dataclass(frozen=True)
class Evaluation:
    candidates: list[CandidateScore]
    winner: str
    gate: GateDecision

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidates": [asdict(score) for score in self.candidates],
            "winner": self.winner,
            "gate": asdict(self.gate),
        }


def score_model(model: TripDurationModel, trips: pd.DataFrame) -> tuple[dict[str, float], np.ndarray]:
    """RMSE/MAE of ``model`` on cleaned ``trips`` and its predictions."""
    predictions = model.predict(trips)
    return regression_metrics(trips[TARGET_COLUMN].to_numpy(), predictions), predictions


def evaluate_candidates(
    models: Sequence[TripDurationModel],
    validation_trips: pd.DataFrame,
    champion: TripDurationModel | None,
    champion_version: str | None,
    min_improvement: float,
) -> tuple[Evaluation, TripDurationModel, np.ndarray]:
    """Score every candidate, pick the lowest RMSE, gate it; returns the winner and its predictions."""
    if not models:
        raise ValueError("no candidate models to evaluate")
    scored: list[tuple[CandidateScore, TripDurationModel, np.ndarray]] = []
    for model in models:
        metrics, predictions = score_model(model, validation_trips)
        score = CandidateScore(
            name=model.candidate,
            rmse=metrics["rmse"],
            mae=metrics["mae"],
            train_seconds=float(model.metadata.get("train_seconds", 0.0)),
            params=model.params,
            mlflow_run_id=str(model.metadata.get("mlflow_run_id", "")),
        )
        scored.append((score, model, predictions))
    # Lowest RMSE wins; the name breaks exact ties so reruns pick the same winner.
    scored.sort(key=lambda item: (item[0].rmse, item[0].name))
    best_score, best_model, best_predictions = scored[0]
    champion_rmse = None
    if champion is not None:
        champion_rmse = score_model(champion, validation_trips)[0]["rmse"]
    gate = gate_against_champion(
        best_score.name, best_score.rmse, champion_rmse, champion_version, min_improvement
    )
    evaluation = Evaluation([item[0] for item in scored], best_score.name, gate)
    return evaluation, best_model, best_predictions
