"""Local decay: the model's errors moving in some pickup zones and not in others.

Why a second accuracy check beside the window RMSE: on real TLC months the RMSE of one
unchanged model swings with the weather and the calendar far more than a decay worth
acting on. Measured with a model trained on green 2021-01 (holdout RMSE 5.43), 7-day
windows of the real February and March ranged 5.38-6.88 (the snow week of 1 Feb was the
worst), while the congestion of ``scripts/make_shifted_month.py`` (x1.25 in the ten
busiest pickup zones) raised March's to 6.5-7.0: the two overlap. A snow day slows every
zone alike, though, and a congested zone does not slow the others -- and only the second
is something a retrained model can learn.

The statistic: each trip's log error ``log(actual / predicted)``; per pickup zone with
at least ``min_zone_trips`` labelled trips, and for all smaller zones pooled as one, its
median *relative to the window's own median*; their trip-weighted mean absolute value.
A uniform slowdown leaves it where it was; a change confined to some zones raises it. On
the same model, one-day windows of the real February and March gave 0.007-0.049; the
congested March 0.078-0.110 on weekdays (0.046-0.055 on its Sundays, when the busy zones
are quieter). ``threshold`` (0.065) sits between, and the zones moved most are named.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

#: The segment of every zone with fewer than ``min_zone_trips`` labelled trips in the window.
OTHER_ZONES = -1
#: Floor of minutes in the log ratio: a 0.1-minute prediction must not dominate the statistic.
_FLOOR_MINUTES = 0.5


@dataclass(frozen=True)
class SegmentPolicy:
    threshold: float = 0.065
    min_zone_trips: int = 50
    #: Fewest labelled trips in zones that qualify; below it the check cannot judge.
    min_labelled: int = 500
    #: A zone is reported as moved when its relative median log error is beyond this.
    zone_moved: float = 0.1
    top_zones: int = 10

    def __post_init__(self) -> None:
        if self.threshold <= 0 or self.zone_moved <= 0:
            raise ValueError("threshold and zone_moved must be positive")
        if self.min_zone_trips < 2 or self.min_labelled < 1:
            raise ValueError("min_zone_trips must be at least 2 and min_labelled at least 1")


@dataclass(frozen=True)
class SegmentReport:
    labelled: int  # labelled trips judged
    zones: int  # segments: zones with at least min_zone_trips labelled trips, and the pooled rest
    statistic: float | None
    threshold: float
    moved_share: float | None  # share of those trips in zones moved beyond zone_moved
    moved: list[dict[str, Any]] = field(default_factory=list)  # moved zones, largest share first
    degraded: bool = False
    verdict: str = "insufficient_data"  # "ok" | "degraded" | "insufficient_data"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def segment_errors(
    actual: np.ndarray,
    predicted: np.ndarray,
    pickup_zones: np.ndarray,
    policy: SegmentPolicy = SegmentPolicy(),
) -> SegmentReport:
    """Whether the errors moved in some pickup zones relative to the rest (see the module docstring)."""
    truth = np.clip(np.asarray(actual, dtype=np.float64), _FLOOR_MINUTES, None)
    guess = np.clip(np.asarray(predicted, dtype=np.float64), _FLOOR_MINUTES, None)
    zones = np.asarray(pickup_zones).astype(np.int64)
    frame = pd.DataFrame({"zone": zones, "error": np.log(truth / guess)})
    sizes = frame.groupby("zone")["error"].size()
    # Zones too small to judge alone are pooled into one segment, "the rest": in a day of green
    # trips only the busiest ~10 zones reach min_zone_trips, and a change in all of them would
    # otherwise have nothing to stand out against.
    small = sizes[sizes < policy.min_zone_trips].index
    frame.loc[frame["zone"].isin(small), "zone"] = OTHER_ZONES
    qualifying = frame["zone"].unique()
    chosen = frame
    if len(chosen) < policy.min_labelled or len(qualifying) < 2:
        return SegmentReport(len(chosen), len(qualifying), None, policy.threshold, None)
    overall = float(np.median(chosen["error"]))
    per_zone = chosen.groupby("zone")["error"].agg(["median", "size"])
    relative = per_zone["median"] - overall
    weights = per_zone["size"].to_numpy(dtype=np.float64)
    statistic = float(np.average(np.abs(relative.to_numpy()), weights=weights))
    moved_mask = relative.abs() > policy.zone_moved
    moved_share = float(per_zone.loc[moved_mask, "size"].sum() / per_zone["size"].sum())
    # Largest share of the statistic first: a busy zone that moved, not a small one by chance.
    order = (relative.abs() * per_zone["size"]).sort_values(ascending=False).index[: policy.top_zones]
    moved = [
        {
            "zone": int(zone),
            "trips": int(per_zone.at[zone, "size"]),
            "relative_log_error": round(float(relative[zone]), 4),
            # exp of the relative log error: 1.25 = trips there take 25% longer than predicted, vs the rest
            "slower_by": round(float(np.exp(relative[zone]) - 1.0), 4),
        }
        for zone in order
        if moved_mask[zone] and zone != OTHER_ZONES
    ]
    degraded = statistic > policy.threshold
    return SegmentReport(
        labelled=len(chosen),
        zones=len(qualifying),
        statistic=round(statistic, 6),
        threshold=policy.threshold,
        moved_share=round(moved_share, 4),
        moved=moved,
        degraded=degraded,
        verdict="degraded" if degraded else "ok",
    )
