"""``taxi-mlops canary ...`` and the canary judge's wiring for ``serve``: the policy from flags, the local
judge's parts (rollout, splitter figures, folders, models), and how a decision is printed.

Kept out of ``pipelines/cli.py`` so that file stays a list of commands; ``cli.py`` adds the
``canary`` group and calls :func:`local_judge` from ``serve``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from components.canary.policy import CanaryPolicy
from components.errors import TaxiMlopsError
from components.storage.atomic_write import write_atomically
from pipelines.cli_options import field_overrides, state_dir_option
from pipelines.settings import Settings


def canary_policy_option(command: Any) -> Any:
    return click.option(
        "--canary-policy",
        "policy_overrides",
        multiple=True,
        metavar="FIELD=VALUE",
        help="Override a canary policy field (repeatable), e.g. steps=10,25,50 mae_margin=0.03 "
        "deadline_days=7 interval_seconds=10; see components/canary/policy.py.",
    )(command)


def parse_policy(overrides: Sequence[str], base: CanaryPolicy | None = None) -> CanaryPolicy:
    """The default policy with ``FIELD=VALUE`` overrides; a bad one is a usage error naming it."""
    pairs = field_overrides(overrides, "--canary-policy")
    try:
        return (base or CanaryPolicy()).with_overrides(pairs)
    except TaxiMlopsError as exc:
        raise click.BadParameter(str(exc), param_hint="--canary-policy") from exc


def local_judge(settings: Settings, url: str, policy: CanaryPolicy, progress: Any = click.echo) -> Any:
    """The canary judge loop of the local stack at ``url`` (not started)."""
    from serving.canary_judge import CanaryJudgeLoop

    actions, ops, folders, score, record = _judge_parts(settings, url)
    return CanaryJudgeLoop(actions, ops, folders, score, policy, progress=progress, on_decision=record)


def _judge_parts(settings: Settings, url: str) -> tuple[Any, Any, Any, Any, Any]:
    from serving.canary_judge import JudgeFolders, LocalRollout, SplitterOps, local_scorer
    from serving.rollout import RolloutTarget

    target = RolloutTarget(
        settings.deployment_state_path,
        settings.deployed_models_dir,
        settings.tracking_uri,
        settings.model_name,
    )
    folders = JudgeFolders(settings.prediction_log_dir, settings.labels_dir, settings.canary_dir)

    def record(decision: Mapping[str, Any], report: Path) -> None:
        # Holds are the judge waiting; a run per hold (every interval) would bury the decisions.
        if decision["action"] == "hold":
            return
        from components.registry.tracking import log_canary_decision

        log_canary_decision(
            settings.tracking_uri,
            settings.experiment,
            decision,
            settings.artifact_location,
            model_name=settings.model_name,
            report_html=report.read_text(encoding="utf-8"),
        )

    return LocalRollout(target), SplitterOps(url), folders, local_scorer(), record


def decision_lines(decision: Mapping[str, Any]) -> list[str]:
    """A recorded decision for people: verdict, action, every check, the reason."""
    lines = [
        f"canary version {decision['canary']} vs champion {decision['champion']} at {decision['percent']}%: "
        f"{str(decision['verdict']).upper()} -> {decision['action']}"
        + (f" (analysed {decision['evaluated_at']}, event time {decision.get('event_time')})"),
    ]
    for check in decision.get("checks", []):
        mark = {True: "ok", False: "FAIL", None: "wait"}[check.get("passed")]
        lines.append(f"  {check['name']:<16} {mark:<4} {check.get('detail', '')}")
    lines.append(f"  reason: {decision['reason']}")
    if decision.get("result"):
        lines.append(f"  done: {decision['result']}")
    return lines


@click.group()
def canary() -> None:
    """The canary judge: analyse the live canary, or show its last verdict."""


@canary.command()
@click.option("--url", default="http://127.0.0.1:8080", show_default=True, help="Where `serve` listens.")
@click.option("--json-out", type=click.Path(dir_okay=False, path_type=Path), help="Write the decision JSON.")
@canary_policy_option
@state_dir_option
def analyze(
    url: str, json_out: Path | None, policy_overrides: tuple[str, ...], state_dir: Path | None
) -> None:
    """Analyse the live canary now and act on the verdict; without one, show the last recorded verdict."""
    from components.canary.decision_store import last_decision
    from serving.canary_judge import REPORT_FILE, judge_once

    settings = Settings.from_env(state_dir=state_dir)
    policy = parse_policy(policy_overrides)
    actions, ops, folders, score, record = _judge_parts(settings, url)
    decision = judge_once(actions, ops, folders, score, policy, on_decision=record)
    if decision is None:
        decision = last_decision(settings.canary_dir)
        if decision is None:
            click.echo("no canary is deployed and none has been judged yet")
            return
        click.echo("no canary is live; the last recorded verdict:")
    for line in decision_lines(decision):
        click.echo(line)
    click.echo(f"page: {settings.canary_dir / REPORT_FILE}")
    if json_out is not None:
        write_atomically(json_out, json.dumps(decision, indent=2) + "\n")
        click.echo(f"decision JSON: {json_out}")
