"""Picking the winner, gating it against the champion, and the metrics both rely on."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.dummy import DummyRegressor
from sklearn.linear_model import LinearRegression
from sklearn.metrics import mean_absolute_error, root_mean_squared_error

from components.evaluation.evaluate import Evaluation, evaluate_candidates, score_model
from components.evaluation.gate import gate_against_champion
from components.features.trip_features import TARGET_COLUMN, trip_features
from components.features.vectorizer import TripVectorizer
from components.models.duration_model import TripDurationModel
from components.models.metrics import regression_metrics


def make_trips(n: int, seed: int) -> pd.DataFrame:
    """Cleaned trips (string zone ids, as the clean step writes them) with a learnable duration."""
    rng = np.random.default_rng(seed)
    distance = rng.gamma(2.0, 1.5, n)
    return pd.DataFrame(
        {
            "PULocationID": rng.integers(1, 20, n).astype(str),
            "DOLocationID": rng.integers(1, 20, n).astype(str),
            "trip_distance": distance,
            TARGET_COLUMN: 4.0 + 3.5 * distance + rng.normal(0.0, 1.5, n),
        }
    )


@pytest.fixture(scope="module")
def train_trips() -> pd.DataFrame:
    return make_trips(400, seed=11)


@pytest.fixture(scope="module")
def val_trips() -> pd.DataFrame:
    return make_trips(150, seed=12)


@pytest.fixture(scope="module")
def vectorizer(train_trips: pd.DataFrame) -> TripVectorizer:
    return TripVectorizer().fit(trip_features(train_trips))


def constant_model(name: str, value: float, vectorizer: TripVectorizer, **metadata) -> TripDurationModel:
    """A model that predicts ``value`` minutes for every trip: its RMSE is easy to compute by hand."""
    X = vectorizer.transform(trip_features(make_trips(5, seed=0)))
    estimator = DummyRegressor(strategy="constant", constant=value).fit(X, np.zeros(5))
    return TripDurationModel(
        name, vectorizer, estimator, "skops", params={"constant": value}, metadata=dict(metadata)
    )


def linear_model(name: str, trips: pd.DataFrame) -> TripDurationModel:
    """A real fitted model with its own vectorizer (fit on ``trips``)."""
    own = TripVectorizer()
    X = own.fit_transform(trip_features(trips))
    estimator = LinearRegression().fit(X, trips[TARGET_COLUMN].to_numpy())
    return TripDurationModel(name, own, estimator, "skops")


# ---------------------------------------------------------------- the gate


def test_no_champion_passes():
    gate = gate_against_champion("ridge", 6.25, None, None, 0.05)
    assert gate.passed
    assert gate.champion_rmse is None and gate.champion_version is None
    assert (gate.challenger, gate.challenger_rmse, gate.min_improvement) == ("ridge", 6.25, 0.05)
    assert "no champion" in gate.reason
    assert "ridge" in gate.reason and "6.2500" in gate.reason


@pytest.mark.parametrize("margin", [0.0, 0.01, 0.1, 0.5])
def test_strict_improvement_by_the_margin_passes(margin: float):
    champion_rmse = 8.0
    threshold = champion_rmse * (1.0 - margin)
    just_better = np.nextafter(threshold, 0.0)
    gate = gate_against_champion("xgboost", just_better, champion_rmse, "3", margin)
    assert gate.passed, gate.reason
    assert "beats champion v3" in gate.reason
    assert (gate.champion_rmse, gate.champion_version) == (champion_rmse, "3")


@pytest.mark.parametrize(
    ("challenger_rmse", "champion_rmse", "margin"),
    [
        (7.1234, 7.1234, 0.0),  # equal: an equally good model never replaces the champion
        (7.1234, 7.1234, 0.01),
        (7.9, 8.0, 0.05),  # better, but not by 5%
        (7.6, 8.0, 0.05),  # exactly on the threshold
        (9.0, 8.0, 0.0),  # worse
    ],
)
def test_not_beating_the_threshold_fails_and_says_why(
    challenger_rmse: float, champion_rmse: float, margin: float
):
    gate = gate_against_champion("lasso", challenger_rmse, champion_rmse, "2", margin)
    assert not gate.passed
    threshold = champion_rmse * (1.0 - margin)
    assert "does not beat" in gate.reason
    assert f"lasso RMSE {challenger_rmse:.4f}" in gate.reason
    assert f"v2 RMSE {champion_rmse:.4f}" in gate.reason
    assert f"needs < {threshold:.4f}" in gate.reason
    assert f"{margin:.1%}" in gate.reason


@pytest.mark.parametrize("margin", [-0.01, 1.0, 1.5, math.nan, math.inf])
def test_margin_outside_zero_one_raises(margin: float):
    with pytest.raises(ValueError, match="min_improvement"):
        gate_against_champion("ridge", 1.0, 2.0, "1", margin)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        gate_against_champion("ridge", 1.0, None, None, margin)


def test_margin_bounds_that_are_allowed():
    assert gate_against_champion("ridge", 1.0, 2.0, "1", 0.0).passed
    assert not gate_against_champion("ridge", 1.0, 2.0, "1", 0.99).passed
    assert gate_against_champion("ridge", 0.01, 2.0, "1", 0.99).passed


# ------------------------------------------------------- picking the winner


def test_evaluate_candidates_picks_the_lowest_rmse(vectorizer, val_trips):
    y = val_trips[TARGET_COLUMN].to_numpy()
    mean = float(y.mean())
    models = [
        constant_model("too_high", mean + 5.0, vectorizer, train_seconds=1.5, mlflow_run_id="run-a"),
        constant_model("the_mean", mean, vectorizer, train_seconds=0.25, mlflow_run_id="run-b"),
        constant_model("too_low", mean - 2.0, vectorizer),
    ]
    evaluation, winner, predictions = evaluate_candidates(models, val_trips, None, None, 0.01)

    assert evaluation.winner == "the_mean"
    assert winner is models[1]
    np.testing.assert_array_equal(predictions, np.full(len(y), mean))
    assert [score.name for score in evaluation.candidates] == ["the_mean", "too_low", "too_high"]
    for score, model in zip(evaluation.candidates, [models[1], models[2], models[0]], strict=True):
        constant = model.params["constant"]
        assert score.rmse == pytest.approx(root_mean_squared_error(y, np.full(len(y), constant)), rel=1e-12)
        assert score.mae == pytest.approx(mean_absolute_error(y, np.full(len(y), constant)), rel=1e-12)
        assert score.params == {"constant": constant}
    best = evaluation.candidates[0]
    assert (best.train_seconds, best.mlflow_run_id) == (0.25, "run-b")
    assert (evaluation.candidates[1].train_seconds, evaluation.candidates[1].mlflow_run_id) == (0.0, "")
    assert evaluation.gate.passed and evaluation.gate.challenger == "the_mean"
    assert evaluation.gate.challenger_rmse == best.rmse


def test_real_model_beats_a_constant_and_is_scored_through_raw_fields(vectorizer, train_trips, val_trips):
    fitted = linear_model("linear", train_trips)
    constant = constant_model("constant", float(train_trips[TARGET_COLUMN].mean()), vectorizer)
    evaluation, winner, predictions = evaluate_candidates([constant, fitted], val_trips, None, None, 0.0)
    assert winner is fitted
    expected = fitted.predict(val_trips)
    np.testing.assert_array_equal(predictions, expected)
    y = val_trips[TARGET_COLUMN].to_numpy()
    assert evaluation.candidates[0].rmse == pytest.approx(root_mean_squared_error(y, expected), rel=1e-12)


@pytest.mark.parametrize("order", [("b_model", "a_model"), ("a_model", "b_model")])
def test_exact_rmse_ties_are_broken_by_name(order: tuple[str, str], vectorizer, val_trips):
    models = [constant_model(name, 12.0, vectorizer) for name in order]
    evaluation, winner, _ = evaluate_candidates(models, val_trips, None, None, 0.0)
    assert evaluation.winner == "a_model"
    assert winner.candidate == "a_model"
    assert [score.name for score in evaluation.candidates] == ["a_model", "b_model"]


def test_champion_is_scored_on_the_same_trips(vectorizer, train_trips, val_trips):
    y = val_trips[TARGET_COLUMN].to_numpy()
    # The champion was trained another month: it has its own vectorizer, and only raw fields are shared.
    champion = linear_model("champion", make_trips(300, seed=99))
    candidate = constant_model("constant", float(y.mean()), vectorizer)
    evaluation, _, _ = evaluate_candidates([candidate], val_trips, champion, "7", 0.01)
    gate = evaluation.gate
    champion_rmse = root_mean_squared_error(y, champion.predict(val_trips))
    assert gate.champion_rmse == pytest.approx(champion_rmse, rel=1e-12)
    assert gate.champion_version == "7"
    assert gate.champion_rmse < gate.challenger_rmse
    assert not gate.passed
    assert "v7" in gate.reason


def test_champion_that_is_worse_lets_the_winner_pass(vectorizer, train_trips, val_trips):
    y = val_trips[TARGET_COLUMN].to_numpy()
    champion = constant_model("old", float(y.mean()) + 10.0, vectorizer)
    evaluation, _, _ = evaluate_candidates(
        [linear_model("linear", train_trips)], val_trips, champion, "1", 0.05
    )
    assert evaluation.gate.passed, evaluation.gate.reason
    assert evaluation.gate.champion_rmse == pytest.approx(
        root_mean_squared_error(y, np.full(len(y), y.mean() + 10))
    )


def test_evaluation_to_dict_is_json_ready(vectorizer, val_trips):
    models = [constant_model("a", 10.0, vectorizer), constant_model("b", 20.0, vectorizer)]
    evaluation, _, _ = evaluate_candidates(models, val_trips, None, None, 0.02)
    assert isinstance(evaluation, Evaluation)
    summary = json.loads(json.dumps(evaluation.to_dict()))
    assert summary["winner"] == evaluation.winner
    assert [row["name"] for row in summary["candidates"]] == [s.name for s in evaluation.candidates]
    assert summary["gate"]["passed"] is True
    assert summary["gate"]["min_improvement"] == 0.02


def test_no_models_is_an_error(val_trips):
    with pytest.raises(ValueError, match="no candidate models"):
        evaluate_candidates([], val_trips, None, None, 0.0)


def test_score_model_uses_the_target_column(vectorizer, val_trips):
    model = constant_model("c", 3.0, vectorizer)
    metrics, predictions = score_model(model, val_trips)
    y = val_trips[TARGET_COLUMN].to_numpy()
    assert metrics["rmse"] == pytest.approx(root_mean_squared_error(y, predictions))
    with pytest.raises(KeyError):
        score_model(model, val_trips.drop(columns=[TARGET_COLUMN]))


# ------------------------------------------------------------------ metrics


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_regression_metrics_match_sklearn(seed: int):
    rng = np.random.default_rng(seed)
    y_true = rng.gamma(3.0, 4.0, 500)
    y_pred = y_true + rng.normal(0.0, 2.0 + seed, 500)
    metrics = regression_metrics(y_true, y_pred)
    assert set(metrics) == {"rmse", "mae"}
    assert metrics["rmse"] == pytest.approx(root_mean_squared_error(y_true, y_pred), rel=1e-12)
    assert metrics["mae"] == pytest.approx(mean_absolute_error(y_true, y_pred), rel=1e-12)
    assert all(type(value) is float for value in metrics.values())


def test_regression_metrics_accept_lists_and_ints():
    metrics = regression_metrics([1, 2, 3, 4], [2, 2, 5, 0])
    assert metrics["rmse"] == pytest.approx(root_mean_squared_error([1, 2, 3, 4], [2, 2, 5, 0]))
    assert metrics["mae"] == pytest.approx(mean_absolute_error([1, 2, 3, 4], [2, 2, 5, 0]))
    assert regression_metrics([5.0, 6.0], [5.0, 6.0]) == {"rmse": 0.0, "mae": 0.0}


def test_regression_metrics_refuse_mismatched_lengths():
    with pytest.raises(ValueError, match="3 targets but 2 predictions"):
        regression_metrics(np.zeros(3), np.zeros(2))
