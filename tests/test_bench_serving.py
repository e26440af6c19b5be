"""bench/bench_serving.py's logging and MLflow options, end to end on generated months.

A smoke test: the real bench as a subprocess, with tiny phases, on a ridge model
fitted to TLC-like files from ``tests/support/tlc_fixtures`` (its ``--data-dir`` is
empty). Our predictor with and without ``--prediction-log-dir`` and ``mlflow models
serve`` of the same version registered by ``components.registry`` all start, answer
25 rides with the model's own minutes (the bench refuses to time a server that does
not), are measured, and the report carries every ratio the goals are judged on.
No timing is asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_logged_and_mlflow_servers_are_measured_beside_ours(tmp_path: Path) -> None:
    out = tmp_path / "serving.json"
    empty = tmp_path / "no-data"
    empty.mkdir()
    cmd = [
        sys.executable, str(REPO / "bench" / "bench_serving.py"),
        "--quick", "--duration", "1", "--warmup", "0", "--rates", "100", "--concurrency", "4",
        "--no-calibration", "--impls", "ours", "--prediction-log", "both", "--mlflow-baseline",
        "--candidate", "ridge", "--data-dir", str(empty), "--generated-rows", "3000",
        "--model-dir", str(tmp_path / "model"), "--json-out", str(out),
    ]  # fmt: skip
    done = subprocess.run(
        cmd,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=840,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(out.read_text())

    assert list(report["results"]) == ["ours", "ours-logged", "mlflow"]
    for result in report["results"].values():
        assert result["answers_checked"] == 25
        assert {p["mode"] for p in result["phases"]} == {"closed", "open"}
        assert all(p["ok"] > 0 and p["errors"] == 0 for p in result["phases"])
    assert report["meta"]["model"]["mlflow"]["model_uri"] == "models:/duration/1"
    goals = report["summary"]["goals"]
    assert {
        "throughput ours-logged/ours",
        "throughput ours-logged/mlflow",
        "throughput ours/mlflow",
        "p99 ours",
        "p99 ours-logged",
    } <= set(goals)
    # The logged server really logged, and dropped nothing at these rates.
    records = report["prediction_log"]["records"]
    assert records["written"] > 0
    assert records["dropped_queue_full"] == 0 and records["dropped_write_error"] == 0
    assert "goal ours-logged >= 0.9x the unlogged max throughput" in done.stdout
