"""Evidently's DataDriftPreset on parquet windows: the comparison side of bench/bench_monitoring.py.

Runs inside the Evidently virtualenv that bench_monitoring.py creates (Evidently
0.7 is never a project dependency), so it imports nothing of the project: only
Evidently, pandas and the standard library. The bench writes the reference month
and the windows as parquet and reads back one ``RESULT {...}`` line.

    python bench/evidently_drift.py SPEC.json

SPEC: ``{"mode": "speed" | "windows", "reference": PATH, "windows": PATH}``; PATHs are parquet.

* ``speed``: one window file, one Report; the process is fresh, so its peak
  resident set is this run's own. It reads both files, collects garbage, notes
  its resident set (base), resets the kernel's peak mark (/proc/self/clear_refs)
  and times ``Dataset.from_pandas`` + ``Report([DataDriftPreset()]).run`` +
  ``snapshot.dict()``: everything a user calls to get an answer from DataFrames.
* ``windows``: many windows resampled from the reference month, as rows of it
  (columns ``window_id``, ``row``: the bench's own draws, so both tools judge the
  very same trips); one Report per window: each column's verdict and the preset's
  own drifted-column count and share.

Columns: trip_distance and prediction numerical, PULocationID and DOLocationID
categorical (declared in the DataDefinition, as a user would for zone ids). Every
method and threshold is Evidently's default; the result names the test it chose.
"""

from __future__ import annotations

import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

from process_memory import reset_peak, status_kib  # bench/, first on sys.path for a script

NUMERICAL = ["trip_distance", "prediction"]
CATEGORICAL = ["PULocationID", "DOLocationID"]
COLUMNS = NUMERICAL + CATEGORICAL


def _drifted(method: str, value: float, threshold: float) -> bool:
    """Evidently's rule: a p-value test drifts below its threshold, a distance at or above it."""
    if "p_value" in method:
        return value < threshold
    return value >= threshold


def judge(current: Any, reference: Any) -> dict[str, Any]:
    """One DataDriftPreset run: per-column method, score, threshold and verdict; the preset's count."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(numerical_columns=NUMERICAL, categorical_columns=CATEGORICAL)
    snapshot = Report([DataDriftPreset()]).run(
        Dataset.from_pandas(current, data_definition=definition),
        Dataset.from_pandas(reference, data_definition=definition),
    )
    columns: dict[str, Any] = {}
    count = share = None
    for metric in snapshot.dict()["metrics"]:
        config = metric["config"]
        if config["type"].endswith("DriftedColumnsCount"):
            count, share = metric["value"]["count"], metric["value"]["share"]
            drift_share = config["drift_share"]
        elif config["type"].endswith("ValueDrift"):
            value = float(metric["value"])
            columns[config["column"]] = {
                "method": config["method"],
                "score": value,
                "threshold": config["threshold"],
                "drifted": _drifted(config["method"], value, config["threshold"]),
            }
    if count is None:
        raise SystemExit("DataDriftPreset gave no DriftedColumnsCount: has its API changed?")
    return {
        "columns": columns,
        "drifted_count": count,
        "drifted_share": share,
        # The preset's dataset-level verdict: at least drift_share of the columns drifted.
        "dataset_drift": share >= drift_share,
        "any_column": any(c["drifted"] for c in columns.values()),
        # Our per-column rule must agree with Evidently's own count.
        "count_agrees": count == sum(c["drifted"] for c in columns.values()),
    }


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[1]).read_text())
    started = time.perf_counter()
    import evidently
    import pandas as pd
    from evidently import Report  # noqa: F401 - the import is timed here, not in the first judge()
    from evidently.presets import DataDriftPreset  # noqa: F401

    import_s = time.perf_counter() - started
    reference = pd.read_parquet(spec["reference"], columns=COLUMNS)
    windows = pd.read_parquet(spec["windows"])
    result: dict[str, Any] = {
        "evidently": evidently.__version__,
        "pandas": pd.__version__,
        "import_s": import_s,
        "reference_rows": len(reference),
    }
    if spec["mode"] == "speed":
        current = windows.loc[:, COLUMNS]
        del windows
        gc.collect()
        base = status_kib("VmRSS")
        reset = reset_peak()
        began = time.perf_counter()
        verdict = judge(current, reference)
        seconds = time.perf_counter() - began
        peak = status_kib("VmHWM")
        result |= {
            "rows": len(current),
            "seconds": seconds,
            "base_mb": base / 1024,
            "peak_mb": peak / 1024,
            "peak_reset": reset,
            "verdict": verdict,
        }
    else:
        per_window = []
        for window_id, rows in windows.groupby("window_id", sort=True)["row"]:
            current = reference.iloc[rows.to_numpy()].reset_index(drop=True)
            began = time.perf_counter()
            verdict = judge(current, reference)
            seconds = time.perf_counter() - began
            per_window.append(
                {"window_id": int(window_id), "rows": len(current), "seconds": seconds, **verdict}
            )
        result["windows"] = per_window
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
