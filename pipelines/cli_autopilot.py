"""``taxi-mlops autopilot``: the retraining loop in the foreground, or its replay through real months."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import click

from components.errors import TaxiMlopsError
from components.retraining.policy import RetrainingPolicy
from pipelines.cli_canary import canary_policy_option, parse_policy
from pipelines.cli_options import field_overrides, parse_candidates, state_dir_option
from pipelines.settings import Settings


def _policy(overrides: Sequence[str]) -> RetrainingPolicy:
    pairs = field_overrides(overrides, "--policy")
    try:
        return RetrainingPolicy().with_overrides(pairs)
    except TaxiMlopsError as exc:
        raise click.BadParameter(str(exc), param_hint="--policy") from exc


@click.command()
@click.option(
    "--replay",
    "replay_range",
    metavar="FIRST:LAST",
    help="Replay these months (YYYY-MM:YYYY-MM) from nothing: train on the first the folder holds, serve "
    "the rest as live traffic in accelerated event time, and let the loop act.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Folder of TLC parquet files: the replay's months, and the live loop's data source.",
)
@click.option("--color", type=click.Choice(["green", "yellow"]), default="green", show_default=True)
@click.option(
    "--timeline-out", type=click.Path(dir_okay=False, path_type=Path), help="Write the timeline JSON here."
)
@click.option(
    "--html-out", type=click.Path(dir_okay=False, path_type=Path), help="Write the timeline page here."
)
@click.option(
    "--label-delay-hours",
    type=click.FloatRange(min=0),
    default=24.0,
    show_default=True,
    help="Event hours between a trip's end and its label landing.",
)
@click.option(
    "--tick-hours",
    type=click.FloatRange(min=0.25),
    default=6.0,
    show_default=True,
    help="Event hours of traffic between two looks of the loop.",
)
@click.option(
    "--monitor-hours",
    type=click.FloatRange(min=1),
    default=24.0,
    show_default=True,
    help="Event hours between monitor runs, and the labelled window each judges.",
)
@click.option("--rate", type=click.FloatRange(min=1), default=400.0, show_default=True, help="Requests/s.")
@click.option(
    "--candidates",
    "candidate_names",
    help="Comma-separated candidate models for every training (default: the pipeline's).",
)
@click.option(
    "--policy",
    "retraining_overrides",
    multiple=True,
    metavar="FIELD=VALUE",
    help="Retraining policy override, e.g. --policy drift_windows=5 (see components/retraining/policy.py).",
)
@click.option(
    "--interval",
    "interval_seconds",
    type=click.FloatRange(min=1),
    default=60.0,
    show_default=True,
    help="Live loop: wall-clock seconds between passes.",
)
@click.option("--once", is_flag=True, help="Live loop: one pass, then exit (for cron, or to look).")
@click.option(
    "--schedule-days",
    type=click.FloatRange(min=0, min_open=True),
    help="Live loop: wake every N days of event time (the policy's age rule then decides).",
)
@click.option(
    "--retrain-now", metavar="REASON", help="Live loop: ask for a retraining now, with this reason."
)
@canary_policy_option
@click.option(
    "--workspace",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the replay keeps its registry, deployment and timeline (default: a new folder under the "
    "state dir's autopilot-replays/).",
)
@state_dir_option
def autopilot(
    replay_range: str | None,
    data_dir: Path | None,
    color: str,
    timeline_out: Path | None,
    html_out: Path | None,
    label_delay_hours: float,
    tick_hours: float,
    monitor_hours: float,
    rate: float,
    candidate_names: str | None,
    retraining_overrides: tuple[str, ...],
    policy_overrides: tuple[str, ...],
    interval_seconds: float,
    once: bool,
    schedule_days: float | None,
    retrain_now: str | None,
    workspace: Path | None,
    state_dir: Path | None,
) -> None:
    """The closed loop, beside `taxi-mlops serve`: monitor verdicts, retrain-candidate alerts, new
    month files and the schedule wake it; it retrains when the retraining policy says so, and
    serve's canary judge promotes or rolls back what passed the gate. Every decision is recorded
    with its reason in <state>/autopilot/timeline.jsonl.

    With --replay FIRST:LAST it proves itself instead: from nothing, through the months of
    --data-dir in accelerated event time, against two baselines on the same trips."""
    policy = _policy(retraining_overrides)
    from pipelines.autopilot.replay import REPLAY_CANARY_POLICY

    canary_policy = parse_policy(policy_overrides, REPLAY_CANARY_POLICY)
    candidates = None
    if candidate_names:
        candidates = parse_candidates(candidate_names, ())
    if replay_range is None:
        from pipelines.autopilot.live import LiveOptions

        options = LiveOptions(
            data_dir=data_dir.resolve() if data_dir else None,
            color=color,
            interval_seconds=interval_seconds,
            monitor_every=timedelta(hours=monitor_hours),
            schedule_every=timedelta(days=schedule_days) if schedule_days else None,
            retrain_now=retrain_now,
        )
        _live(options, candidates, policy, state_dir, once)
        return
    if data_dir is None:
        raise click.UsageError("--replay needs --data-dir: the folder holding the months to replay")
    _replay(
        replay_range,
        data_dir,
        color,
        timeline_out,
        html_out,
        timedelta(hours=label_delay_hours),
        timedelta(hours=tick_hours),
        timedelta(hours=monitor_hours),
        rate,
        candidates,
        policy,
        canary_policy,
        workspace,
        state_dir,
    )


def _live(
    options: Any,
    candidates: list[dict[str, Any]] | None,
    policy: RetrainingPolicy,
    state_dir: Path | None,
    once: bool,
) -> None:
    from pipelines.autopilot.live import LiveLoop
    from pipelines.autopilot.loop import AUTOPILOT_DIR_NAME, Autopilot, readable_month
    from pipelines.local_run import RunRequest

    settings = Settings.from_env(state_dir=state_dir)
    base = RunRequest(
        color=options.color,
        data_dir=str(options.data_dir) if options.data_dir else None,
        candidates=candidates,
    )
    loop = Autopilot(
        settings,
        base,
        policy,
        check_month=(
            None
            if options.data_dir is None
            else readable_month(options.color, Path(options.data_dir), settings.cache_dir)
        ),
        progress=click.echo,
    )
    click.echo(
        f"autopilot: watching {settings.state_dir} (timeline: {settings.state_dir / AUTOPILOT_DIR_NAME}); "
        + ("one pass" if once else f"a pass every {options.interval_seconds:g} s, Ctrl-C stops")
    )
    try:
        LiveLoop(loop, settings, options, click.echo).run(once=once)
    except KeyboardInterrupt:
        click.echo("autopilot: stopped (its state is on disk; start it again to carry on)")


def _replay(
    replay_range: str,
    data_dir: Path,
    color: str,
    timeline_out: Path | None,
    html_out: Path | None,
    label_delay: timedelta,
    tick: timedelta,
    monitor: timedelta,
    rate: float,
    candidates: list[dict[str, Any]] | None,
    policy: RetrainingPolicy,
    canary_policy: Any,
    workspace: Path | None,
    state_dir: Path | None,
) -> None:
    import dataclasses

    from components.retraining.report import render_timeline_report
    from components.storage.atomic_write import write_atomically
    from pipelines.autopilot.replay import ReplayPlan, run_replay, timeline_lines, write_timeline

    plan = ReplayPlan(
        months=ReplayPlan.month_range(replay_range),
        data_dir=data_dir.resolve(),
        color=color,
        label_delay=label_delay,
        tick=tick,
        monitor_every=monitor,
        monitor_window=monitor,
        rate=rate,
        candidates=candidates,
        policy=policy,
        canary_policy=canary_policy,
    )
    base = Settings.from_env(state_dir=state_dir)
    folder = (workspace or _new_workspace(base.state_dir / "autopilot-replays")).resolve()
    # Its own registry and deployment: a replay starts from nothing and touches nothing else.
    settings = dataclasses.replace(base, state_dir=folder, tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    click.echo(f"workspace: {folder}")
    document = run_replay(plan, settings, progress=click.echo)
    for line in timeline_lines(document):
        click.echo(line)
    timeline_path = timeline_out or folder / "timeline.json"
    write_timeline(document, timeline_path)
    page = html_out or folder / "timeline.html"
    write_atomically(page, render_timeline_report(document))
    click.echo(f"timeline JSON: {timeline_path}")
    click.echo(f"timeline page: {page}")
    if document.get("summary"):
        click.echo(json.dumps({k: v for k, v in document["summary"].items() if k.endswith("_rmse")}))


def _new_workspace(parent: Path) -> Path:
    """A folder of its own for this replay: two replays started in the same second must not share
    a registry (they did, and the second's MLflow migration failed on the first's database)."""
    parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for attempt in range(100):
        folder = parent / (stamp if attempt == 0 else f"{stamp}-{attempt}")
        try:
            folder.mkdir()  # atomic: exactly one process creates it
        except FileExistsError:
            continue
        return folder
    raise click.ClickException(f"{parent}: no free workspace name for {stamp}")
