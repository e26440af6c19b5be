"""Live accuracy and the monitor's one verdict, on a real fitted model's reference profile."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from support.model_fixtures import profiled_ridge

from components.features.trip_features import TARGET_COLUMN
from components.monitoring.accuracy import AccuracyPolicy, live_accuracy
from components.monitoring.monitor import monitor_window


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory):
    return profiled_ridge(tmp_path_factory.mktemp("tlc"))


def _labelled_window(model, trips: pd.DataFrame, n: int, seed: int, label_scale: float = 1.0) -> pd.DataFrame:
    chosen = trips.iloc[np.random.default_rng(seed).integers(0, len(trips), n)]
    window = chosen.loc[:, ["PULocationID", "DOLocationID", "trip_distance"]].reset_index(drop=True)
    window["prediction"] = model.predict(chosen)
    window[TARGET_COLUMN] = chosen[TARGET_COLUMN].to_numpy() * label_scale
    return window


def test_the_reference_month_is_as_accurate_as_validation(reference):
    model, profile, val_trips = reference
    window = _labelled_window(model, val_trips, 3_000, seed=1)
    report = live_accuracy(window[TARGET_COLUMN], window["prediction"], profile.scores.rmse, 3_000)
    assert report.verdict == "ok" and not report.degraded
    low, high = report.rmse_ci
    assert low <= report.rmse <= high
    assert low <= profile.scores.rmse * 1.05  # the baseline is inside (or near) the interval
    assert report.label_coverage == 1.0


def test_durations_20_percent_longer_are_degraded(reference):
    model, profile, val_trips = reference
    window = _labelled_window(model, val_trips, 3_000, seed=2, label_scale=1.2)
    report = live_accuracy(window[TARGET_COLUMN], window["prediction"], profile.scores.rmse, 3_000)
    assert report.degraded and report.verdict == "degraded"
    assert report.rmse_ci[0] > profile.scores.rmse * 1.05


def test_too_few_labels_are_insufficient_never_degraded(reference):
    model, profile, val_trips = reference
    window = _labelled_window(model, val_trips, 150, seed=3, label_scale=3.0)
    report = live_accuracy(window[TARGET_COLUMN], window["prediction"], profile.scores.rmse, 10_000)
    assert report.verdict == "insufficient_data" and not report.degraded and report.rmse is None
    assert report.label_coverage == pytest.approx(0.015)


def test_large_windows_use_the_normal_interval_and_agree_with_the_bootstrap():
    rng = np.random.default_rng(4)
    truth = rng.gamma(2.0, 8.0, size=60_000)
    guess = truth + rng.normal(0, 6.0, size=truth.size)
    normal = live_accuracy(truth, guess, 6.0, truth.size)  # > 50,000 labels: normal interval
    boot = live_accuracy(truth[:50_000], guess[:50_000], 6.0, 50_000)  # bootstrap
    assert normal.rmse_ci[0] < normal.rmse < normal.rmse_ci[1]
    width_normal = normal.rmse_ci[1] - normal.rmse_ci[0]
    width_boot = boot.rmse_ci[1] - boot.rmse_ci[0]
    assert width_normal == pytest.approx(width_boot * np.sqrt(50_000 / 60_000), rel=0.15)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_labelled": 1}, "min_labelled"),
        ({"margin": -0.1}, "margin"),
        ({"confidence": 1.0}, "confidence"),
    ],
)
def test_a_bad_accuracy_policy_is_refused(kwargs, message: str):
    with pytest.raises(ValueError, match=message):
        AccuracyPolicy(**kwargs)


def test_the_monitor_document_is_the_contract_and_degraded_outranks_drift(reference):
    model, profile, val_trips = reference
    calm = _labelled_window(model, val_trips, 2_000, seed=5)
    document = monitor_window(calm, profile, model_version="3", start="2021-02-01", end="2021-03-01")
    assert json.loads(json.dumps(document)) == document  # plain JSON
    assert document["verdict"] == "ok"
    assert document["window"] == {
        "start": "2021-02-01",
        "end": "2021-03-01",
        "predictions": 2_000,
        "labelled": 2_000,
    }
    assert {"detected", "features"} <= set(document["drift"])
    assert {"rmse", "rmse_ci", "baseline_rmse", "degraded", "label_coverage"} <= set(document["accuracy"])

    worse = _labelled_window(model, val_trips, 2_000, seed=6, label_scale=1.2)
    worse["trip_distance"] *= 1.3  # drifted too: degraded still wins
    assert monitor_window(worse, profile, model_version="3", start="a", end="b")["verdict"] == "degraded"

    unlabelled = calm.assign(**{TARGET_COLUMN: np.nan})
    unlabelled["trip_distance"] *= 1.3
    drifted = monitor_window(unlabelled, profile, model_version="3", start="a", end="b")
    assert drifted["verdict"] == "drift" and drifted["accuracy"]["verdict"] == "insufficient_data"

    tiny = monitor_window(calm.head(50), profile, model_version="3", start="a", end="b")
    assert tiny["verdict"] == "insufficient_data"
