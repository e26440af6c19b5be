"""Drift verdicts on windows of trips against a real fitted model's reference profile (generated TLC months).

Windows are resampled from the reference (validation) month, with fixed seeds, so every
verdict here is deterministic; the error rates over many windows and the real months
are measured by the monitoring bench, not asserted here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from support.model_fixtures import profiled_ridge

from components.monitoring.drift import DEFAULT_MIN_EFFECT, DriftPolicy, detect_drift


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory):
    return profiled_ridge(tmp_path_factory.mktemp("tlc"))


def _window(model, trips: pd.DataFrame) -> pd.DataFrame:
    window = trips.loc[:, ["PULocationID", "DOLocationID", "trip_distance"]].reset_index(drop=True)
    window["prediction"] = model.predict(trips)
    return window


def _resample(trips: pd.DataFrame, n: int, seed: int, weights: np.ndarray | None = None) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return trips.iloc[rng.choice(len(trips), size=n, replace=True, p=weights)]


def test_windows_from_the_reference_month_are_not_drift(reference):
    model, profile, val_trips = reference
    flagged = [
        detect_drift(_window(model, _resample(val_trips, n, seed)), profile).detected
        for n in (500, 2_000)
        for seed in range(20)
    ]
    assert sum(flagged) <= 1, flagged  # 40 windows at a 1% family-wise rate, and the effect floor


def test_distances_30_percent_longer_are_distance_drift(reference):
    model, profile, val_trips = reference
    shifted = _resample(val_trips, 2_000, seed=1).assign(trip_distance=lambda df: df["trip_distance"] * 1.3)
    report = detect_drift(_window(model, shifted), profile)
    assert report.verdict == "drift"
    distance = report.features["trip_distance"]
    assert distance.drifted and distance.statistic > distance.threshold
    assert distance.effect >= DEFAULT_MIN_EFFECT["trip_distance"]
    assert report.features["prediction"].drifted  # a linear model answers longer trips with more minutes
    assert not report.features["PULocationID"].drifted  # the zones did not move


def test_the_busiest_pickup_zones_doubled_is_zone_drift(reference):
    model, profile, val_trips = reference
    pickup = pd.to_numeric(val_trips["PULocationID"]).to_numpy()
    busiest = pd.Series(pickup).value_counts().index[:10].to_numpy()
    weights = np.where(np.isin(pickup, busiest), 2.0, 1.0)
    report = detect_drift(_window(model, _resample(val_trips, 2_000, 2, weights / weights.sum())), profile)
    assert report.features["PULocationID"].drifted, report.features["PULocationID"]
    assert not report.features["trip_distance"].drifted


def test_traffic_on_pairs_never_seen_in_training_is_drift(reference):
    model, profile, val_trips = reference
    window = _window(model, _resample(val_trips, 1_000, 3))
    seen = set(profile.seen_pairs)
    unseen = [(pu, do) for pu in range(1, 266) for do in range(1, 266) if pu * 1000 + do not in seen][:300]
    window.loc[:299, ["PULocationID", "DOLocationID"]] = unseen  # 30% of the window
    result = detect_drift(window, profile).features["unseen_pairs"]
    pairs = window["PULocationID"].astype(int) * 1000 + window["DOLocationID"].astype(int)
    sample = profile.sample
    sample_pairs = np.asarray(sample["PULocationID"], int) * 1000 + np.asarray(sample["DOLocationID"], int)
    excess = (~pairs.isin(seen)).mean() - (~pd.Series(sample_pairs).isin(seen)).mean()
    assert result.drifted and result.effect == pytest.approx(excess, abs=1e-6) and excess > 0.15


def test_a_small_window_is_insufficient_data_never_drift(reference):
    model, profile, val_trips = reference
    tiny = _window(model, _resample(val_trips, 100, 4)).assign(
        trip_distance=lambda df: df["trip_distance"] * 3
    )
    report = detect_drift(tiny, profile)
    assert report.verdict == "insufficient_data" and not report.detected and report.features == {}


def test_a_significant_but_tiny_shift_is_not_drift(reference):
    model, profile, val_trips = reference
    huge = _window(model, _resample(val_trips, 300_000, 5)).assign(
        trip_distance=lambda df: df["trip_distance"] * 1.02
    )
    distance = detect_drift(huge, profile).features["trip_distance"]
    assert distance.statistic > distance.threshold  # every test notices 2% on 300,000 trips
    assert distance.effect < DEFAULT_MIN_EFFECT["trip_distance"] and not distance.drifted


def test_the_report_is_the_monitor_contract(reference):
    model, profile, val_trips = reference
    document = detect_drift(_window(model, _resample(val_trips, 800, 6)), profile).to_dict()
    assert set(document) == {"detected", "verdict", "window_trips", "features"}
    assert set(document["features"]) == set(DEFAULT_MIN_EFFECT)
    for result in document["features"].values():
        assert {"statistic", "threshold", "effect", "drifted"} <= set(result)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_window": 0}, "min_window"),
        ({"false_alarm_rate": 1.5}, "false_alarm_rate"),
        ({"min_effect": {"color": 0.1}}, "no such drift feature"),
    ],
)
def test_a_bad_policy_is_refused(kwargs, message: str):
    with pytest.raises(ValueError, match=message):
        DriftPolicy(**kwargs)
