"""What a TLC trip file must contain, and how its columns become one canonical frame.

The TLC has changed dtypes between publication years (int64 -> int32 location ids,
double -> int64 passenger counts, null-typed -> double ``ehail_fee``) and the two
taxi colors name their timestamps differently. Everything downstream of ingest sees
only the canonical names and dtypes defined here, whatever file they came from.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
import pandas as pd

from components.errors import IngestError
from components.features.trip_features import TARGET_COLUMN

Color = Literal["green", "yellow"]
COLORS: Final[tuple[str, ...]] = ("green", "yellow")

_MONTH_RE: Final = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")

# Canonical names used after normalization (the course's names for the model inputs).
PICKUP: Final = "pickup_datetime"
DROPOFF: Final = "dropoff_datetime"
PU_LOCATION: Final = "PULocationID"
DO_LOCATION: Final = "DOLocationID"
TRIP_DISTANCE: Final = "trip_distance"
DURATION: Final = TARGET_COLUMN  # the label, named where the features are defined

NORMALIZED_COLUMNS: Final[tuple[str, ...]] = (PICKUP, DROPOFF, PU_LOCATION, DO_LOCATION, TRIP_DISTANCE)
CLEAN_COLUMNS: Final[tuple[str, ...]] = (PICKUP, PU_LOCATION, DO_LOCATION, TRIP_DISTANCE, DURATION)


@dataclass(frozen=True)
class TripColumns:
    """Source column names of the fields ingest needs, for one taxi color."""

    pickup: str
    dropoff: str
    pu_location: str = PU_LOCATION
    do_location: str = DO_LOCATION
    trip_distance: str = TRIP_DISTANCE

    def required(self) -> tuple[str, ...]:
        """Columns in file order of importance; all must be present."""
        return (self.pickup, self.dropoff, self.pu_location, self.do_location, self.trip_distance)

    def rename_map(self) -> dict[str, str]:
        """Source name -> canonical name."""
        return dict(zip(self.required(), NORMALIZED_COLUMNS, strict=True))


TRIP_COLUMNS: Final[dict[str, TripColumns]] = {
    # Green cabs are "LPEP" (Livery Passenger Enhancement Program) meters.
    "green": TripColumns(pickup="lpep_pickup_datetime", dropoff="lpep_dropoff_datetime"),
    # Yellow cabs are "TPEP" (Taxicab Passenger Enhancement Program) meters.
    "yellow": TripColumns(pickup="tpep_pickup_datetime", dropoff="tpep_dropoff_datetime"),
}


def check_request(color: str, month: str) -> None:
    """Reject a color or month the TLC does not publish under, before any I/O."""
    source = f"request(color={color!r}, month={month!r})"
    if color not in COLORS:
        raise IngestError(source, "bad_request", f"color must be one of {', '.join(COLORS)}, not {color!r}")
    if not isinstance(month, str) or not _MONTH_RE.match(month):
        raise IngestError(source, "bad_request", f"month must be YYYY-MM (e.g. 2021-01), not {month!r}")


def month_bounds(month: str) -> tuple[pd.Timestamp, pd.Timestamp]:
    """[start, end) of a YYYY-MM month, as naive timestamps (TLC times are local, no zone)."""
    start = pd.Timestamp(f"{month}-01")
    return start, start + pd.offsets.MonthBegin(1)


def required_columns(color: str) -> tuple[str, ...]:
    """Source columns ingest reads for ``color``."""
    return TRIP_COLUMNS[color].required()


def missing_columns(color: str, present: Iterable[str]) -> list[str]:
    """Required columns absent from ``present``, in required order."""
    have = set(present)
    return [c for c in required_columns(color) if c not in have]


def describe_missing(color: str, present: Iterable[str]) -> str:
    """Error detail for missing columns, with a hint when the file is the other color."""
    have = set(present)
    missing = missing_columns(color, have)
    detail = f"{color} trip file lacks required column(s): {', '.join(missing)}"
    for other, cols in TRIP_COLUMNS.items():
        if other != color and cols.pickup in have:
            detail += f" (it has {cols.pickup}: this looks like a {other} taxi file)"
    return detail


def normalize_trips(raw: pd.DataFrame, color: str, source: str) -> pd.DataFrame:
    """Select the required columns of ``raw`` and give them canonical names and dtypes.

    Nulls survive normalization on purpose: dropping them is a counted cleaning rule,
    not a silent side effect of a dtype cast.
    """
    if missing_columns(color, raw.columns):
        raise IngestError(source, "missing_columns", describe_missing(color, raw.columns))
    cols = TRIP_COLUMNS[color]
    frame = raw.loc[:, list(cols.required())].rename(columns=cols.rename_map())
    return pd.DataFrame(
        {
            PICKUP: to_datetime_ns(frame[PICKUP], cols.pickup, source),
            DROPOFF: to_datetime_ns(frame[DROPOFF], cols.dropoff, source),
            PU_LOCATION: location_ids_to_str(frame[PU_LOCATION], cols.pu_location, source),
            DO_LOCATION: location_ids_to_str(frame[DO_LOCATION], cols.do_location, source),
            TRIP_DISTANCE: to_float64(frame[TRIP_DISTANCE], cols.trip_distance, source),
        }
    ).reset_index(drop=True)


def to_datetime_ns(values: pd.Series, column: str, source: str) -> pd.Series:
    """Any naive timestamp unit -> datetime64[ns].

    TLC files hold garbage dates (2009, sometimes far future). Values outside the ns
    range are clamped to its edges rather than nulled, so they are later dropped and
    counted as out-of-month / out-of-range trips, not as missing values.
    """
    if not pd.api.types.is_datetime64_dtype(values.dtype):
        raise IngestError(source, "bad_dtype", f"column {column} should be a timestamp, got {values.dtype}")
    if values.dtype == np.dtype("datetime64[ns]"):
        return values
    lo, hi = np.datetime64(pd.Timestamp.min), np.datetime64(pd.Timestamp.max)
    unit_lo, unit_hi = lo.astype(values.dtype), hi.astype(values.dtype)
    clamped = values.where(values.isna() | (values >= unit_lo), unit_lo)
    clamped = clamped.where(clamped.isna() | (clamped <= unit_hi), unit_hi)
    return clamped.astype("datetime64[ns]")


def location_ids_to_str(values: pd.Series, column: str, source: str) -> pd.Series:
    """Zone ids -> object column of str like "130" (never "130.0"), nulls kept as None.

    Ids are categorical features (DictVectorizer one-hot encodes strings), and an
    int64 column with a null becomes float64 in pandas, which would otherwise leak
    "130.0" into the feature names and make train and serve disagree.
    """
    out = pd.Series(None, index=values.index, dtype=object)
    present = values.notna()
    if pd.api.types.is_bool_dtype(values.dtype):
        raise IngestError(source, "bad_dtype", f"column {column} should hold zone ids, got {values.dtype}")
    if pd.api.types.is_numeric_dtype(values.dtype):
        numbers = values[present].astype("float64")
        if not np.array_equal(numbers, np.floor(numbers)):
            raise IngestError(source, "bad_dtype", f"column {column} holds non-integer zone ids")
        out[present] = numbers.astype("int64").astype(str)
        return out
    text = values[present].astype(str).str.strip().str.replace(r"\.0+$", "", regex=True)
    out[present] = text
    return out


def to_float64(values: pd.Series, column: str, source: str) -> pd.Series:
    """Numeric -> float64 (nulls become NaN, still counted as missing later)."""
    if pd.api.types.is_bool_dtype(values.dtype) or not pd.api.types.is_numeric_dtype(values.dtype):
        raise IngestError(source, "bad_dtype", f"column {column} should be numeric, got {values.dtype}")
    return values.astype("float64")
