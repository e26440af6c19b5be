"""A small real state for the monitor's tests: a registered version with its reference profile, and a log.

``registered_ridge`` fits ``support.model_fixtures.profiled_ridge`` (ridge on 6,000-trip
generated months) and registers it, profile included, in a sqlite MLflow as the
champion -- what ``taxi-mlops run`` leaves, without the pipeline's minute of
training. ``log_frame`` turns trips into prediction-log records (the model's own
answers, event times spread over a window), ``write_segment`` writes them as a
segment in the writer's own format; ``write_drifted_log`` is the log most tests judge.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from components.data.trip_ids import trip_ids
from components.evaluation.gate import gate_against_champion
from components.features.trip_features import TARGET_COLUMN
from components.models.duration_model import TripDurationModel
from components.monitoring.labels import write_labels
from components.monitoring.prediction_log import SCHEMA, SEGMENT_PREFIX, SEGMENT_SUFFIX
from components.monitoring.reference_profile import PROFILE_FILE_NAME, ReferenceProfile, save_profile
from components.registry import tracking
from components.registry.registration import register_winner
from support.model_fixtures import profiled_ridge

#: ``write_drifted_log``: 2,000 calm trips every 4 min from CALM_START (to 03-06 13:16, labelled),
#: then 2,500 drifted ones (distances x1.3, no labels yet) every 15 s from DRIFT_START: the newest
#: event is DRIFT_END, and the 12 or 24 hours before it hold the drifted trips only.
CALM_START = datetime(2021, 3, 1)
DRIFT_START = datetime(2021, 3, 8)
DRIFT_END = "2021-03-08T10:24:45+00:00"  # 2,499 x 15 s after DRIFT_START
CALM_TRIPS, DRIFTED_TRIPS = 2_000, 2_500


@dataclass(frozen=True)
class Registered:
    tracking_uri: str
    model_name: str
    version: str
    model: TripDurationModel
    profile: ReferenceProfile
    val_trips: pd.DataFrame  # the validation month: "no drift" by construction


def registered_ridge(root: Path, model_name: str = "taxi-trip-duration") -> Registered:
    """Ridge with its profile, registered as version 1 (alias champion) in ``root/mlflow.db``."""
    model, profile, val_trips = profiled_ridge(root / "tlc")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        experiment = tracking.ensure_experiment(uri, "registration", (root / "mlartifacts").as_uri())
        run_id = tracking.client_for(uri).create_run(experiment).info.run_id
        files = root / "registered"
        files.mkdir(parents=True, exist_ok=True)
        model_file = files / "model.zip"
        model.save(model_file)
        save_profile(profile, files / PROFILE_FILE_NAME)
        gate = gate_against_champion("ridge", profile.scores.rmse, None, None, 0.01)
        registration = register_winner(
            tracking_uri=uri,
            model_name=model_name,
            model_file=model_file,
            gate=asdict(gate),
            input_example=val_trips.head(5),
            run_id=run_id,
            version_tags={},
            reference_profile=files / PROFILE_FILE_NAME,
        )
    finally:
        import mlflow

        mlflow.set_tracking_uri(previous)  # type: ignore[arg-type]
    assert registration.model_version is not None
    return Registered(uri, model_name, registration.model_version, model, profile, val_trips)


def log_frame(
    registered: Registered,
    trips: pd.DataFrame,
    start: datetime,
    spacing: timedelta,
    *,
    distance_scale: float = 1.0,
    revision: str = "champion",
) -> pd.DataFrame:
    """``trips`` as the predictor logs them: trip ids, event times ``start + i * spacing``, the model's
    answers (to distances times ``distance_scale``, the drift a test injects)."""
    served = trips.assign(trip_distance=trips["trip_distance"] * distance_scale).reset_index(drop=True)
    times = pd.Timestamp(start, tz="UTC") + spacing * np.arange(len(served))
    return pd.DataFrame(
        {
            "request_id": trip_ids(trips, "green").astype(str),
            "event_time": times,
            "model_name": "duration",
            "model_version": registered.version,
            "revision": revision,
            "PULocationID": served["PULocationID"].astype("int64"),
            "DOLocationID": served["DOLocationID"].astype("int64"),
            "trip_distance": served["trip_distance"].astype("float64"),
            "minutes": registered.model.predict(served),
            "logged_at": pd.Timestamp.now(tz="UTC"),
        }
    )


def write_segment(folder: Path, records: pd.DataFrame, name: str) -> Path:
    """``records`` as one complete log segment ``part-<name>.parquet`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{SEGMENT_PREFIX}{name}{SEGMENT_SUFFIX}"
    pq.write_table(pa.Table.from_pandas(records, schema=SCHEMA, preserve_index=False), path)
    return path


def write_drifted_log(registered: Registered, log_dir: Path, labels_dir: Path) -> tuple[Path, Path]:
    """A calm, labelled stretch then a drifted, unlabelled one (see CALM_START): log and labels folders."""
    trips = registered.val_trips
    calm = log_frame(registered, trips.head(CALM_TRIPS), CALM_START, timedelta(minutes=4))
    drifted = log_frame(
        registered,
        trips.iloc[CALM_TRIPS : CALM_TRIPS + DRIFTED_TRIPS],
        DRIFT_START,
        timedelta(seconds=15),
        distance_scale=1.3,
    )
    write_segment(log_dir, calm, "1-calm")
    write_segment(log_dir, drifted, "2-drifted")
    (log_dir / "part-3-in-progress.parquet.tmp").write_bytes(b"half a segment")  # never read as data
    actual = trips.head(CALM_TRIPS)[TARGET_COLUMN].to_numpy()
    write_labels(calm[["request_id"]].assign(**{TARGET_COLUMN: actual}), labels_dir / "green-2021-03.parquet")
    return log_dir, labels_dir
