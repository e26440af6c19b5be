"""Windows of event time: parsing, the train/validation rule, loading from several month files.

Real files throughout (generated TLC-schema parquet in tmp folders, the shared real months when
present); the pipeline runs are real kfp.local runs with a real MLflow (sqlite). Nothing is faked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from support.tlc_fixtures import (
    STRAY_PICKUPS,
    clean_rows,
    make_trip_table,
    planned_drops,
    trip_file_name,
    with_values,
    write_tlc_dir,
)

from components.data.event_window import EventWindow, plan_from_parameters, plan_training_data
from components.data.ingest import PICKUP_OUTSIDE_WINDOW, load_month, read_clean_trips
from components.data.window_ingest import WINDOW_RULES, load_window
from components.errors import IngestError

# ------------------------------------------------------------------ parsing


@pytest.mark.parametrize(
    ("text", "start", "end"),
    [
        ("2021-02-01:2021-03-03", datetime(2021, 2, 1), datetime(2021, 3, 3)),
        ("2021-02-01/2021-03-03", datetime(2021, 2, 1), datetime(2021, 3, 3)),  # ISO 8601's interval
        ("2021-02-01T06:30:00:2021-02-02", datetime(2021, 2, 1, 6, 30), datetime(2021, 2, 2)),
        (
            "2021-02-01 06:30:2021-02-01T18:00:00.5",
            datetime(2021, 2, 1, 6, 30),
            datetime(2021, 2, 1, 18, 0, 0, 500000),
        ),
        # With an offset: converted to UTC, as the prediction log converts its own bounds.
        ("2021-02-01T00:00:00Z:2021-02-02T00:00:00+00:00", datetime(2021, 2, 1), datetime(2021, 2, 2)),
        ("2021-02-01T00:00:00-05:00:2021-02-02", datetime(2021, 2, 1, 5), datetime(2021, 2, 2)),
    ],
)
def test_a_window_is_two_iso_bounds(text: str, start: datetime, end: datetime) -> None:
    window = EventWindow.parse(text, "--train-window")
    assert (window.start, window.end) == (start, end)
    assert EventWindow.parse(str(window)) == window  # what messages print can be pasted back


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("2021-02", "a window is START:END"),
        ("2021-02-01", "a window is START:END"),
        ("yesterday:2021-02-01", "an event time is an ISO 8601 date or date-time"),
        ("2021-02:2021-03-01", "an event time is an ISO 8601 date or date-time"),
        ("2021-02-30:2021-03-01", "not a real date or time"),
        ("2021-03-01:2021-02-01", "a window's start must be before its end"),
        ("2021-03-01:2021-03-01", "a window's start must be before its end"),
    ],
)
def test_a_bad_window_names_itself_and_the_rule(text: str, detail: str) -> None:
    with pytest.raises(IngestError) as err:
        EventWindow.parse(text, "--train-window")
    assert err.value.rule == "bad_window"
    assert detail in err.value.detail
    assert "--train-window" in err.value.source or text.split(":")[0] in err.value.source


@pytest.mark.parametrize(
    ("text", "months"),
    [
        ("2021-01-15:2021-02-15", ("2021-01", "2021-02")),
        ("2021-02-15:2021-03-01", ("2021-02",)),  # the end is exclusive: March is not read
        ("2021-02-15:2021-03-01T00:00:01", ("2021-02", "2021-03")),
        ("2020-12-31T23:00:00:2021-01-01T01:00:00", ("2020-12", "2021-01")),
        ("2021-01-01:2021-04-01", ("2021-01", "2021-02", "2021-03")),
    ],
)
def test_a_window_reads_the_months_it_touches(text: str, months: tuple[str, ...]) -> None:
    assert EventWindow.parse(text).months() == months


# ------------------------------------------------------------------ train before validation


def test_validation_that_overlaps_training_is_refused_naming_both_windows() -> None:
    with pytest.raises(IngestError) as err:
        plan_training_data(
            "2021-01",
            "2021-02",
            EventWindow.parse("2021-02-01:2021-03-03"),
            EventWindow.parse("2021-03-01:2021-03-10"),
        )
    assert str(err.value) == (
        "training window 2021-02-01:2021-03-03 and validation window 2021-03-01:2021-03-10: [bad_window] "
        "the validation data overlaps the training data: it must start at or after 2021-03-03, the end "
        "of the training data (validation is newer, held-out data)"
    )


def test_validation_before_training_is_refused() -> None:
    with pytest.raises(IngestError, match=r"validation window 2021-01-01:2021-01-15: \[bad_window\] the "
                       r"validation data comes before the training data"):  # fmt: skip
        plan_training_data(
            "2021-01",
            "2021-02",
            EventWindow.parse("2021-02-01:2021-03-01"),
            EventWindow.parse("2021-01-01:2021-01-15"),
        )


def test_a_window_is_checked_against_the_other_sides_month() -> None:
    with pytest.raises(
        IngestError, match=r"^training window 2021-01-15:2021-02-15 and validation month 2021-02:"
    ):
        plan_training_data("2021-01", "2021-02", EventWindow.parse("2021-01-15:2021-02-15"), None)
    with pytest.raises(
        IngestError, match=r"^training month 2021-03 and validation window 2021-03-20:2021-04-01:"
    ):
        plan_training_data("2021-03", "2021-02", None, EventWindow.parse("2021-03-20:2021-04-01"))
    # Adjacent is fine: [start, end) windows that touch share no trip.
    plan = plan_training_data("2021-01", "2021-03", EventWindow.parse("2021-01-15:2021-03-01"), None)
    assert plan.to_dict() == {
        "train": {"month": None, "start": "2021-01-15T00:00:00", "end": "2021-03-01T00:00:00"},
        "val": {"month": "2021-03", "start": "2021-03-01T00:00:00", "end": "2021-04-01T00:00:00"},
    }


def test_two_months_are_taken_as_they_always_were() -> None:
    plan = plan_training_data("2021-01", "2021-02")
    assert (plan.train.month, plan.val.month) == ("2021-01", "2021-02")
    assert not plan.train.is_window and not plan.val.is_window


def test_pipeline_parameters_need_both_bounds_of_a_window() -> None:
    with pytest.raises(IngestError) as err:
        plan_from_parameters("2021-01", "2021-02", "2021-01-15", "", "", "")
    assert str(err.value) == "train_start='2021-01-15': [bad_window] a window needs train_end too"
    with pytest.raises(IngestError, match=r"^val_window end='2021-13-01': \[bad_window\]"):
        plan_from_parameters("2021-01", "2021-02", "", "", "2021-02-01", "2021-13-01")
    plan = plan_from_parameters("2021-01", "2021-02", "", "", "2021-02-01T00:00:00", "2021-02-08T00:00:00")
    assert (
        plan.val.span == EventWindow(datetime(2021, 2, 1), datetime(2021, 2, 8))
        and plan.train.month == "2021-01"
    )


# ------------------------------------------------------------------ loading a window


def _write(folder: Path, table: pa.Table, month: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / trip_file_name("green", month)
    pq.write_table(table, path)
    return path


def _expected(table: pa.Table, month: str, window: EventWindow) -> tuple[dict[str, int], pd.DataFrame]:
    """Drops per rule and the kept rows, worked out from the raw table itself, not by ingest."""
    frame = table.to_pandas()
    pickup, dropoff = frame["lpep_pickup_datetime"], frame["lpep_dropoff_datetime"]
    present = pd.concat([pickup, dropoff, frame[["PULocationID", "DOLocationID", "trip_distance"]]], axis=1)
    present = present.notna().all(axis=1)
    start = pd.Timestamp(f"{month}-01")
    in_month = present & (pickup >= start) & (pickup < start + pd.offsets.MonthBegin(1))
    in_window = in_month & (pickup >= window.start) & (pickup < window.end)
    minutes = (dropoff - pickup).dt.total_seconds() / 60.0
    kept = in_window & minutes.between(1.0, 60.0)
    drops = {
        "missing_values": int((~present).sum()),
        "zone_out_of_range": 0,
        "distance_out_of_range": 0,
        "pickup_outside_month": int((present & ~in_month).sum()),
        PICKUP_OUTSIDE_WINDOW: int((in_month & ~in_window).sum()),
        "duration_out_of_range": int((in_window & ~kept).sum()),
    }
    return drops, frame[kept]


def _key(frame: pd.DataFrame, pickup: str) -> list[tuple]:
    return sorted(zip(frame[pickup], frame["trip_distance"], strict=True))


@pytest.fixture
def two_months(tmp_path: Path) -> tuple[Path, dict[str, pa.Table]]:
    """Generated green 2021-01 and 2021-02 (600 rows each) with trips put exactly on the window's bounds."""
    window = WINDOW
    january = make_trip_table(month="2021-01", rows=600, seed=1)
    february = make_trip_table(month="2021-02", rows=600, seed=2)
    jan_clean, feb_clean = clean_rows(january, "2021-01"), clean_rows(february, "2021-02")
    at_start = [window.start, window.start - pd.Timedelta(microseconds=1)]  # kept, dropped
    at_end = [window.end - pd.Timedelta(microseconds=1), window.end]  # kept, dropped
    for name, rows, pickups in (("january", jan_clean[:2], at_start), ("february", feb_clean[:2], at_end)):
        table = january if name == "january" else february
        dropoffs = [moment + pd.Timedelta(minutes=12) for moment in pickups]
        table = with_values(table, "lpep_pickup_datetime", rows, pickups)
        table = with_values(table, "lpep_dropoff_datetime", rows, dropoffs)
        if name == "january":
            january = table
        else:
            february = table
    folder = tmp_path / "tlc"
    _write(folder, january, "2021-01")
    _write(folder, february, "2021-02")
    return folder, {"2021-01": january, "2021-02": february}


WINDOW = EventWindow.parse("2021-01-20T08:00:00:2021-02-10T17:30:00")


def test_a_window_over_two_months_keeps_exactly_its_trips_and_counts_every_rule_per_file(two_months) -> None:
    folder, tables = two_months
    trips, report = load_window("green", WINDOW, data_dir=folder)

    expected_kept = []
    for file_report, month in zip(report.files, ("2021-01", "2021-02"), strict=True):
        drops, kept = _expected(tables[month], month, WINDOW)
        assert file_report.month == month
        assert file_report.source == str(folder / trip_file_name("green", month))
        assert list(file_report.rows_dropped) == list(WINDOW_RULES)  # every rule, in the order applied
        assert file_report.rows_dropped == drops
        # The month's own rules drop what they drop from a whole month: the window is one more rule.
        planned = planned_drops(600)
        assert drops["missing_values"] == planned["missing_values"]
        assert drops["pickup_outside_month"] == STRAY_PICKUPS
        assert file_report.rows_read == 600
        assert file_report.rows_kept == len(kept) == 600 - sum(drops.values())
        expected_kept.append(kept)
    assert report.rows_read == 1200
    assert report.rows_kept == len(trips) == sum(r.rows_kept for r in report.files)
    assert report.rows_dropped == {
        rule: sum(r.rows_dropped[rule] for r in report.files) for rule in WINDOW_RULES
    }
    assert report.months == ["2021-01", "2021-02"] and report.months_missing == []
    assert (report.start, report.end) == ("2021-01-20T08:00:00", "2021-02-10T17:30:00")
    # The very trips, January's first (file order), then February's.
    wanted = pd.concat(expected_kept)
    assert _key(trips, "pickup_datetime") == _key(wanted, "lpep_pickup_datetime")
    assert trips["pickup_datetime"].iloc[: report.files[0].rows_kept].max() < pd.Timestamp("2021-02-01")


def test_the_start_is_inclusive_and_the_end_exclusive(two_months) -> None:
    folder, _ = two_months
    trips, _ = load_window("green", WINDOW, data_dir=folder)
    pickups = set(trips["pickup_datetime"])
    assert pd.Timestamp(WINDOW.start) in pickups
    assert pd.Timestamp(WINDOW.start) - pd.Timedelta(microseconds=1) not in pickups
    assert pd.Timestamp(WINDOW.end) - pd.Timedelta(microseconds=1) in pickups
    assert pd.Timestamp(WINDOW.end) not in pickups
    assert trips["pickup_datetime"].min() == pd.Timestamp(WINDOW.start)
    assert trips["pickup_datetime"].max() == pd.Timestamp(WINDOW.end) - pd.Timedelta(microseconds=1)


def test_a_window_of_a_whole_month_is_that_month_exactly(two_months) -> None:
    folder, _ = two_months
    month_trips, month_report = load_month("green", "2021-02", data_dir=folder)
    trips, report = load_window("green", EventWindow.of_month("2021-02"), data_dir=folder)
    pd.testing.assert_frame_equal(trips, month_trips)
    (file_report,) = report.files
    assert file_report.rows_dropped == {**month_report.rows_dropped, PICKUP_OUTSIDE_WINDOW: 0}
    assert file_report.sha256 == month_report.sha256


def test_the_report_is_json_and_one_log_line_per_file(two_months) -> None:
    folder, _ = two_months
    _, report = load_window("green", WINDOW, data_dir=folder)
    document = json.loads(json.dumps(report.to_dict()))
    assert document["files"][1]["month"] == "2021-02"
    assert (
        document["files"][1]["rows_dropped"][PICKUP_OUTSIDE_WINDOW]
        == report.files[1].rows_dropped[PICKUP_OUTSIDE_WINDOW]
    )
    head, *files = report.summary_line().splitlines()
    assert head.startswith(
        "green window 2021-01-20T08:00:00:2021-02-10T17:30:00: read 1200 from 2 file(s), "
        f"kept {report.rows_kept}"
    )
    assert [line.split(":")[0].strip() for line in files] == ["green 2021-01", "green 2021-02"]


def test_a_missing_month_inside_the_window_is_an_error_naming_it(tmp_path: Path) -> None:
    folder = write_tlc_dir(tmp_path / "tlc", months=("2021-01", "2021-03"), rows=200)
    window = EventWindow.parse("2021-01-20:2021-03-10")
    with pytest.raises(IngestError) as err:
        load_window("green", window, data_dir=folder, what="training window")
    assert err.value.rule == "missing_month"
    assert err.value.source == str(folder / "green_tripdata_2021-02.parquet")
    assert (
        "the training window 2021-01-20:2021-03-10 spans green 2021-02, which is missing" in err.value.detail
    )
    assert "--allow-missing-months" in err.value.detail


def test_missing_months_are_skipped_and_reported_when_allowed(tmp_path: Path) -> None:
    folder = write_tlc_dir(tmp_path / "tlc", months=("2021-01", "2021-03"), rows=200)
    window = EventWindow.parse("2021-01-20:2021-03-10")
    trips, report = load_window("green", window, data_dir=folder, allow_missing_months=True)
    assert report.months == ["2021-01", "2021-02", "2021-03"]
    assert report.months_missing == ["2021-02"]
    assert [r.month for r in report.files] == ["2021-01", "2021-03"]
    assert "missing months skipped: 2021-02" in report.summary_line()
    assert len(trips) == report.rows_kept > 0
    # ... but a window with no month at all is still nothing to train on.
    with pytest.raises(IngestError, match=r"\[missing_month\] no month of the window is present: 2021-05"):
        load_window(
            "green", EventWindow.parse("2021-05-01:2021-05-10"), data_dir=folder, allow_missing_months=True
        )


def test_a_corrupt_month_is_never_a_gap(tmp_path: Path) -> None:
    folder = write_tlc_dir(tmp_path / "tlc", months=("2021-01",), rows=200)
    (folder / "green_tripdata_2021-02.parquet").write_bytes(b"PAR1 this is not parquet PAR1")
    with pytest.raises(IngestError) as err:
        load_window(
            "green", EventWindow.parse("2021-01-20:2021-02-10"), data_dir=folder, allow_missing_months=True
        )
    assert err.value.rule == "corrupt_parquet"
    assert err.value.source == str(folder / "green_tripdata_2021-02.parquet")


def test_a_file_with_no_valid_trip_of_its_month_is_no_rows_left_even_in_a_window(tmp_path: Path) -> None:
    folder = write_tlc_dir(tmp_path / "tlc", months=("2021-01",), rows=200)
    broken = make_trip_table(month="2021-02", rows=60)
    broken = with_values(broken, "PULocationID", range(60), [0] * 60)  # no zone 0 exists
    path = _write(folder, broken, "2021-02")
    with pytest.raises(IngestError) as err:
        load_window("green", EventWindow.parse("2021-01-20:2021-02-10"), data_dir=folder)
    assert err.value.rule == "no_rows_left"
    assert err.value.source == str(path)
    assert "none of the 60 rows is a valid green 2021-02 trip" in err.value.detail


def test_min_rows_is_the_windows_total(two_months) -> None:
    folder, _ = two_months
    _, report = load_window("green", WINDOW, data_dir=folder)
    kept = report.rows_kept
    # A file may keep fewer than min_rows; the window as a whole may not.
    assert min(r.rows_kept for r in report.files) < kept
    load_window("green", WINDOW, data_dir=folder, min_rows=kept)
    with pytest.raises(IngestError) as err:
        load_window("green", WINDOW, data_dir=folder, min_rows=kept + 1, what="validation window")
    assert err.value.rule == "too_few_rows"
    assert err.value.source == "green validation window 2021-01-20T08:00:00:2021-02-10T17:30:00"
    assert f"kept {kept} of 1200 rows" in err.value.detail and f"min_rows={kept + 1}" in err.value.detail


def test_a_window_with_no_trip_left_is_no_rows_left(two_months) -> None:
    folder, _ = two_months
    with pytest.raises(IngestError, match=r"\[no_rows_left\] all 600 rows of 2021-02 were dropped"):
        load_window("green", EventWindow.parse("2021-02-28T23:59:59:2021-03-01"), data_dir=folder)


# ------------------------------------------------------------------ the ingest step


def _step(tmp_path: Path, folder: Path, side: str, **windows: str) -> dict:
    from pipelines.steps.ingest import ingest_step

    bounds = {"train_start": "", "train_end": "", "val_start": "", "val_end": "", **windows}
    return ingest_step(
        color="green",
        side=side,
        train_month="2021-01",
        val_month="2021-02",
        **bounds,
        allow_missing_months=False,
        data_dir=str(folder),
        s3_uri="",
        cache_dir="",
        tlc_base_url="http://127.0.0.1:9",
        min_rows=10,
        trips_path=str(tmp_path / f"{side}.parquet"),
    )


def test_the_ingest_step_reads_its_sides_window_and_says_so(tmp_path: Path, two_months) -> None:
    folder, _ = two_months
    bounds = {"train_start": WINDOW.start.isoformat(), "train_end": WINDOW.end.isoformat()}
    report = _step(tmp_path, folder, "train", **bounds, val_start="2021-02-10T17:30:00", val_end="2021-02-20")
    assert report["side"] == "train"
    assert [f["month"] for f in report["files"]] == ["2021-01", "2021-02"]
    written = read_clean_trips(tmp_path / "train.parquet")
    assert len(written) == report["rows_kept"]
    expected, _ = load_window("green", WINDOW, data_dir=folder)
    pd.testing.assert_frame_equal(written, expected)
    # The other side is still its month, with the month's report as it always was.
    val = _step(tmp_path, folder, "val", train_start="2021-01-01", train_end="2021-02-01")
    _, february = load_month("green", "2021-02", data_dir=folder, min_rows=10)
    assert val == february.to_dict()


@pytest.mark.parametrize("side", ["train", "val"])
def test_both_ingest_steps_refuse_validation_that_is_not_newer(tmp_path: Path, two_months, side: str) -> None:
    folder, _ = two_months
    windows = {
        "train_start": "2021-01-20",
        "train_end": "2021-02-10",
        "val_start": "2021-02-01",
        "val_end": "2021-02-20",
    }
    with pytest.raises(IngestError, match=r"training window 2021-01-20:2021-02-10 and validation window "
                       r"2021-02-01:2021-02-20: \[bad_window\] the validation data overlaps"):  # fmt: skip
        _step(tmp_path, folder, side, **windows)
    assert not (tmp_path / f"{side}.parquet").exists()


def test_candidate_lineage_names_each_windows_files_and_rows(two_months) -> None:
    from pipelines.steps.train import _lineage_params

    folder, _ = two_months
    _, train = load_window("green", WINDOW, data_dir=folder)
    _, val = load_window("green", EventWindow.parse("2021-02-10T17:30:00:2021-02-20"), data_dir=folder)
    params = _lineage_params([{"side": "train", **train.to_dict()}, {"side": "val", **val.to_dict()}])
    assert params["data.train.window"] == "2021-01-20T08:00:00/2021-02-10T17:30:00"
    assert params["data.train.rows"] == str(train.rows_kept)
    assert params["data.val.window"] == "2021-02-10T17:30:00/2021-02-20T00:00:00"
    assert params["data.val.rows"] == str(val.rows_kept)
    # Both windows read February: its file, once, the same file for both.
    assert params["data.green.2021-01.sha256"] == train.files[0].sha256
    assert params["data.green.2021-02.sha256"] == train.files[1].sha256 == val.files[0].sha256
    assert "data.green.2021-02.rows" not in params


# ------------------------------------------------------------------ the pipeline, through kfp.local

E2E_CANDIDATES = "linear_regression,ridge"


def _settings(root: Path):
    from pipelines.settings import Settings

    return Settings.from_env(
        {
            "TAXI_MLOPS_STATE_DIR": str(root / "state"),
            "TAXI_MLOPS_CACHE_DIR": str(root / "cache"),
            # Nothing may be downloaded in these tests: an unroutable base URL makes sure.
            "TAXI_MLOPS_TLC_BASE_URL": "http://127.0.0.1:9/trip-data",
        }
    )


def _mlflow(settings):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def _rmse(model, trips: pd.DataFrame) -> float:
    from components.features.trip_features import TARGET_COLUMN

    errors = model.predict(trips) - trips[TARGET_COLUMN].to_numpy()
    return float(np.sqrt(np.mean(errors**2)))


@pytest.fixture(scope="module")
def three_months(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("windows-e2e")
    return root, write_tlc_dir(root / "tlc", months=("2021-01", "2021-02", "2021-03"), rows=2000)


@pytest.fixture(scope="module")
def windowed_run(three_months: tuple[Path, Path]) -> dict:
    """`taxi-mlops run` with two windows, as a user types it: the first run, so its winner is champion."""
    root, data_dir = three_months
    settings = _settings(root)
    env = {
        **os.environ,
        "TAXI_MLOPS_STATE_DIR": str(settings.state_dir),
        "TAXI_MLOPS_CACHE_DIR": str(settings.cache_dir),
        "TAXI_MLOPS_TLC_BASE_URL": settings.tlc_base_url,
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    summary_path = root / "summary.json"
    completed = subprocess.run(
        [
            str(Path(sys.executable).with_name("taxi-mlops")),
            "run", "--data-dir", str(data_dir), "--candidates", E2E_CANDIDATES, "--min-rows", "500",
            "--train-window", "2021-01-10:2021-02-10", "--val-window", "2021-02-10:2021-03-05",
            "--summary-out", str(summary_path),
        ],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return {"stdout": completed.stdout, "summary": json.loads(summary_path.read_text())}


@pytest.mark.e2e
def test_a_windowed_run_trains_and_validates_on_its_windows(three_months, windowed_run) -> None:
    root, data_dir = three_months
    summary = windowed_run["summary"]
    _, train = load_window("green", EventWindow.parse("2021-01-10:2021-02-10"), data_dir=data_dir)
    _, val = load_window("green", EventWindow.parse("2021-02-10:2021-03-05"), data_dir=data_dir)
    assert summary["data"] == {
        "color": "green",
        "train": {
            "month": None,
            "start": "2021-01-10T00:00:00",
            "end": "2021-02-10T00:00:00",
            "rows": train.rows_kept,
        },
        "val": {
            "month": None,
            "start": "2021-02-10T00:00:00",
            "end": "2021-03-05T00:00:00",
            "rows": val.rows_kept,
        },
    }
    assert summary["gate"]["passed"] is True and summary["model_version"] == "1"
    # The terminal showed each window and its files.
    stdout = windowed_run["stdout"]
    assert "green window 2021-01-10:2021-02-10: read 4000 from 2 file(s)" in stdout
    assert "green window 2021-02-10:2021-03-05: read 4000 from 2 file(s)" in stdout

    client = _mlflow(_settings(root))
    parent = client.get_run(summary["mlflow_run_id"])
    assert parent.data.params == {
        "color": "green",
        "train_window": "2021-01-10T00:00:00/2021-02-10T00:00:00",
        "val_window": "2021-02-10T00:00:00/2021-03-05T00:00:00",
    }
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert len(children) == 2
    for child in children:
        params = child.data.params
        assert params["data.train.rows"] == str(train.rows_kept)
        assert params["data.val.window"] == "2021-02-10T00:00:00/2021-03-05T00:00:00"
        for month in ("2021-01", "2021-02", "2021-03"):
            assert params[f"data.green.{month}.source"] == str(
                data_dir.resolve() / trip_file_name("green", month)
            )


@pytest.mark.e2e
def test_the_gate_scores_the_champion_on_the_same_newest_window(three_months, windowed_run) -> None:
    """A second run on later windows: the champion (version 1) is judged on the new validation trips."""
    from components.registry.versions import champion_model
    from pipelines.local_run import RunRequest, run_pipeline_locally

    root, data_dir = three_months
    settings = _settings(root)
    newest = EventWindow.parse("2021-03-05:2021-03-25")
    summary = run_pipeline_locally(
        settings,
        RunRequest(
            data_dir=str(data_dir),
            train_window=EventWindow.parse("2021-02-01:2021-03-05"),
            val_window=newest,
            candidates=[{"name": "linear_regression", "params": {}}, {"name": "ridge", "params": {}}],
            min_rows=500,
        ),
        progress=lambda line: None,
    )
    val_trips, _ = load_window("green", newest, data_dir=data_dir)
    champion = champion_model(settings.tracking_uri, settings.model_name, root / "champion")
    assert champion.version == "1"
    gate = summary["gate"]
    assert gate["champion_version"] == "1"
    assert gate["champion_rmse"] == pytest.approx(_rmse(champion.load(), val_trips), rel=1e-9)
    best = min(summary["candidates"], key=lambda row: row["rmse"])
    assert gate["challenger_rmse"] == pytest.approx(best["rmse"])
    assert summary["data"]["val"]["rows"] == len(val_trips)


@pytest.mark.e2e
def test_a_window_over_a_missing_month_fails_ingest_and_registers_nothing(
    three_months, windowed_run, tmp_path
) -> None:
    from pipelines.local_run import PipelineRunError, RunRequest, run_pipeline_locally

    root, data_dir = three_months
    settings = _settings(root)
    gap = tmp_path / "no-february"
    gap.mkdir()
    for month in ("2021-01", "2021-03"):
        (gap / trip_file_name("green", month)).symlink_to(data_dir / trip_file_name("green", month))
    versions_before = _mlflow(settings).search_model_versions(f"name = '{settings.model_name}'")
    with pytest.raises(PipelineRunError) as failure:
        run_pipeline_locally(
            settings,
            RunRequest(
                data_dir=str(gap),
                train_window=EventWindow.parse("2021-01-20:2021-02-20"),
                val_window=EventWindow.parse("2021-03-01:2021-03-20"),
                candidates=[{"name": "ridge", "params": {}}],
                min_rows=500,
            ),
            progress=lambda line: None,
        )
    message = str(failure.value)
    assert "step ingest_train failed" in message
    assert "[missing_month] the training window 2021-01-20:2021-02-20 spans green 2021-02" in message
    assert "green_tripdata_2021-02.parquet" in message
    assert len(_mlflow(settings).search_model_versions(f"name = '{settings.model_name}'")) == len(
        versions_before
    )


def test_a_bad_pair_of_windows_is_refused_before_anything_starts(tmp_path: Path) -> None:
    from pipelines.local_run import RunRequest, run_pipeline_locally

    settings = _settings(tmp_path)
    request = RunRequest(
        train_window=EventWindow.parse("2021-02-01:2021-03-03"),
        val_window=EventWindow.parse("2021-02-20:2021-03-10"),
    )
    with pytest.raises(IngestError, match=r"^training window 2021-02-01:2021-03-03 and validation window "
                       r"2021-02-20:2021-03-10: \[bad_window\]"):  # fmt: skip
        run_pipeline_locally(settings, request, progress=lambda line: None)
    assert not settings.state_dir.exists()  # no MLflow run, no KFP root, no log


def test_the_run_command_refuses_them_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.cli import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    args = ["run", "--state-dir", str(tmp_path / "state"), "--train-window", "2021-02-01:2021-03-03"]
    result = CliRunner().invoke(main, [*args, "--val-window", "2021-03-01:2021-03-10"])
    assert result.exit_code == 1
    assert result.output.splitlines()[-1] == (
        "error: training window 2021-02-01:2021-03-03 and validation window 2021-03-01:2021-03-10: "
        "[bad_window] the validation data overlaps the training data: it must start at or after "
        "2021-03-03, the end of the training data (validation is newer, held-out data)"
    )


# ------------------------------------------------------------------ real months


@pytest.mark.e2e
@pytest.mark.real_data
def test_real_months_a_window_over_two_files_gated_on_the_newest_fortnight(
    shared_tlc_dir: Path, tmp_path: Path
) -> None:
    """Acceptance on the shared green months: a champion trained on January, then a challenger trained on
    2021-01-15:2021-02-15 and gated against it on 2021-02-15:2021-03-01: both scored on those same trips."""
    from components.registry.versions import champion_model
    from pipelines.local_run import RunRequest, run_pipeline_locally

    settings = _settings(tmp_path)
    candidates = [{"name": name, "params": {}} for name in ("linear_regression", "target_encoded_xgboost")]
    first = run_pipeline_locally(
        settings, RunRequest(data_dir=str(shared_tlc_dir), candidates=candidates), progress=lambda line: None
    )
    assert first["model_version"] == "1"
    champion = champion_model(settings.tracking_uri, settings.model_name, tmp_path / "champion").load()

    newest = EventWindow.parse("2021-02-15:2021-03-01")
    summary = run_pipeline_locally(
        settings,
        RunRequest(
            data_dir=str(shared_tlc_dir),
            train_window=EventWindow.parse("2021-01-15:2021-02-15"),
            val_window=newest,
            candidates=candidates,
        ),
        progress=lambda line: None,
    )
    val_trips, val_report = load_window("green", newest, data_dir=shared_tlc_dir)
    _, train_report = load_window(
        "green", EventWindow.parse("2021-01-15:2021-02-15"), data_dir=shared_tlc_dir
    )
    assert summary["data"]["train"]["rows"] == train_report.rows_kept
    assert summary["data"]["val"]["rows"] == val_report.rows_kept == len(val_trips)
    assert [r.month for r in train_report.files] == ["2021-01", "2021-02"]
    gate = summary["gate"]
    assert gate["champion_version"] == "1"
    assert gate["champion_rmse"] == pytest.approx(_rmse(champion, val_trips), rel=1e-9)
    scores = {row["name"]: row["rmse"] for row in summary["candidates"]}
    assert gate["challenger_rmse"] == pytest.approx(min(scores.values()))
    record = {"first": first["candidates"], "windows": summary["candidates"], "gate": gate}
    print(json.dumps({**record, "data": summary["data"], "step_seconds": summary["step_seconds"]}, indent=1))
