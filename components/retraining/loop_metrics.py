"""The local autopilot's memory as Prometheus series (text exposition format 0.0.4).

Served beside the monitor's and the canary judge's series on the local traffic splitter's
``/metrics``, read from the autopilot folder (``state.json`` + ``timeline.jsonl``,
``components.retraining.loop_state``) at each scrape, so the alert rules in
``manifests/components/monitoring/rules/`` see what the loop decided without the loop
serving anything itself:

- ``taxi_autopilot_unreadable_months``: how many month files landed but cannot be read;
- ``taxi_autopilot_unreadable_month{month}``: 1 per such month (TaxiTrainingDataUnreadable);
  the reason is in ``state.json``'s ``bad_months``, too long and free-form for a label;
- ``taxi_autopilot_retraining_running``: 1 while a retraining decision is being carried out
  (``pending``), so one that never ends is an alert (TaxiRetrainingStuck);
- ``taxi_autopilot_decisions_total{kind}``: timeline events by kind, every kind from the first
  event on (a series born at its first count shows Prometheus no increase);
- ``taxi_autopilot_last_decision_event_time_seconds``: the newest event's *event* time -- the
  data's clock (a replay's, or the newest logged trip), not the wall clock, so it says how far
  the loop got in the data, not how long ago it ran;
- ``taxi_autopilot_state_readable``: 0 when the folder cannot be read, with nothing else
  claimed about it (TaxiAutopilotStateUnreadable).

The state is read the way the loop reads it on a restart (:meth:`LoopMemory.load`: a decision
that reached the timeline but not the state counts as pending). Before the loop's first write
only ``taxi_autopilot_state_readable 1`` is exposed. The cluster loop keeps its decisions in
S3 (``<monitor>/autopilot/decisions.jsonl``, pipelines/steps/retrain_decision.py) and has no
such folder: these series are local only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from components.prometheus_text import escape_label as _escape
from components.prometheus_text import unix_seconds as _timestamp
from components.retraining.loop_state import LoopMemory, LoopState, LoopStateError

#: The timeline's event kinds (pipelines/autopilot/loop.py): the loop's decisions and their outcomes,
#: and the canary judge's actions it copies in. Other kinds are not counted: the label stays bounded.
KINDS: Final = ("retrain", "no_retrain", "gate", "canary_step", "promote", "rollback")


def loop_metrics_text(
    state: LoopState | None, timeline: Sequence[Mapping[str, Any]], *, readable: bool = True
) -> str:
    """The series of ``state`` and its ``timeline``; of no autopilot yet when ``state`` is None."""
    lines = [
        "# HELP taxi_autopilot_state_readable 0 when the autopilot's state or timeline cannot be read.",
        "# TYPE taxi_autopilot_state_readable gauge",
        f"taxi_autopilot_state_readable {1 if readable else 0}",
    ]
    if state is None or not readable:
        return "\n".join(lines) + "\n"
    months = sorted(state.bad_months)
    lines += [
        "# HELP taxi_autopilot_unreadable_months Month files that landed but cannot be read.",
        "# TYPE taxi_autopilot_unreadable_months gauge",
        f"taxi_autopilot_unreadable_months {len(months)}",
        "# HELP taxi_autopilot_unreadable_month 1 for each month file that landed but cannot be read.",
        "# TYPE taxi_autopilot_unreadable_month gauge",
        *(f'taxi_autopilot_unreadable_month{{month="{_escape(month)}"}} 1' for month in months),
        "# HELP taxi_autopilot_retraining_running 1 while a retraining decision is being carried out.",
        "# TYPE taxi_autopilot_retraining_running gauge",
        f"taxi_autopilot_retraining_running {0 if state.pending is None else 1}",
    ]
    counts = {kind: 0 for kind in KINDS}
    newest: tuple[int, float] | None = None  # (seq, event time) of the newest timed event
    for event in timeline:
        kind = event.get("kind")
        if kind in counts:
            counts[kind] += 1
        moment, seq = _timestamp(event.get("event_time")), event.get("seq")
        if moment is not None and isinstance(seq, int) and (newest is None or seq > newest[0]):
            newest = (seq, moment)
    lines += [
        "# HELP taxi_autopilot_decisions_total Autopilot timeline events (decisions and outcomes), by kind.",
        "# TYPE taxi_autopilot_decisions_total counter",
        *(f'taxi_autopilot_decisions_total{{kind="{kind}"}} {count}' for kind, count in counts.items()),
    ]
    if newest is not None:
        lines += [
            "# HELP taxi_autopilot_last_decision_event_time_seconds Event time of the newest timeline "
            "event (the data's clock, Unix time).",
            "# TYPE taxi_autopilot_last_decision_event_time_seconds gauge",
            f"taxi_autopilot_last_decision_event_time_seconds {newest[1]}",
        ]
    return "\n".join(lines) + "\n"


def read_loop_memory(folder: str | os.PathLike[str]) -> tuple[LoopState | None, list[dict[str, Any]]]:
    """The state as the loop would load it and the timeline; (None, []) before the loop's first write.

    Raises LoopStateError when either file cannot be read or the state's fields are not what the
    loop writes (it would fail on them itself).
    """
    memory = LoopMemory(Path(folder))
    try:
        state = memory.load()
        timeline = memory.timeline()
    except LoopStateError:
        raise
    except (OSError, ValueError) as exc:  # unreadable bytes, a folder where a file should be, a bad seq
        raise LoopStateError(f"{folder}: the autopilot's memory cannot be read ({exc})") from exc
    if not memory.state_path.exists() and not timeline:
        return None, []
    if not isinstance(state.bad_months, Mapping):
        raise LoopStateError(f"{memory.state_path}: bad_months is not a month -> reason mapping")
    if state.pending is not None and not isinstance(state.pending, Mapping):
        raise LoopStateError(f"{memory.state_path}: pending is neither null nor a decision")
    return state, timeline


def loop_metrics_from(folder: str | os.PathLike[str]) -> str:
    """The series of the autopilot folder ``folder`` (``taxi_autopilot_state_readable 0`` if unreadable)."""
    try:
        state, timeline = read_loop_memory(folder)
    except LoopStateError:
        return loop_metrics_text(None, [], readable=False)
    return loop_metrics_text(state, timeline)
