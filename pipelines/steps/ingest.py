"""Ingest step: fetch one side's TLC data (a month, or a window of event time) and clean it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.data.event_window import plan_from_parameters
from components.data.ingest import load_month, write_clean_trips
from components.data.window_ingest import load_window
from components.storage.s3 import S3Connection
from pipelines.steps.notes import log
from pipelines.steps.task_process import task_step

_WHAT = {"train": "training window", "val": "validation window"}


@task_step
def ingest_step(
    *,
    color: str,
    side: str,
    train_month: str,
    val_month: str,
    train_start: str,
    train_end: str,
    val_start: str,
    val_end: str,
    allow_missing_months: bool,
    data_dir: str,
    s3_uri: str,
    cache_dir: str,
    tlc_base_url: str,
    min_rows: int,
    trips_path: str,
) -> dict[str, Any]:
    """Fetch and clean ``side``'s data ("train" or "val"); returns the ingest report (also logged).

    Both ingest tasks check the whole plan first (``plan_training_data``), so a
    validation window that overlaps or precedes training fails either task before
    anything is read. A window's report (``WindowReport``) carries ``side`` and one
    report per month file; a month's is the ``IngestReport`` it always was.
    Fewer than ``min_rows`` kept rows fail the step (``IngestError`` ``too_few_rows``),
    so nothing downstream trains on, or is judged on, so little data.
    """

    plan = plan_from_parameters(train_month, val_month, train_start, train_end, val_start, val_end)
    chosen = plan.side(side)
    s3 = S3Connection.from_env() if s3_uri else None
    source = {
        "data_dir": data_dir or None,
        "s3_uri": s3_uri or None,
        "s3": s3,
        "cache_dir": cache_dir or None,
        "base_url": tlc_base_url,
        "min_rows": min_rows,
    }
    if chosen.month is not None:
        trips, month_report = load_month(color, chosen.month, **source)
        write_clean_trips(trips, Path(trips_path))
        log.info("%s", month_report.summary_line())
        return month_report.to_dict()
    trips, window_report = load_window(
        color, chosen.span, allow_missing_months=allow_missing_months, what=_WHAT[chosen.side], **source
    )
    write_clean_trips(trips, Path(trips_path))
    for line in window_report.summary_line().splitlines():
        log.info("%s", line)
    return {"side": chosen.side, **window_report.to_dict()}
