"""The newest monitor verdict as Prometheus gauges (text exposition format 0.0.4).

One function, so every place that serves them -- the local traffic splitter's
``/metrics`` and the cluster's inference-log sink -- exposes the same series,
and the alert rules in ``manifests/components/monitoring/rules/`` have one
contract to match:

- ``taxi_monitor_verdict{model_version, verdict}``: 1 for the verdict, 0 for the others;
- ``taxi_monitor_drift_detected``, ``taxi_monitor_accuracy_degraded``: 0/1;
- ``taxi_monitor_feature_drifted{feature}`` (0/1) and ``taxi_monitor_drift_effect{feature}``
  beside ``taxi_monitor_drift_min_effect{feature}``;
- ``taxi_monitor_live_rmse``, ``taxi_monitor_baseline_rmse``, ``taxi_monitor_label_coverage``
  (only once labels were judged);
- ``taxi_monitor_window_predictions``, ``taxi_monitor_window_labelled``;
- ``taxi_monitor_last_run_timestamp_seconds``: when the monitor ran (wall clock), so
  a monitor that stopped running is an alert of its own;
- ``taxi_monitor_verdict_readable``: 0 when the stored verdict could not be read.

Before the first verdict only ``taxi_monitor_verdict_readable 1`` is exposed: no
series claims a verdict that was never made.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from components.monitoring.verdict_store import VERDICTS
from components.prometheus_text import escape_label as _escape
from components.prometheus_text import unix_seconds as _timestamp


def verdict_metrics_text(document: Mapping[str, Any] | None, *, readable: bool = True) -> str:
    """The gauges of ``document`` (a stored verdict), or of no verdict yet when it is None."""
    lines = [
        "# HELP taxi_monitor_verdict_readable 0 when the newest stored monitor verdict cannot be read.",
        "# TYPE taxi_monitor_verdict_readable gauge",
        f"taxi_monitor_verdict_readable {1 if readable else 0}",
    ]
    if document is None:
        return "\n".join(lines) + "\n"
    version = _escape(str(document.get("model_version", "")))
    base = f'model_version="{version}"'
    drift = document.get("drift") or {}
    accuracy = document.get("accuracy") or {}
    window = document.get("window") or {}

    def gauge(name: str, help_text: str, samples: list[tuple[str, Any]]) -> None:
        present = [(labels, value) for labels, value in samples if _number(value) is not None]
        if not present:
            return
        lines.extend([f"# HELP {name} {help_text}", f"# TYPE {name} gauge"])
        lines.extend(f"{name}{{{labels}}} {_format(_number(value))}" for labels, value in present)

    gauge(
        "taxi_monitor_verdict",
        "1 for the newest monitor verdict of the served version, 0 for the other verdicts.",
        [(f'{base},verdict="{name}"', 1 if document.get("verdict") == name else 0) for name in VERDICTS],
    )
    gauge(
        "taxi_monitor_drift_detected",
        "1 when the window's features drifted.",
        [(base, drift.get("detected"))],
    )
    gauge(
        "taxi_monitor_accuracy_degraded",
        "1 when live accuracy is confirmed worse than the validation RMSE by the margin.",
        [(base, accuracy.get("degraded"))],
    )
    features: Mapping[str, Mapping[str, Any]] = drift.get("features") or {}
    for name, help_text, key in (
        (
            "taxi_monitor_feature_drifted",
            "1 when the feature drifted (significant and large enough).",
            "drifted",
        ),
        ("taxi_monitor_drift_effect", "Effect size of the feature's drift (units per feature).", "effect"),
        ("taxi_monitor_drift_min_effect", "Smallest effect that counts as drift.", "min_effect"),
        ("taxi_monitor_drift_statistic", "The feature's test statistic.", "statistic"),
        (
            "taxi_monitor_drift_threshold",
            "The statistic's no-drift threshold at this window size.",
            "threshold",
        ),
    ):
        gauge(
            name,
            help_text,
            [
                (f'{base},feature="{_escape(feature)}"', result.get(key))
                for feature, result in features.items()
            ],
        )
    gauge(
        "taxi_monitor_live_rmse",
        "RMSE of the labelled trips in the window (minutes).",
        [(base, accuracy.get("rmse"))],
    )
    gauge(
        "taxi_monitor_live_mae",
        "MAE of the labelled trips in the window (minutes).",
        [(base, accuracy.get("mae"))],
    )
    gauge(
        "taxi_monitor_baseline_rmse",
        "The version's validation RMSE (minutes).",
        [(base, accuracy.get("baseline_rmse"))],
    )
    gauge(
        "taxi_monitor_label_coverage",
        "Share of the window's predictions with a joined label.",
        [(base, accuracy.get("label_coverage"))],
    )
    gauge(
        "taxi_monitor_window_predictions",
        "Predictions in the judged window.",
        [(base, window.get("predictions"))],
    )
    gauge(
        "taxi_monitor_window_labelled",
        "Labelled predictions in the judged window.",
        [(base, window.get("labelled"))],
    )
    gauge(
        "taxi_monitor_last_run_timestamp_seconds",
        "When the monitor made this verdict (Unix time, wall clock).",
        [(base, _timestamp(document.get("evaluated_at")))],
    )
    return "\n".join(lines) + "\n"


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float) and math.isfinite(float(value)):
        return float(value)
    return None


def _format(value: float | None) -> str:
    assert value is not None
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)
