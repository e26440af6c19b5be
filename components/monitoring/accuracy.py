"""Live accuracy: a window's labelled predictions against the version's own validation RMSE.

"Degraded" means confirmed worse by a margin: the lower end of the window RMSE's
bootstrap confidence interval lies above ``baseline * (1 + margin)``. A window with
fewer labelled trips than ``min_labelled`` is insufficient data, never degraded, and
an unlucky hour of long trips does not page anyone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class AccuracyPolicy:
    min_labelled: int = 200
    margin: float = 0.05  # relative: 5% worse than the validation RMSE
    confidence: float = 0.95
    resamples: int = 1_000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.min_labelled < 2:
            raise ValueError(f"min_labelled must be at least 2, got {self.min_labelled}")
        if self.margin < 0:
            raise ValueError(f"margin must not be negative, got {self.margin}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")


@dataclass(frozen=True)
class AccuracyReport:
    labelled: int
    label_coverage: float
    rmse: float | None
    mae: float | None
    rmse_ci: tuple[float, float] | None
    baseline_rmse: float
    degraded: bool
    verdict: str  # "ok" | "degraded" | "insufficient_data"

    def to_dict(self) -> dict[str, Any]:
        document = asdict(self)
        document["rmse_ci"] = list(self.rmse_ci) if self.rmse_ci is not None else None
        return document


def live_accuracy(
    actual: np.ndarray,
    predicted: np.ndarray,
    baseline_rmse: float,
    predictions_in_window: int,
    policy: AccuracyPolicy = AccuracyPolicy(),
) -> AccuracyReport:
    """RMSE/MAE of the labelled trips with a bootstrap CI, judged against ``baseline_rmse``."""
    truth = np.asarray(actual, dtype=np.float64)
    guess = np.asarray(predicted, dtype=np.float64)
    if truth.shape != guess.shape:
        raise ValueError(f"{truth.size} labels for {guess.size} predictions")
    n = truth.size
    coverage = n / predictions_in_window if predictions_in_window else 0.0
    if n < policy.min_labelled:
        return AccuracyReport(n, coverage, None, None, None, baseline_rmse, False, "insufficient_data")
    squared = (guess - truth) ** 2
    rmse = float(np.sqrt(squared.mean()))
    mae = float(np.abs(guess - truth).mean())
    low, high = _rmse_interval(squared, policy)
    degraded = low > baseline_rmse * (1.0 + policy.margin)
    verdict = "degraded" if degraded else "ok"
    return AccuracyReport(n, coverage, rmse, mae, (low, high), baseline_rmse, degraded, verdict)


#: Above this many labelled trips the mean squared error is normal to well within the CI's width, and a
#: bootstrap would cost resamples x n memory reads for nothing.
_BOOTSTRAP_MAX_TRIPS = 50_000
_BLOCK_ELEMENTS = 4_000_000  # resample this many values at a time (32 MB)


def _rmse_interval(squared: np.ndarray, policy: AccuracyPolicy) -> tuple[float, float]:
    n = squared.size
    tail = (1.0 - policy.confidence) / 2
    if n > _BOOTSTRAP_MAX_TRIPS:
        from statistics import NormalDist

        z = NormalDist().inv_cdf(1.0 - tail)
        mse, se = float(squared.mean()), float(squared.std(ddof=1) / np.sqrt(n))
        return float(np.sqrt(max(mse - z * se, 0.0))), float(np.sqrt(mse + z * se))
    rng = np.random.default_rng(policy.seed)
    block = max(1, _BLOCK_ELEMENTS // n)
    draws: list[np.ndarray] = []
    for start in range(0, policy.resamples, block):
        size = min(block, policy.resamples - start)
        # The RMSE of each resample of the squared errors is one draw of the window's RMSE.
        draws.append(np.sqrt(squared[rng.integers(0, n, size=(size, n))].mean(axis=1)))
    low, high = np.quantile(np.concatenate(draws), [tail, 1.0 - tail])
    return float(low), float(high)
