"""Small trained models for tests that need them: candidates fitted on the generated TLC months."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from components.data.ingest import load_month
from components.features.design_matrix import vectorize_trips
from components.models.duration_model import TripDurationModel
from components.models.train import CandidateResult, fit_candidate
from components.monitoring.reference_profile import ReferenceProfile, build_reference_profile
from serving.deployment_state import Revision
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


def ridge_revisions(root: Path) -> tuple[Revision, Revision]:
    """Two real ridge model files (alpha 1 and 50), saved under ``root``: versions 1 and 2."""
    data_dir = write_tlc_dir(root / "tlc")
    train_trips, _ = load_month("green", "2021-01", data_dir=data_dir)
    val_trips, _ = load_month("green", "2021-02", data_dir=data_dir)
    vectorizer, train, validation = vectorize_trips(train_trips, val_trips)
    revisions = []
    for version, alpha in (("1", 1.0), ("2", 50.0)):
        model, _ = fit_candidate("ridge", {"alpha": alpha}, vectorizer, train, validation)
        folder = root / f"v{version}"
        revisions.append(Revision(version, str(folder), model.save(folder / "trip_duration_model.zip")))
    return revisions[0], revisions[1]


def profiled_ridge(tlc_dir: Path) -> tuple[TripDurationModel, ReferenceProfile, pd.DataFrame]:
    """Ridge on 6,000-trip generated months, its reference profile, and the cleaned validation trips."""
    data_dir = write_tlc_dir(tlc_dir, rows=6000)
    train_trips, _ = load_month("green", "2021-01", data_dir=data_dir)
    val_trips, _ = load_month("green", "2021-02", data_dir=data_dir)
    vectorizer, train, validation = vectorize_trips(train_trips, val_trips)
    model, _ = fit_candidate("ridge", None, vectorizer, train, validation)
    return model, build_reference_profile(model, train_trips, val_trips), val_trips


def client_records(trips: pd.DataFrame, n: int = 20) -> list[dict[str, Any]]:
    """The first ``n`` cleaned trips as a client sends them: integer zone ids, float miles."""
    head = trips.head(n)
    return [
        {"PULocationID": int(pu), "DOLocationID": int(do), "trip_distance": float(d)}
        for pu, do, d in zip(head["PULocationID"], head["DOLocationID"], head["trip_distance"], strict=True)
    ]
