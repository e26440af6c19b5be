"""Ingest step: fetch one TLC month and clean it into the trips dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.data.ingest import load_month, write_clean_trips
from components.storage.s3 import S3Connection
from pipelines.steps.notes import log
from pipelines.steps.task_process import task_step


@task_step
def ingest_step(
    *,
    color: str,
    month: str,
    data_dir: str,
    s3_uri: str,
    cache_dir: str,
    tlc_base_url: str,
    min_rows: int,
    trips_path: str,
) -> dict[str, Any]:
    """Fetch and clean one month; returns the ingest report (also logged as one line).

    Fewer than ``min_rows`` kept rows fail the step (``IngestError`` ``too_few_rows``),
    so nothing downstream trains on, or is judged on, such a month.
    """

    s3 = S3Connection.from_env() if s3_uri else None
    trips, report = load_month(
        color,
        month,
        data_dir=data_dir or None,
        s3_uri=s3_uri or None,
        s3=s3,
        cache_dir=cache_dir or None,
        base_url=tlc_base_url,
        min_rows=min_rows,
    )
    write_clean_trips(trips, Path(trips_path))
    log.info("%s", report.summary_line())
    return report.to_dict()
