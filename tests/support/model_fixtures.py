"""A small trained model for tests that need one: a candidate fitted on the generated TLC months."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from components.data.ingest import load_month
from components.features.design_matrix import vectorize_trips
from components.models.duration_model import TripDurationModel
from components.models.train import CandidateResult, fit_candidate
from support.tlc_fixtures import write_tlc_dir


def fit_fixture_model(
    tlc_dir: Path, name: str = "ridge", params: dict[str, Any] | None = None
) -> tuple[TripDurationModel, CandidateResult, pd.DataFrame]:
    """``name`` trained on generated green 2021-01 and validated on 2021-02 (files written to ``tlc_dir``).

    Returns the model, its training result and the cleaned validation trips.
    """
    data_dir = write_tlc_dir(tlc_dir)
    train, _ = load_month("green", "2021-01", data_dir=data_dir)
    validation, _ = load_month("green", "2021-02", data_dir=data_dir)
    vectorizer, x_train, x_val = vectorize_trips(train, validation)
    model, result = fit_candidate(name, params or {}, vectorizer, x_train, x_val)
    return model, result, validation
