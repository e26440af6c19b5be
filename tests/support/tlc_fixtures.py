"""Small synthetic TLC trip files with the real TLC parquet schemas, for everyone's tests.

Usage::

    from support.tlc_fixtures import planned_drops, write_tlc_dir, write_trip_file

    path = write_trip_file(tmp_path, color="green", month="2021-01", rows=200)
    # -> tmp_path / "green_tripdata_2021-01.parquet"
    data_dir = write_tlc_dir(tmp_path / "tlc")  # green 2021-01 (train) + 2021-02 (val)
    planned_drops(200)
    # -> {"missing_values": 4, "zone_out_of_range": 0, "distance_out_of_range": 0,
    #     "pickup_outside_month": 3, "duration_out_of_range": 10}

Schema variants (exact arrow types, as published by the TLC):

* ``"2021"``: int64 VendorID/zone ids, double passenger_count/RatecodeID, timestamp[us];
  green has a null-typed ``ehail_fee`` and double payment_type/trip_type; yellow has
  int64 payment_type and ``airport_fee``.
* ``"2023"``: int32 VendorID/PULocationID/DOLocationID, int64 passenger_count/RatecodeID/
  payment_type(/trip_type), timestamp[us]; green ``ehail_fee`` is double (all null).
* ``"2025"``: the 2023 layout plus ``cbd_congestion_fee`` (Manhattan congestion pricing),
  ``large_string`` store_and_fwd_flag and yellow's ``Airport_fee`` spelling.

``time_unit`` and ``airport_fee_column`` override a variant for dtype-robustness tests.

Rows are deterministic for a given ``seed``. Zone geometry and speeds are fixed
(independent of ``seed`` and month), so a model fit on one generated month predicts
another: duration grows with ``trip_distance`` and depends on the PU/DO zone pair.
Each file contains, besides clean trips (1.5..58.5 min, zone ids 1..265, distances of 0.1..~15 miles;
no zone or distance outside the trip domain, tests that need them put them in):

* ``planned_drops(rows)["missing_values"]`` rows with one required field null;
* 3 stray pickups: two on 2009-01-01 and one at 23:57 on the previous month's last day
  (all with a valid duration, so only the month rule drops them);
* ``planned_drops(rows)["duration_out_of_range"]`` in-month trips lasting 0 s, 30 s,
  -5 min, 75 min, 10 h or 25 h.

About 45% of rows also have the nulls real app-dispatched rows have (passenger_count,
RatecodeID, payment_type, ...): those fields are not required, so they drop nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

VARIANTS = ("2021", "2023", "2025")
STRAY_PICKUPS = 3
_OUTLIER_MINUTES = (0.0, 0.5, -5.0, 75.0, 600.0, 1500.0)
_REQUIRED_NULL_ORDER = ("pu", "distance", "dropoff", "do", "pickup")
_ZONES = np.arange(1, 266)


def trip_file_name(color: str, month: str) -> str:
    """``green_tripdata_2021-01.parquet``: the TLC's own naming."""
    return f"{color}_tripdata_{month}.parquet"


def planned_drops(rows: int) -> dict[str, int]:
    """Rows each cleaning rule should drop from a ``write_trip_file(rows=rows)`` file."""
    _check_rows(rows)
    return {
        "missing_values": max(1, rows // 50),
        "zone_out_of_range": 0,  # generated zones and distances are all within the trip domain
        "distance_out_of_range": 0,
        "pickup_outside_month": STRAY_PICKUPS,
        "duration_out_of_range": max(3, rows // 20),
    }


def planned_kept(rows: int) -> int:
    """Rows that survive cleaning of a ``write_trip_file(rows=rows)`` file."""
    return rows - sum(planned_drops(rows).values())


def trip_schema(
    color: str = "green",
    variant: str = "2021",
    *,
    time_unit: str | None = None,
    airport_fee_column: str | None = None,
) -> pa.Schema:
    """The arrow schema of a TLC file of ``color`` published in the ``variant`` era."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    old = variant == "2021"
    ts = pa.timestamp(time_unit or "us")
    ids = pa.int64() if old else pa.int32()
    small = pa.float64() if old else pa.int64()  # passenger_count, RatecodeID
    flag = pa.large_string() if variant == "2025" else pa.string()
    f64 = pa.float64()
    if color == "green":
        fields = [
            ("VendorID", ids),
            ("lpep_pickup_datetime", ts),
            ("lpep_dropoff_datetime", ts),
            ("store_and_fwd_flag", flag),
            ("RatecodeID", small),
            ("PULocationID", ids),
            ("DOLocationID", ids),
            ("passenger_count", small),
            ("trip_distance", f64),
            ("fare_amount", f64),
            ("extra", f64),
            ("mta_tax", f64),
            ("tip_amount", f64),
            ("tolls_amount", f64),
            ("ehail_fee", pa.null() if old else f64),
            ("improvement_surcharge", f64),
            ("total_amount", f64),
            ("payment_type", small),
            ("trip_type", small),
            ("congestion_surcharge", f64),
        ]
    elif color == "yellow":
        fee = airport_fee_column or ("Airport_fee" if variant == "2025" else "airport_fee")
        fields = [
            ("VendorID", ids),
            ("tpep_pickup_datetime", ts),
            ("tpep_dropoff_datetime", ts),
            ("passenger_count", small),
            ("trip_distance", f64),
            ("RatecodeID", small),
            ("store_and_fwd_flag", flag),
            ("PULocationID", ids),
            ("DOLocationID", ids),
            ("payment_type", pa.int64()),
            ("fare_amount", f64),
            ("extra", f64),
            ("mta_tax", f64),
            ("tip_amount", f64),
            ("tolls_amount", f64),
            ("improvement_surcharge", f64),
            ("total_amount", f64),
            ("congestion_surcharge", f64),
            (fee, f64),
        ]
    else:
        raise ValueError(f"color must be green or yellow, got {color!r}")
    if variant == "2025":
        fields.append(("cbd_congestion_fee", f64))
    return pa.schema(fields)


def make_trip_table(
    color: str = "green",
    month: str = "2021-01",
    rows: int = 200,
    variant: str = "2021",
    seed: int = 0,
    *,
    time_unit: str | None = None,
    airport_fee_column: str | None = None,
) -> pa.Table:
    """The table ``write_trip_file`` writes (for tests that want to tamper before writing)."""
    schema = trip_schema(color, variant, time_unit=time_unit, airport_fee_column=airport_fee_column)
    drops = planned_drops(rows)
    if month < "2010-01":  # the stray 2009 pickups must fall outside the month
        raise ValueError(f"month must be 2010-01 or later, got {month!r}")
    rng = np.random.default_rng(seed)
    start = pd.Timestamp(f"{month}-01")
    end = start + pd.offsets.MonthBegin(1)

    pu, do, distance, minutes = _clean_trips(rng, rows)
    month_seconds = int((end - start).total_seconds())
    pickup = start + pd.to_timedelta(rng.integers(0, month_seconds - 3600, rows), unit="s")
    pickup = pd.Series(pickup)

    # Overwrite the first rows with planned anomalies, disjoint so each hits one rule.
    i = 0
    null_rows: dict[str, list[int]] = {k: [] for k in _REQUIRED_NULL_ORDER}
    for k in range(drops["missing_values"]):
        null_rows[_REQUIRED_NULL_ORDER[k % len(_REQUIRED_NULL_ORDER)]].append(i)
        i += 1
    prev_month_end = start - pd.Timedelta(minutes=3)
    for when in (pd.Timestamp("2009-01-01 00:03:25"), pd.Timestamp("2009-01-01 00:47:49"), prev_month_end):
        pickup[i] = when
        minutes[i] = 7.0 + i % 5
        i += 1
    for k in range(drops["duration_out_of_range"]):
        minutes[i] = _OUTLIER_MINUTES[k % len(_OUTLIER_MINUTES)]
        i += 1

    dropoff = pickup + pd.to_timedelta(np.round(minutes * 60), unit="s")
    order = rng.permutation(rows)  # real files are not grouped by anomaly
    columns = _value_columns(rng, rows, distance, minutes)
    columns.update(pu=pu, do=do, distance=distance, pickup=pickup.to_numpy(), dropoff=dropoff.to_numpy())
    nulls = {name: np.isin(np.arange(rows), idx) for name, idx in null_rows.items()}
    app_rows = rng.random(rows) < 0.45  # street-hail-app rows: no meter metadata
    return _to_table(schema, columns, nulls, app_rows, order)


def write_trip_file(
    path: Path | str,
    color: str = "green",
    month: str = "2021-01",
    rows: int = 200,
    variant: str = "2021",
    seed: int = 0,
    *,
    time_unit: str | None = None,
    airport_fee_column: str | None = None,
) -> Path:
    """Write one synthetic TLC month; ``path`` may be a folder (TLC file name used) or a file."""
    target = Path(path)
    if target.is_dir():
        target = target / trip_file_name(color, month)
    target.parent.mkdir(parents=True, exist_ok=True)
    table = make_trip_table(
        color, month, rows, variant, seed, time_unit=time_unit, airport_fee_column=airport_fee_column
    )
    pq.write_table(table, target)
    return target


def write_tlc_dir(
    root: Path | str,
    color: str = "green",
    months: Sequence[str] = ("2021-01", "2021-02"),
    rows: int = 500,
    variant: str = "2021",
    seed: int = 0,
) -> Path:
    """A data dir like the shared one: one TLC file per month (train, val, ...); returns ``root``."""
    out = Path(root)
    out.mkdir(parents=True, exist_ok=True)
    for k, month in enumerate(months):
        write_trip_file(out, color=color, month=month, rows=rows, variant=variant, seed=seed + k)
    return out


def clean_rows(table: pa.Table, month: str) -> np.ndarray:
    """Positions of the rows of a generated ``table`` that no cleaning rule drops.

    Worked out from the table itself (required fields present, pickup in ``month``,
    1..60 minutes), not by ingest, so tests can spoil rows that would otherwise be kept.
    """
    frame = table.to_pandas()
    pickup = frame.filter(like="pickup_datetime").iloc[:, 0]
    dropoff = frame.filter(like="dropoff_datetime").iloc[:, 0]
    required = pd.concat([pickup, dropoff, frame[["PULocationID", "DOLocationID", "trip_distance"]]], axis=1)
    start = pd.Timestamp(f"{month}-01")
    minutes = (dropoff - pickup).dt.total_seconds() / 60.0
    keep = (
        required.notna().all(axis=1)
        & (pickup >= start)
        & (pickup < start + pd.offsets.MonthBegin(1))
        & minutes.between(1.0, 60.0)
    )
    return np.flatnonzero(keep.to_numpy())


def with_values(table: pa.Table, column: str, rows: Sequence[int], values: Sequence[object]) -> pa.Table:
    """``table`` with ``column`` at positions ``rows`` set to ``values`` (its arrow type kept)."""
    index = table.schema.get_field_index(column)
    cells = table.column(column).to_pylist()
    for row, value in zip(rows, values, strict=True):
        cells[row] = value
    return table.set_column(index, column, pa.array(cells, type=table.schema.field(index).type))


# ---------------------------------------------------------------- internals


def _check_rows(rows: int) -> None:
    if rows < 30:
        raise ValueError(f"rows must be >= 30 to hold the planned anomalies, got {rows}")


def _zone_model() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fixed city: zone coordinates (miles), speeds (mph), popular pickup zones + weights."""
    city = np.random.default_rng(20210101)
    xy = city.uniform(0.0, 7.0, size=(len(_ZONES) + 1, 2))  # index by zone id
    speed = city.uniform(9.0, 24.0, size=len(_ZONES) + 1)
    hubs = city.choice(_ZONES, size=40, replace=False)
    weights = city.dirichlet(np.full(len(hubs), 0.8))
    return xy, speed, hubs, weights


def _clean_trips(rng: np.random.Generator, rows: int) -> tuple[np.ndarray, ...]:
    xy, speed, hubs, weights = _zone_model()
    pu = np.where(rng.random(rows) < 0.9, rng.choice(hubs, rows, p=weights), rng.choice(_ZONES, rows))
    do = np.where(rng.random(rows) < 0.6, rng.choice(hubs, rows, p=weights), rng.choice(_ZONES, rows))
    do = np.where(rng.random(rows) < 0.25, pu, do)  # many short trips stay in their zone
    manhattan = np.abs(xy[pu] - xy[do]).sum(axis=1)
    base = np.where(pu == do, rng.uniform(0.3, 1.5, rows), manhattan)
    distance = np.round(base * rng.lognormal(0.0, 0.15, rows), 2)
    mph = (speed[pu] + speed[do]) / 2.0
    minutes = 2.0 + distance / mph * 60.0 * rng.lognormal(0.0, 0.2, rows)
    return pu, do, distance, np.clip(minutes, 1.5, 58.5)


def _value_columns(
    rng: np.random.Generator, rows: int, distance: np.ndarray, minutes: np.ndarray
) -> dict[str, np.ndarray]:
    fare = np.round(2.5 + 2.5 * distance + 0.5 * np.clip(minutes, 0, None), 1)
    tip = np.round(np.where(rng.random(rows) < 0.5, fare * 0.18, 0.0), 2)
    tolls = np.where(rng.random(rows) < 0.05, 6.12, 0.0)
    congestion = np.where(rng.random(rows) < 0.3, 2.75, 0.0)
    return {
        "vendor": rng.choice([1, 2], rows, p=[0.1, 0.9]),
        "flag": np.where(rng.random(rows) < 0.01, "Y", "N"),
        "ratecode": np.where(rng.random(rows) < 0.97, 1, 5),
        "passengers": rng.choice([0, 1, 2, 3, 5], rows, p=[0.03, 0.8, 0.1, 0.04, 0.03]),
        "payment": rng.choice([1, 2, 3], rows, p=[0.6, 0.38, 0.02]),
        "trip_type": np.where(rng.random(rows) < 0.97, 1, 2),
        "fare": fare,
        "extra": np.where(rng.random(rows) < 0.5, 0.5, 0.0),
        "mta_tax": np.full(rows, 0.5),
        "tip": tip,
        "tolls": tolls,
        "improvement": np.full(rows, 0.3),
        "total": np.round(fare + 0.5 + 0.3 + tip + tolls + congestion, 2),
        "congestion": congestion,
        "airport": np.where(rng.random(rows) < 0.03, 1.25, 0.0),
        "cbd": np.where(rng.random(rows) < 0.2, 0.75, 0.0),
    }


# Source column -> (generated column, nulled in required-null rows?, nulled in app rows?)
_SOURCES: dict[str, tuple[str, str | None, bool]] = {
    "VendorID": ("vendor", None, False),
    "lpep_pickup_datetime": ("pickup", "pickup", False),
    "tpep_pickup_datetime": ("pickup", "pickup", False),
    "lpep_dropoff_datetime": ("dropoff", "dropoff", False),
    "tpep_dropoff_datetime": ("dropoff", "dropoff", False),
    "store_and_fwd_flag": ("flag", None, True),
    "RatecodeID": ("ratecode", None, True),
    "PULocationID": ("pu", "pu", False),
    "DOLocationID": ("do", "do", False),
    "passenger_count": ("passengers", None, True),
    "trip_distance": ("distance", "distance", False),
    "fare_amount": ("fare", None, False),
    "extra": ("extra", None, False),
    "mta_tax": ("mta_tax", None, False),
    "tip_amount": ("tip", None, False),
    "tolls_amount": ("tolls", None, False),
    "improvement_surcharge": ("improvement", None, False),
    "total_amount": ("total", None, False),
    "payment_type": ("payment", None, True),
    "trip_type": ("trip_type", None, True),
    "congestion_surcharge": ("congestion", None, True),
    "airport_fee": ("airport", None, True),
    "Airport_fee": ("airport", None, True),
    "cbd_congestion_fee": ("cbd", None, True),
}


def _to_table(
    schema: pa.Schema,
    columns: dict[str, np.ndarray],
    nulls: dict[str, np.ndarray],
    app_rows: np.ndarray,
    order: np.ndarray,
) -> pa.Table:
    arrays = []
    for fld in schema:
        if pa.types.is_null(fld.type):
            arrays.append(pa.nulls(len(order)))
            continue
        if fld.name == "ehail_fee":  # double in 2023+, but the TLC never fills it
            arrays.append(pa.nulls(len(order), type=fld.type))
            continue
        key, required_key, app_null = _SOURCES[fld.name]
        mask = nulls[required_key] if required_key else np.zeros(len(order), dtype=bool)
        if app_null:
            mask = mask | app_rows
        values = columns[key]
        arrays.append(pa.array(values[order], type=fld.type, mask=mask[order], from_pandas=True))
    return pa.Table.from_arrays(arrays, schema=schema)
