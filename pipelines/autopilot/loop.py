"""The closed loop: from a wake (an alert, a month that landed, a verdict) to a decision and its outcome.

One :meth:`Autopilot.step` at event time ``now``:

1. copies the canary judge's new actions into the timeline (``canary_step``, ``promote``,
   ``rollback``: the judge decides those on its own evidence, the loop only records them);
2. resumes a retraining the previous process was carrying out when it died;
3. when woken: checks each month that landed (an unreadable file is an alert and never
   trained on), gathers the signals (``components.retraining.signals``), asks the policy
   (``components.retraining.policy.decide``) and records its decision with the reason --
   ``no_retrain`` too -- before acting;
4. on ``retrain``: the training pipeline on the decision's windows
   (:func:`pipelines.retrain.retrain`); its gate's verdict, or its failure, is recorded as a
   ``gate`` event. A pass leaves a canary for the judge; anything else leaves the champion.

All state is on disk (``components.retraining.loop_state``), so a restart neither repeats
nor loses a decision. Event time only ever comes from the caller: the live loop passes the
newest logged event, the replay its own clock.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from components.canary.decision_store import decision_history
from components.data.ingest import load_month
from components.errors import TaxiMlopsError
from components.monitoring.labels import read_labels
from components.monitoring.prediction_log import read_prediction_log
from components.monitoring.verdict_store import load_history
from components.names import AUTOPILOT_DIR_NAME
from components.retraining.loop_state import LoopMemory
from components.retraining.policy import RetrainingPolicy, Signals, decide
from components.retraining.signals import champion_evidence, event_moment, labelled_since, trained_until
from components.retraining.triggers import Wake, mended_months
from pipelines.local_run import RunRequest
from pipelines.retrain import RetrainOutcome, retrain
from pipelines.settings import Settings
from serving.deployment_state import load_state

#: The alert the loop raises itself: a month file it was given cannot be read.
UNREADABLE_ALERT: Final = "TaxiTrainingDataUnreadable"
_CANARY_KINDS: Final = {"set_percent": "canary_step", "promote": "promote", "rollback": "rollback"}

Retrain = Callable[[Settings, Mapping[str, Any], RunRequest, Callable[[str], None]], RetrainOutcome]
MonthCheck = Callable[[str], None]  # raises TaxiMlopsError when a month file cannot be read


def readable_month(color: str, data_dir: Path, cache_dir: Path) -> MonthCheck:
    """The check a landed month passes before anything trains on it: the file loads and cleans."""

    def check(month: str) -> None:
        load_month(color, month, data_dir=data_dir, cache_dir=cache_dir)

    return check


class Autopilot:
    """The retraining loop over one local state folder (``settings.state_dir``)."""

    def __init__(
        self,
        settings: Settings,
        base: RunRequest,
        policy: RetrainingPolicy | None = None,
        *,
        check_month: MonthCheck | None = None,
        progress: Callable[[str], None] = lambda _line: None,
        retrain_with: Retrain = retrain,
    ) -> None:
        self.settings, self.base = settings, base
        self.policy = policy or RetrainingPolicy()
        self.check_month = check_month
        self.progress = progress
        self.retrain_with = retrain_with
        self.memory = LoopMemory(settings.state_dir / AUTOPILOT_DIR_NAME)
        self.state = self.memory.load()
        #: Called with each month that can be read again, before the pass decides (the live loop
        #: joins the month's labels there).
        self.on_month_mended: Callable[[str], None] | None = None

    def note_trained_until(self, version: str, until: datetime) -> None:
        """Tell the loop how far a version's training data reached (the first champion's, for its age)."""
        self.state.trained_until[str(version)] = until.isoformat()
        self.memory.save()

    def step(self, now: datetime, wakes: Sequence[Wake] = ()) -> list[dict[str, Any]]:
        """One pass of the loop at event time ``now``; the timeline events it recorded."""
        events = self._copy_canary_actions()
        if self.state.pending is not None:
            self.progress(f"autopilot: resuming decision #{self.state.pending['seq']} after a restart")
            events += self._carry_out(self.state.pending)
        wakes = list(wakes)
        mended, recovered = self._readable_again(now)
        events += recovered
        wakes += mended_months(mended)
        events += self._check_months(now, wakes)
        if not wakes:
            return events
        decision = decide(self._signals(now, wakes), self.policy).to_dict()
        decision["wakes"] = [wake.reason for wake in wakes]
        decision = self._refuse_bad_months(decision)
        event = self.memory.record(decision)
        self.memory.save()
        self.progress(f"autopilot: {event['reason']}")
        events.append(event)
        if event["kind"] == "retrain":
            events += self._carry_out(event)
        return events

    # ------------------------------------------------------------------ the parts

    def _carry_out(self, decision: Mapping[str, Any]) -> list[dict[str, Any]]:
        try:
            outcome = self.retrain_with(self.settings, decision, self.base, self.progress)
        except Exception as exc:  # MLflow or S3 down mid-run, a bug: the decision ends, recorded and said
            outcome = RetrainOutcome(
                {
                    "kind": "gate",
                    "event_time": decision.get("event_time"),
                    "model_version": decision.get("model_version"),
                    "passed": False,
                    "reason": f"retraining failed, the champion keeps serving: {type(exc).__name__}: {exc}",
                },
                None,
            )
        event = {**outcome.event, "decision_seq": decision["seq"]}
        if outcome.summary is not None:
            until = trained_until(outcome.summary)
            event["trained_until"] = until.isoformat() if until else None
        recorded = self.memory.record(event)
        self.memory.save()
        self.progress(f"autopilot: {recorded['reason']}")
        return [recorded]

    def _copy_canary_actions(self) -> list[dict[str, Any]]:
        history = decision_history(self.settings.canary_dir)
        events = []
        for analysis in history[self.state.canary_seen :]:
            kind = _CANARY_KINDS.get(str(analysis.get("action")))
            if kind is None:
                continue  # a hold: the judge waiting for evidence
            moment = analysis.get("event_time")
            event = {
                "kind": kind,
                "event_time": event_moment(moment).isoformat() if moment else None,
                "model_version": str(analysis.get("canary")),
                "champion_version": str(analysis.get("champion")),
                "percent": analysis.get("next_percent") if kind == "canary_step" else analysis.get("percent"),
                "reason": f"canary judge: {analysis.get('verdict')}: {analysis.get('reason')}",
            }
            events.append(self.memory.record(event))
        if len(history) != self.state.canary_seen:
            self.state.canary_seen = len(history)
            self.memory.save()
        return events

    def _check_months(self, now: datetime, wakes: list[Wake]) -> list[dict[str, Any]]:
        """Each month named by a ``new_month`` wake is read once; an unreadable one is an alert."""
        events = []
        for wake in wakes:
            month = wake.reason.split()[1] if wake.source == "new_month" else None
            if month is None or month in self.state.months_seen:
                continue
            self.state.months_seen.append(month)
            if self.check_month is None:
                continue
            try:
                self.check_month(month)
            except TaxiMlopsError as exc:
                self.state.bad_months[month] = str(exc)
                event = {
                    "kind": "no_retrain",
                    "event_time": now.isoformat(),
                    "model_version": self._champion(),
                    "alert": UNREADABLE_ALERT,
                    "reason": (
                        f"not retraining: month {month} landed but cannot be read ({exc}); nothing trains "
                        "on it and the champion keeps serving"
                    ),
                }
                events.append(self.memory.record(event))
                self.progress(f"autopilot: ALERT {UNREADABLE_ALERT}: {event['reason']}")
        self.memory.save()
        return events

    def _readable_again(self, now: datetime) -> tuple[list[str], list[dict[str, Any]]]:
        """Months that could not be read and now can (the file was replaced), and their timeline events.

        Each pass reads the unreadable months again: a corrupt file fails in its footer, so this
        costs little, and a replaced file lifts the block (and its alert) without anyone editing
        the loop's state.
        """
        if self.check_month is None or not self.state.bad_months:
            return [], []
        mended, events = [], []
        for month in sorted(self.state.bad_months):
            try:
                self.check_month(month)
            except TaxiMlopsError:
                continue
            del self.state.bad_months[month]
            mended.append(month)
            if self.on_month_mended is not None:
                self.on_month_mended(month)
            event = {
                "kind": "no_retrain",
                "event_time": now.isoformat(),
                "model_version": self._champion(),
                "alert_resolved": UNREADABLE_ALERT,
                "reason": (
                    f"month {month} can be read now; retraining over it is no longer refused "
                    "(this is no reason to retrain by itself)"
                ),
            }
            events.append(self.memory.record(event))
            self.progress(f"autopilot: RESOLVED {UNREADABLE_ALERT}: {event['reason']}")
        if mended:
            self.memory.save()
        return mended, events

    def _refuse_bad_months(self, decision: dict[str, Any]) -> dict[str, Any]:
        """A retraining whose windows span an unreadable month becomes a ``no_retrain`` that says so."""
        if decision["kind"] != "retrain" or not self.state.bad_months:
            return decision
        start, end = decision["train_window"][0], decision["holdout_window"][1]
        spanned = [m for m in sorted(self.state.bad_months) if start[:7] <= m <= end[:7]]
        if not spanned:
            return decision
        return {
            **decision,
            "kind": "no_retrain",
            "trigger": None,
            "reason": (
                f"not retraining although {decision['reason'].removeprefix('retraining: ')}: its windows "
                f"span {', '.join(spanned)}, which cannot be read; the champion keeps serving"
            ),
        }

    def _trained_until(self, version: str) -> datetime | None:
        """How far the version's training data reached: what the loop recorded, else its MLflow lineage."""
        known = self.state.trained_until.get(version)
        if known:
            return event_moment(known)
        from pipelines.steps.retrain_decision import champion_trained_until

        try:
            until = champion_trained_until(self.settings.tracking_uri, self.settings.model_name, version)
        except Exception as exc:  # the registry down: the age rule waits, the others still work
            self.progress(f"autopilot: cannot read how old version {version} is: {exc}")
            return None
        if until is not None:
            self.note_trained_until(version, until)
        return until

    def _champion(self) -> str | None:
        champion = load_state(self.settings.deployment_state_path).champion
        return champion.model_version if champion else None

    def _signals(self, now: datetime, wakes: Sequence[Wake]) -> Signals:
        deployed = load_state(self.settings.deployment_state_path)
        if deployed.champion is None:
            raise TaxiMlopsError("the autopilot has nothing to watch: no champion is deployed")
        champion = deployed.champion.model_version
        running = None
        if self.state.pending is not None:
            running = f"decision #{self.state.pending['seq']}"
        elif deployed.canary is not None:
            running = f"canary version {deployed.canary.model_version} is being judged"
        until = self._trained_until(champion)
        log_dir: Path = self.settings.prediction_log_dir
        log = read_prediction_log(log_dir, on_corrupt="skip") if log_dir.is_dir() else None
        labelled_until, fresh = (None, 0)
        if log is not None:
            labelled_until, fresh = labelled_since(log, read_labels(self.settings.labels_dir), until)
        requested = [wake.reason for wake in wakes if wake.source == "request"]
        return Signals(
            now=now,
            champion_version=champion,
            verdicts=champion_evidence(load_history(self.settings.monitor_dir), champion),
            champion_trained_until=until,
            labelled_until=labelled_until,
            labelled_since_training=fresh,
            last_retrain_at=event_moment(self.state.last_retrain_at) if self.state.last_retrain_at else None,
            retrain_running=running,
            requested="; ".join(requested) or None,
        )
