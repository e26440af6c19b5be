"""Feature and prediction drift of a window of traffic against a version's reference profile.

With windows of tens of thousands of trips every test finds *some* difference, so
an alarm needs two things at once:

1. **significance at the window's own size**: the statistic exceeds what windows
   of exactly this many trips drawn from the reference month produce, at a
   family-wise false-alarm rate split over the features (Bonferroni). The null
   draws are multinomial over the profile's fixed bins (zones, distance and
   minute bins), so calibrating a window of 500 or of 1,000,000 trips costs the
   same few milliseconds;
2. **an effect large enough to matter**: a distance in the units a person would
   judge (total variation of the zone mix, Wasserstein distance of distances and
   predictions in interquartile ranges, the share of traffic on pairs never seen
   in training) of at least ``min_effect``.

A window smaller than ``min_window`` is "insufficient_data", never "drift". Rare
zones (expected fewer than 5 trips in the window) are pooled into one bin, so a
small window is not judged on 265 mostly empty cells.

The reference is the version's validation month (the profile's ``validation``
part and its predictions): the newest data the version was judged on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Final

import numpy as np
import pandas as pd

from components.features.trip_domain import MAX_LOCATION_ID
from components.monitoring.reference_profile import Distribution, ReferenceProfile

#: The features a window is judged on, and the effect each must reach to count as drift.
DEFAULT_MIN_EFFECT: Final[Mapping[str, float]] = {
    "trip_distance": 0.10,  # Wasserstein distance / reference IQR
    "PULocationID": 0.10,  # total variation distance of the zone mix
    "DOLocationID": 0.10,
    "unseen_pairs": 0.05,  # share of trips on pairs never seen in training, above the reference's
    "prediction": 0.10,  # Wasserstein distance / reference IQR
}
_MIN_EXPECTED_PER_ZONE: Final = 5.0


@dataclass(frozen=True)
class DriftPolicy:
    """How sure and how large: the knobs of the drift verdict (defaults suit hourly-to-monthly windows)."""

    min_window: int = 500
    false_alarm_rate: float = 0.01  # family-wise, over all features of one window
    null_draws: int = 2_000
    min_effect: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_MIN_EFFECT))
    seed: int = 0

    def __post_init__(self) -> None:
        if self.min_window < 1:
            raise ValueError(f"min_window must be at least 1, got {self.min_window}")
        if not 0 < self.false_alarm_rate < 1:
            raise ValueError(f"false_alarm_rate must be in (0, 1), got {self.false_alarm_rate}")
        unknown = set(self.min_effect) - set(DEFAULT_MIN_EFFECT)
        if unknown:
            raise ValueError(f"no such drift feature(s): {', '.join(sorted(unknown))}")


@dataclass(frozen=True)
class FeatureDrift:
    statistic: float
    threshold: float
    effect: float
    min_effect: float
    drifted: bool


@dataclass(frozen=True)
class DriftReport:
    window_trips: int
    verdict: str  # "ok" | "drift" | "insufficient_data"
    features: dict[str, FeatureDrift]

    @property
    def detected(self) -> bool:
        return self.verdict == "drift"

    def to_dict(self) -> dict[str, Any]:
        return {
            "detected": self.detected,
            "verdict": self.verdict,
            "window_trips": self.window_trips,
            "features": {name: asdict(result) for name, result in self.features.items()},
        }


def detect_drift(
    window: pd.DataFrame, profile: ReferenceProfile, policy: DriftPolicy = DriftPolicy()
) -> DriftReport:
    """Judge ``window`` (PULocationID, DOLocationID, trip_distance, prediction) against ``profile``."""
    n = len(window)
    if n < policy.min_window:
        return DriftReport(n, "insufficient_data", {})
    rng = np.random.default_rng(policy.seed)
    alpha = policy.false_alarm_rate / len(DEFAULT_MIN_EFFECT)
    pickup = pd.to_numeric(window["PULocationID"]).to_numpy(dtype=np.int64)
    dropoff = pd.to_numeric(window["DOLocationID"]).to_numpy(dtype=np.int64)
    effects = {**DEFAULT_MIN_EFFECT, **policy.min_effect}
    results = {
        "trip_distance": _numeric(
            window["trip_distance"].to_numpy(dtype=np.float64),
            profile.validation.distance,
            rng,
            policy,
            alpha,
        ),
        "PULocationID": _zones(pickup, profile.validation.pickup_counts, rng, policy, alpha),
        "DOLocationID": _zones(dropoff, profile.validation.dropoff_counts, rng, policy, alpha),
        "unseen_pairs": _unseen_pairs(pickup, dropoff, profile, rng, policy, alpha),
        "prediction": _numeric(
            window["prediction"].to_numpy(dtype=np.float64), profile.scores.predictions, rng, policy, alpha
        ),
    }
    judged = {
        name: FeatureDrift(
            statistic=round(statistic, 6),
            threshold=round(threshold, 6),
            effect=round(effect, 6),
            min_effect=effects[name],
            drifted=statistic > threshold and effect >= effects[name],
        )
        for name, (statistic, threshold, effect) in results.items()
    }
    verdict = "drift" if any(result.drifted for result in judged.values()) else "ok"
    return DriftReport(n, verdict, judged)


def _binned(values: np.ndarray, reference: Distribution) -> np.ndarray:
    edges = np.asarray(reference.edges, dtype=np.float64)
    counts, _ = np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges)
    return counts


def _numeric(
    values: np.ndarray, reference: Distribution, rng: np.random.Generator, policy: DriftPolicy, alpha: float
) -> tuple[float, float, float]:
    """KS on the fixed bins (statistic, with its null threshold) and Wasserstein / IQR (effect)."""
    p_ref = np.asarray(reference.counts, dtype=np.float64)
    p_ref /= p_ref.sum()
    cdf_ref = np.cumsum(p_ref)
    counts = _binned(values, reference)
    cdf = np.cumsum(counts) / counts.sum()
    statistic = float(np.max(np.abs(cdf - cdf_ref)))
    null = rng.multinomial(len(values), p_ref, size=policy.null_draws)
    null_ks = np.max(np.abs(np.cumsum(null, axis=1) / len(values) - cdf_ref), axis=1)
    threshold = float(np.quantile(null_ks, 1.0 - alpha))
    widths = np.diff(np.asarray(reference.edges, dtype=np.float64))
    iqr = max(reference.quantiles[75] - reference.quantiles[25], 1e-9)
    effect = float(np.sum(np.abs(cdf - cdf_ref) * widths) / iqr)
    return statistic, threshold, effect


def _zones(
    ids: np.ndarray, reference_counts: list[int], rng: np.random.Generator, policy: DriftPolicy, alpha: float
) -> tuple[float, float, float]:
    """Chi-square over the zones (rare ones pooled) against its null; the effect is the total variation
    distance over the same bins less its mean under the null (the sampling floor)."""
    p_ref = np.asarray(reference_counts, dtype=np.float64)
    p_ref /= p_ref.sum()
    n = len(ids)
    counts = np.bincount(np.clip(ids, 0, MAX_LOCATION_ID), minlength=MAX_LOCATION_ID + 1).astype(np.float64)
    rare = p_ref * n < _MIN_EXPECTED_PER_ZONE
    p = np.append(p_ref[~rare], p_ref[rare].sum())
    observed = np.append(counts[~rare], counts[rare].sum())
    keep = p > 0
    p, observed = p[keep], observed[keep]
    # A zone the reference never saw lands in the pooled bin (p > 0 there as long as any zone is rare).
    lost = n - observed.sum()
    if lost > 0:
        observed = np.append(observed, lost)
        p = np.append(p, 0.0)
    expected = n * p
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(
            expected > 0, (observed - expected) ** 2 / expected, np.where(observed > 0, np.inf, 0.0)
        )
    statistic = float(terms.sum())
    null = rng.multinomial(n, p[p > 0], size=policy.null_draws)
    null_chi2 = (((null - n * p[p > 0]) ** 2) / (n * p[p > 0])).sum(axis=1)
    threshold = float(np.quantile(null_chi2, 1.0 - alpha))
    # Total variation beyond what sampling alone gives at this window size: among ~250 zones a
    # day of ~2,000 trips from an unchanged distribution shows a raw distance of about 0.1 (the
    # size of the minimum effect), so a small window would always "drift". The same null draws
    # give that floor; what is left is the distance a person would call a change of mix.
    null_tv = 0.5 * np.abs(null / n - p[p > 0]).sum(axis=1)
    raw = 0.5 * np.abs(observed / n - p).sum()
    effect = float(max(raw - null_tv.mean(), 0.0))
    return statistic, threshold, effect


def _unseen_pairs(
    pickup: np.ndarray,
    dropoff: np.ndarray,
    profile: ReferenceProfile,
    rng: np.random.Generator,
    policy: DriftPolicy,
    alpha: float,
) -> tuple[float, float, float]:
    """The window's share of trips on pairs never seen in training, against the reference month's share."""
    sample = profile.sample
    reference_share = float(
        np.mean(~profile.is_seen_pair(np.asarray(sample["PULocationID"]), np.asarray(sample["DOLocationID"])))
    )
    share = float(np.mean(~profile.is_seen_pair(pickup, dropoff)))
    null = rng.binomial(len(pickup), reference_share, size=policy.null_draws) / len(pickup)
    threshold = float(np.quantile(null - reference_share, 1.0 - alpha))
    excess = share - reference_share
    return excess, threshold, excess
