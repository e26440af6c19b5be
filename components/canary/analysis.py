"""One analysis of a canary: the evidence of one period in, a verdict with its checks and reason out.

Pure: no clock, no I/O. The caller (the local controller, the KFP step, ``taxi-mlops canary
analyze``) gathers the evidence -- both revisions' request, error and latency figures for
the current step, and the labelled trips of the canary's life scored by both models -- and
carries out the action. The JSON of :meth:`CanaryAnalysis.to_dict` is the recorded decision:

    {"champion", "canary", "percent", "verdict": "pass" | "fail" | "inconclusive",
     "action": "set_percent" | "promote" | "rollback" | "hold", "next_percent",
     "checks": [{"name", "value", "limit", "passed", "detail"}], "reason", "accuracy"}

``passed`` is true, false, or null for a check that could not be judged yet. Missing data
never passes: a check below its minimum sample is null, which makes the verdict
inconclusive; past the event-time deadline an inconclusive canary is rolled back.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from statistics import NormalDist
from typing import Any, Literal

import numpy as np

from components.canary.paired_accuracy import PairedAccuracy, paired_accuracy
from components.canary.policy import CanaryPolicy

Verdict = Literal["pass", "fail", "inconclusive"]
Action = Literal["set_percent", "promote", "rollback", "hold"]


@dataclass(frozen=True)
class RevisionOps:
    """One revision's operational figures over the analysed period."""

    requests: int
    errors: int  # answered 5xx, or not answered at all
    p99_ms: float | None


@dataclass(frozen=True)
class Evidence:
    champion_version: str
    canary_version: str
    percent: int
    champion: RevisionOps
    canary: RevisionOps
    #: Labelled trips of the canary's life (whichever revision answered), scored by both models.
    actual: np.ndarray = field(default_factory=lambda: np.empty(0))
    champion_predictions: np.ndarray = field(default_factory=lambda: np.empty(0))
    canary_predictions: np.ndarray = field(default_factory=lambda: np.empty(0))
    #: Event time (replayed traffic keeps its own clock): when the canary started, and now.
    canary_started: datetime | None = None
    now: datetime | None = None
    #: Failed analyses in a row before this one (the judge keeps count).
    consecutive_failures: int = 0
    #: Event hours between the first and the last labelled pair (None: not known, not gated).
    pairs_span_hours: float | None = None


@dataclass(frozen=True)
class Check:
    name: str
    value: float | None
    limit: float | None
    passed: bool | None
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "limit": self.limit,
            "passed": self.passed,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class CanaryAnalysis:
    champion: str
    canary: str
    percent: int
    verdict: Verdict
    action: Action
    next_percent: int | None
    checks: tuple[Check, ...]
    reason: str
    accuracy: PairedAccuracy

    def to_dict(self) -> dict[str, Any]:
        return {
            "champion": self.champion,
            "canary": self.canary,
            "percent": self.percent,
            "verdict": self.verdict,
            "action": self.action,
            "next_percent": self.next_percent,
            "checks": [check.to_dict() for check in self.checks],
            "reason": self.reason,
            "accuracy": self.accuracy.to_dict(),
        }


def analyze(evidence: Evidence, policy: CanaryPolicy | None = None) -> CanaryAnalysis:
    """Judge ``evidence`` under ``policy`` (default :class:`CanaryPolicy`): verdict, action and why."""
    policy = policy or CanaryPolicy()
    index = policy.step_of(evidence.percent)
    step = policy.steps[index]
    last_step = index == len(policy.steps) - 1
    needed_labels = max(step.min_labelled, policy.promote_min_labelled) if last_step else step.min_labelled
    accuracy = paired_accuracy(
        evidence.actual,
        evidence.champion_predictions,
        evidence.canary_predictions,
        margin=policy.mae_margin,
        min_pairs=policy.min_pairs,
        confidence=policy.confidence,
        resamples=policy.resamples,
        seed=policy.seed,
    )
    latency = (
        _p99_check(evidence.canary, step.min_requests, policy),
        _p99_ratio_check(evidence, step.min_requests, policy),
    )
    unjudged: tuple[str, ...] = ()
    if not policy.judge_latency:
        latency = tuple(_not_judged(check) for check in latency)
        unjudged = tuple(check.name for check in latency)
    checks = (
        _requests_check(evidence.canary, step.min_requests),
        _error_rate_check(evidence.canary, step.min_requests, policy),
        *latency,
        _span_gate(_accuracy_check(accuracy, needed_labels), evidence, policy),
    )
    failed = [check for check in checks if check.passed is False]
    open_checks = [check for check in checks if check.passed is None]
    base = {
        "champion": evidence.champion_version,
        "canary": evidence.canary_version,
        "percent": evidence.percent,
    }
    if failed:
        reason = "; ".join(f"{check.name}: {check.detail}" for check in failed)
        failures = evidence.consecutive_failures + 1
        if failures >= policy.failure_limit:
            return CanaryAnalysis(
                **base,
                verdict="fail",
                action="rollback",
                next_percent=0,
                checks=checks,
                reason=f"rolled back: {reason}",
                accuracy=accuracy,
            )
        return CanaryAnalysis(
            **base,
            verdict="fail",
            action="hold",
            next_percent=evidence.percent,
            checks=checks,
            reason=f"failure {failures} of {policy.failure_limit}: {reason}",
            accuracy=accuracy,
        )
    if not open_checks:
        if last_step:
            return CanaryAnalysis(
                **base,
                verdict="pass",
                action="promote",
                next_percent=100,
                checks=checks,
                reason=_passed_reason(checks, "promoted", unjudged),
                accuracy=accuracy,
            )
        following = policy.steps[index + 1].percent
        return CanaryAnalysis(
            **base,
            verdict="pass",
            action="set_percent",
            next_percent=following,
            checks=checks,
            reason=_passed_reason(checks, f"next step {following}%", unjudged),
            accuracy=accuracy,
        )
    waiting = "; ".join(f"{check.name}: {check.detail}" for check in open_checks)
    if _past_deadline(evidence, policy):
        return CanaryAnalysis(
            **base,
            verdict="inconclusive",
            action="rollback",
            next_percent=0,
            checks=checks,
            reason=f"rolled back at the deadline ({policy.deadline_days:g} days of event time) "
            f"still waiting: {waiting}",
            accuracy=accuracy,
        )
    return CanaryAnalysis(
        **base,
        verdict="inconclusive",
        action="hold",
        next_percent=evidence.percent,
        checks=checks,
        reason=f"holding at {evidence.percent}%: {waiting}",
        accuracy=accuracy,
    )


def _passed_reason(checks: tuple[Check, ...], outcome: str, unjudged: tuple[str, ...]) -> str:
    accuracy = next(check for check in checks if check.name == "accuracy")
    aside = f"; {' and '.join(unjudged)} not judged" if unjudged else ""
    return f"{outcome}: every check passed ({accuracy.detail}{aside})"


def _requests_check(canary: RevisionOps, minimum: int) -> Check:
    enough = canary.requests >= minimum
    detail = f"{canary.requests} canary requests in this step" + (
        "" if enough else f", waiting for {minimum}"
    )
    return Check("requests", float(canary.requests), float(minimum), True if enough else None, detail)


def _error_rate_check(canary: RevisionOps, minimum: int, policy: CanaryPolicy) -> Check:
    n = canary.requests
    if n == 0:
        return Check("error_rate", None, policy.max_error_rate, None, "no canary requests yet")
    rate = canary.errors / n
    low, high = _wilson(canary.errors, n, policy.confidence)
    detail = (
        f"{canary.errors} of {n} failed ({rate:.2%}, interval {low:.2%}..{high:.2%}; "
        f"limit {policy.max_error_rate:.2%})"
    )
    # A confident failure counts at any sample size; a pass needs the step's minimum as well.
    if low > policy.max_error_rate:
        return Check("error_rate", rate, policy.max_error_rate, False, detail)
    if n >= minimum and high <= policy.max_error_rate:
        return Check("error_rate", rate, policy.max_error_rate, True, detail)
    return Check("error_rate", rate, policy.max_error_rate, None, detail + ", not yet sure")


def _p99_check(canary: RevisionOps, minimum: int, policy: CanaryPolicy) -> Check:
    if canary.p99_ms is None or canary.requests < max(minimum, 100):
        return Check(
            "p99_latency", canary.p99_ms, policy.max_p99_ms, None, "too few canary requests for a p99"
        )
    detail = f"canary p99 {canary.p99_ms:.1f} ms (limit {policy.max_p99_ms:g} ms)"
    return Check("p99_latency", canary.p99_ms, policy.max_p99_ms, canary.p99_ms <= policy.max_p99_ms, detail)


def _not_judged(check: Check) -> Check:
    """A latency check kept on the record that cannot hold or fail the canary (``judge_latency`` off)."""
    return dataclasses.replace(check, passed=True, detail=f"not judged ({check.detail})")


def _p99_ratio_check(evidence: Evidence, minimum: int, policy: CanaryPolicy) -> Check:
    canary, champion = evidence.canary, evidence.champion
    floor = max(minimum, 100)
    if (
        canary.p99_ms is None
        or champion.p99_ms is None
        or canary.requests < floor
        or champion.requests < floor
    ):
        return Check("p99_vs_champion", None, policy.max_p99_ratio, None, "too few requests on one revision")
    if canary.p99_ms < policy.p99_ratio_floor_ms:
        detail = f"canary p99 {canary.p99_ms:.1f} ms is under {policy.p99_ratio_floor_ms:g} ms"
        return Check("p99_vs_champion", None, policy.max_p99_ratio, True, detail)
    ratio = canary.p99_ms / max(champion.p99_ms, 1e-9)
    detail = f"canary p99 {canary.p99_ms:.1f} ms vs champion {champion.p99_ms:.1f} ms ({ratio:.2f}x)"
    return Check("p99_vs_champion", ratio, policy.max_p99_ratio, ratio <= policy.max_p99_ratio, detail)


def _accuracy_check(accuracy: PairedAccuracy, needed: int) -> Check:
    if accuracy.mae_ratio is None:
        detail = f"{accuracy.pairs} labelled pairs, too few to judge"
        return Check("accuracy", None, accuracy.limit, None if needed else True, detail)
    assert accuracy.ratio_ci is not None
    low, high = accuracy.ratio_ci
    detail = (
        f"canary/champion MAE {accuracy.mae_ratio:.3f} [{low:.3f}, {high:.3f}] on {accuracy.pairs} labelled "
        f"pairs, limit {accuracy.limit:.3f}"
    )
    if accuracy.outcome == "fail":
        return Check("accuracy", accuracy.mae_ratio, accuracy.limit, False, detail)
    if accuracy.pairs < needed:
        return Check(
            "accuracy", accuracy.mae_ratio, accuracy.limit, None, detail + f", this step needs {needed}"
        )
    if accuracy.outcome == "pass":
        return Check("accuracy", accuracy.mae_ratio, accuracy.limit, True, detail)
    return Check(
        "accuracy", accuracy.mae_ratio, accuracy.limit, None if needed else True, detail + ", not yet sure"
    )


def _span_gate(check: Check, evidence: Evidence, policy: CanaryPolicy) -> Check:
    """Accuracy waits until its pairs cover ``min_pair_span_hours`` of event time, whichever way it leans.

    Errors follow the clock: in the replay a challenger that is 8% better over the rest of the
    month was 21% worse on its first 600 pairs, a Saturday morning. A day's cycle of pairs
    before the accuracy check may pass or fail keeps one part of the day from deciding.
    """
    span = evidence.pairs_span_hours
    if check.passed is None or span is None or span >= policy.min_pair_span_hours:
        return check
    detail = (
        f"{check.detail}; the pairs span {span:.1f} h of event time, needs {policy.min_pair_span_hours:g}"
    )
    return Check(check.name, check.value, check.limit, None, detail)


def _wilson(successes: int, n: int, confidence: float) -> tuple[float, float]:
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, float(centre - half)), min(1.0, float(centre + half))


def _past_deadline(evidence: Evidence, policy: CanaryPolicy) -> bool:
    if evidence.canary_started is None or evidence.now is None:
        return False
    return (evidence.now - evidence.canary_started).total_seconds() > policy.deadline_days * 86_400
