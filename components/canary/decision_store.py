"""Where the canary judge's decisions are kept: the newest one, and every one in order.

A folder (locally ``<state>/deployment/canary/``; on a cluster the same files under the
monitoring bucket) with ``history.jsonl`` (appended, fsync'd) and ``latest.json``
(replaced atomically) -- the mechanics of ``components.storage.json_records``. The
judge writes them; ``status``, ``canary analyze``, the decision page and the
Prometheus series (``decision_metrics``) read them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from components.errors import TaxiMlopsError
from components.storage.json_records import append_record, read_records, write_latest

HISTORY_FILE: Final = "history.jsonl"
LATEST_FILE: Final = "latest.json"


class DecisionStoreError(TaxiMlopsError, ValueError):
    """A decision file that exists but cannot be read (names the file)."""


def save_decision(directory: str | os.PathLike[str], decision: Mapping[str, Any]) -> None:
    """Append the decision to the history, then make it the latest (a crash between leaves the
    latest one behind the history, never ahead of it)."""
    folder = Path(directory)
    append_record(folder / HISTORY_FILE, decision)
    write_latest(folder / LATEST_FILE, decision)


def last_decision(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The newest recorded decision, or None before the first analysis."""
    path = Path(directory) / LATEST_FILE
    try:
        return _parse(path.read_text(encoding="utf-8"), str(path))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DecisionStoreError(f"{path}: cannot read the latest canary decision: {exc}") from exc


def decision_history(
    directory: str | os.PathLike[str], canary_version: str | None = None
) -> list[dict[str, Any]]:
    """Every readable decision in order (of one canary version, when given); torn lines are skipped."""
    records = read_records(Path(directory) / HISTORY_FILE, _parse)
    return [r for r in records if canary_version is None or str(r.get("canary")) == canary_version]


def _parse(text: str, source: str) -> dict[str, Any]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DecisionStoreError(f"{source}: not JSON ({exc})") from exc
    if not isinstance(document, dict) or "verdict" not in document or "action" not in document:
        raise DecisionStoreError(f"{source}: not a canary decision (no verdict and action)")
    return document
