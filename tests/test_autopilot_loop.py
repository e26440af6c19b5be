"""The autopilot loop on real state files: each trigger, dedup, cooldown, restarts, a bad month.

Only the training run is replaced (by :class:`RecordingRetrain`, which records the
decision it was handed and answers like ``pipelines.retrain.retrain``): the real one is
exercised by tests/test_retrain.py and the replay test. Verdicts, canary decisions, the
deployment state and the loop's own timeline are the real files in a temporary folder.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from components.canary.decision_store import save_decision
from components.errors import TaxiMlopsError
from components.monitoring.verdict_store import save_verdict
from components.retraining.loop_state import LoopMemory, LoopStateError
from components.retraining.policy import RetrainingPolicy
from components.retraining.triggers import Wake, retrain_alerts
from pipelines.autopilot.loop import UNREADABLE_ALERT, Autopilot
from pipelines.local_run import RunRequest
from pipelines.retrain import RetrainOutcome
from pipelines.settings import Settings
from serving.deployment_state import DeploymentState, Revision, deploy, save_state

NOW = datetime(2021, 3, 20)
SHA = "0" * 64


class RecordingRetrain:
    """Stands in for the training run: records each decision, answers with a gate event."""

    def __init__(self, passed: bool = True, fail_with: BaseException | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.passed, self.fail_with = passed, fail_with

    def __call__(
        self, settings: Settings, decision: Mapping[str, Any], base: RunRequest, progress: Any
    ) -> Any:
        self.calls.append(dict(decision))
        if self.fail_with is not None:
            raise self.fail_with
        reason = "gate passed" if self.passed else "gate refused"
        event = {"kind": "gate", "event_time": decision["event_time"], "model_version": "1",
                 "passed": self.passed, "reason": reason}  # fmt: skip
        summary = {"model_version": "2" if self.passed else None,
                   "data": {"val": {"end": decision["holdout_window"][1]}}}  # fmt: skip
        if self.passed:
            event["challenger_version"] = "2"
        return RetrainOutcome(event, summary)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    settings = Settings.from_env({"TAXI_MLOPS_STATE_DIR": str(tmp_path / "state")})
    _deploy(settings, canary=False)
    settings.prediction_log_dir.mkdir(parents=True)
    return settings


def _deploy(settings: Settings, canary: bool) -> None:
    state = deploy(DeploymentState(), Revision("1", "/models/1", SHA), 0).state
    if canary:
        state = deploy(state, Revision("2", "/models/2", SHA), 20).state
    save_state(settings.deployment_state_path, state)


def _verdicts(settings: Settings, *kinds: str, version: str = "1") -> None:
    for day, kind in enumerate(kinds):
        start = datetime(2021, 3, 10) + timedelta(days=day)
        end = start + timedelta(days=1)
        save_verdict(settings.monitor_dir, {
            "model_version": version, "verdict": kind,
            "window": {"start": f"{start.isoformat()}+00:00", "end": f"{end.isoformat()}+00:00"},
            "accuracy": {"rmse": 7.0, "baseline_rmse": 6.0, "degraded": kind == "degraded"},
            "segments": {"degraded": kind == "degraded", "statistic": 0.1, "threshold": 0.07},
        })  # fmt: skip


def _loop(settings: Settings, retrain: RecordingRetrain, **kwargs: Any) -> Autopilot:
    return Autopilot(settings, RunRequest(), RetrainingPolicy(), retrain_with=retrain, **kwargs)


@pytest.fixture(autouse=True)
def _labels_reach_yesterday(monkeypatch: pytest.MonkeyPatch) -> None:
    # The prediction-log join itself is tested with real segments in the replay test; here the
    # loop is told labels reach a day before NOW, as a one-day label delay would leave them.
    import pipelines.autopilot.loop as loop_module

    monkeypatch.setattr(
        loop_module, "labelled_since", lambda log, labels, since: (NOW - timedelta(days=1), 20_000)
    )
    monkeypatch.setattr(loop_module, "read_prediction_log", lambda *a, **k: object())


def _kinds(settings: Settings) -> list[str]:
    return [event["kind"] for event in LoopMemory(settings.state_dir / "autopilot").timeline()]


def test_a_confirmed_decay_retrains_once_and_the_gate_is_recorded(settings: Settings) -> None:
    _verdicts(settings, "ok", "degraded", "degraded", "degraded", "degraded")
    retrain = RecordingRetrain()
    events = _loop(settings, retrain).step(NOW, [Wake("monitor verdict degraded for version 1", "monitor")])
    assert [e["kind"] for e in events] == ["retrain", "gate"]
    assert events[0]["trigger"] == "degraded" and events[0]["wakes"] == [
        "monitor verdict degraded for version 1"
    ]
    assert events[1]["decision_seq"] == events[0]["seq"] and events[1]["challenger_version"] == "2"
    assert len(retrain.calls) == 1 and retrain.calls[0]["holdout_window"] == [
        "2021-03-18T00:00:00",
        "2021-03-19T00:00:00",
    ]
    state = json.loads((settings.state_dir / "autopilot" / "state.json").read_text())
    assert state["pending"] is None and state["trained_until"] == {"2": "2021-03-19T00:00:00"}


def test_no_wake_no_decision_and_ok_verdicts_say_why_not(settings: Settings) -> None:
    _verdicts(settings, "ok", "ok")
    retrain = RecordingRetrain()
    loop = _loop(settings, retrain)
    assert loop.step(NOW) == []
    (event,) = loop.step(NOW, [Wake("monitor verdict ok for version 1", "monitor")])
    assert event["kind"] == "no_retrain" and event["reason"].startswith("not retraining: newest verdict ok")
    assert retrain.calls == []


def test_an_alert_that_fires_every_minute_starts_one_retraining(settings: Settings) -> None:
    _verdicts(settings, "degraded", "degraded", "degraded", "degraded")
    labels = {"alertname": "TaxiAccuracyDegraded", "action": "retrain-candidate", "model_version": "1"}
    alert = {"status": "firing", "labels": labels}
    records = [alert] * 5
    retrain = RecordingRetrain()
    loop = _loop(settings, retrain)
    cursor = 0
    for minute in range(5):
        wakes, cursor = retrain_alerts(records[: minute + 1], cursor)
        loop.step(NOW + timedelta(minutes=minute), wakes)
    assert len(retrain.calls) == 1  # the first wake retrains, the next four meet the cooldown
    reasons = [e["reason"] for e in loop.memory.timeline() if e["kind"] == "no_retrain"]
    assert len(reasons) == 4 and all("cooling down until 2021-03-22T00:00:00" in r for r in reasons)


def test_a_live_canary_is_a_retraining_still_running(settings: Settings) -> None:
    _deploy(settings, canary=True)
    _verdicts(settings, "degraded", "degraded", "degraded", "degraded")
    retrain = RecordingRetrain()
    (event,) = _loop(settings, retrain).step(NOW, [Wake("alert", "alert")])
    assert (
        event["kind"] == "no_retrain"
        and "(canary version 2 is being judged); one at a time" in event["reason"]
    )
    assert retrain.calls == []


def test_a_request_skips_the_cooldown_and_a_schedule_wake_checks_age(settings: Settings) -> None:
    retrain = RecordingRetrain()
    loop = _loop(settings, retrain)
    loop.note_trained_until("1", NOW - timedelta(days=40))
    assert loop.step(NOW, [Wake("scheduled (every 1 day)", "schedule")])[0]["trigger"] == "age"
    events = loop.step(NOW + timedelta(hours=1), [Wake("taxi-mlops autopilot --retrain-now", "request")])
    assert events[0]["trigger"] == "requested" and len(retrain.calls) == 2


def test_killed_while_retraining_the_restarted_loop_carries_the_decision_out_once(settings: Settings) -> None:
    _verdicts(settings, "degraded", "degraded", "degraded", "degraded")
    with pytest.raises(KeyboardInterrupt):
        _loop(settings, RecordingRetrain(fail_with=KeyboardInterrupt())).step(NOW, [Wake("alert", "alert")])
    assert _kinds(settings) == ["retrain"]  # decided and on disk before the run began
    retrain = RecordingRetrain()
    restarted = _loop(settings, retrain)
    events = restarted.step(NOW + timedelta(hours=1), [])
    assert [e["kind"] for e in events] == ["gate"] and len(retrain.calls) == 1
    assert retrain.calls[0]["seq"] == 0  # the same decision, not a new one
    assert restarted.step(NOW + timedelta(hours=2), []) == []  # and not again
    assert _kinds(settings) == ["retrain", "gate"]


def test_killed_between_the_timeline_and_the_state_nothing_is_lost_or_repeated(settings: Settings) -> None:
    memory = LoopMemory(settings.state_dir / "autopilot")
    memory.load()
    decision = {"kind": "retrain", "event_time": NOW.isoformat(), "model_version": "1", "reason": "x",
                "train_window": ["2021-02-17T00:00:00", "2021-03-19T00:00:00"],
                "holdout_window": ["2021-03-18T00:00:00", "2021-03-19T00:00:00"]}  # fmt: skip
    memory.record(decision)  # appended, then the process died before state.json was written
    assert not memory.state_path.exists()
    retrain = RecordingRetrain()
    events = _loop(settings, retrain).step(NOW, [])
    assert [e["kind"] for e in events] == ["gate"] and retrain.calls[0]["seq"] == 0


def test_an_unreadable_month_is_an_alert_and_never_trained_on(settings: Settings) -> None:
    def check(month: str) -> None:
        if month == "2021-03":
            raise TaxiMlopsError("green_tripdata_2021-03.parquet: not a parquet file")

    retrain = RecordingRetrain()
    loop = _loop(settings, retrain, check_month=check)
    events = loop.step(NOW, [Wake("month 2021-03 landed in the data source", "new_month")])
    alert = events[0]
    assert alert["alert"] == UNREADABLE_ALERT and "month 2021-03 landed but cannot be read" in alert["reason"]
    assert "not a parquet file" in alert["reason"] and "the champion keeps serving" in alert["reason"]
    _verdicts(settings, "degraded", "degraded", "degraded", "degraded")
    (refused,) = loop.step(NOW + timedelta(hours=1), [Wake("alert", "alert")])
    assert refused["kind"] == "no_retrain" and "span 2021-03, which cannot be read" in refused["reason"]
    assert retrain.calls == []
    # The same month met again is not a second alert.
    again = loop.step(
        NOW + timedelta(hours=2), [Wake("month 2021-03 landed in the data source", "new_month")]
    )
    assert [e.get("alert") for e in again] == [None]


def test_a_replaced_month_file_lifts_the_block_and_its_alert(settings: Settings) -> None:
    broken = {"2021-03"}

    def check(month: str) -> None:
        if month in broken:
            raise TaxiMlopsError("green_tripdata_2021-03.parquet: not a parquet file")

    retrain = RecordingRetrain()
    loop = _loop(settings, retrain, check_month=check)
    loop.step(NOW, [Wake("month 2021-03 landed in the data source", "new_month")])
    _verdicts(settings, "degraded", "degraded", "degraded", "degraded")
    assert loop.step(NOW + timedelta(hours=1), [])[-1:] == []  # still broken: nothing new is said
    assert "2021-03" in LoopMemory(settings.state_dir / "autopilot").load().bad_months
    broken.clear()  # someone downloaded the month again
    resolved, decision, gate = loop.step(NOW + timedelta(hours=2))
    assert resolved["kind"] == "no_retrain" and resolved["alert_resolved"] == UNREADABLE_ALERT
    assert "month 2021-03 can be read now" in resolved["reason"]
    # The month lands only now, and the confirmed decay it blocked is acted on in the same pass.
    assert decision["kind"] == "retrain" and decision["wakes"] == [
        "month 2021-03 landed in the data source (readable again)"
    ]
    assert gate["kind"] == "gate" and len(retrain.calls) == 1
    assert LoopMemory(settings.state_dir / "autopilot").load().bad_months == {}
    assert loop.step(NOW + timedelta(hours=3)) == []  # resolved once


def test_the_canary_judges_actions_are_copied_once(settings: Settings) -> None:
    for action, percent, nxt in (("hold", 20, None), ("set_percent", 20, 50), ("promote", 50, None)):
        save_decision(settings.canary_dir, {
            "canary": "2", "champion": "1", "action": action, "percent": percent, "next_percent": nxt,
            "verdict": "pass", "reason": f"{action} because", "event_time": "2021-03-21T06:00:00+00:00",
        })  # fmt: skip
    loop = _loop(settings, RecordingRetrain())
    events = loop.step(NOW)
    assert [(e["kind"], e["percent"]) for e in events] == [("canary_step", 50), ("promote", 50)]
    assert events[0]["event_time"] == "2021-03-21T06:00:00" and events[1]["model_version"] == "2"
    assert loop.step(NOW) == [] and _loop(settings, RecordingRetrain()).step(NOW) == []


def test_a_state_file_that_is_not_one_is_refused_by_name(settings: Settings) -> None:
    folder = settings.state_dir / "autopilot"
    folder.mkdir(parents=True)
    (folder / "state.json").write_text("{not json")
    with pytest.raises(LoopStateError, match=r"state\.json: not an autopilot state"):
        _loop(settings, RecordingRetrain())


def test_a_retraining_that_fails_outright_leaves_the_champion_and_says_why(settings: Settings) -> None:
    _verdicts(settings, "degraded", "degraded", "degraded", "degraded")
    before = settings.deployment_state_path.read_bytes()
    down = RecordingRetrain(fail_with=ConnectionError("MLflow at http://127.0.0.1:9 refused the connection"))
    loop = _loop(settings, down)
    events = loop.step(NOW, [Wake("alert", "alert")])
    assert [e["kind"] for e in events] == ["retrain", "gate"] and events[1]["passed"] is False
    assert events[1]["reason"] == (
        "retraining failed, the champion keeps serving: "
        "ConnectionError: MLflow at http://127.0.0.1:9 refused the connection"
    )
    assert loop.state.pending is None and settings.deployment_state_path.read_bytes() == before
