"""The verdict store (latest + history) and the gauges made from it, on real files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.monitoring.verdict_metrics import verdict_metrics_text
from components.monitoring.verdict_store import (
    HISTORY_FILE,
    LATEST_FILE,
    VerdictStoreError,
    load_history,
    load_latest,
    save_verdict,
)


def _verdict(verdict: str = "drift", version: str = "3") -> dict:
    return {
        "model_version": version,
        "window": {"start": "2021-03-01T00:00:00+00:00", "end": "", "predictions": 2000, "labelled": 0},
        "verdict": verdict,
        "drift": {
            "detected": verdict == "drift",
            "verdict": verdict,
            "window_trips": 2000,
            "features": {
                "trip_distance": {
                    "statistic": 0.31,
                    "threshold": 0.05,
                    "effect": 0.31,
                    "min_effect": 0.1,
                    "drifted": True,
                }
            },
        },
        "accuracy": {
            "rmse": None,
            "mae": None,
            "rmse_ci": None,
            "baseline_rmse": 6.04,
            "degraded": False,
            "label_coverage": 0.0,
            "labelled": 0,
            "verdict": "insufficient_data",
        },
    }


def test_latest_is_the_newest_and_history_keeps_all(tmp_path: Path) -> None:
    assert load_latest(tmp_path) is None and load_history(tmp_path) == []
    save_verdict(tmp_path, _verdict("ok", "2"))
    stored = save_verdict(tmp_path, _verdict("drift", "3"))
    assert load_latest(tmp_path) == stored
    assert [v["model_version"] for v in load_history(tmp_path)] == ["2", "3"]
    assert stored["evaluated_at"].endswith("+00:00")


def test_torn_history_line_is_skipped_not_fatal(tmp_path: Path) -> None:
    save_verdict(tmp_path, _verdict("ok"))
    with open(tmp_path / HISTORY_FILE, "a") as history:
        history.write('{"verdict": "dri')  # a writer killed mid-line
    save_verdict(tmp_path, _verdict("drift"))
    assert [v["verdict"] for v in load_history(tmp_path)] == ["ok", "drift"]


def test_unknown_verdict_is_refused_and_nothing_written(tmp_path: Path) -> None:
    with pytest.raises(VerdictStoreError, match="'maybe' is not one of"):
        save_verdict(tmp_path, _verdict("maybe"))
    assert not (tmp_path / LATEST_FILE).exists() and not (tmp_path / HISTORY_FILE).exists()


def test_unreadable_latest_names_the_file(tmp_path: Path) -> None:
    (tmp_path / LATEST_FILE).write_text("{not json")
    with pytest.raises(VerdictStoreError, match=LATEST_FILE):
        load_latest(tmp_path)


def _samples(text: str) -> dict[str, float]:
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_gauges_of_a_drift_verdict(tmp_path: Path) -> None:
    stored = save_verdict(tmp_path, _verdict("drift", "3"))
    samples = _samples(verdict_metrics_text(load_latest(tmp_path)))
    assert samples['taxi_monitor_verdict{model_version="3",verdict="drift"}'] == 1
    assert samples['taxi_monitor_verdict{model_version="3",verdict="ok"}'] == 0
    assert samples['taxi_monitor_drift_detected{model_version="3"}'] == 1
    assert samples['taxi_monitor_feature_drifted{model_version="3",feature="trip_distance"}'] == 1
    assert samples['taxi_monitor_drift_effect{model_version="3",feature="trip_distance"}'] == 0.31
    assert samples['taxi_monitor_window_predictions{model_version="3"}'] == 2000
    # No labels judged: no RMSE series rather than a made-up number.
    assert not any(name.startswith("taxi_monitor_live_rmse") for name in samples)
    from datetime import datetime

    stamp = datetime.fromisoformat(stored["evaluated_at"]).timestamp()
    assert samples['taxi_monitor_last_run_timestamp_seconds{model_version="3"}'] == stamp


def test_no_verdict_yet_claims_nothing() -> None:
    assert _samples(verdict_metrics_text(None)) == {"taxi_monitor_verdict_readable": 1}
    assert _samples(verdict_metrics_text(None, readable=False)) == {"taxi_monitor_verdict_readable": 0}


def test_exposition_parses_with_prometheus_client() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    document = json.loads(json.dumps(_verdict("degraded")))
    document["accuracy"].update(rmse=7.5, mae=5.1, degraded=True, label_coverage=1.0, labelled=2000)
    families = {f.name: f for f in text_string_to_metric_families(verdict_metrics_text(document))}
    assert families["taxi_monitor_accuracy_degraded"].samples[0].value == 1
    assert families["taxi_monitor_live_rmse"].samples[0].value == 7.5
