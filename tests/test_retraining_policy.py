"""The retraining policy's one decision: each trigger, each reason not to, and the windows it names."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from components.retraining.policy import RetrainingPolicy, RetrainingPolicyError, Signals, decide

NOW = datetime(2021, 3, 20)


def _verdict(kind: str, day: int) -> dict:
    """A daily window's verdict; the newest of ``n`` ends two days before NOW (labels lag a day)."""
    start = NOW - timedelta(days=day + 2)
    window = {
        "start": f"{start.isoformat()}+00:00",
        "end": f"{(start + timedelta(days=1)).isoformat()}+00:00",
    }
    return {
        "verdict": "degraded" if kind == "uniform" else kind,
        "window": window,
        "drift": {"detected": kind == "drift"},
        "accuracy": {"rmse": 7.4, "baseline_rmse": 6.0, "degraded": kind in ("degraded", "uniform")},
        "segments": {"degraded": kind == "degraded", "statistic": 0.11, "threshold": 0.07,
                     "moved": [{"zone": 74, "slower_by": 0.25}]},
    }  # fmt: skip


def _signals(*kinds: str, **changes) -> Signals:
    values = {
        "now": NOW,
        "champion_version": "1",
        "verdicts": [_verdict(k, len(kinds) - 1 - i) for i, k in enumerate(kinds)],
        "champion_trained_until": NOW - timedelta(days=10),
        "labelled_until": NOW - timedelta(days=1),
        "labelled_since_training": 40_000,
    }
    values.update(changes)
    return Signals(**values)


def test_confirmed_decay_waits_for_days_after_the_change_then_trains_across_it() -> None:
    one = decide(_signals("ok", "degraded"))
    assert one.kind == "no_retrain" and "1 in a row with errors moved by zone (retrain at 2)" in one.reason
    # Three degraded daily windows: the change began 2021-03-16, labels reach 03-19 -- 3 days.
    waited = decide(
        _signals("ok", "degraded", "degraded", "degraded"), RetrainingPolicy(min_post_change_days=5)
    )
    assert waited.kind == "no_retrain"
    assert "since 2021-03-16T00:00:00; waiting for 5 days of labelled trips after it" in waited.reason
    assert "(have 3.0)" in waited.reason
    assert "have 2.0" in decide(_signals("ok", "degraded", "degraded")).reason  # default: 3 days
    decision = decide(_signals("ok", "degraded", "degraded", "degraded"))
    assert decision.kind == "retrain" and decision.trigger == "degraded"
    assert "live errors moved by pickup zone in the newest 3 window(s) (needs 2)" in decision.reason
    assert "statistic 0.110 over 0.07, most in zones 74 (+25%); live RMSE 7.400 vs validation 6.000" in (
        decision.reason
    )
    assert decision.holdout_window == ("2021-03-18T00:00:00", "2021-03-19T00:00:00")
    assert decision.train_window == ("2021-02-16T00:00:00", "2021-03-18T00:00:00")
    assert decision.details == {"change_start": "2021-03-16T00:00:00"}  # training holds 2 days of it


def test_drift_must_persist() -> None:
    held = decide(_signals("ok", *["drift"] * 6))
    assert held.kind == "no_retrain" and "6 window(s) in a row with input drift (retrain at 7)" in held.reason
    assert decide(_signals(*["drift"] * 7)).trigger == "drift"


def test_worse_alike_in_every_zone_is_weather_not_a_reason_to_retrain() -> None:
    decision = decide(_signals("uniform", "uniform", "uniform", "uniform", "uniform"))
    assert decision.kind == "no_retrain"
    assert (
        "live RMSE 7.400 is above the validation RMSE 6.000 but alike in every pickup zone" in decision.reason
    )


def test_worse_where_the_zones_cannot_be_judged_says_so() -> None:
    verdicts = [_verdict("uniform", 0)]
    verdicts[0]["segments"] = {"degraded": False, "verdict": "insufficient_data", "labelled": 120}
    decision = decide(_signals(verdicts=verdicts))
    assert "the by-zone check could not judge (120 labelled trips in zones big enough)" in decision.reason


def test_an_old_champion_retrains_only_with_new_labels() -> None:
    old = {"champion_trained_until": NOW - timedelta(days=40)}
    assert decide(_signals("ok", **old)).trigger == "age"
    starved = decide(_signals("ok", **old, labelled_since_training=100))
    assert starved.kind == "no_retrain" and "only 100 labelled trips are new (needs 5000)" in starved.reason


def test_one_at_a_time_and_a_cooldown_but_a_request_skips_the_cooldown() -> None:
    running = decide(_signals("degraded", "degraded", retrain_running="run 7"))
    assert running.kind == "no_retrain" and "already running (run 7)" in running.reason
    recent = {"last_retrain_at": NOW - timedelta(hours=12)}
    cooling = decide(_signals("degraded", "degraded", **recent))
    assert cooling.kind == "no_retrain" and "cooling down until 2021-03-21T12:00:00" in cooling.reason
    asked = decide(_signals("ok", **recent, requested="taxi-mlops autopilot --retrain-now"))
    assert asked.kind == "retrain" and asked.trigger == "requested"


def test_nothing_to_train_on_is_said() -> None:
    decision = decide(_signals("degraded", "degraded", labelled_until=None))
    assert decision.kind == "no_retrain" and "no labelled trips have landed" in decision.reason


def test_ok_says_why_not_and_the_document_has_the_contract_fields() -> None:
    decision = decide(_signals("ok", "ok"))
    document = decision.to_dict()
    assert document["kind"] == "no_retrain" and document["reason"].startswith(
        "not retraining: newest verdict ok"
    )
    assert {"kind", "reason", "model_version", "event_time"} <= set(document)


@pytest.mark.parametrize("field", ["degraded_windows", "drift_windows", "train_days", "holdout_days"])
def test_a_policy_that_cannot_work_is_refused(field: str) -> None:
    with pytest.raises(RetrainingPolicyError):
        RetrainingPolicy(**{field: 0})
    with pytest.raises(RetrainingPolicyError, match="held-out days must come after the change"):
        RetrainingPolicy(holdout_days=2, min_post_change_days=1)


def test_overrides_are_typed_and_named() -> None:
    policy = RetrainingPolicy().with_overrides({"drift_windows": "6", "holdout_days": "2"})
    assert (policy.drift_windows, policy.holdout_days) == (6, 2.0)
    with pytest.raises(RetrainingPolicyError, match="'drift_window' is not a retraining policy field"):
        RetrainingPolicy().with_overrides({"drift_window": "6"})
    with pytest.raises(RetrainingPolicyError, match="drift_windows: 'six' is not an int"):
        RetrainingPolicy().with_overrides({"drift_windows": "six"})


def test_what_wakes_the_loop() -> None:
    from components.retraining.triggers import new_months, retrain_alerts, schedule_due

    records = [
        {"status": "firing", "labels": {"alertname": "TaxiPredictorSlowP99", "severity": "warning"}},
        {"status": "firing", "labels": {"alertname": "TaxiAccuracyDegraded", "action": "retrain-candidate",
                                        "model_version": "1"}},
        {"status": "resolved", "labels": {"alertname": "TaxiDataDrift", "action": "retrain-candidate"}},
    ]  # fmt: skip
    wakes, cursor = retrain_alerts(records, 0)
    assert [w.reason for w in wakes] == ["alert TaxiAccuracyDegraded for model version 1"] and cursor == 3
    assert retrain_alerts(records, cursor) == ([], 3)  # an alert read once wakes the loop once
    assert [w.reason for w in new_months(["2021-01", "2021-03", "2021-02"], ["2021-01"])] == [
        "month 2021-02 landed in the data source",
        "month 2021-03 landed in the data source",
    ]
    assert schedule_due(NOW, None, timedelta(days=30)) is not None
    assert schedule_due(NOW, NOW - timedelta(days=29), timedelta(days=30)) is None
    assert schedule_due(NOW, NOW - timedelta(days=30), timedelta(days=30)).source == "schedule"


def test_weekly_rmse_groups_by_iso_monday_on_the_same_trips() -> None:
    import numpy as np
    import pandas as pd

    from components.retraining.timeline import weekly_rmse

    times = pd.Series(
        pd.to_datetime(["2021-03-01 08:00", "2021-03-07 23:59", "2021-03-08 00:00", "2021-03-10 00:00"])
    )
    actual = np.array([10.0, 20.0, 10.0, 10.0])
    rows = weekly_rmse(
        times, actual, {"served": actual + np.array([1, 1, 2, 2]), "never_retrain": actual + 3}, min_trips=1
    )
    assert [row["week"] for row in rows] == ["2021-03-01", "2021-03-08"]  # Sunday 23:59 is still week one
    assert rows[0] == {"week": "2021-03-01", "trips": 2, "served_rmse": 1.0, "never_retrain_rmse": 3.0}
    assert rows[1]["served_rmse"] == 2.0
    assert weekly_rmse(times, actual, {"served": actual}, min_trips=3) == []
