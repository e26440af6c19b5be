"""Read one month of TLC trips, clean it with counted rules, and report what happened.

Pure functions (no kfp imports) so the pipeline step, the CLI and the tests share
exactly one implementation of the course's data preparation.

Cleaning rules, applied in this order; a row is counted under the first rule it
fails, so the counts add up to ``rows_read - rows_kept``:

1. ``missing_values``: a null in pickup, dropoff, either zone id or trip_distance;
2. ``zone_out_of_range``: a pickup or dropoff zone id outside the TLC zones 1..265;
3. ``distance_out_of_range``: a trip_distance that is not finite, negative, or beyond
   500 miles (real months hold meter glitches of 100,000+ miles);
4. ``pickup_outside_month``: real files carry stray pickups (2009, the last minutes
   of the previous month, the next month) that do not belong to the requested month;
5. ``duration_out_of_range``: keep 1 <= duration minutes <= 60, the course's rule.

Rules 2 and 3 are the predictor's own input rules (``components.features.trip_domain``,
the one definition): a model is trained only on trips it would agree to answer.

Why this order: first whether a field is there at all (a null is "missing", never
"out of range"), then whether each field's value is a possible trip (zones, then
distance, the order the predictor checks a request in), both properties of the row
whatever month was asked for; then whether the row belongs to the requested month;
last the label (duration), which is derived from two timestamps and is the course's
training rule rather than a validity rule. So a stray 2009 pickup with a valid record
counts as ``pickup_outside_month``, and a record that no month could use (zone 0,
an infinite distance) counts as invalid data wherever its pickup falls.

A window of event time over several month files (``components.data.window_ingest``)
cleans each file with these same rules plus ``pickup_outside_window``, counted right
after ``pickup_outside_month`` (see ``apply_rules``).

After the rules, a month must keep at least ``min_rows`` rows (``too_few_rows``):
a handful of surviving trips would otherwise train a model, pass the gate against
no champion, and be deployed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from components.data.cleaning_rules import (
    MAX_DURATION_MINUTES,
    MIN_DURATION_MINUTES,
    RULES,
)
from components.data.tlc_schema import (
    CLEAN_COLUMNS,
    DO_LOCATION,
    DROPOFF,
    DURATION,
    NORMALIZED_COLUMNS,
    PICKUP,
    PU_LOCATION,
    TRIP_DISTANCE,
    check_request,
    describe_missing,
    missing_columns,
    month_bounds,
    normalize_trips,
    required_columns,
)
from components.data.tlc_source import resolve_trip_file
from components.errors import IngestError
from components.features.trip_domain import distances_in_domain, location_ids_in_domain
from components.names import TLC_BASE_URL
from components.storage.checksums import file_sha256
from components.storage.s3 import S3Connection

#: The rule a window of event time adds after ``pickup_outside_month`` (see ``apply_rules``).
PICKUP_OUTSIDE_WINDOW: Final = "pickup_outside_window"

# Arrow schema of the cleaned dataset handed between pipeline tasks.
CLEAN_SCHEMA: Final = pa.schema(
    [
        pa.field(PICKUP, pa.timestamp("ns")),
        pa.field(PU_LOCATION, pa.string()),
        pa.field(DO_LOCATION, pa.string()),
        pa.field(TRIP_DISTANCE, pa.float64()),
        pa.field(DURATION, pa.float64()),
    ]
)


@dataclass(frozen=True)
class IngestReport:
    """What one ingest did: enough to reproduce it and to spot a bad month in a log."""

    source: str
    sha256: str
    color: str
    month: str
    rows_read: int
    rows_dropped: dict[str, int] = field(default_factory=dict)
    rows_kept: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy (for MLflow params/artifacts and KFP metadata)."""
        return asdict(self)

    def summary_line(self) -> str:
        """One log line: counts per rule and the file digest prefix."""
        dropped = ", ".join(f"{rule}={count}" for rule, count in self.rows_dropped.items())
        return (
            f"{self.color} {self.month}: read {self.rows_read}, kept {self.rows_kept}, "
            f"dropped {self.rows_read - self.rows_kept} ({dropped}) "
            f"from {self.source} sha256={self.sha256[:12]}"
        )


def load_month(
    color: str,
    month: str,
    *,
    data_dir: Path | str | None = None,
    s3_uri: str | None = None,
    s3: S3Connection | None = None,
    cache_dir: Path | str | None = None,
    base_url: str = TLC_BASE_URL,
    min_rows: int = 1,
) -> tuple[pd.DataFrame, IngestReport]:
    """Locate, read and clean one month; see ``resolve_trip_file`` for the sources.

    ``min_rows``: see ``clean_trips``. The pipeline passes its parameter ``min_rows``
    (default ``cleaning_rules.DEFAULT_MIN_ROWS``); the library's own default of 1 only
    refuses a month with no rows left, for callers that sample small files on purpose.
    """
    check_request(color, month)
    resolved = resolve_trip_file(
        color, month, data_dir=data_dir, s3_uri=s3_uri, s3=s3, cache_dir=cache_dir, base_url=base_url
    )
    raw = read_trip_file(resolved.path, color)
    clean, dropped = clean_trips(raw, color, month, str(resolved.path), min_rows=min_rows)
    report = IngestReport(
        source=resolved.source,
        sha256=file_sha256(resolved.path),
        color=color,
        month=month,
        rows_read=len(raw),
        rows_dropped=dropped,
        rows_kept=len(clean),
    )
    return clean, report


def read_trip_file(path: Path, color: str) -> pd.DataFrame:
    """Read only the required columns of a TLC parquet file (a yellow month is ~3M rows x 19)."""
    source = str(path)
    if not path.is_file():
        raise IngestError(source, "file_not_found", "no such file")
    try:
        parquet = pq.ParquetFile(path)
        names = parquet.schema_arrow.names
        if missing_columns(color, names):
            raise IngestError(source, "missing_columns", describe_missing(color, names))
        if parquet.metadata.num_rows == 0:
            raise IngestError(source, "empty_file", "the parquet file holds 0 rows")
        table = parquet.read(columns=list(required_columns(color)))
    except (pa.ArrowException, OSError) as exc:
        raise IngestError(source, "corrupt_parquet", f"not a readable parquet file: {exc}") from exc
    return table.to_pandas()


def clean_trips(
    raw: pd.DataFrame, color: str, month: str, source: str, *, min_rows: int = 1
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Normalize a raw TLC frame and apply the cleaning rules in order.

    ``raw`` has the TLC's own column names for ``color`` (any publication year's
    dtypes). Returns the clean frame (columns ``CLEAN_COLUMNS``, fresh index) and
    rows dropped per rule, every rule present, in rule order. ``source`` names the
    data in error messages. Raises ``IngestError`` ``no_rows_left`` when no row
    survives, and ``too_few_rows`` when fewer than ``min_rows`` do.
    """
    check_request(color, month)
    check_min_rows(min_rows, source)
    trips, dropped = apply_rules(raw, color, month, source)
    counts = ", ".join(f"{rule}={n}" for rule, n in dropped.items())
    if trips.empty:
        detail = f"all {len(raw)} rows of {color} {month} were dropped ({counts})"
        raise IngestError(source, "no_rows_left", detail)
    if len(trips) < min_rows:
        detail = (
            f"kept {len(trips)} of {len(raw)} rows of {color} {month} after cleaning ({counts}), "
            f"fewer than min_rows={min_rows}, the least a month needs to train or evaluate on"
        )
        raise IngestError(source, "too_few_rows", detail)
    return trips, dropped


def check_min_rows(min_rows: object, source: str) -> None:
    if isinstance(min_rows, bool) or not isinstance(min_rows, int) or min_rows < 1:
        detail = f"min_rows must be a whole number of at least 1, not {min_rows!r}"
        raise IngestError(source, "bad_request", detail)


def apply_rules(
    raw: pd.DataFrame,
    color: str,
    month: str,
    source: str,
    window: tuple[datetime, datetime] | None = None,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """The cleaning rules alone, no row-count check: the clean frame and the drops per rule.

    With ``window`` (``[start, end)`` of pickup time) the rule ``pickup_outside_window``
    runs right after ``pickup_outside_month`` and before the label rule: the month
    rule still decides which file a trip belongs to (so a window over several files
    never holds a trip twice, and a window of a whole month is that month exactly),
    then the window keeps its own part of the month. Without it, the rule is absent
    and the report is the month's as it always was.
    """
    check_request(color, month)
    if raw.empty:
        raise IngestError(source, "empty_file", "no rows to clean")
    trips = normalize_trips(raw, color, source)
    start, end = month_bounds(month)
    checks: dict[str, Callable[[pd.DataFrame], pd.Series]] = {
        "missing_values": lambda df: df[list(NORMALIZED_COLUMNS)].notna().all(axis=1),
        "zone_out_of_range": lambda df: _zone_in_domain(df[PU_LOCATION]) & _zone_in_domain(df[DO_LOCATION]),
        "distance_out_of_range": lambda df: pd.Series(distances_in_domain(df[TRIP_DISTANCE]), index=df.index),
        "pickup_outside_month": lambda df: (df[PICKUP] >= start) & (df[PICKUP] < end),
        "duration_out_of_range": lambda df: df[DURATION].between(MIN_DURATION_MINUTES, MAX_DURATION_MINUTES),
    }
    rules = list(RULES)
    if window is not None:
        since, until = pd.Timestamp(window[0]), pd.Timestamp(window[1])
        checks[PICKUP_OUTSIDE_WINDOW] = lambda df: (df[PICKUP] >= since) & (df[PICKUP] < until)
        rules.insert(rules.index("pickup_outside_month") + 1, PICKUP_OUTSIDE_WINDOW)
    trips[DURATION] = (trips[DROPOFF] - trips[PICKUP]).dt.total_seconds() / 60.0
    dropped: dict[str, int] = {}
    for rule in rules:
        keep = checks[rule](trips)
        dropped[rule] = int((~keep).sum())
        trips = trips[keep]
    clean = trips.loc[:, list(CLEAN_COLUMNS)].reset_index(drop=True)
    clean[DURATION] = clean[DURATION].astype("float64")
    return clean, dropped


def _zone_in_domain(ids: pd.Series) -> pd.Series:
    """``trip_domain.location_ids_in_domain`` for a column of id strings ("130"), nulls False.

    Only the few hundred distinct strings are parsed (a yellow month has ~3M rows and
    parsing every one costs seconds); a string that is not a number is outside the domain.
    """
    codes, uniques = pd.factorize(ids)
    numbers = pd.to_numeric(pd.Series(uniques, dtype=object), errors="coerce").to_numpy(dtype="float64")
    valid = location_ids_in_domain(numbers)
    return pd.Series((codes >= 0) & valid[codes], index=ids.index)


def write_clean_trips(df: pd.DataFrame, path: Path | str) -> Path:
    """Write a cleaned frame as parquet with an explicit schema (dtypes survive the hop)."""
    out = Path(path)
    lacking = [c for c in CLEAN_COLUMNS if c not in df.columns]
    if lacking:
        raise IngestError(str(out), "missing_columns", f"clean trips lack {', '.join(lacking)}")
    table = pa.Table.from_pandas(df.loc[:, list(CLEAN_COLUMNS)], schema=CLEAN_SCHEMA, preserve_index=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out)
    return out


def read_clean_trips(path: Path | str) -> pd.DataFrame:
    """Read what ``write_clean_trips`` wrote, with the same dtypes as ``clean_trips`` returns."""
    src = Path(path)
    if not src.is_file():
        raise IngestError(str(src), "file_not_found", "no such clean-trips file")
    try:
        names = pq.read_schema(src).names
        lacking = [c for c in CLEAN_COLUMNS if c not in names]
        if lacking:
            raise IngestError(str(src), "missing_columns", f"clean trips lack {', '.join(lacking)}")
        table = pq.read_table(src, columns=list(CLEAN_COLUMNS)).cast(CLEAN_SCHEMA)
    except (pa.ArrowException, OSError) as exc:
        raise IngestError(str(src), "corrupt_parquet", f"not a readable parquet file: {exc}") from exc
    return table.to_pandas()
