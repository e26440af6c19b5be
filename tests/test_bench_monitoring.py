"""bench/bench_monitoring.py runs end to end on generated months, and bench/evidently_drift.py in its venv.

Smoke tests only: the bench is a real subprocess on TLC-like files from
``tests/support/tlc_fixtures`` (its ``--data-dir`` is empty, so it generates them),
``--quick`` counts. What is asserted is what the bench must get right whatever the
machine: every window it reports was judged, the injected distance shift is found,
the JSON carries every goal. No timing is asserted (speed lives in the bench).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench" / "bench_monitoring.py"
EVIDENTLY_PYTHON = REPO / "bench" / ".venvs" / "evidently-0.7" / "bin" / "python"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def test_quick_run_on_generated_months_writes_every_number(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    empty = tmp_path / "no-data"
    empty.mkdir()
    cmd = [
        sys.executable, str(BENCH), "--quick", "--no-evidently",
        "--data-dir", str(empty), "--generated-rows", "4000", "--candidate", "ridge",
        "--sizes", "500,2000", "--json-out", str(out),
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "false alarms" in done.stdout and "power" in done.stdout
    report = json.loads(out.read_text())

    assert report["meta"]["data_source"].startswith("GENERATED")
    assert set(report["false_alarms"]) == {"500", "2000"}
    for result in report["false_alarms"].values():
        assert result["windows"] == 20 and len(result["flags"]) == 20
        low, high = result["ci95"]
        assert 0.0 <= low <= result["rate"] <= high <= 1.0
    assert set(report["real_months"]) == {"2021-02", "2021-03"}
    # The reference month judged against its own profile cannot drift.
    assert report["real_months"]["2021-02"]["drift_detected"] is False
    assert set(report["power"]) == {"distance x1.3", "top-10 pickup share x2", "durations x1.2 (accuracy)"}
    # Distances x1.3 over 2,000 trips: found in every window, on the distance itself.
    distance = report["power"]["distance x1.3"]["2000"]
    assert distance["rate"] == 1.0 and distance["by_feature"]["trip_distance"] == distance["windows"]
    # The zone shift really doubles the ten busiest zones' share (capped at 100 %).
    assert 0.0 < report["meta"]["model"]["top_zones_share"] < 1.0
    assert len(report["meta"]["model"]["top_zones"]) == 10
    assert {"false_alarms", "real_months", "power: distance x1.3"} <= set(report["goals"])
    assert "evidently" not in report


@pytest.mark.skipif(not EVIDENTLY_PYTHON.is_file(), reason="the bench has not created its Evidently venv")
def test_evidently_script_judges_windows_with_the_presets_own_count(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 3000
    reference = pd.DataFrame(
        {
            "PULocationID": rng.integers(1, 20, n),
            "DOLocationID": rng.integers(1, 20, n),
            "trip_distance": rng.gamma(2.0, 1.5, n),
            "prediction": rng.normal(15.0, 4.0, n),
        }
    )
    reference.to_parquet(tmp_path / "reference.parquet", index=False)
    # Window 0: rows of the reference; window 1: its longest trips only (a distance shift).
    longest = np.argsort(reference["trip_distance"].to_numpy())[-600:]
    windows = pd.DataFrame(
        {"window_id": np.repeat([0, 1], 600), "row": np.concatenate([rng.integers(0, n, 600), longest])}
    )
    windows.to_parquet(tmp_path / "windows.parquet", index=False)
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "mode": "windows",
                "reference": str(tmp_path / "reference.parquet"),
                "windows": str(tmp_path / "windows.parquet"),
            }
        )
    )
    done = subprocess.run(
        [str(EVIDENTLY_PYTHON), str(REPO / "bench" / "evidently_drift.py"), str(spec)],
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"DO_NOT_TRACK": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert result["evidently"].startswith("0.7.")
    same, shifted = result["windows"]
    assert same["rows"] == shifted["rows"] == 600
    assert same["count_agrees"] and shifted["count_agrees"]
    assert set(same["columns"]) == {"PULocationID", "DOLocationID", "trip_distance", "prediction"}
    assert shifted["columns"]["trip_distance"]["drifted"] is True
