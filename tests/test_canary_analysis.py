"""The canary judge's core: the policy, the paired accuracy test, and each verdict with its reason.

Errors come from a model-like generator (a champion whose errors scale with trip length, a
canary scored on the same trips), so the paired statistics meet data shaped like the real ones.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from components.canary.analysis import Evidence, RevisionOps, analyze
from components.canary.paired_accuracy import paired_accuracy
from components.canary.policy import CanaryPolicy, CanaryPolicyError, Step

START = datetime(2021, 3, 1, tzinfo=UTC)
HEALTHY = RevisionOps(requests=5_000, errors=0, p99_ms=4.0)


def _trips(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    actual = rng.gamma(2.0, 7.0, size=n) + 1.0
    champion = actual * rng.lognormal(0.0, 0.3, size=n)  # errors grow with the trip, like a real model's
    return actual, champion


def _evidence(percent: int = 10, *, canary_scale: float = 1.0, pairs: int = 3_000, **changes) -> Evidence:
    actual, champion = _trips(pairs)
    values = {
        "champion_version": "1",
        "canary_version": "2",
        "percent": percent,
        "champion": HEALTHY,
        "canary": HEALTHY,
        "actual": actual,
        "champion_predictions": champion,
        "canary_predictions": champion * canary_scale,
        "canary_started": START,
        "now": START + timedelta(days=1),
    }
    values.update(changes)
    return Evidence(**values)


def _check(analysis, name):
    return next(check for check in analysis.checks if check.name == name)


def test_an_equal_canary_steps_up_then_is_promoted() -> None:
    policy = CanaryPolicy()
    percent, actions = 10, []
    for _ in range(len(policy.steps)):
        analysis = analyze(_evidence(percent), policy)
        actions.append(analysis.action)
        if analysis.action == "set_percent":
            percent = analysis.next_percent
    assert actions == ["set_percent", "set_percent", "promote"]
    assert analysis.verdict == "pass" and analysis.next_percent == 100
    assert "promoted: every check passed" in analysis.reason


def test_predictions_15_percent_too_high_are_rolled_back_on_accuracy_even_at_the_first_step() -> None:
    analysis = analyze(_evidence(10, canary_scale=1.15, pairs=400))
    assert analysis.verdict == "fail" and analysis.action == "rollback" and analysis.next_percent == 0
    accuracy = _check(analysis, "accuracy")
    assert accuracy.passed is False and accuracy.value > accuracy.limit
    assert "accuracy: canary/champion MAE" in analysis.reason


def test_5xx_share_rolls_back_before_any_label() -> None:
    broken = RevisionOps(requests=400, errors=40, p99_ms=4.0)
    analysis = analyze(_evidence(10, canary=broken, pairs=0))
    assert analysis.action == "rollback"
    assert _check(analysis, "error_rate").passed is False
    assert _check(analysis, "accuracy").passed is True  # not required at 10%, nothing judged
    assert "error_rate: 40 of 400 failed" in analysis.reason


def test_slow_canary_is_rolled_back_on_p99() -> None:
    slow = RevisionOps(requests=2_000, errors=0, p99_ms=250.0)
    analysis = analyze(_evidence(25, canary=slow))
    assert analysis.action == "rollback"
    assert _check(analysis, "p99_latency").passed is False
    assert _check(analysis, "p99_vs_champion").passed is False


def test_with_latency_not_judged_the_same_slow_canary_is_promoted_its_p99_on_the_record() -> None:
    slow = RevisionOps(requests=2_000, errors=0, p99_ms=250.0)
    policy = CanaryPolicy().with_overrides({"judge_latency": "false"})
    analysis = analyze(_evidence(50, canary=slow), policy)
    assert analysis.action == "promote"
    p99 = _check(analysis, "p99_latency")
    assert (
        p99.passed is True and p99.value == 250.0 and p99.detail.startswith("not judged (canary p99 250.0 ms")
    )
    assert "p99_latency and p99_vs_champion not judged" in analysis.reason
    # Errors are judged whatever the latency setting.
    broken = RevisionOps(requests=2_000, errors=300, p99_ms=250.0)
    assert analyze(_evidence(50, canary=broken), policy).action == "rollback"


def test_too_few_requests_holds_then_rolls_back_at_the_deadline() -> None:
    quiet = RevisionOps(requests=30, errors=0, p99_ms=None)
    held = analyze(_evidence(10, canary=quiet, pairs=0))
    assert held.verdict == "inconclusive" and held.action == "hold" and held.next_percent == 10
    assert "waiting for 1000" in held.reason
    late = analyze(_evidence(10, canary=quiet, pairs=0, now=START + timedelta(days=15)))
    assert late.verdict == "inconclusive" and late.action == "rollback"
    assert "deadline (14 days of event time)" in late.reason


def test_never_promoted_before_enough_labelled_pairs() -> None:
    analysis = analyze(_evidence(50, pairs=800))
    assert analysis.action == "hold"
    assert _check(analysis, "accuracy").passed is None
    assert "this step needs 2000" in analysis.reason


def test_failure_limit_holds_the_first_failure() -> None:
    broken = RevisionOps(requests=2_000, errors=300, p99_ms=4.0)
    policy = CanaryPolicy(failure_limit=2)
    first = analyze(_evidence(10, canary=broken), policy)
    assert first.verdict == "fail" and first.action == "hold" and "failure 1 of 2" in first.reason
    second = analyze(_evidence(10, canary=broken, consecutive_failures=1), policy)
    assert second.action == "rollback"


def test_json_has_the_contract_fields() -> None:
    document = analyze(_evidence(10)).to_dict()
    assert {"champion", "canary", "percent", "verdict", "action", "checks", "reason"} <= set(document)
    assert all({"name", "value", "limit", "passed"} <= set(check) for check in document["checks"])


def test_paired_test_sees_a_5_percent_regression_that_is_invisible_unpaired() -> None:
    actual, champion = _trips(2_000, seed=3)
    rng = np.random.default_rng(4)
    # The canary is the champion plus noise that makes its MAE about 5% worse.
    canary = champion + rng.normal(0.0, 1.1, size=champion.size)
    result = paired_accuracy(actual, champion, canary, margin=0.0, min_pairs=200)
    assert 1.02 < result.mae_ratio < 1.10
    assert result.outcome == "fail"
    from scipy.stats import mannwhitneyu

    # Unpaired: each revision's errors on half the trips (how a traffic split would see them).
    half = champion.size // 2
    unpaired = mannwhitneyu(np.abs(canary[half:] - actual[half:]), np.abs(champion[:half] - actual[:half]))
    assert unpaired.pvalue > 0.05


def test_identical_models_pass_with_a_degenerate_interval() -> None:
    actual, champion = _trips(500)
    result = paired_accuracy(actual, champion, champion.copy(), margin=0.02, min_pairs=200)
    assert result.outcome == "pass" and result.ratio_ci == (1.0, 1.0)


def test_below_min_pairs_is_inconclusive() -> None:
    actual, champion = _trips(100)
    assert (
        paired_accuracy(actual, champion, champion * 2, margin=0.02, min_pairs=200).outcome == "inconclusive"
    )


def test_policy_overrides_and_rules() -> None:
    policy = CanaryPolicy().with_overrides({"steps": "20,60,100", "mae_margin": "0.05"})
    assert [step.percent for step in policy.steps] == [20, 60] and policy.mae_margin == 0.05
    with pytest.raises(CanaryPolicyError, match="'margin' is not a canary policy field"):
        CanaryPolicy().with_overrides({"margin": 0.1})
    with pytest.raises(CanaryPolicyError, match="rise strictly"):
        CanaryPolicy(steps=(Step(50, 10, 0), Step(25, 10, 0)))
    with pytest.raises(CanaryPolicyError, match="never promoted unjudged"):
        CanaryPolicy(promote_min_labelled=0)
    with pytest.raises(CanaryPolicyError, match="mae_margin: 'x' is not a float"):
        CanaryPolicy().with_overrides({"mae_margin": "x"})
    assert CanaryPolicy().with_overrides({"judge_latency": "no"}).judge_latency is False
    with pytest.raises(CanaryPolicyError, match="judge_latency: 'maybe' is not true or false"):
        CanaryPolicy().with_overrides({"judge_latency": "maybe"})


def test_decision_metrics_expose_the_verdict_checks_and_the_last_rollback() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from components.canary.decision_metrics import decision_metrics_text

    assert decision_metrics_text(None, []) == ""
    held = {**analyze(_evidence(10, pairs=0)).to_dict(), "evaluated_at": "2026-12-01T10:00:00+00:00"}
    rolled = {
        **analyze(_evidence(10, canary_scale=1.3, pairs=400)).to_dict(),
        "evaluated_at": "2026-12-01T10:05:00+00:00",
    }
    families = {
        f.name: f for f in text_string_to_metric_families(decision_metrics_text(rolled, [held, rolled]))
    }
    verdicts = {s.labels["verdict"]: s.value for s in families["taxi_canary_analysis_verdict"].samples}
    assert verdicts == {"pass": 0, "fail": 1, "inconclusive": 0}
    assert families["taxi_canary_analysis_percent"].samples[0].value == 0  # rolled back
    checks = {s.labels["check"]: s.value for s in families["taxi_canary_check_passed"].samples}
    assert checks["accuracy"] == 0 and checks["requests"] == 1
    counts = {s.labels["action"]: s.value for s in families["taxi_canary_decisions"].samples}
    assert counts["rollback"] == 1 and counts["set_percent"] == 1 and counts["promote"] == 0
    rollback = families["taxi_canary_last_rollback_timestamp_seconds"].samples[0].value
    assert rollback == datetime(2026, 12, 1, 10, 5, tzinfo=UTC).timestamp()


def test_accuracy_waits_for_a_day_of_pairs_whichever_way_it_leans() -> None:
    policy = CanaryPolicy(min_pair_span_hours=24)
    worse = analyze(_evidence(canary_scale=1.15, pairs_span_hours=6.0), policy)
    assert worse.action == "hold" and _check(worse, "accuracy").passed is None
    assert "the pairs span 6.0 h of event time, needs 24" in _check(worse, "accuracy").detail
    assert analyze(_evidence(canary_scale=1.15, pairs_span_hours=30.0), policy).action == "rollback"
    assert analyze(_evidence(canary_scale=1.15, pairs_span_hours=6.0)).action == "rollback"  # default: 0 h
