"""Where monitor verdicts are kept: the newest one, and every one in order.

A folder (locally ``<state>/deployment/monitor/``; on a cluster the same files
under ``names.MONITOR_URI`` in MinIO) holding

- ``latest.json``: the newest verdict document (``components.monitoring.monitor``),
  replaced atomically, so a reader never sees half of one. The Prometheus gauges
  (``verdict_metrics``) and the canary judge read it;
- ``history.jsonl``: one verdict per line, appended and fsync'd. A killed writer
  can leave a partial last line; readers skip a line that is not JSON rather than
  lose the history before it.

Each stored verdict carries ``evaluated_at`` (UTC, ISO 8601), the wall-clock time
the monitor ran: Prometheus alerts on a monitor that stopped running by it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from components.errors import TaxiMlopsError
from components.storage.json_records import append_record, read_records, write_latest

LATEST_FILE: Final = "latest.json"
HISTORY_FILE: Final = "history.jsonl"
VERDICTS: Final = ("ok", "drift", "degraded", "insufficient_data")


class VerdictStoreError(TaxiMlopsError, ValueError):
    """A verdict file that exists but cannot be read as a verdict (names the file)."""


def stamped(document: Mapping[str, Any], now: datetime | None = None) -> dict[str, Any]:
    """``document`` with ``evaluated_at`` set (kept if it already has one)."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return {"evaluated_at": moment.isoformat(timespec="seconds"), **document}


def save_verdict(directory: str | os.PathLike[str], document: Mapping[str, Any]) -> dict[str, Any]:
    """Append the verdict to the history, then make it the latest; returns it as stored."""
    if document.get("verdict") not in VERDICTS:
        raise VerdictStoreError(f"verdict {document.get('verdict')!r} is not one of {', '.join(VERDICTS)}")
    folder = Path(directory)
    stored = stamped(document)
    # History first: a crash between the two leaves the latest one behind the history,
    # never a latest verdict the history does not have.
    append_record(folder / HISTORY_FILE, stored)
    write_latest(folder / LATEST_FILE, stored)
    return stored


def load_latest(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The newest verdict, or None when the monitor has not run yet."""
    path = Path(directory) / LATEST_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise VerdictStoreError(f"{path}: cannot read the latest verdict: {exc}") from exc
    return parse_verdict(text, str(path))


def parse_verdict(text: str, source: str) -> dict[str, Any]:
    """One verdict document from JSON text; :class:`VerdictStoreError` naming ``source`` if it is not one."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise VerdictStoreError(f"{source}: not JSON ({exc})") from exc
    if not isinstance(document, dict) or document.get("verdict") not in VERDICTS:
        raise VerdictStoreError(f"{source}: not a monitor verdict (no 'verdict' of {', '.join(VERDICTS)})")
    return document


def load_history(directory: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every readable verdict in the order they were made (a torn or foreign line is skipped)."""
    return read_records(Path(directory) / HISTORY_FILE, parse_verdict)
