"""Is the canary's accuracy at least as good as the champion's, up to a margin? Judged trip by trip.

Both models are deterministic functions of the same three inputs, so every logged
trip -- whichever revision answered it -- can be scored by both models offline.
The two absolute errors of one trip share everything that makes that trip hard
(a long trip in traffic is hard for both), so their *difference* varies far less
than either error: a paired comparison sees a given MAE regression with a small
fraction of the labelled trips an unpaired test (two unrelated samples, e.g.
Mann-Whitney on each revision's own requests) needs. ``bench/bench_canary.py``
measures the ratio.

The statistic is the ratio of mean absolute errors, canary over champion, on the
same trips; its interval comes from a paired bootstrap (trips resampled with both
errors attached). With margin ``m``:

- ``pass``: the interval's upper end is below ``1 + m`` (non-inferior, with confidence);
- ``fail``: its lower end is above ``1 + m`` (worse beyond the margin, with confidence);
- ``inconclusive``: anything else, and always below the minimum sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Outcome = Literal["pass", "fail", "inconclusive"]
#: Above this many pairs the ratio's normal approximation (delta method) is as good as the bootstrap.
_BOOTSTRAP_MAX_PAIRS = 50_000
_BLOCK_ELEMENTS = 4_000_000


@dataclass(frozen=True)
class PairedAccuracy:
    pairs: int
    champion_mae: float | None
    canary_mae: float | None
    mae_ratio: float | None
    ratio_ci: tuple[float, float] | None
    limit: float  # 1 + margin
    outcome: Outcome

    def to_dict(self) -> dict[str, Any]:
        return {
            "pairs": self.pairs,
            "champion_mae": self.champion_mae,
            "canary_mae": self.canary_mae,
            "mae_ratio": self.mae_ratio,
            "ratio_ci": list(self.ratio_ci) if self.ratio_ci else None,
            "limit": self.limit,
            "outcome": self.outcome,
        }


def paired_accuracy(
    actual: np.ndarray,
    champion: np.ndarray,
    canary: np.ndarray,
    *,
    margin: float,
    min_pairs: int,
    confidence: float = 0.95,
    resamples: int = 2_000,
    seed: int = 0,
) -> PairedAccuracy:
    """Compare the two models' predictions of the same labelled trips."""
    truth = np.asarray(actual, dtype=np.float64)
    champion_error = np.abs(np.asarray(champion, dtype=np.float64) - truth)
    canary_error = np.abs(np.asarray(canary, dtype=np.float64) - truth)
    if not truth.shape == champion_error.shape == canary_error.shape:
        raise ValueError(f"{truth.size} labels, {champion_error.size} and {canary_error.size} predictions")
    n = truth.size
    limit = 1.0 + margin
    if n < max(min_pairs, 2):
        return PairedAccuracy(n, None, None, None, None, limit, "inconclusive")
    champion_mae, canary_mae = float(champion_error.mean()), float(canary_error.mean())
    if champion_mae == 0.0:
        # A champion that is never wrong cannot be matched by a ratio; only an equally perfect canary passes.
        outcome: Outcome = "pass" if canary_mae == 0.0 else "fail"
        ratio = 1.0 if canary_mae == 0.0 else float("inf")
        return PairedAccuracy(n, champion_mae, canary_mae, ratio, (ratio, ratio), limit, outcome)
    ratio = canary_mae / champion_mae
    low, high = _ratio_interval(champion_error, canary_error, confidence, resamples, seed)
    if high < limit:
        outcome = "pass"
    elif low > limit:
        outcome = "fail"
    else:
        outcome = "inconclusive"
    return PairedAccuracy(n, champion_mae, canary_mae, ratio, (low, high), limit, outcome)


def _ratio_interval(
    champion_error: np.ndarray, canary_error: np.ndarray, confidence: float, resamples: int, seed: int
) -> tuple[float, float]:
    n = champion_error.size
    tail = (1.0 - confidence) / 2
    if n > _BOOTSTRAP_MAX_PAIRS:
        from statistics import NormalDist

        # Delta method for a ratio of two means of paired samples.
        a, b = canary_error, champion_error
        ratio = a.mean() / b.mean()
        residual = (a - ratio * b) / b.mean()
        se = float(residual.std(ddof=1) / np.sqrt(n))
        z = NormalDist().inv_cdf(1.0 - tail)
        return float(ratio - z * se), float(ratio + z * se)
    rng = np.random.default_rng(seed)
    block = max(1, _BLOCK_ELEMENTS // n)
    draws: list[np.ndarray] = []
    for start in range(0, resamples, block):
        size = min(block, resamples - start)
        index = rng.integers(0, n, size=(size, n))
        # One index per trip for both errors: the pairing is what the bootstrap keeps.
        draws.append(canary_error[index].mean(axis=1) / champion_error[index].mean(axis=1))
    low, high = np.quantile(np.concatenate(draws), [tail, 1.0 - tail])
    return float(low), float(high)
