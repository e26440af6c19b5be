"""Smoke run of bench/bench_canary.py: the bench itself works and its JSON says what it measured.

The numbers are the bench's business (bench/README.md); this only checks a quick run
completes on the generated months and reports every section with sane shares.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_run_reports_every_section(tmp_path: Path) -> None:
    out = tmp_path / "canary.json"
    subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "bench_canary.py"),
            "--quick",
            "--data-dir",
            str(tmp_path / "none"),
            "--json-out",
            str(out),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    result = json.loads(out.read_text())
    assert result["data"].startswith("generated fixtures")
    assert set(result["whole_canaries"]) == {"A/A identical", "A/A noisy", "+5% MAE", "+15% minutes"}
    for row in result["whole_canaries"].values():
        assert row["promoted"] + row["rolled_back"] + row["held"] == pytest.approx(1.0)
    # An identical canary has exactly the champion's errors: never rolled back on accuracy.
    assert result["whole_canaries"]["A/A identical"]["rolled_back"] == 0.0
    assert result["at_policy_size"]["labelled_trips"] == result["policy"]["promote_min_labelled"]
