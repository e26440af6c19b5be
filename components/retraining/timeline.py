"""The autopilot's timeline: decisions in event-time order, and the served RMSE per week beside baselines.

``weekly`` is what the replay's HTML and JSON plot: for each ISO week (its Monday, YYYY-MM-DD)
the RMSE of the served predictions and of each baseline's predictions, on the same labelled
trips -- so the three lines differ only by the model that answered.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import numpy as np
import pandas as pd

#: The decision kinds the timeline records (issue #12's contract).
KINDS: Final = ("retrain", "no_retrain", "gate", "canary_step", "promote", "rollback")


def week_of(moments: pd.Series) -> pd.Series:
    """Each timestamp's ISO week, named by its Monday as YYYY-MM-DD (time zone dropped: event time)."""
    stamps = pd.to_datetime(moments)
    if stamps.dt.tz is not None:
        stamps = stamps.dt.tz_localize(None)
    monday = stamps.dt.normalize() - pd.to_timedelta(stamps.dt.weekday, unit="D")
    return monday.dt.strftime("%Y-%m-%d")


def weekly_rmse(
    event_time: pd.Series, actual: np.ndarray, predictions: Mapping[str, np.ndarray], min_trips: int = 1
) -> list[dict[str, Any]]:
    """``[{"week", "trips", "<name>_rmse", ...}]`` per week, oldest first, for each named prediction set.

    Weeks with fewer than ``min_trips`` labelled trips are left out (their RMSE would be noise).
    """
    truth = np.asarray(actual, dtype=np.float64)
    frame = pd.DataFrame({"week": week_of(pd.Series(event_time)).to_numpy()})
    for name, values in predictions.items():
        guess = np.asarray(values, dtype=np.float64)
        if guess.shape != truth.shape:
            raise ValueError(f"{name}: {guess.size} predictions for {truth.size} labels")
        frame[name] = (guess - truth) ** 2
    grouped = frame.groupby("week", sort=True)
    rows = []
    for week, group in grouped:
        if len(group) < min_trips:
            continue
        row: dict[str, Any] = {"week": str(week), "trips": len(group)}
        for name in predictions:
            row[f"{name}_rmse"] = float(np.sqrt(group[name].mean()))
        rows.append(row)
    return rows
