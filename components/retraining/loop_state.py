"""The autopilot's memory on disk: its timeline of decisions and the cursors that say what it has acted on.

Two files in one folder:

* ``timeline.jsonl`` -- every decision and outcome, one JSON line each, appended and
  fsync'd *before* anything acts on it, each with a sequence number ``seq``;
* ``state.json`` -- replaced atomically after the acting: the cursors (alerts read,
  months seen, canary analyses copied, the last monitor window), the last retraining's
  start, and the ``pending`` retraining decision while one runs.

A process killed anywhere in between restarts consistently: a decision that reached the
timeline but not the state (:meth:`LoopMemory.load`) is re-applied, so a retraining decision
becomes pending again and is carried out once -- never decided twice, never lost. A
retraining that was running when the process died is resumed from ``pending``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from components.errors import TaxiMlopsError
from components.storage.json_records import append_record, read_records, write_latest

TIMELINE_FILE: Final = "timeline.jsonl"
STATE_FILE: Final = "state.json"


class LoopStateError(TaxiMlopsError, ValueError):
    """The autopilot's state file cannot be read (names the file and what is wrong)."""


@dataclass
class LoopState:
    next_seq: int = 0
    alerts_seen: int = 0  # records of the receiver's alerts.jsonl already read
    months_seen: list[str] = field(default_factory=list)  # month files already met (YYYY-MM)
    bad_months: dict[str, str] = field(default_factory=dict)  # month -> why it cannot be read
    canary_seen: int = 0  # canary analyses (history.jsonl) already copied into the timeline
    monitored_until: str | None = None  # end of the newest window the loop had judged
    scheduled_at: str | None = None  # event time of the last schedule wake
    last_retrain_at: str | None = None  # event time the newest retraining started
    pending: dict[str, Any] | None = None  # the retraining decision being carried out
    trained_until: dict[str, str] = field(default_factory=dict)  # model version -> end of its data

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LoopMemory:
    """The timeline and the state of one autopilot folder."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.timeline_path = self.folder / TIMELINE_FILE
        self.state_path = self.folder / STATE_FILE
        self.state = LoopState()

    def load(self) -> LoopState:
        """Read the state, then re-apply what the timeline holds beyond it (a kill between the two)."""
        try:
            text = self.state_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            text = None
        if text is not None:
            try:
                document = json.loads(text)
                self.state = LoopState(**document)
            except (ValueError, TypeError) as exc:
                raise LoopStateError(
                    f"{self.state_path}: not an autopilot state ({exc}); move it aside to start afresh"
                ) from exc
        for event in self.timeline():
            if int(event.get("seq", -1)) >= self.state.next_seq:
                self._apply(event)
        return self.state

    def timeline(self) -> list[dict[str, Any]]:
        return read_records(self.timeline_path, _parse_event)

    def record(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """Append ``event`` with the next ``seq`` (durable before this returns) and apply it to the state."""
        stamped = {**event, "seq": self.state.next_seq}
        append_record(self.timeline_path, stamped)
        self._apply(stamped)
        return stamped

    def save(self) -> None:
        write_latest(self.state_path, self.state.to_dict())

    def _apply(self, event: Mapping[str, Any]) -> None:
        state = self.state
        state.next_seq = max(state.next_seq, int(event["seq"]) + 1)
        kind = event.get("kind")
        if kind == "retrain":
            state.pending = dict(event)
            state.last_retrain_at = str(event.get("event_time"))
        elif (
            kind == "gate" and state.pending is not None and event.get("decision_seq") == state.pending["seq"]
        ):
            state.pending = None
            challenger, until = event.get("challenger_version"), event.get("trained_until")
            if challenger and until:
                state.trained_until[str(challenger)] = str(until)


def _parse_event(text: str, source: str) -> dict[str, Any]:
    event = json.loads(text)
    if not isinstance(event, dict) or "kind" not in event or "seq" not in event:
        raise ValueError(f"{source}: not a timeline event")
    return event
