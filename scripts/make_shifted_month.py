#!/usr/bin/env python3
"""Write a copy of a TLC month with congestion injected: trips from the busiest pickup zones take longer.

    python scripts/make_shifted_month.py --data-dir ../shared/data/tlc --month 2021-03 --out shifted/
    # -> shifted/green_tripdata_2021-03.parquet (+ links to the folder's other months, + SHIFT.json)

For every trip whose pickup zone is one of the ``--zones`` busiest of the month (by trips in the
file), the dropoff time moves so the duration becomes ``--factor`` times longer; every other
column and every other trip is left exactly as the TLC published it, in the same file schema.
The other months of ``--data-dir`` are linked into ``--out``, so ``--data-dir shifted/`` reads
the real months with this one replaced. ``SHIFT.json`` records what was changed and why.

It is how the retraining tests and the README show the loop react to a real-looking decay: the
inputs (zones, distances) barely move, so only the joined labels can reveal it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from components.data.tlc_schema import TRIP_COLUMNS, check_request  # noqa: E402
from components.data.tlc_source import trip_file_name  # noqa: E402
from components.storage.atomic_write import write_atomically  # noqa: E402


def shift_month(source: Path, dest: Path, color: str, factor: float, zones: int) -> dict[str, object]:
    """Write the shifted copy of ``source`` to ``dest``; returns what was changed."""
    columns = TRIP_COLUMNS[color]
    table = pq.read_table(source)
    pickup_zone = table.column(columns.pu_location)
    counts = pc.value_counts(pickup_zone).to_pylist()
    busiest = sorted(
        (entry for entry in counts if entry["values"] is not None), key=lambda e: (-e["counts"], e["values"])
    )[:zones]
    chosen = [int(entry["values"]) for entry in busiest]
    mask = pc.fill_null(pc.is_in(pickup_zone, value_set=pa.array(chosen, pickup_zone.type)), False)
    pickup = table.column(columns.pickup)
    dropoff = table.column(columns.dropoff)
    duration = pc.subtract(dropoff, pickup)
    # Durations in microseconds as integers, scaled, back to the column's own timestamp type.
    micros = pc.cast(pc.cast(duration, pa.duration("us")), pa.int64())
    scaled = pc.cast(
        pc.cast(pc.multiply(pc.cast(micros, pa.float64()), factor), pa.int64()), pa.duration("us")
    )
    shifted = pc.cast(pc.add(pc.cast(pickup, pa.timestamp("us")), scaled), dropoff.type)
    new_dropoff = pc.if_else(mask, shifted, dropoff)
    index = table.schema.get_field_index(columns.dropoff)
    out = table.set_column(index, table.schema.field(index), new_dropoff)
    dest.parent.mkdir(parents=True, exist_ok=True)
    sink = pa.BufferOutputStream()
    pq.write_table(out, sink)
    write_atomically(dest, sink.getvalue().to_pybytes())
    changed = int(pc.sum(pc.cast(mask, pa.int64())).as_py() or 0)
    return {
        "source": str(source),
        "file": str(dest),
        "color": color,
        "factor": factor,
        "pickup_zones": chosen,
        "trips": table.num_rows,
        "shifted_trips": changed,
        "shifted_share": round(changed / table.num_rows, 4) if table.num_rows else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, required=True, help="Folder with the real TLC files.")
    parser.add_argument("--month", required=True, metavar="YYYY-MM")
    parser.add_argument("--color", choices=sorted(TRIP_COLUMNS), default="green")
    parser.add_argument("--out", type=Path, required=True, help="Folder for the shifted copy (and links).")
    parser.add_argument("--factor", type=float, default=1.25, help="Duration multiplier (default 1.25).")
    parser.add_argument("--zones", type=int, default=10, help="How many of the busiest pickup zones (10).")
    args = parser.parse_args(argv)
    check_request(args.color, args.month)
    if args.factor <= 0 or args.zones < 1:
        parser.error("--factor must be positive and --zones at least 1")
    name = trip_file_name(args.color, args.month)
    source = args.data_dir / name
    if not source.is_file():
        parser.error(f"{source} does not exist")
    if args.out.resolve() == args.data_dir.resolve():
        parser.error("--out must not be --data-dir: the real file is never overwritten")
    report = shift_month(source, args.out / name, args.color, args.factor, args.zones)
    for other in sorted(args.data_dir.glob("*.parquet")):
        link = args.out / other.name
        if other.name != name and not link.exists():
            link.symlink_to(other.resolve())
    write_atomically(args.out / "SHIFT.json", json.dumps(report, indent=2) + "\n")
    print(
        f"{report['file']}: {report['shifted_trips']} of {report['trips']} trips "
        f"({report['shifted_share']:.1%}) from pickup zones {report['pickup_zones']} take x{args.factor:g}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
