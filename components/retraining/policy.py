"""The retraining policy: one typed object, and the decision it makes from what the monitor has seen.

Pure: signals in (the champion's recent monitor verdicts, how old its training data is,
how much labelled data has landed since, whether a retraining runs or ran lately, whether
someone asked), one :class:`RetrainDecision` out -- ``retrain`` or ``no_retrain``, always
with its reason, including why not. The loop around it (``taxi-mlops autopilot``) records
every decision and starts the training pipeline on the windows the decision names.

Triggers, strongest first:

1. **requested** -- a person or a schedule asked (cooldown does not apply; a running
   retraining still does: one at a time);
2. **degraded** -- the live errors moved by pickup zone (the monitor's ``segments`` check,
   confirmed beyond its threshold) in the newest ``degraded_windows`` verdicts. A window RMSE
   above the validation RMSE alike in every zone is recorded but does not retrain: on the real
   months it is the weather and the calendar (a snow week lifts it 27%), which no model
   retrained on last month learns -- see ``components/monitoring/segments.py`` for the numbers;
3. **drift** -- the inputs drifted in each of the newest ``drift_windows`` verdicts: one
   drifted window can be a holiday, several in a row are a new normal;
4. **age** -- the champion's training data ended more than ``max_model_age_days`` ago (event
   time) and at least ``min_new_labelled`` labelled trips have landed since: the schedule a
   team would keep anyway, but only when there is something new to learn from.

A change (decay or drift) is dated by the start of the first window of its run of verdicts.
Retraining the moment it is confirmed would train on data from before it and validate on a
day or less of the new normal, so a challenger would learn nothing of the change and be
judged on too little of it: the decision waits (saying so) until ``min_post_change_days`` of
labelled trips after the change exist, then holds out the newest ``holdout_days`` of them and
trains on the ``train_days`` before -- which then include the change's first days.

An alert (Alertmanager -> our receiver) does not retrain by itself: it wakes the loop, which
decides from the verdicts the alert was raised on -- so an alert firing every minute still
starts at most one retraining (``retrain_running``, then ``cooldown_days``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from components.errors import TaxiMlopsError


class RetrainingPolicyError(TaxiMlopsError, ValueError):
    """A policy value that cannot work (names the field and the rule)."""


@dataclass(frozen=True)
class RetrainingPolicy:
    #: Consecutive degraded verdicts that confirm a decay (one bad day can be a storm).
    degraded_windows: int = 2
    #: Consecutive drifted verdicts that make a drift a new normal: a week of daily windows. The
    #: zone mix of real weekdays in late March 2021 passed the minimum effect five days in a row
    #: against a model trained on February -- spring, not a reason to retrain outside the schedule.
    drift_windows: int = 7
    max_model_age_days: float = 35.0
    min_new_labelled: int = 5_000
    #: Event-time days after a retraining started before drift, decay or age may start another.
    cooldown_days: float = 2.0
    #: The windows a retraining trains and validates on, ending at the newest labelled trip.
    train_days: float = 30.0
    holdout_days: float = 1.0
    #: Labelled days after a change's start a decay or drift retraining waits for.
    min_post_change_days: float = 3.0

    def __post_init__(self) -> None:
        if self.degraded_windows < 1 or self.drift_windows < 1:
            raise RetrainingPolicyError("degraded_windows and drift_windows must be at least 1")
        if self.max_model_age_days <= 0 or self.cooldown_days < 0:
            raise RetrainingPolicyError("max_model_age_days must be positive and cooldown_days not negative")
        if self.train_days <= 0 or self.holdout_days <= 0:
            raise RetrainingPolicyError("train_days and holdout_days must be positive")
        if self.min_post_change_days < self.holdout_days:
            raise RetrainingPolicyError(
                f"min_post_change_days ({self.min_post_change_days:g}) must be at least holdout_days "
                f"({self.holdout_days:g}): the held-out days must come after the change"
            )
        if self.min_new_labelled < 0:
            raise RetrainingPolicyError("min_new_labelled must not be negative")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_overrides(self, overrides: Mapping[str, str | float | int]) -> RetrainingPolicy:
        """A copy with ``overrides`` (field name -> value, text as from the CLI's FIELD=VALUE)."""
        known = {f.name: f for f in fields(self)}
        changes: dict[str, Any] = {}
        for name, value in overrides.items():
            if name not in known:
                raise RetrainingPolicyError(
                    f"{name!r} is not a retraining policy field ({', '.join(sorted(known))})"
                )
            kind = int if isinstance(getattr(self, name), int) else float
            try:
                changes[name] = kind(value)
            except (TypeError, ValueError):
                raise RetrainingPolicyError(
                    f"{name}: {value!r} is not a{'n int' if kind is int else ' number'}"
                ) from None
        return replace(self, **changes)


@dataclass(frozen=True)
class Signals:
    now: datetime  # event time (the newest logged prediction's)
    champion_version: str
    verdicts: Sequence[Mapping[str, Any]] = ()  # the champion's monitor verdicts, oldest first
    champion_trained_until: datetime | None = None  # end of its training window (event time)
    labelled_until: datetime | None = None  # newest labelled trip (event time)
    labelled_since_training: int = 0
    last_retrain_at: datetime | None = None  # event time the last retraining started
    retrain_running: str | None = None  # what is running (a run id), or None
    requested: str | None = None  # why someone asked, or None


@dataclass(frozen=True)
class RetrainDecision:
    kind: Literal["retrain", "no_retrain"]
    trigger: str | None  # requested | degraded | drift | age; None for no_retrain
    reason: str
    champion_version: str
    event_time: str
    train_window: tuple[str, str] | None = None
    holdout_window: tuple[str, str] | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "trigger": self.trigger,
            "reason": self.reason,
            "model_version": self.champion_version,
            "event_time": self.event_time,
            "train_window": list(self.train_window) if self.train_window else None,
            "holdout_window": list(self.holdout_window) if self.holdout_window else None,
            "details": dict(self.details),
        }


def decide(signals: Signals, policy: RetrainingPolicy | None = None) -> RetrainDecision:
    """Retrain or not, and why (``policy`` default :class:`RetrainingPolicy`)."""
    policy = policy or RetrainingPolicy()
    now = signals.now.isoformat()

    def no(reason: str) -> RetrainDecision:
        return RetrainDecision("no_retrain", None, f"not retraining: {reason}", signals.champion_version, now)

    if signals.retrain_running:
        return no(f"a retraining is already running ({signals.retrain_running}); one at a time")
    trigger, why, change_start = _trigger(signals, policy)
    if trigger is None:
        return no(why)
    if trigger != "requested" and signals.last_retrain_at is not None:
        ready = signals.last_retrain_at + timedelta(days=policy.cooldown_days)
        if signals.now < ready:
            return no(
                f"{why}, but the last retraining started at {signals.last_retrain_at.isoformat()}: "
                f"cooling down until {ready.isoformat()}"
            )
    if signals.labelled_until is None:
        return no(f"{why}, but no labelled trips have landed to train on")
    if change_start is not None:
        after = (signals.labelled_until - change_start).total_seconds() / 86_400
        if after < policy.min_post_change_days:
            return no(
                f"{why}, since {change_start.isoformat()}; waiting for {policy.min_post_change_days:g} days "
                f"of labelled trips after it to learn from and validate on (have {max(after, 0):.1f})"
            )
    # Whole hours: windows a person can read and paste back as --train-window.
    until = signals.labelled_until.replace(minute=0, second=0, microsecond=0)
    holdout_start = until - timedelta(days=policy.holdout_days)
    train_start = holdout_start - timedelta(days=policy.train_days)
    return RetrainDecision(
        "retrain",
        trigger,
        f"retraining: {why}",
        signals.champion_version,
        now,
        train_window=(train_start.isoformat(), holdout_start.isoformat()),
        holdout_window=(holdout_start.isoformat(), until.isoformat()),
        details={"change_start": change_start.isoformat()} if change_start is not None else {},
    )


def _trigger(signals: Signals, policy: RetrainingPolicy) -> tuple[str | None, str, datetime | None]:
    """The strongest trigger that holds, why, and when its change began (decay and drift only)."""
    if signals.requested:
        return "requested", f"requested ({signals.requested})", None
    verdicts = list(signals.verdicts)
    degraded = _trailing(verdicts, _locally_degraded)
    if degraded >= policy.degraded_windows:
        newest = verdicts[-1]
        accuracy, segments = newest.get("accuracy") or {}, newest.get("segments") or {}
        zones = ", ".join(
            f"{zone['zone']} ({zone['slower_by']:+.0%})" for zone in (segments.get("moved") or [])[:5]
        )
        return (
            "degraded",
            f"live errors moved by pickup zone in the newest {degraded} window(s) (needs "
            f"{policy.degraded_windows}): statistic {segments.get('statistic', float('nan')):.3f} over "
            f"{segments.get('threshold', float('nan')):g}"
            + (f", most in zones {zones}" if zones else "")
            + f"; live RMSE {accuracy.get('rmse') or float('nan'):.3f} vs validation "
            f"{accuracy.get('baseline_rmse') or float('nan'):.3f}",
            _window_start(verdicts[-degraded]),
        )
    drifted = _trailing(verdicts, _drifted)
    if drifted >= policy.drift_windows:
        return (
            "drift",
            f"the inputs drifted in each of the newest {drifted} windows (needs {policy.drift_windows})",
            _window_start(verdicts[-drifted]),
        )
    if signals.champion_trained_until is not None:
        age = (signals.now - signals.champion_trained_until).total_seconds() / 86_400
        if age > policy.max_model_age_days:
            if signals.labelled_since_training >= policy.min_new_labelled:
                return (
                    "age",
                    f"the champion's training data ended {age:.1f} days ago "
                    f"(max {policy.max_model_age_days:g}) and {signals.labelled_since_training} "
                    "labelled trips have landed since",
                    None,
                )
            return (
                None,
                f"the champion is {age:.1f} days old but only {signals.labelled_since_training} "
                f"labelled trips are new (needs {policy.min_new_labelled})",
                None,
            )
    if not verdicts:
        return None, "no monitor verdict yet", None
    newest = verdicts[-1]
    accuracy = newest.get("accuracy") or {}
    segments = newest.get("segments") or {}
    if accuracy.get("degraded") and segments.get("verdict") == "insufficient_data":
        return (
            None,
            f"live RMSE {accuracy.get('rmse', float('nan')):.3f} is above the validation RMSE "
            f"{accuracy.get('baseline_rmse', float('nan')):.3f}, but the by-zone check could not judge "
            f"({segments.get('labelled', 0)} labelled trips in zones big enough): whether a retrained model "
            "would learn it is not known yet",
            None,
        )
    if accuracy.get("degraded") and not _locally_degraded(newest):
        return (
            None,
            f"live RMSE {accuracy.get('rmse', float('nan')):.3f} is above the validation RMSE "
            f"{accuracy.get('baseline_rmse', float('nan')):.3f} but alike in every pickup zone (weather, a "
            "holiday: nothing a retrained model would learn); the schedule retrains on new months anyway",
            None,
        )
    return (
        None,
        f"newest verdict {newest.get('verdict')}; {drifted} window(s) in a row with input drift (retrain at "
        f"{policy.drift_windows}), {degraded} in a row with errors moved by zone (retrain at "
        f"{policy.degraded_windows})",
        None,
    )


def _locally_degraded(verdict: Mapping[str, Any]) -> bool:
    """The errors moved in some zones (``components.monitoring.segments``): what retraining can fix."""
    return bool((verdict.get("segments") or {}).get("degraded"))


def _drifted(verdict: Mapping[str, Any]) -> bool:
    return bool((verdict.get("drift") or {}).get("detected"))


def _trailing(verdicts: Sequence[Mapping[str, Any]], holds: Any) -> int:
    """How many of the newest verdicts in a row ``holds`` is true of."""
    count = 0
    for verdict in reversed(verdicts):
        if not holds(verdict):
            break
        count += 1
    return count


def _window_start(verdict: Mapping[str, Any]) -> datetime | None:
    start = (verdict.get("window") or {}).get("start")
    if not start:
        return None
    moment = datetime.fromisoformat(str(start))
    return moment.replace(tzinfo=None) if moment.tzinfo else moment
