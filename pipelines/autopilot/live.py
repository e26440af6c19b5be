"""``taxi-mlops autopilot``: the loop in the foreground, beside ``taxi-mlops serve``.

Each pass, at event time *now* (the newest event in the prediction log, so a replayed
month is judged as the real one would be):

* new ``retrain-candidate`` alerts in ``<state>/alerts/alerts.jsonl`` (written by the
  Alertmanager receiver of ``taxi-mlops observe``) wake it;
* a month file that appeared in ``--data-dir`` wakes it: its labels are joined to the
  prediction log (as ``taxi-mlops labels`` does), an unreadable one is an alert;
* every ``monitor_every`` of event time it runs the monitor on the newest window, and the
  verdict wakes it;
* ``schedule_every`` of event time wakes it (the policy's age rule then decides);
* ``--retrain-now REASON`` wakes it once, as a request.

``serve`` keeps judging the canary (its canary judge is on by default); this loop records
those actions in its timeline too. Everything the loop knows is in ``<state>/autopilot``,
so it can be stopped and started at any time.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from components.data.ingest import load_month
from components.data.trip_ids import trip_ids
from components.errors import TaxiMlopsError
from components.monitoring.labels import label_month, write_labels
from components.monitoring.prediction_log import read_prediction_log
from components.retraining.signals import event_moment
from components.retraining.triggers import Wake, new_months, retrain_alerts, schedule_due
from pipelines.autopilot.loop import Autopilot
from pipelines.settings import Settings
from pipelines.steps.monitor import MonitorRequest, WindowChoice, monitor_step
from serving.alert_receiver import ALERTS_DIR_NAME, ALERTS_FILE_NAME, AlertLog
from serving.deployment_state import load_state


@dataclass(frozen=True)
class LiveOptions:
    data_dir: Path | None = None
    color: str = "green"
    interval_seconds: float = 60.0
    monitor_every: timedelta = timedelta(hours=24)
    schedule_every: timedelta | None = None
    retrain_now: str | None = None


class LiveLoop:
    def __init__(
        self, loop: Autopilot, settings: Settings, options: LiveOptions, progress: Callable[[str], None]
    ) -> None:
        self.loop, self.settings, self.options, self.progress = loop, settings, options, progress
        self.alerts = AlertLog(settings.state_dir / ALERTS_DIR_NAME / ALERTS_FILE_NAME)
        if options.data_dir is not None:
            loop.on_month_mended = self._land_labels  # a replaced month file lands now
        self._asked = options.retrain_now
        state = loop.state
        if options.data_dir is not None and not state.months_seen and state.next_seq == 0:
            # The months already there when the loop first starts are the past, not news.
            state.months_seen.extend(self._months())
            loop.memory.save()

    def run(self, once: bool = False, stop: Callable[[], bool] = lambda: False) -> None:
        while True:
            self.step()
            if once or stop():
                return
            time.sleep(self.options.interval_seconds)

    def step(self) -> list[dict[str, Any]]:
        now = self._now()
        if now is None:
            self.progress("autopilot: no prediction has been logged yet; waiting for traffic")
            return []
        wakes: list[Wake] = []
        records = self.alerts.read()
        alerted, self.loop.state.alerts_seen = retrain_alerts(records, self.loop.state.alerts_seen)
        wakes += alerted
        if self.options.data_dir is not None:
            landed = new_months(self._months(), self.loop.state.months_seen)
            for wake in landed:
                self._land_labels(wake.reason.split()[1])
            wakes += landed
        wakes += self._monitor_if_due(now)
        if self.options.schedule_every is not None:
            last = event_moment(self.loop.state.scheduled_at) if self.loop.state.scheduled_at else None
            due = schedule_due(now, last, self.options.schedule_every)
            if due is not None:
                self.loop.state.scheduled_at = now.isoformat()
                wakes.append(due)
        if self._asked:
            wakes.append(Wake(self._asked, "request"))
            self._asked = None
        self.loop.memory.save()
        return self.loop.step(now, wakes)

    # ------------------------------------------------------------------ the parts

    def _now(self) -> datetime | None:
        folder = self.settings.prediction_log_dir
        if not folder.is_dir():
            return None
        log = read_prediction_log(folder, on_corrupt="skip")
        return event_moment(log["event_time"].max()) if len(log) else None

    def _months(self) -> list[str]:
        assert self.options.data_dir is not None
        pattern = re.compile(rf"^{self.options.color}_tripdata_(\d{{4}}-\d{{2}})\.parquet$")
        found = (pattern.match(path.name) for path in self.options.data_dir.iterdir())
        return sorted(match.group(1) for match in found if match)

    def _land_labels(self, month: str) -> None:
        """Join the month's durations to the log; an unreadable file is left to the loop's alert."""
        try:
            trips, _ = load_month(
                self.options.color, month, data_dir=self.options.data_dir, cache_dir=self.settings.cache_dir
            )
        except TaxiMlopsError:
            return
        log = read_prediction_log(self.settings.prediction_log_dir, on_corrupt="skip")
        found, coverage = label_month(log, trips, trip_ids(trips, self.options.color))
        write_labels(found, self.settings.labels_dir / f"{self.options.color}-{month}.parquet")
        self.progress(f"autopilot: labels of {self.options.color} {month}: {coverage.line()}")

    def _monitor_if_due(self, now: datetime) -> list[Wake]:
        state = self.loop.state
        if state.monitored_until and now - event_moment(state.monitored_until) < self.options.monitor_every:
            return []
        champion = load_state(self.settings.deployment_state_path).champion
        if champion is None:
            return []
        hours = self.options.monitor_every.total_seconds() / 3600
        request = MonitorRequest(
            tracking_uri=self.settings.tracking_uri,
            experiment=self.settings.experiment,
            model_name=self.settings.model_name,
            prediction_log=str(self.settings.prediction_log_dir),
            labels=str(self.settings.labels_dir),
            monitor=str(self.settings.monitor_dir),
            window=WindowChoice(last_hours=hours),
            model_version=champion.model_version,
            artifact_location=self.settings.artifact_location,
        )
        try:
            verdict = monitor_step(request).verdict
        except TaxiMlopsError as exc:
            self.progress(f"autopilot: the monitor could not judge the newest {hours:g} h: {exc}")
            return []
        state.monitored_until = now.isoformat()
        self.progress(f"autopilot: monitor verdict {verdict['verdict']} for version {champion.model_version}")
        return [Wake(f"monitor verdict {verdict['verdict']} for version {champion.model_version}", "monitor")]
