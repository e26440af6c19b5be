"""`taxi-mlops labels`: the month's durations joined to the logged predictions, locally and --cluster
(the cluster's log and labels in MinIO; here a real moto S3 server on 127.0.0.1)."""

from __future__ import annotations

import io
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from support.monitoring_state import Registered, log_frame, registered_ridge, write_segment
from support.s3_server import upload_object
from support.tlc_fixtures import write_tlc_dir

from components.data.ingest import load_month
from components.features.trip_features import TARGET_COLUMN
from components.names import LABELS_URI, MONITORING_BUCKET, PREDICTION_LOG_DIR_NAME
from components.storage.s3 import S3Connection
from pipelines.cli import main


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> Registered:
    return registered_ridge(tmp_path_factory.mktemp("registry"))


def test_cluster_labels_join_the_buckets_log_and_land_in_the_bucket(
    registered: Registered, s3_conn: S3Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = write_tlc_dir(tmp_path / "tlc", rows=6000)
    trips, _ = load_month("green", "2021-02", data_dir=data_dir)
    served = trips.head(700)  # what the cluster answered: 700 of the month's trips
    log = log_frame(registered, served, datetime(2021, 2, 1), timedelta(minutes=1))
    segment = write_segment(tmp_path / "segments", log, "cluster-1")
    upload_object(
        s3_conn, MONITORING_BUCKET, f"{PREDICTION_LOG_DIR_NAME}/{segment.name}", segment.read_bytes()
    )
    upload_object(s3_conn, MONITORING_BUCKET, f"{PREDICTION_LOG_DIR_NAME}/part-x.parquet.tmp", b"half")
    monkeypatch.setenv("S3_ENDPOINT_URL", f"http://{s3_conn.endpoint}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_conn.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_conn.secret_key)
    result = CliRunner().invoke(
        main,
        [
            "labels",
            "--month",
            "2021-02",
            "--data-dir",
            str(data_dir),
            "--cluster",
            "--state-dir",
            str(tmp_path / "s"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert (
        f"labelled 700 of 700 logged predictions (100.0%); {len(trips) - 700} of the month's" in result.output
    )
    assert f"labels: {LABELS_URI}/green-2021-02.parquet" in result.output
    stored = s3_conn.client().get_object(MONITORING_BUCKET, "labels/green-2021-02.parquet").read()
    labels = pd.read_parquet(io.BytesIO(stored))
    assert sorted(labels["request_id"]) == sorted(log["request_id"])
    by_id = dict(zip(log["request_id"], served[TARGET_COLUMN], strict=True))
    assert all(
        by_id[rid] == minutes
        for rid, minutes in zip(labels["request_id"], labels[TARGET_COLUMN], strict=True)
    )
    assert not (tmp_path / "s" / "deployment" / "labels").exists()  # nothing written locally
