"""The canary judge's decisions as Prometheus series (text exposition format 0.0.4).

Served beside the monitor's gauges (the local splitter's ``/metrics``; on a cluster the
inference-log sink), from the judge's ``latest.json`` and ``history.jsonl``:

- ``taxi_canary_analysis_verdict{champion, canary, verdict}``: 1 for the newest analysis' verdict;
- ``taxi_canary_analysis_percent{champion, canary}``: the canary's percent after the newest action;
- ``taxi_canary_check_passed{canary, check}``: 1 passed, 0 failed, -1 not judged yet;
- ``taxi_canary_decisions_total{action}``: decisions recorded, by action (all four from the first one);
- ``taxi_canary_last_rollback_timestamp_seconds{champion, canary}``: when the newest rollback
  was decided (wall clock). The alert rule (TaxiCanaryRolledBack) fires while it is recent:
  a timestamp, not ``increase()`` on a count, because a series born at 1 -- the first
  rollback ever -- shows no increase to Prometheus;
- ``taxi_canary_last_analysis_timestamp_seconds``.

Before the first decision nothing is exposed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Final

from components.canary.decision_store import DecisionStoreError, decision_history, last_decision
from components.prometheus_text import escape_label as _escape
from components.prometheus_text import unix_seconds as _timestamp

ACTIONS: Final = ("set_percent", "promote", "rollback", "hold")
VERDICTS: Final = ("pass", "fail", "inconclusive")


def decision_metrics_text(latest: Mapping[str, Any] | None, history: Sequence[Mapping[str, Any]]) -> str:
    if latest is None:
        return ""
    champion, canary = _escape(latest.get("champion")), _escape(latest.get("canary"))
    pair = f'champion="{champion}",canary="{canary}"'
    lines = [
        "# HELP taxi_canary_analysis_verdict 1 for the newest canary analysis' verdict, 0 for the others.",
        "# TYPE taxi_canary_analysis_verdict gauge",
        *(
            f'taxi_canary_analysis_verdict{{{pair},verdict="{name}"}} {int(latest.get("verdict") == name)}'
            for name in VERDICTS
        ),
        "# HELP taxi_canary_analysis_percent The canary's share of traffic after the newest action.",
        "# TYPE taxi_canary_analysis_percent gauge",
        f"taxi_canary_analysis_percent{{{pair}}} {_percent_after(latest)}",
        "# HELP taxi_canary_check_passed Newest analysis, per check: 1 passed, 0 failed, -1 not judged yet.",
        "# TYPE taxi_canary_check_passed gauge",
    ]
    for check in latest.get("checks") or []:
        value = {True: 1, False: 0}.get(check.get("passed"), -1)
        lines.append(
            f'taxi_canary_check_passed{{canary="{canary}",check="{_escape(check.get("name"))}"}} {value}'
        )
    counts = {action: 0 for action in ACTIONS}
    last_rollback: tuple[float, Mapping[str, Any]] | None = None
    for decision in history:
        action = decision.get("action")
        if action in counts:
            counts[action] += 1
        moment = _timestamp(decision.get("evaluated_at"))
        if action == "rollback" and moment is not None:
            last_rollback = (moment, decision)
    lines += [
        "# HELP taxi_canary_decisions_total Canary decisions recorded, by action.",
        "# TYPE taxi_canary_decisions_total counter",
        *(f'taxi_canary_decisions_total{{action="{action}"}} {count}' for action, count in counts.items()),
    ]
    if last_rollback is not None:
        moment, rolled = last_rollback
        labels = f'champion="{_escape(rolled.get("champion"))}",canary="{_escape(rolled.get("canary"))}"'
        lines += [
            "# HELP taxi_canary_last_rollback_timestamp_seconds Unix time of the newest rollback.",
            "# TYPE taxi_canary_last_rollback_timestamp_seconds gauge",
            f"taxi_canary_last_rollback_timestamp_seconds{{{labels}}} {moment}",
        ]
    analysed = _timestamp(latest.get("evaluated_at"))
    if analysed is not None:
        lines += [
            "# HELP taxi_canary_last_analysis_timestamp_seconds When the newest analysis ran (Unix time).",
            "# TYPE taxi_canary_last_analysis_timestamp_seconds gauge",
            f"taxi_canary_last_analysis_timestamp_seconds {analysed}",
        ]
    return "\n".join(lines) + "\n"


def _percent_after(decision: Mapping[str, Any]) -> int:
    action = decision.get("action")
    if action == "rollback":
        return 0
    if action == "promote":
        return 100
    next_percent = decision.get("next_percent")
    return int(next_percent if next_percent is not None else decision.get("percent") or 0)


def decision_metrics_from(directory: str | os.PathLike[str]) -> str:
    """The series of the decisions stored in ``directory`` ("" before the first one or if unreadable)."""
    try:
        latest = last_decision(directory)
    except DecisionStoreError:
        return ""
    return decision_metrics_text(latest, decision_history(directory) if latest is not None else [])
