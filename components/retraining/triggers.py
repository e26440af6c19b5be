"""What wakes the retraining loop: new retrain-candidate alerts, a month file that landed, the schedule.

Pure functions over what the loop already read (alert records from the receiver's
``alerts.jsonl``, the month files a data source lists, the last scheduled time), so the loop
and its tests share them. None of them retrains: each only says *look now*, and the policy
(``policy.decide``) says whether to.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

#: The label the alert rules put on drift and accuracy alerts (manifests/components/monitoring/rules).
RETRAIN_LABEL: Final = ("action", "retrain-candidate")


@dataclass(frozen=True)
class Wake:
    reason: str
    source: str  # alert | new_month | schedule


def retrain_alerts(records: Sequence[Mapping[str, Any]], seen: int) -> tuple[list[Wake], int]:
    """Firing retrain-candidate alerts among ``records[seen:]``, and the new cursor (``len(records)``).

    Resolved notifications and other alerts are read past, not acted on.
    """
    key, value = RETRAIN_LABEL
    wakes = []
    for record in records[seen:]:
        labels = record.get("labels") or {}
        if labels.get(key) == value and record.get("status") == "firing":
            name, version = labels.get("alertname", "?"), labels.get("model_version", "?")
            wakes.append(Wake(f"alert {name} for model version {version}", "alert"))
    return wakes, len(records)


def new_months(available: Iterable[str], seen: Iterable[str]) -> list[Wake]:
    """A wake per month file (``YYYY-MM``) in ``available`` that was not there before, oldest first."""
    known = set(seen)
    return [
        Wake(f"month {month} landed in the data source", "new_month")
        for month in sorted(set(available) - known)
    ]


def mended_months(months: Iterable[str]) -> list[Wake]:
    """A wake per month whose file could not be read and now can: it lands only now."""
    return [
        Wake(f"month {month} landed in the data source (readable again)", "new_month") for month in months
    ]


def schedule_due(now: datetime, last: datetime | None, every: timedelta) -> Wake | None:
    """A wake when ``every`` has passed since ``last`` (event time); the first call is always due."""
    if last is None or now - last >= every:
        return Wake(f"scheduled (every {every})", "schedule")
    return None
