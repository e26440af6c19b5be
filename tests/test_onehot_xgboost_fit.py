"""The xgboost candidate's fast fit: through categorical splits, yet the very model a one-hot fit gives."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from components.features.design_matrix import DesignMatrix
from components.features.trip_features import trip_features
from components.features.vectorizer import TripVectorizer
from components.models.candidates import build_estimator
from components.models.onehot_xgboost_fit import fit_onehot_xgboost
from components.models.train import fit_candidate

# Deep trees on few rows: many one-vs-rest splits on single pairs, as on the real month.
PARAMS = {"n_estimators": 25, "max_depth": 12, "n_jobs": 1}


def _trips(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    pickup = rng.integers(1, 30, size=n)
    dropoff = rng.integers(1, 30, size=n)
    distance = np.round(rng.uniform(0.0, 12.0, size=n), 2)
    pace = 2.0 + (pickup * 7 + dropoff * 3) % 5
    minutes = distance * pace + rng.normal(0, 1.0, size=n)
    return pd.DataFrame(
        {"PULocationID": pickup, "DOLocationID": dropoff, "trip_distance": distance, "minutes": minutes}
    )


@pytest.fixture(scope="module")
def data() -> tuple[list[str], sp.csr_matrix, np.ndarray, sp.csr_matrix]:
    train, validation = _trips(4000, seed=1), _trips(1500, seed=2)
    vectorizer = TripVectorizer()
    X = vectorizer.fit_transform(trip_features(train))
    # Validation pairs never seen in training have no one-hot entry (a missing value for XGBoost).
    X_val = vectorizer.transform(trip_features(validation))
    assert (np.diff(X_val.indptr) < 2).any()
    return list(vectorizer.get_feature_names_out()), X, train["minutes"].to_numpy(), X_val


def test_the_fast_fit_is_the_one_hot_fit(data):
    names, X, y, X_val = data
    direct = build_estimator("xgboost", PARAMS).fit(X, y)
    fast = fit_onehot_xgboost(build_estimator("xgboost", PARAMS), X, y, names)
    # Bit for bit, on training rows, validation rows and rows with an unseen pair.
    np.testing.assert_array_equal(fast.predict(X), direct.predict(X))
    np.testing.assert_array_equal(fast.predict(X_val), direct.predict(X_val))
    assert type(fast) is type(direct) and fast.n_features_in_ == X.shape[1]
    assert fast.get_params().keys() == direct.get_params().keys()
    assert fast.get_params()["n_estimators"] == PARAMS["n_estimators"]


def test_training_the_candidate_gives_the_one_hot_model(data, monkeypatch):
    names, X, y, X_val = data
    calls: list[int] = []

    def spy(*args):
        calls.append(1)
        return fit_onehot_xgboost(*args)

    monkeypatch.setattr("components.models.onehot_xgboost_fit.fit_onehot_xgboost", spy)
    vectorizer = TripVectorizer().fit(trip_features(_trips(4000, seed=1)))
    assert list(vectorizer.get_feature_names_out()) == names
    train, validation = DesignMatrix(X, y), DesignMatrix(X_val, np.zeros(X_val.shape[0]))
    model, result = fit_candidate("xgboost", PARAMS, vectorizer, train, validation)
    direct = build_estimator("xgboost", PARAMS).fit(X, y)
    np.testing.assert_array_equal(model.predict_matrix(X_val), direct.predict(X_val))
    assert result.params["n_estimators"] == PARAMS["n_estimators"]
    assert calls == [1]  # through the categorical fit


@pytest.mark.parametrize("override", [{"colsample_bytree": 0.5}, {"tree_method": "exact"}, {"missing": 0.0}])
def test_settings_that_act_per_column_fit_directly(data, override):
    names, X, y, _ = data
    params = {**PARAMS, **override}
    direct = build_estimator("xgboost", params).fit(X, y)
    fast = fit_onehot_xgboost(build_estimator("xgboost", params), X, y, names)
    np.testing.assert_array_equal(fast.predict(X), direct.predict(X))


def test_a_matrix_that_is_not_one_hot_fits_directly():
    X = sp.random(80, 4, density=0.5, format="csr", random_state=1, dtype=np.float64)
    y = np.asarray(X.sum(axis=1)).ravel()
    names = ["PU_DO=1_2", "PU_DO=1_3", "PU_DO=7_7", "trip_distance"]
    direct = build_estimator("xgboost", PARAMS).fit(X, y)
    fast = fit_onehot_xgboost(build_estimator("xgboost", PARAMS), X, y, names)
    np.testing.assert_array_equal(fast.predict(X), direct.predict(X))
