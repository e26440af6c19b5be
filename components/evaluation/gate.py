"""The gate: may the best candidate replace the production champion?

One rule, stated in one place: there is no champion yet, or the challenger's
RMSE on the same validation trips is lower than the champion's by a relative
margin. The decision carries its reason, so every registration (or refusal)
can say why.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GateDecision:
    """Whether the winner may replace the champion, and why."""

    passed: bool
    reason: str
    challenger: str
    challenger_rmse: float
    champion_rmse: float | None
    champion_version: str | None
    min_improvement: float


def gate_against_champion(
    challenger: str,
    challenger_rmse: float,
    champion_rmse: float | None,
    champion_version: str | None,
    min_improvement: float,
) -> GateDecision:
    """Pass when there is no champion, or the challenger's RMSE is lower by the relative margin.

    ``min_improvement`` is a fraction of the champion's RMSE (0.01 = 1% lower);
    the comparison is strict, so an equally good model never replaces the champion.
    """
    if not 0.0 <= min_improvement < 1.0:
        raise ValueError(f"gate margin min_improvement must be in [0, 1), got {min_improvement}")
    if champion_rmse is None:
        return GateDecision(
            True,
            f"no champion yet: {challenger} (RMSE {challenger_rmse:.4f}) becomes the first champion",
            challenger,
            challenger_rmse,
            None,
            None,
            min_improvement,
        )
    threshold = champion_rmse * (1.0 - min_improvement)
    passed = challenger_rmse < threshold
    verdict = "beats" if passed else "does not beat"
    reason = (
        f"{challenger} RMSE {challenger_rmse:.4f} {verdict} champion v{champion_version} "
        f"RMSE {champion_rmse:.4f} by the required {min_improvement:.1%} "
        f"(needs < {threshold:.4f})"
    )
    return GateDecision(
        passed, reason, challenger, challenger_rmse, champion_rmse, champion_version, min_improvement
    )
