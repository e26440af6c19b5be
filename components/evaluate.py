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

from components.duration_model import TripDurationModel
from components.metrics import regression_metrics

TARGET_COLUMN = "trip_duration_minutes"


@dataclass(frozen=True)
class CandidateScore:
    name: str
    rmse: float
    mae: float
    train_seconds: float
    params: dict[str, Any] = field(default_factory=dict)
    mlflow_run_id: str = ""


@dataclass(frozen=True)
class GateDecision:
    """Whether the winner may replace the champion, and why."""

    passed: bool
    reason: str
    challenger: str
    challenger_rmse: float
    champion_rmse: float | None
    champion_version: str | None
    min_improvement: float


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


def gate_against_champion(
    challenger: str,
    challenger_rmse: float,
    champion_rmse: float | None,
    champion_version: str | None,
    min_improvement: float,
) -> GateDecision:
    """Pass when there is no champion, or the challenger's RMSE is lower by the relative margin.

    ``min_improvement`` is a fraction of the champion's RMSE (0.01 = 1% lower);
    the comparison is strict, so an equally good model never replaces the champion.
    """
    if not 0.0 <= min_improvement < 1.0:
        raise ValueError(f"gate margin min_improvement must be in [0, 1), got {min_improvement}")
    if champion_rmse is None:
        return GateDecision(
            True,
            f"no champion yet: {challenger} (RMSE {challenger_rmse:.4f}) becomes the first champion",
            challenger,
            challenger_rmse,
            None,
            None,
            min_improvement,
        )
    threshold = champion_rmse * (1.0 - min_improvement)
    passed = challenger_rmse < threshold
    verdict = "beats" if passed else "does not beat"
    reason = (
        f"{challenger} RMSE {challenger_rmse:.4f} {verdict} champion v{champion_version} "
        f"RMSE {champion_rmse:.4f} by the required {min_improvement:.1%} "
        f"(needs < {threshold:.4f})"
    )
    return GateDecision(
        passed, reason, challenger, challenger_rmse, champion_rmse, champion_version, min_improvement
    )


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
