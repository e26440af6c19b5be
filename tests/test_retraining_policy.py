"""The retraining policy's one decision: each trigger, each reason not to, and the windows it names."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from components.retraining.policy import RetrainingPolicy, RetrainingPolicyError, Signals, decide

NOW = datetime(2021, 3, 20)


def _verdict(kind: str) -> dict:
    return {"verdict": kind, "accuracy": {"rmse": 7.4, "baseline_rmse": 6.0}}


def _signals(*kinds: str, **changes) -> Signals:
    values = {
        "now": NOW,
        "champion_version": "1",
        "verdicts": [_verdict(k) for k in kinds],
        "champion_trained_until": NOW - timedelta(days=10),
        "labelled_until": NOW - timedelta(days=1),
        "labelled_since_training": 40_000,
    }
    values.update(changes)
    return Signals(**values)


def test_confirmed_decay_retrains_on_the_newest_labelled_windows() -> None:
    decision = decide(_signals("ok", "degraded"))
    assert decision.kind == "retrain" and decision.trigger == "degraded"
    assert "live RMSE 7.400 is confirmed worse than the validation RMSE 6.000" in decision.reason
    assert decision.holdout_window == ("2021-03-12T00:00:00", "2021-03-19T00:00:00")
    assert decision.train_window == ("2021-02-10T00:00:00", "2021-03-12T00:00:00")


def test_drift_must_persist() -> None:
    held = decide(_signals("ok", "drift", "drift"))
    assert held.kind == "no_retrain" and "2 of the newest 3 windows drifted" in held.reason
    assert decide(_signals("drift", "drift", "drift")).trigger == "drift"


def test_an_old_champion_retrains_only_with_new_labels() -> None:
    old = {"champion_trained_until": NOW - timedelta(days=40)}
    assert decide(_signals("ok", **old)).trigger == "age"
    starved = decide(_signals("ok", **old, labelled_since_training=100))
    assert starved.kind == "no_retrain" and "only 100 labelled trips are new (needs 5000)" in starved.reason


def test_one_at_a_time_and_a_cooldown_but_a_request_skips_the_cooldown() -> None:
    running = decide(_signals("degraded", retrain_running="run 7"))
    assert running.kind == "no_retrain" and "already running (run 7)" in running.reason
    recent = {"last_retrain_at": NOW - timedelta(hours=12)}
    cooling = decide(_signals("degraded", **recent))
    assert cooling.kind == "no_retrain" and "cooling down until 2021-03-21T12:00:00" in cooling.reason
    asked = decide(_signals("ok", **recent, requested="taxi-mlops autopilot --retrain-now"))
    assert asked.kind == "retrain" and asked.trigger == "requested"


def test_nothing_to_train_on_is_said() -> None:
    decision = decide(_signals("degraded", labelled_until=None))
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
