"""Local decay: errors that move in some pickup zones, against a slowdown that moves every zone alike."""

from __future__ import annotations

import numpy as np

from components.monitoring.segments import SegmentPolicy, segment_errors


def _trips(n: int = 6_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    zones = rng.choice(np.arange(1, 31), size=n)
    predicted = rng.uniform(5, 30, size=n)
    actual = predicted * np.exp(rng.normal(0, 0.35, size=n))  # an unbiased model's errors
    return actual, predicted, zones


def test_an_unchanged_model_and_a_uniform_slowdown_are_ok() -> None:
    actual, predicted, zones = _trips()
    calm = segment_errors(actual, predicted, zones)
    snow = segment_errors(actual * 1.3, predicted, zones)  # every trip 30% slower
    assert calm.verdict == snow.verdict == "ok"
    assert abs(calm.statistic - snow.statistic) < 1e-9  # the window's own median absorbs it
    assert calm.statistic < SegmentPolicy().threshold / 2


def test_congestion_in_some_zones_is_degraded_and_names_them() -> None:
    actual, predicted, zones = _trips()
    congested = np.isin(zones, [3, 7, 11, 19])
    report = segment_errors(np.where(congested, actual * 1.5, actual), predicted, zones)
    assert report.degraded and report.verdict == "degraded"
    top = report.moved[:4]  # largest first; a calm zone may cross zone_moved by chance, below them
    assert {m["zone"] for m in top} == {3, 7, 11, 19}
    assert all(0.3 < m["slower_by"] < 0.7 for m in top)


def test_too_few_labelled_trips_cannot_judge() -> None:
    actual, predicted, zones = _trips(n=400)
    report = segment_errors(actual * 2, predicted, zones)
    assert report.verdict == "insufficient_data" and report.statistic is None and not report.degraded
