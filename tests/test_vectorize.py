"""The vectorize step: fit/transform splits, artifacts that round-trip without pickle."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.linear_model import LinearRegression
from sklearn.metrics import mean_squared_error

from components.features.design_matrix import (
    DesignMatrix,
    VectorizeError,
    load_design_matrix,
    load_vectorizer,
    save_design_matrix,
    save_vectorizer,
    vectorize_trips,
)
from components.features.trip_features import trip_features
from components.features.vectorizer import TripVectorizer

TLC_DIR = Path(
    os.environ.get(
        "TAXI_TLC_DATA_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tlc"
    )
)
COURSE_BASELINE_RMSE = 7.7587  # LinearRegression, green 2021-01 -> 2021-02


def cleaned_trips(n: int, seed: int) -> pd.DataFrame:
    """Frames shaped like the clean step's output (ids stored as strings)."""
    rng = np.random.default_rng(seed)
    distance = rng.gamma(2.0, 1.5, n)
    return pd.DataFrame(
        {
            "pickup_datetime": pd.Timestamp("2021-01-01") + pd.to_timedelta(rng.integers(0, 86400, n), "s"),
            "PULocationID": rng.integers(1, 60, n).astype(str),
            "DOLocationID": rng.integers(1, 60, n).astype(str),
            "trip_distance": distance,
            "trip_duration_minutes": 4.0 * distance + rng.normal(0, 1, n) + 5.0,
        }
    )


def test_vectorize_trips_fits_on_train_only():
    train, val = cleaned_trips(1500, seed=1), cleaned_trips(400, seed=2)
    val.loc[0, ["PULocationID", "DOLocationID"]] = ["999", "999"]  # unseen pair
    vec, dm_train, dm_val = vectorize_trips(train, val)
    expected = TripVectorizer().fit(trip_features(train))
    assert list(vec.get_feature_names_out()) == list(expected.get_feature_names_out())
    assert dm_train.X.shape == (1500, len(vec.get_feature_names_out()))
    assert dm_val.X.shape == (400, dm_train.X.shape[1])
    assert dm_val.X[0].nnz == 1  # only trip_distance
    np.testing.assert_array_equal(dm_train.y, train["trip_duration_minutes"].to_numpy())
    assert dm_train.y.dtype == dm_val.y.dtype == np.float64


def test_vectorize_trips_rejects_bad_target():
    train, val = cleaned_trips(50, seed=3), cleaned_trips(20, seed=4)
    with pytest.raises(VectorizeError, match="'trip_duration_minutes'"):
        vectorize_trips(train.drop(columns="trip_duration_minutes"), val)
    with pytest.raises(ValueError, match="PULocationID"):  # feature errors are named too
        vectorize_trips(train.drop(columns="PULocationID"), val)
    val.loc[3, "trip_duration_minutes"] = np.nan
    with pytest.raises(VectorizeError, match=r"validation.*1 row"):
        vectorize_trips(train, val)


def test_design_matrix_round_trip(tmp_path):
    _, dm, _ = vectorize_trips(cleaned_trips(300, seed=5), cleaned_trips(10, seed=6))
    path = save_design_matrix(tmp_path / "sub" / "train.npz", dm.X, dm.y)
    assert path == tmp_path / "sub" / "train.npz" and path.exists()
    loaded = load_design_matrix(path)
    assert isinstance(loaded, DesignMatrix)
    assert isinstance(loaded.X, sp.csr_matrix) and loaded.X.shape == dm.X.shape
    assert (loaded.X != dm.X).nnz == 0
    assert loaded.X.indices.dtype == np.int32 and loaded.X.indptr.dtype == np.int32
    np.testing.assert_array_equal(loaded.y, dm.y)
    with np.load(path, allow_pickle=False) as npz:
        assert sorted(npz.files) == ["data", "indices", "indptr", "shape", "target"]


def test_load_design_matrix_rejects_foreign_files(tmp_path):
    other = tmp_path / "other.npz"
    with other.open("wb") as fh:
        np.savez(fh, weights=np.zeros(3))
    with pytest.raises(VectorizeError, match="not a design matrix"):
        load_design_matrix(other)
    pickled = tmp_path / "pickled.npz"
    with pickled.open("wb") as fh:
        np.savez(
            fh,
            data=np.array([{"x": 1}], dtype=object),
            indices=np.zeros(1, np.int32),
            indptr=np.array([0, 1], np.int32),
            shape=np.array([1, 1]),
            target=np.zeros(1),
        )
    with pytest.raises(VectorizeError, match="cannot read"):
        load_design_matrix(pickled)
    with pytest.raises(VectorizeError, match="rows but y"):
        save_design_matrix(tmp_path / "bad.npz", sp.csr_matrix(np.eye(2)), np.zeros(3))


def test_vectorizer_json_file_round_trip(tmp_path):
    train, val = cleaned_trips(500, seed=7), cleaned_trips(200, seed=8)
    vec, _, dm_val = vectorize_trips(train, val)
    path = save_vectorizer(tmp_path / "vectorizer.json", vec)
    json.loads(path.read_text())  # plain JSON, no pickle anywhere
    loaded = load_vectorizer(path)
    assert (loaded.transform(trip_features(val)) != dm_val.X).nnz == 0
    path.write_text("{not json")
    with pytest.raises(VectorizeError, match="cannot read vectorizer"):
        load_vectorizer(path)


def course_cleaned_month(name: str) -> pd.DataFrame:
    """A real month cleaned the way the course does (duration 1..60 min, ids as str)."""
    path = TLC_DIR / name
    if not path.exists():
        pytest.skip(f"real TLC file {path} not present")
    df = pd.read_parquet(path)
    duration = (df.lpep_dropoff_datetime - df.lpep_pickup_datetime).dt.total_seconds() / 60
    keep = (duration >= 1) & (duration <= 60)
    return pd.DataFrame(
        {
            "pickup_datetime": df.lpep_pickup_datetime[keep],
            "PULocationID": df.PULocationID[keep].astype(str),
            "DOLocationID": df.DOLocationID[keep].astype(str),
            "trip_distance": df.trip_distance[keep],
            "trip_duration_minutes": duration[keep],
        }
    )


@pytest.mark.real_data
def test_linear_regression_reproduces_course_baseline():
    train = course_cleaned_month("green_tripdata_2021-01.parquet")
    val = course_cleaned_month("green_tripdata_2021-02.parquet")
    _, dm_train, dm_val = vectorize_trips(train, val)
    model = LinearRegression().fit(dm_train.X, dm_train.y)
    rmse = mean_squared_error(dm_val.y, model.predict(dm_val.X)) ** 0.5
    assert rmse == pytest.approx(COURSE_BASELINE_RMSE, abs=0.01)
