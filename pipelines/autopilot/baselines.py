"""The two baselines the replay measures the loop against, on the same trips the loop served.

* **never retrain** -- the first model, forever: the very file the stack served first;
* **scheduled** -- the usual practice: at each month's start, a model trained on the
  previous month (the same recipe as the first model: :func:`month_recipe`), deployed
  whatever its score.

A baseline model is fitted here with the pipeline's own parts (vectorizer, candidates,
the lowest validation RMSE wins), without a registry: it is a yardstick, never served.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from components.data.event_window import EventWindow
from components.data.window_ingest import load_window
from components.features.design_matrix import vectorize_trips
from components.models.candidates import DEFAULT_CANDIDATES
from components.models.duration_model import TripDurationModel
from components.models.train import fit_candidate


@dataclass(frozen=True)
class MonthRecipe:
    """How a model is trained from one whole month: all but its last days, validated on those."""

    train: EventWindow
    holdout: EventWindow


def month_recipe(month: str, holdout_days: float) -> MonthRecipe:
    start = pd.Timestamp(f"{month}-01")
    end = start + pd.offsets.MonthBegin(1)
    cut = end - timedelta(days=holdout_days)
    return MonthRecipe(
        EventWindow.from_bounds(start.isoformat(), cut.isoformat(), "train_window"),
        EventWindow.from_bounds(cut.isoformat(), end.isoformat(), "holdout_window"),
    )


def fit_baseline(
    color: str,
    recipe: MonthRecipe,
    data_dir: Path,
    candidates: Sequence[Mapping[str, Any]] | None = None,
) -> tuple[TripDurationModel, dict[str, Any]]:
    """The candidate with the lowest held-out RMSE, trained on ``recipe.train``; and what it scored."""
    train, _ = load_window(color, recipe.train, data_dir=data_dir, what="baseline training window")
    holdout, _ = load_window(color, recipe.holdout, data_dir=data_dir, what="baseline holdout window")
    vectorizer, train_matrix, holdout_matrix = vectorize_trips(train, holdout)
    chosen = candidates or [{"name": name, "params": {}} for name in DEFAULT_CANDIDATES]
    best: tuple[TripDurationModel, Any] | None = None
    for candidate in chosen:
        model, result = fit_candidate(
            candidate["name"], candidate.get("params") or None, vectorizer, train_matrix, holdout_matrix
        )
        if best is None or result.rmse < best[1].rmse:
            best = (model, result)
    assert best is not None
    model, result = best
    return model, {"candidate": result.name, "holdout_rmse": result.rmse, "train_rows": len(train)}
