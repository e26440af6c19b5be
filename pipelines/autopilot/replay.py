"""``taxi-mlops autopilot --replay A:B``: the closed loop walked through real months in event time.

From nothing (a fresh workspace with its own registry and deployment state):

1. train on the first month the folder holds (:func:`baselines.month_recipe`: all but its
   last days, validated on those) and deploy that model as the champion;
2. start the local serving stack and replay each following month's trips through it as
   live traffic, in pickup order, one *tick* of event time at a time;
3. after each tick: land the labels of trips that ended ``label_delay`` ago; every
   ``monitor_every`` run the monitor on the newest labelled window; when a canary is live
   let the canary judge analyse it; and step the autopilot loop (:mod:`pipelines.autopilot.loop`),
   which decides, retrains and records;
4. at the end: the served predictions against the two baselines (:mod:`.baselines`) on the
   same labelled trips, week by week, and the timeline document + page.

Event time is the replay's clock: it moves only when a tick's traffic has been sent, and a
retraining runs inside a step, so the traffic waits for it. The canary's steps run on the
traffic that follows. Nothing else reads the wall clock: the splitter places each trip by a hash
of its id, the judge runs on the event clock and scores pairs in event order, and latency is
recorded, not judged (:data:`REPLAY_CANARY_POLICY`). So the timeline is the same on a fast
machine and a slow one, and on every run: two runs of the test's congested months, side by side
on two cores, wrote identical timelines, weekly rows and summaries.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.canary.policy import CanaryPolicy, Step
from components.data.ingest import load_month
from components.data.tlc_source import trip_file_name
from components.data.trip_ids import trip_ids
from components.errors import TaxiMlopsError
from components.features.trip_features import TARGET_COLUMN
from components.models.duration_model import MODEL_FILE_NAME, TripDurationModel, load_duration_model
from components.monitoring.labels import write_labels
from components.monitoring.prediction_log import read_prediction_log
from components.monitoring.verdict_store import load_history
from components.retraining.policy import RetrainingPolicy
from components.retraining.signals import event_moment
from components.retraining.timeline import weekly_rmse
from components.retraining.triggers import Wake
from components.storage.atomic_write import write_atomically
from pipelines.autopilot.baselines import fit_baseline, month_recipe
from pipelines.autopilot.loop import Autopilot, readable_month
from pipelines.autopilot.serve_process import ServeProcess
from pipelines.local_run import RunRequest, run_pipeline_locally
from pipelines.settings import Settings
from pipelines.steps.monitor import MonitorRequest, WindowChoice, monitor_step
from serving.canary_judge import JudgeFolders, LocalRollout, SplitterOps, judge_once, local_scorer
from serving.deployment_state import load_state
from serving.replay import replay_trips
from serving.rollout import RolloutTarget

_INPUTS = ["PULocationID", "DOLocationID", "trip_distance"]


#: The canary policy of a replay: the default's checks with sample minimums for a green taxi
#: month (~2,600 trips a day): 20% until the canary has answered 500 trips, then 50% until
#: 500 more and 1,000 labelled pairs spanning a day -- about two days of event time. The span:
#: a challenger 8% better over the month was 21% worse on a Saturday morning's 600 pairs.
REPLAY_CANARY_POLICY = CanaryPolicy(
    steps=(Step(20, min_requests=500, min_labelled=0), Step(50, min_requests=500, min_labelled=1_000)),
    promote_min_labelled=1_000,
    min_pair_span_hours=24.0,
    # A replay judges the model on event time. Its latency is this machine's wall clock, shared
    # with the replay's own training runs: judged, it made the timeline depend on the machine
    # (three replays on two cores rolled an accurate canary back at 173.8 vs 28.8 ms p99).
    # The p99s are still recorded; errors are still judged. Production judges latency.
    judge_latency=False,
)


class AutopilotReplayError(TaxiMlopsError, ValueError):
    """A replay that cannot start: a bad month range, no months in the folder, a used workspace."""


@dataclass(frozen=True)
class ReplayPlan:
    months: tuple[str, ...]  # every month of the range, gaps included; missing files are skipped
    data_dir: Path
    color: str = "green"
    label_delay: timedelta = timedelta(days=1)
    tick: timedelta = timedelta(hours=6)
    monitor_every: timedelta = timedelta(days=1)
    monitor_window: timedelta = timedelta(days=1)
    #: Days at the end of a month a month-trained model (the first, the scheduled baseline) is validated on.
    holdout_days: float = 7.0
    rate: float = 400.0
    candidates: Sequence[Mapping[str, Any]] | None = None
    policy: RetrainingPolicy = field(default_factory=RetrainingPolicy)
    canary_policy: CanaryPolicy = REPLAY_CANARY_POLICY
    canary_percent: int = 20
    min_rows: int = 1_000

    @staticmethod
    def month_range(text: str) -> tuple[str, ...]:
        """``"2021-01:2021-03"`` -> every month from the first to the last, inclusive."""
        first, sep, last = text.partition(":")
        try:
            start, end = pd.Period(first, "M"), pd.Period(last if sep else first, "M")
        except ValueError:
            raise AutopilotReplayError(
                f"--replay {text!r}: give FIRST:LAST months as YYYY-MM:YYYY-MM"
            ) from None
        if end <= start:
            raise AutopilotReplayError(
                f"--replay {text!r}: the range needs at least two months, first before last"
            )
        return tuple(str(p) for p in pd.period_range(start, end, freq="M"))


@dataclass
class _Clock:
    now: datetime
    monitored_at: datetime | None = None


def run_replay(
    plan: ReplayPlan, settings: Settings, progress: Callable[[str], None] = print
) -> dict[str, Any]:
    """Walk ``plan`` with the loop in charge; returns the timeline document."""
    present = [m for m in plan.months if (plan.data_dir / trip_file_name(plan.color, m)).exists()]
    if len(present) < 2:
        raise AutopilotReplayError(
            f"{plan.data_dir}: holds {len(present)} of the {plan.color} months "
            f"{plan.months[0]}..{plan.months[-1]}; "
            "the replay needs one to train on and one to replay"
        )
    if settings.deployment_state_path.exists():
        raise AutopilotReplayError(f"{settings.state_dir}: already used; a replay starts from nothing")
    first, replayed = present[0], present[1:]
    started = time.monotonic()
    progress(
        f"autopilot replay: train on {first}, replay {', '.join(replayed)} ({plan.color}, {plan.data_dir})"
    )
    base = RunRequest(
        color=plan.color,
        data_dir=str(plan.data_dir),
        candidates=plan.candidates,
        min_rows=plan.min_rows,
        canary_percent=plan.canary_percent,
    )
    recipe = month_recipe(first, plan.holdout_days)
    summary = run_pipeline_locally(
        settings,
        dataclasses.replace(base, train_window=recipe.train, val_window=recipe.holdout),
        progress=lambda line: None,
    )
    if not summary.get("model_version"):
        raise AutopilotReplayError(
            f"the first model (trained on {first}) was not registered: {summary['gate']}"
        )
    first_version = str(summary["model_version"])
    winner = {row["name"]: row["rmse"] for row in summary["candidates"]}.get(summary["winner"], float("nan"))
    progress(
        f"first model: version {first_version} ({summary['winner']}, holdout RMSE {winner:.3f}), "
        "deployed as the champion"
    )
    loop = Autopilot(
        settings,
        base,
        plan.policy,
        check_month=readable_month(plan.color, plan.data_dir, settings.cache_dir),
        progress=progress,
    )
    loop.note_trained_until(first_version, recipe.holdout.end)
    loop.state.months_seen.append(first)
    never_retrain = _served_model(settings)
    scheduled: dict[str, TripDurationModel] = {}
    served: list[pd.DataFrame] = []
    target = RolloutTarget(
        settings.deployment_state_path,
        settings.deployed_models_dir,
        settings.tracking_uri,
        settings.model_name,
    )
    with ServeProcess(settings) as stack:
        judge = _Judge(target, stack.url, settings, plan.canary_policy)
        clock = _Clock(now=recipe.holdout.end)
        labels = _Labels(settings, plan.color)
        previous = first
        for month in replayed:
            trips = _month_traffic(plan, settings, month, loop, clock)
            if trips is None:
                continue
            scheduled[month] = (
                never_retrain if previous == first else _scheduled_model(plan, previous, progress)
            )
            previous = month
            loop.step(
                clock.now, [Wake(f"month {_month_before(month)} landed in the data source", "new_month")]
            )
            served.append(trips)
            labels.add(month, trips)
            _replay_month(plan, settings, stack, judge, loop, clock, labels, trips, progress)
        loop.step(clock.now, [Wake(f"month {replayed[-1]} landed in the data source", "new_month")])
    document = _timeline_document(plan, settings, loop, served, never_retrain, scheduled, first, started)
    return document


# ---------------------------------------------------------------------- traffic, labels, monitor


def _month_traffic(
    plan: ReplayPlan, settings: Settings, month: str, loop: Autopilot, clock: _Clock
) -> pd.DataFrame | None:
    """The month's cleaned trips in pickup order with their ids, or None when its file cannot be read."""
    try:
        trips, _ = load_month(plan.color, month, data_dir=plan.data_dir, cache_dir=settings.cache_dir)
    except TaxiMlopsError:
        # The loop names the problem as an alert (check_month) when the month "lands".
        loop.step(clock.now, [Wake(f"month {month} landed in the data source", "new_month")])
        return None
    trips = trips.assign(request_id=trip_ids(trips, plan.color), month=month)
    trips = trips.sort_values("pickup_datetime", kind="stable").reset_index(drop=True)
    trips["ends_at"] = trips["pickup_datetime"] + pd.to_timedelta(trips[TARGET_COLUMN], unit="min")
    return trips


def _replay_month(
    plan: ReplayPlan,
    settings: Settings,
    stack: ServeProcess,
    judge: _Judge,
    loop: Autopilot,
    clock: _Clock,
    labels: _Labels,
    trips: pd.DataFrame,
    progress: Callable[[str], None],
) -> None:
    month_start = pd.Timestamp(f"{trips['month'].iloc[0]}-01")
    month_end = month_start + pd.offsets.MonthBegin(1)
    edges = pd.date_range(month_start, month_end, freq=plan.tick, inclusive="both")
    pickups = trips["pickup_datetime"]
    for t0, t1 in itertools.pairwise(edges):
        chunk = trips[(pickups >= t0) & (pickups < t1)]
        if len(chunk):
            summary = replay_trips(stack.url, chunk, chunk["request_id"].tolist(), rate=plan.rate)
            if summary.failed:
                progress(f"  {t0:%Y-%m-%d %H:%M}: {summary.failed} of {summary.sent} requests failed")
        clock.now = t1.to_pydatetime()
        labels.land(clock.now - plan.label_delay)
        wakes = _monitor_if_due(plan, settings, clock, progress)
        judge.analyse_if_live(clock.now)
        before = _deployed(settings)
        loop.step(clock.now, wakes)
        if _deployed(settings) != before:
            stack.wait_routed()  # a canary came or went: traffic waits for its predictor


class _Labels:
    """Ground truth landing late: a trip's duration is known ``label_delay`` after it ended.

    One labels file per month (the name ``taxi-mlops labels`` writes), replaced whenever more
    of its trips have landed; a month's last trips land during the next month's ticks.
    """

    def __init__(self, settings: Settings, color: str) -> None:
        self.settings, self.color = settings, color
        self.months: dict[str, tuple[pd.DataFrame, int]] = {}

    def add(self, month: str, trips: pd.DataFrame) -> None:
        self.months[month] = (trips, 0)

    def land(self, frontier: datetime) -> None:
        for month, (trips, landed) in list(self.months.items()):
            ended = trips["ends_at"] < frontier
            count = int(ended.sum())
            if count == landed:
                continue
            write_labels(
                trips.loc[ended, ["request_id", TARGET_COLUMN]].reset_index(drop=True),
                self.settings.labels_dir / f"{self.color}-{month}.parquet",
            )
            self.months[month] = (trips, count)


def _monitor_if_due(
    plan: ReplayPlan, settings: Settings, clock: _Clock, progress: Callable[[str], None]
) -> list[Wake]:
    frontier = clock.now - plan.label_delay
    if clock.monitored_at is not None and clock.now - clock.monitored_at < plan.monitor_every:
        return []
    clock.monitored_at = clock.now
    champion = load_state(settings.deployment_state_path).champion
    assert champion is not None
    request = MonitorRequest(
        tracking_uri=settings.tracking_uri,
        experiment=settings.experiment,
        model_name=settings.model_name,
        prediction_log=str(settings.prediction_log_dir),
        labels=str(settings.labels_dir),
        monitor=str(settings.monitor_dir),
        window=WindowChoice(since=frontier - plan.monitor_window, until=frontier),
        model_version=champion.model_version,
        artifact_location=settings.artifact_location,
    )
    try:
        verdict = monitor_step(request).verdict
    except TaxiMlopsError as exc:
        progress(f"  monitor at {clock.now:%Y-%m-%d %H:%M}: {exc}")
        return []
    accuracy = verdict.get("accuracy") or {}
    rmse = accuracy.get("rmse")
    progress(
        f"  {clock.now:%Y-%m-%d %H:%M} monitor v{champion.model_version}: {verdict['verdict']}"
        + (f" (RMSE {rmse:.3f} vs {accuracy.get('baseline_rmse', float('nan')):.3f})" if rmse else "")
    )
    return [Wake(f"monitor verdict {verdict['verdict']} for version {champion.model_version}", "monitor")]


class _Judge:
    """The canary judge, called by the replay after each tick (not on a wall-clock timer)."""

    def __init__(self, target: RolloutTarget, url: str, settings: Settings, policy: CanaryPolicy) -> None:
        self.actions = LocalRollout(target)
        self.ops = SplitterOps(url)
        self.folders = JudgeFolders(settings.prediction_log_dir, settings.labels_dir, settings.canary_dir)
        self.score = local_scorer()
        self.policy = policy

    def analyse_if_live(self, event_now: datetime) -> None:
        if self.actions.state().canary is None:
            return
        judge_once(self.actions, self.ops, self.folders, self.score, self.policy, event_now=event_now)


def _deployed(settings: Settings) -> tuple[str | None, str | None, int]:
    state = load_state(settings.deployment_state_path)
    return (
        state.champion.model_version if state.champion else None,
        state.canary.model_version if state.canary else None,
        state.canary_percent,
    )


def _served_model(settings: Settings) -> TripDurationModel:
    champion = load_state(settings.deployment_state_path).champion
    assert champion is not None
    return load_duration_model(Path(champion.model_uri) / MODEL_FILE_NAME, champion.sha256)


def _scheduled_model(plan: ReplayPlan, month: str, progress: Callable[[str], None]) -> TripDurationModel:
    model, scored = fit_baseline(
        plan.color, month_recipe(month, plan.holdout_days), plan.data_dir, plan.candidates
    )
    progress(
        f"  scheduled baseline: retrained on {month} ({scored['candidate']}, holdout RMSE "
        f"{scored['holdout_rmse']:.3f})"
    )
    return model


def _month_before(month: str) -> str:
    return str(pd.Period(month, "M") - 1)


# ---------------------------------------------------------------------- the timeline


def _timeline_document(
    plan: ReplayPlan,
    settings: Settings,
    loop: Autopilot,
    served: Sequence[pd.DataFrame],
    never_retrain: TripDurationModel,
    scheduled: Mapping[str, TripDurationModel],
    first: str,
    started: float,
) -> dict[str, Any]:
    decisions = [_public(event) for event in loop.memory.timeline()]
    trips = pd.concat(served, ignore_index=True) if served else pd.DataFrame()
    weekly: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    if len(trips):
        log = read_prediction_log(settings.prediction_log_dir, on_corrupt="skip")
        first_answer = log.drop_duplicates("request_id", keep="first")[
            ["request_id", "minutes", "model_version"]
        ]
        joined = trips.merge(first_answer, on="request_id", how="inner")
        inputs = joined[_INPUTS]
        predictions = {
            "served": joined["minutes"].to_numpy(dtype=np.float64),
            "never_retrain": never_retrain.predict(inputs),
            "scheduled": np.empty(len(joined)),
        }
        for month, model in scheduled.items():
            mask = (joined["month"] == month).to_numpy()
            if mask.any():
                predictions["scheduled"][mask] = model.predict(inputs[mask])
        actual = joined[TARGET_COLUMN].to_numpy(dtype=np.float64)
        weekly = weekly_rmse(joined["pickup_datetime"], actual, predictions, min_trips=100)
        summary = _summary(joined, actual, predictions, decisions, plan)
    monitor = [_monitor_row(v) for v in load_history(settings.monitor_dir)]
    return {
        "replay": {
            "months": [str(frame["month"].iloc[0]) for frame in served],  # the months replayed as traffic
            "range": list(plan.months),
            "trained_on": first,
            "color": plan.color,
            "data_dir": str(plan.data_dir),
            "label_delay_hours": plan.label_delay.total_seconds() / 3600,
            "tick_hours": plan.tick.total_seconds() / 3600,
            "monitor_every_hours": plan.monitor_every.total_seconds() / 3600,
            "monitor_window_hours": plan.monitor_window.total_seconds() / 3600,
            "policy": plan.policy.to_dict(),
            "canary_policy": plan.canary_policy.to_dict(),
            "workspace": str(settings.state_dir),
            "wall_seconds": round(time.monotonic() - started, 1),
        },
        "decisions": decisions,
        "weekly": weekly,
        "monitor": monitor,
        "alerts": [
            {"event_time": d["event_time"], "name": d["alert"], "reason": d["reason"]}
            for d in decisions
            if d.get("alert")
        ],
        "summary": summary,
    }


def _public(event: Mapping[str, Any]) -> dict[str, Any]:
    keep = (
        "event_time",
        "kind",
        "reason",
        "model_version",
        "trigger",
        "passed",
        "challenger_version",
        "percent",
        "alert",
        "train_window",
        "holdout_window",
        "seq",
        "decision_seq",
    )
    return {key: event[key] for key in keep if key in event and event[key] is not None}


def _rmse(actual: np.ndarray, predicted: np.ndarray) -> float:
    return float(np.sqrt(np.mean((predicted - actual) ** 2))) if actual.size else float("nan")


def _summary(
    joined: pd.DataFrame,
    actual: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    decisions: Sequence[Mapping[str, Any]],
    plan: ReplayPlan,
) -> dict[str, Any]:
    def rmses(mask: np.ndarray) -> dict[str, Any]:
        return {
            "trips": int(mask.sum()),
            **{f"{name}_rmse": _rmse(actual[mask], values[mask]) for name, values in predictions.items()},
        }

    everything = rmses(np.ones(len(actual), dtype=bool))
    pickups = joined["pickup_datetime"]
    by_month = {m: rmses((joined["month"] == m).to_numpy()) for m in sorted(joined["month"].unique())}
    promotions = []
    for event in decisions:
        if event["kind"] != "promote" or not event.get("event_time"):
            continue
        at = pd.Timestamp(event["event_time"])
        month_end = at.to_period("M").to_timestamp() + pd.offsets.MonthBegin(1)
        promotions.append(
            {
                "at": event["event_time"],
                "since": event["event_time"],
                "model_version": event.get("model_version"),
                "until": month_end.isoformat(),
                **rmses(((pickups >= at) & (pickups < month_end)).to_numpy()),
            }
        )
    shift = _shift(plan.data_dir)
    shift_to_promotion = None
    if shift is not None:
        later = [p for p in promotions if pd.Timestamp(p["at"]) >= shift["start"]]
        if later:
            shift_to_promotion = (pd.Timestamp(later[0]["at"]) - shift["start"]).total_seconds() / 86_400
    return {
        **everything,
        "by_month": by_month,
        "promotions": promotions,
        # From the first promotion after the shift (or the first at all) to the end of its month.
        "after_promotion": _first_after(promotions, shift["start"] if shift else None),
        "shift": {"month": shift["month"], "start": shift["start"].isoformat()} if shift else None,
        "shift_to_promotion_days": shift_to_promotion,
    }


def _first_after(
    promotions: Sequence[Mapping[str, Any]], start: pd.Timestamp | None
) -> Mapping[str, Any] | None:
    later = [p for p in promotions if start is None or pd.Timestamp(p["at"]) >= start]
    return later[0] if later else None


def _shift(data_dir: Path) -> dict[str, Any] | None:
    """The injected shift ``scripts/make_shifted_month.py`` recorded in the folder, if any."""
    try:
        recorded = json.loads((data_dir / "SHIFT.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None
    found = re.search(r"_tripdata_(\d{4}-\d{2})\.parquet$", str(recorded.get("file", "")))
    month = found.group(1) if found else None
    return {"month": month, "start": pd.Timestamp(f"{month}-01")} if month else None


def _monitor_row(verdict: Mapping[str, Any]) -> dict[str, Any]:
    features = (verdict.get("drift") or {}).get("features") or {}
    scores = [
        f["effect"] / f["min_effect"]
        for f in features.values()
        if f.get("effect") is not None and f.get("min_effect")
    ]
    accuracy = verdict.get("accuracy") or {}
    segments = verdict.get("segments") or {}
    window = verdict.get("window") or {}
    end = window.get("end")
    return {
        "event_time": event_moment(end).isoformat() if end else None,
        "window_start": window.get("start"),
        "window_end": end,
        "verdict": verdict.get("verdict"),
        "model_version": verdict.get("model_version"),
        "rmse": accuracy.get("rmse"),
        "baseline_rmse": accuracy.get("baseline_rmse"),
        "labelled": accuracy.get("labelled"),
        "drift_score": max(scores) if scores else None,
        "zone_score": (
            segments["statistic"] / segments["threshold"] if segments.get("statistic") is not None else None
        ),
    }


def write_timeline(document: Mapping[str, Any], path: Path) -> None:
    write_atomically(path, json.dumps(document, indent=2, default=str) + "\n")


def timeline_lines(document: Mapping[str, Any]) -> list[str]:
    """The timeline for people: each decision but the quiet ones, then the three RMSEs."""
    lines = ["timeline (event time):"]
    quiet = 0
    for event in document["decisions"]:
        if event["kind"] == "no_retrain" and not event.get("alert"):
            quiet += 1
            continue
        if quiet:
            lines.append(f"  ... {quiet} x no_retrain")
            quiet = 0
        version = event.get("model_version") or "-"
        lines.append(
            f"  {event.get('event_time') or '?':<19}  {event['kind']:<11} v{version:<3} {event['reason']}"
        )
    if quiet:
        lines.append(f"  ... {quiet} x no_retrain")
    summary = document.get("summary") or {}
    if summary:
        lines.append(
            f"RMSE on {summary['trips']} served trips: served {summary['served_rmse']:.3f}, never retrain "
            f"{summary['never_retrain_rmse']:.3f}, scheduled {summary['scheduled_rmse']:.3f}"
        )
        for promotion in summary.get("promotions", []):
            lines.append(
                f"after v{promotion['model_version']} was promoted at {promotion['at']}, to the month's end "
                f"({promotion['trips']} trips): served {promotion['served_rmse']:.3f}, never retrain "
                f"{promotion['never_retrain_rmse']:.3f}, scheduled {promotion['scheduled_rmse']:.3f}"
            )
        if summary.get("shift_to_promotion_days") is not None:
            lines.append(
                f"shift at {summary['shift']['start']} -> first promotion after it: "
                f"{summary['shift_to_promotion_days']:.1f} days of event time"
            )
    return lines
