"""One typed settings object, read from the environment in one place (the CLI).

Steps never read the environment; the CLI turns these settings into pipeline
parameters.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from components.names import (
    CANARY_DIR_NAME,
    EXPERIMENT_NAME,
    LABELS_DIR_NAME,
    MONITOR_DIR_NAME,
    PREDICTION_LOG_DIR_NAME,
    REGISTERED_MODEL_NAME,
    TLC_BASE_URL,
)

DEFAULT_STATE_DIR = ".taxi-mlops"


@dataclass(frozen=True)
class Settings:
    state_dir: Path  # everything a local run writes: MLflow db + artifacts, KFP outputs, logs
    tracking_uri: str
    experiment: str
    model_name: str
    cache_dir: Path  # downloaded TLC files, shared by every checkout of the project
    tlc_base_url: str
    # False when tracking_uri is the local sqlite default: cluster commands refuse it, since
    # the cluster's registry lives in its own MLflow server.
    tracking_uri_from_env: bool = False

    @property
    def artifact_location(self) -> str:
        return (self.state_dir / "mlartifacts").as_uri()

    @property
    def pipeline_root(self) -> Path:
        return self.state_dir / "kfp"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def deployment_state_path(self) -> Path:
        """The local deployment's desired state (champion, canary, percent); ``serve`` follows it."""
        return self.state_dir / "deployment" / "state.json"

    @property
    def prediction_log_dir(self) -> Path:
        """Every answered prediction of the local stack's predictors (Parquet segments)."""
        return self.deployment_state_path.parent / PREDICTION_LOG_DIR_NAME

    @property
    def labels_dir(self) -> Path:
        """Actual durations joined to the logged predictions, one file per month (``labels``)."""
        return self.deployment_state_path.parent / LABELS_DIR_NAME

    @property
    def canary_dir(self) -> Path:
        """The canary judge's memory, decisions and pages (serving/canary_judge.py)."""
        return self.deployment_state_path.parent / CANARY_DIR_NAME

    @property
    def monitor_dir(self) -> Path:
        """The monitor's verdicts (latest.json, history.jsonl) and report; the splitter's gauges read it."""
        return self.deployment_state_path.parent / MONITOR_DIR_NAME

    @property
    def deployed_models_dir(self) -> Path:
        return self.state_dir / "deployment" / "models"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, state_dir: str | Path | None = None) -> Settings:
        """Settings from ``TAXI_MLOPS_*`` / ``MLFLOW_TRACKING_URI`` variables, with local defaults."""
        env = os.environ if env is None else env
        state = Path(state_dir or env.get("TAXI_MLOPS_STATE_DIR") or DEFAULT_STATE_DIR).expanduser().resolve()
        cache_home = Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        return cls(
            state_dir=state,
            tracking_uri=env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{state / 'mlflow.db'}",
            experiment=env.get("TAXI_MLOPS_EXPERIMENT") or EXPERIMENT_NAME,
            model_name=env.get("TAXI_MLOPS_MODEL_NAME") or REGISTERED_MODEL_NAME,
            cache_dir=Path(env.get("TAXI_MLOPS_CACHE_DIR") or cache_home / "taxi-mlops" / "tlc").expanduser(),
            tlc_base_url=env.get("TAXI_MLOPS_TLC_BASE_URL") or TLC_BASE_URL,
            tracking_uri_from_env=bool(env.get("MLFLOW_TRACKING_URI")),
        )
