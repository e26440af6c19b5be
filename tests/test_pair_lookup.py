"""The serving lookup gives the model's own predictions, bit for bit, or refuses to exist."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from support.tlc_fixtures import write_tlc_dir

from components.data.ingest import load_month
from components.features.design_matrix import vectorize_trips
from components.models.candidates import CANDIDATES
from components.models.duration_model import TripDurationModel
from components.models.target_encoded_xgboost import TargetEncodedXGBoost
from components.models.train import fit_candidate
from serving.pair_lookup import EncodingEstimator, PairLookup, PairLookupError

# Small boosted models keep each fit well under a second.
SMALL = {"n_estimators": 20, "max_depth": 6, "n_jobs": 1}
MIN_ID, MAX_ID = 1, 265


def _fit_all(data_dir: Path, month_train: str, month_val: str) -> tuple[dict[str, TripDurationModel], Any]:
    train_trips, _ = load_month("green", month_train, data_dir=data_dir)
    val_trips, _ = load_month("green", month_val, data_dir=data_dir)
    vectorizer, train, validation = vectorize_trips(train_trips, val_trips)
    models = {}
    for name in sorted(CANDIDATES):
        overrides = {k: v for k, v in SMALL.items() if k in CANDIDATES[name].defaults}
        models[name], _ = fit_candidate(name, overrides, vectorizer, train, validation)
    return models, val_trips


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, TripDurationModel], pd.DataFrame]:
    return _fit_all(write_tlc_dir(tmp_path_factory.mktemp("tlc")), "2021-01", "2021-02")


def _ids(trips: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (
        trips["PULocationID"].astype("int64").to_numpy(),
        trips["DOLocationID"].astype("int64").to_numpy(),
        trips["trip_distance"].to_numpy(dtype=np.float64),
    )


@pytest.mark.parametrize("name", sorted(CANDIDATES))
def test_lookup_equals_model_predict_on_every_validation_trip(name: str, fitted):
    models, val_trips = fitted
    model = models[name]
    lookup = PairLookup.build(model, MIN_ID, MAX_ID)
    pu, do, distance = _ids(val_trips)
    assert lookup.covers(pu, do)
    np.testing.assert_array_equal(lookup.predict(pu, do, distance), model.predict(val_trips))
    # One trip at a time, as a served request carries it.
    for row in range(0, len(pu), 37):
        one = slice(row, row + 1)
        assert lookup.predict(pu[one], do[one], distance[one])[0] == model.predict(val_trips.iloc[one])[0]


def test_encoding_estimators_are_tabled_as_encoded_rows(fitted):
    models, _ = fitted
    booster = models["target_encoded_xgboost"]
    assert isinstance(booster.estimator, TargetEncodedXGBoost)
    assert isinstance(booster.estimator, EncodingEstimator)
    lookup = PairLookup.build(booster, MIN_ID, MAX_ID)
    assert lookup.encoded is not None and lookup.encoded.shape[0] == (MAX_ID - MIN_ID + 1) ** 2
    linear = PairLookup.build(models["linear_regression"], MIN_ID, MAX_ID)
    assert linear.encoded is None  # the design-matrix rows serve it


def test_lookup_does_not_change_its_table_between_requests(fitted):
    models, _ = fitted
    for name in ("linear_regression", "target_encoded_xgboost"):
        lookup = PairLookup.build(models[name], MIN_ID, MAX_ID)
        rows_before = lookup.rows.data.copy()
        encoded_before = None if lookup.encoded is None else lookup.encoded.copy()
        lookup.predict(np.array([130, 7]), np.array([205, 7]), np.array([3.66, 0.0]))
        np.testing.assert_array_equal(lookup.rows.data, rows_before)
        if encoded_before is not None:
            np.testing.assert_array_equal(lookup.encoded, encoded_before)


def test_covers_only_the_built_range(fitted):
    models, _ = fitted
    lookup = PairLookup.build(models["ridge"], 10, 20)
    assert lookup.covers(np.array([10, 20]), np.array([15, 10]))
    assert not lookup.covers(np.array([9]), np.array([15]))
    assert not lookup.covers(np.array([15]), np.array([21]))
    assert not lookup.covers(np.array([], dtype=np.int64), np.array([], dtype=np.int64))


class _DistanceLeaksIntoEncoding(TargetEncodedXGBoost):
    """An encoder whose first column depends on distance: its rows cannot be tabled per pair."""

    def encode(self, X: Any) -> np.ndarray:
        encoded = super().encode(X)
        encoded[:, 0] += encoded[:, -1]
        return encoded


class _PredictDisagreesWithEncoding(TargetEncodedXGBoost):
    """predict() is not predict_encoded(encode()): a table built from the encoding would lie."""

    def predict(self, X: Any) -> np.ndarray:
        return super().predict(X) + 1e-9


@pytest.mark.parametrize("estimator_type", [_DistanceLeaksIntoEncoding, _PredictDisagreesWithEncoding])
def test_a_lookup_that_would_differ_from_the_model_is_refused(estimator_type, fitted):
    models, _ = fitted
    original = models["target_encoded_xgboost"]
    broken = estimator_type(**original.estimator.get_params())
    broken.__dict__.update({k: v for k, v in original.estimator.__dict__.items() if k.endswith("_")})
    model = TripDurationModel(
        candidate=original.candidate,
        vectorizer=original.vectorizer,
        estimator=broken,
        codec=original.codec,
    )
    with pytest.raises(PairLookupError):
        PairLookup.build(model, MIN_ID, MAX_ID)


@pytest.mark.real_data
def test_lookup_equals_model_predict_on_a_real_month(shared_tlc_dir: Path):
    models, val_trips = _fit_all(shared_tlc_dir, "2021-01", "2021-02")
    for name in ("linear_regression", "target_encoded_xgboost"):
        lookup = PairLookup.build(models[name], MIN_ID, MAX_ID)
        pu, do, distance = _ids(val_trips)
        np.testing.assert_array_equal(lookup.predict(pu, do, distance), models[name].predict(val_trips))
