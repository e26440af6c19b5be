"""Read the trips of a window of event time from every TLC month file it spans.

Months stay the unit of download and cache (``tlc_source``); a window only chooses
which files to read and which of their trips to keep. Each file is cleaned with
ingest's rules plus ``pickup_outside_window`` (``ingest.apply_rules``), and gets its
own ``IngestReport`` (rows read, dropped per rule, kept), so a bad file is as easy
to spot in a window's log as in a month's.

Missing months. Every month the window touches must be there, unless the caller
allows gaps: a window that silently lost a third of its trips would train a
different model than the one asked for, and nothing downstream could tell. With
``allow_missing_months`` a month whose file does not exist (``file_not_found``,
from a folder or a bucket) is skipped and listed in the report's
``months_missing``; a window with no month at all is still an error. Only absence
is a gap: a file that is there but unreadable (corrupt, truncated, wrong columns)
or a download that failed stops the load whatever the caller allows, because the
month exists and its trips are simply not known.

Row minimum. ``min_rows`` applies to the window as a whole (a window that takes the
last day of one month and the first weeks of the next keeps few rows from the
first file, rightly). A file with no valid trip of its own month at all, before
the window is applied, is still ``no_rows_left``: that is a broken file, not a
window edge.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from components.data.cleaning_rules import RULES
from components.data.event_window import EventWindow
from components.data.ingest import (
    PICKUP_OUTSIDE_WINDOW,
    IngestReport,
    apply_rules,
    check_min_rows,
    read_trip_file,
)
from components.data.tlc_schema import COLORS
from components.data.tlc_source import resolve_trip_file
from components.errors import IngestError
from components.names import TLC_BASE_URL
from components.storage.checksums import file_sha256
from components.storage.s3 import S3Connection

#: The rules of a window's files, in the order they are applied.
WINDOW_RULES: tuple[str, ...] = (
    *RULES[: RULES.index("pickup_outside_month") + 1],
    PICKUP_OUTSIDE_WINDOW,
    *RULES[RULES.index("pickup_outside_month") + 1 :],
)
_RULES_BEFORE_WINDOW = WINDOW_RULES[: WINDOW_RULES.index(PICKUP_OUTSIDE_WINDOW)]


@dataclass(frozen=True)
class WindowReport:
    """What one window ingest did: its span, the files it read (one report each) and the totals."""

    color: str
    start: str  # ISO date-time, inclusive
    end: str  # ISO date-time, exclusive
    months: list[str]  # every month the window touches
    months_missing: list[str] = field(default_factory=list)  # skipped (allow_missing_months)
    files: list[IngestReport] = field(default_factory=list)
    rows_read: int = 0
    rows_dropped: dict[str, int] = field(default_factory=dict)
    rows_kept: int = 0

    @property
    def window(self) -> str:
        """The span as the CLI writes it (``2021-02-01:2021-03-03``)."""
        return str(EventWindow(datetime.fromisoformat(self.start), datetime.fromisoformat(self.end)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy (for MLflow params/artifacts and KFP metadata)."""
        return asdict(self)

    def summary_line(self) -> str:
        """One log line for the window, then one per file (``IngestReport.summary_line``)."""
        dropped = ", ".join(f"{rule}={count}" for rule, count in self.rows_dropped.items())
        missing = f"; missing months skipped: {', '.join(self.months_missing)}" if self.months_missing else ""
        head = (
            f"{self.color} window {self.window}: read {self.rows_read} from {len(self.files)} file(s), "
            f"kept {self.rows_kept}, dropped {self.rows_read - self.rows_kept} ({dropped}){missing}"
        )
        return "\n".join([head, *(f"  {report.summary_line()}" for report in self.files)])


def load_window(
    color: str,
    window: EventWindow,
    *,
    data_dir: Path | str | None = None,
    s3_uri: str | None = None,
    s3: S3Connection | None = None,
    cache_dir: Path | str | None = None,
    base_url: str = TLC_BASE_URL,
    min_rows: int = 1,
    allow_missing_months: bool = False,
    what: str = "window",
) -> tuple[pd.DataFrame, WindowReport]:
    """The cleaned trips with ``window.start <= pickup < window.end``, from every month file it spans.

    Sources as ``load_month`` (``resolve_trip_file``). ``what`` names the window in
    errors ("training window"). Rows come in month order, each file's in file order,
    so a window of one whole month is ``load_month``'s frame exactly.
    """
    label = f"{color} {what} {window}"
    if color not in COLORS:
        raise IngestError(label, "bad_request", f"color must be one of {', '.join(COLORS)}, not {color!r}")
    check_min_rows(min_rows, label)
    frames: list[pd.DataFrame] = []
    reports: list[IngestReport] = []
    missing: list[str] = []
    for month in window.months():
        try:
            resolved = resolve_trip_file(
                color, month, data_dir=data_dir, s3_uri=s3_uri, s3=s3, cache_dir=cache_dir, base_url=base_url
            )
        except IngestError as exc:
            if exc.rule != "file_not_found":
                raise
            if not allow_missing_months:
                raise IngestError(
                    exc.source,
                    "missing_month",
                    f"the {what} {window} spans {color} {month}, which is missing ({exc.detail}); "
                    "allow_missing_months (--allow-missing-months) reads the months that are there",
                ) from None  # its detail is in ours; a chained one would be logged first
            missing.append(month)
            continue
        raw = read_trip_file(resolved.path, color)
        source = str(resolved.path)
        clean, dropped = apply_rules(raw, color, month, source, window=(window.start, window.end))
        if sum(dropped[rule] for rule in _RULES_BEFORE_WINDOW) == len(raw):
            counts = ", ".join(f"{rule}={dropped[rule]}" for rule in _RULES_BEFORE_WINDOW)
            detail = f"none of the {len(raw)} rows is a valid {color} {month} trip ({counts})"
            raise IngestError(source, "no_rows_left", detail)
        frames.append(clean)
        reports.append(
            IngestReport(
                source=resolved.source,
                sha256=file_sha256(resolved.path),
                color=color,
                month=month,
                rows_read=len(raw),
                rows_dropped=dropped,
                rows_kept=len(clean),
            )
        )
    if not reports:
        raise IngestError(label, "missing_month", f"no month of the window is present: {', '.join(missing)}")
    totals = {rule: sum(report.rows_dropped[rule] for report in reports) for rule in WINDOW_RULES}
    trips = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    report = WindowReport(
        color=color,
        start=window.start.isoformat(),
        end=window.end.isoformat(),
        months=list(window.months()),
        months_missing=missing,
        files=reports,
        rows_read=sum(r.rows_read for r in reports),
        rows_dropped=totals,
        rows_kept=len(trips),
    )
    _check_rows(trips, report, label, min_rows)
    return trips, report


def _check_rows(trips: pd.DataFrame, report: WindowReport, label: str, min_rows: int) -> None:
    counts = ", ".join(f"{rule}={n}" for rule, n in report.rows_dropped.items())
    if trips.empty:
        months = ", ".join(r.month for r in report.files)
        detail = f"all {report.rows_read} rows of {months} were dropped ({counts})"
        raise IngestError(label, "no_rows_left", detail)
    if len(trips) < min_rows:
        detail = (
            f"kept {len(trips)} of {report.rows_read} rows after cleaning ({counts}), "
            f"fewer than min_rows={min_rows}, the least a window needs to train or evaluate on"
        )
        raise IngestError(label, "too_few_rows", detail)
