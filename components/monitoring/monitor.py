"""One monitoring verdict for a window of served traffic: drift and live accuracy, as one JSON document.

This document is the contract the canary judge and the retraining policy read:

    {"model_version", "window": {"start", "end", "predictions", "labelled"},
     "verdict": "ok" | "drift" | "degraded" | "insufficient_data",
     "drift": {"detected", "verdict", "window_trips", "features": {NAME: {"statistic", "threshold",
               "effect", "min_effect", "drifted"}}},
     "accuracy": {"rmse", "mae", "rmse_ci", "baseline_rmse", "degraded", "label_coverage", "labelled",
                  "verdict"},
     "segments": {"statistic", "threshold", "degraded", "moved": [{"zone", "trips", "slower_by", ...}],
                  "verdict", ...}}

``degraded`` (the window's RMSE confirmed worse than the validation RMSE, or the errors moved
in some zones: ``components.monitoring.segments``) outranks ``drift``: a model that is
confirmed worse needs action whatever moved. ``insufficient_data`` only when no part could judge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from components.features.trip_features import TARGET_COLUMN
from components.monitoring.accuracy import AccuracyPolicy, live_accuracy
from components.monitoring.drift import DriftPolicy, detect_drift
from components.monitoring.reference_profile import ReferenceProfile
from components.monitoring.segments import SegmentPolicy, segment_errors


@dataclass(frozen=True)
class MonitorPolicy:
    drift: DriftPolicy = field(default_factory=DriftPolicy)
    accuracy: AccuracyPolicy = field(default_factory=AccuracyPolicy)
    segments: SegmentPolicy = field(default_factory=SegmentPolicy)


def monitor_window(
    window: pd.DataFrame,
    profile: ReferenceProfile,
    *,
    model_version: str,
    start: str,
    end: str,
    policy: MonitorPolicy = MonitorPolicy(),
) -> dict[str, Any]:
    """The verdict for ``window``: PULocationID, DOLocationID, trip_distance, prediction and, where a
    label has been joined, ``trip_duration_minutes`` (NaN for trips still without one)."""
    drift = detect_drift(window, profile, policy.drift)
    if TARGET_COLUMN in window.columns:
        labelled = window[TARGET_COLUMN].notna().to_numpy()
        actual = window.loc[labelled, TARGET_COLUMN].to_numpy(dtype=np.float64)
        predicted = window.loc[labelled, "prediction"].to_numpy(dtype=np.float64)
        zones = window.loc[labelled, "PULocationID"].to_numpy()
    else:
        actual = predicted = zones = np.empty(0)
    accuracy = live_accuracy(actual, predicted, profile.scores.rmse, len(window), policy.accuracy)
    segments = segment_errors(actual, predicted, zones, policy.segments)
    if accuracy.degraded or segments.degraded:
        verdict = "degraded"
    elif drift.detected:
        verdict = "drift"
    elif drift.verdict == "insufficient_data" and accuracy.verdict == "insufficient_data":
        verdict = "insufficient_data"
    else:
        verdict = "ok"
    return {
        "model_version": model_version,
        "window": {"start": start, "end": end, "predictions": len(window), "labelled": accuracy.labelled},
        "verdict": verdict,
        "drift": drift.to_dict(),
        "accuracy": accuracy.to_dict(),
        "segments": segments.to_dict(),
    }
