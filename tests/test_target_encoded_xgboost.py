"""The target-encoding booster: category layout, leakage-free training encodings, persistence."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from components.features.trip_features import trip_features
from components.features.vectorizer import TripVectorizer
from components.models.onehot_layout import OneHotLayout
from components.models.target_encoded_xgboost import (
    TargetEncodedXGBoost,
    dump_target_encoded_xgboost,
    load_target_encoded_xgboost,
)


def _trips(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    pickup = rng.integers(1, 6, size=n)
    dropoff = rng.integers(1, 6, size=n)
    distance = rng.uniform(0.5, 10.0, size=n)
    # Each pair has its own pace (minutes per mile), so the pair carries real signal.
    pace = 2.0 + (pickup * 7 + dropoff * 3) % 5
    minutes = distance * pace + rng.normal(0, 1.0, size=n)
    return pd.DataFrame(
        {"PULocationID": pickup, "DOLocationID": dropoff, "trip_distance": distance, "minutes": minutes}
    )


@pytest.fixture(scope="module")
def fitted() -> tuple[TargetEncodedXGBoost, TripVectorizer, pd.DataFrame]:
    train = _trips(3000, seed=1)
    vectorizer = TripVectorizer()
    matrix = vectorizer.fit_transform(trip_features(train))
    model = TargetEncodedXGBoost(
        feature_names=list(vectorizer.get_feature_names_out()), n_estimators=80, n_jobs=1
    ).fit(matrix, train["minutes"])
    return model, vectorizer, train


def test_layout_groups_one_hot_columns_by_prefix():
    layout = OneHotLayout.from_feature_names(["PU_DO=1_2", "PU_DO=1_3", "color=red", "trip_distance"])
    assert layout.group_names == ["PU_DO", "color"]
    assert layout.group_sizes == [2, 1]
    assert layout.group_of_column.tolist() == [0, 0, 1, -1]
    assert layout.level_of_column.tolist() == [0, 1, 0, -1]
    assert layout.numeric_columns.tolist() == [3]


def test_learns_pair_paces_far_better_than_the_mean(fitted):
    model, vectorizer, _ = fitted
    test = _trips(1000, seed=2)
    predictions = model.predict(vectorizer.transform(trip_features(test)))
    rmse = float(np.sqrt(np.mean((predictions - test["minutes"]) ** 2)))
    baseline = float(test["minutes"].std())
    assert rmse < 0.2 * baseline


def test_training_rows_never_see_their_own_target():
    # A pair seen exactly once: out of fold, its own row must get the prior, not its own duration.
    train = _trips(400, seed=3)
    lonely = pd.DataFrame(
        {"PULocationID": [200], "DOLocationID": [201], "trip_distance": [1.0], "minutes": [500.0]}
    )
    train = pd.concat([train, lonely], ignore_index=True)
    vectorizer = TripVectorizer()
    matrix = vectorizer.fit_transform(trip_features(train))
    model = TargetEncodedXGBoost(feature_names=list(vectorizer.get_feature_names_out()), n_jobs=1)
    layout = model._layout()
    from components.models.target_encoded_xgboost import _numeric_block, _row_levels

    model.prior_ = float(train["minutes"].mean())
    numeric = _numeric_block(matrix, layout)
    model.numeric_prior_ = numeric.mean(axis=0)
    model.rate_prior_ = np.ones(numeric.shape[1])
    encoded = model._encode_out_of_fold(
        _row_levels(matrix, layout), numeric, train["minutes"].to_numpy(), layout
    )
    assert encoded[-1, 0] == pytest.approx(model.prior_)  # smoothed mean of a never-seen level
    assert encoded[-1, 1] == 0.0  # count in the other folds


def test_unseen_pairs_fall_back_to_the_prior(fitted):
    model, vectorizer, train = fitted
    unseen = pd.DataFrame({"PULocationID": [250], "DOLocationID": [251], "trip_distance": [3.0]})
    prediction = model.predict(vectorizer.transform(trip_features(unseen)))
    assert np.isfinite(prediction).all()
    assert train["minutes"].min() <= prediction[0] <= train["minutes"].max()


def test_persistence_round_trip_is_data_only(fitted):
    model, vectorizer, _ = fitted
    payload = dump_target_encoded_xgboost(model)
    assert payload[:2] == b"PK"  # an .npz (zip of .npy arrays); loading uses allow_pickle=False
    restored = load_target_encoded_xgboost(payload)
    matrix = vectorizer.transform(trip_features(_trips(200, seed=4)))
    np.testing.assert_allclose(restored.predict(matrix), model.predict(matrix))
    assert restored.get_params()["smoothing"] == model.smoothing


def test_needs_feature_names():
    with pytest.raises(ValueError, match="feature_names"):
        TargetEncodedXGBoost().fit(np.zeros((2, 1)), [1.0, 2.0])
