"""scripts/make_shifted_month.py on a TLC-schema file: exactly the busiest zones' durations scale."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
from support.tlc_fixtures import write_tlc_dir

REPO = Path(__file__).resolve().parents[1]


def test_busiest_pickup_zones_take_longer_and_nothing_else_changes(tmp_path: Path) -> None:
    data_dir = write_tlc_dir(tmp_path / "tlc", rows=3000)
    out = tmp_path / "shifted"
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_shifted_month.py"), "--data-dir", str(data_dir),
         "--month", "2021-02", "--out", str(out), "--factor", "1.25", "--zones", "3"],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    name = "green_tripdata_2021-02.parquet"
    before, after = pd.read_parquet(data_dir / name), pd.read_parquet(out / name)
    report = json.loads((out / "SHIFT.json").read_text())
    busiest = before["PULocationID"].value_counts().head(3).index.tolist()
    assert sorted(report["pickup_zones"]) == sorted(int(z) for z in busiest)
    chosen = before["PULocationID"].isin(report["pickup_zones"])
    old = before["lpep_dropoff_datetime"] - before["lpep_pickup_datetime"]
    new = after["lpep_dropoff_datetime"] - after["lpep_pickup_datetime"]
    off = (new[chosen] - old[chosen] * 1.25).abs().dropna()  # a trip without both times stays without
    assert len(off) > 100 and (off <= pd.Timedelta(microseconds=1)).all()
    assert new[~chosen].equals(old[~chosen])
    assert before.drop(columns="lpep_dropoff_datetime").equals(after.drop(columns="lpep_dropoff_datetime"))
    assert before.dtypes.equals(after.dtypes)
    assert report["shifted_trips"] == int(chosen.sum()) and f"({report['shifted_share']:.1%})" in done.stdout
    assert (out / "green_tripdata_2021-01.parquet").resolve() == (
        data_dir / "green_tripdata_2021-01.parquet"
    ).resolve()


def test_the_real_file_is_never_overwritten(tmp_path: Path) -> None:
    data_dir = write_tlc_dir(tmp_path / "tlc")
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_shifted_month.py"), "--data-dir", str(data_dir),
         "--month", "2021-02", "--out", str(data_dir)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and "--out must not be --data-dir" in done.stderr
