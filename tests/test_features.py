"""features.py must reproduce the course's DictVectorizer exactly, minus its costs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.feature_extraction import DictVectorizer
from sklearn.linear_model import Lasso

from components.errors import TaxiMlopsError
from components.features.trip_features import FEATURE_COLUMNS, FeatureError, trip_features
from components.features.vectorizer import TripVectorizer

TLC_DIR = Path(
    os.environ.get(
        "TAXI_TLC_DATA_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tlc"
    )
)


def random_trips(n: int, seed: int, id_kind: str = "str", max_id: int = 265) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    pu = rng.integers(1, max_id + 1, n)
    do = rng.integers(1, max_id + 1, n)
    distance = rng.choice([0.0, 0.5, 1.25, 3.0, 12.7], n) * rng.integers(0, 3, n)
    if id_kind == "str":
        ids = (pu.astype(str), do.astype(str))
    elif id_kind == "int32":
        ids = (pu.astype(np.int32), do.astype(np.int32))
    elif id_kind == "float":
        ids = (pu.astype(np.float64), do.astype(np.float64))
    else:
        ids = (pu, do)
    return pd.DataFrame({"PULocationID": ids[0], "DOLocationID": ids[1], "trip_distance": distance})


def reference_pu_do(trips: pd.DataFrame) -> pd.DataFrame:
    """The course's recipe: ids astype(str), PU_DO = PU + '_' + DO."""
    ids = trips[["PULocationID", "DOLocationID"]].astype(str)
    return pd.DataFrame(
        {"PU_DO": ids["PULocationID"] + "_" + ids["DOLocationID"], "trip_distance": trips["trip_distance"]}
    )


def assert_same_matrix(ours: sp.csr_matrix, ref: sp.spmatrix) -> None:
    assert ours.shape == ref.shape
    assert ours.dtype == np.float64
    assert (ours != ref).nnz == 0


def assert_matches_reference(fit_features: pd.DataFrame, new_features: pd.DataFrame) -> TripVectorizer:
    ref = DictVectorizer()
    ref_fit = ref.fit_transform(fit_features[list(FEATURE_COLUMNS)].to_dict(orient="records"))
    ref_new = ref.transform(new_features[list(FEATURE_COLUMNS)].to_dict(orient="records"))
    ours = TripVectorizer()
    ours_fit = ours.fit_transform(fit_features)
    assert list(ours.get_feature_names_out()) == list(ref.get_feature_names_out())
    assert_same_matrix(ours_fit, ref_fit)
    assert_same_matrix(ours.transform(new_features), ref_new)
    # fit() then transform() is the same as fit_transform().
    assert_same_matrix(TripVectorizer().fit(fit_features).transform(fit_features), ref_fit)
    return ours


# ------------------------------------------------------------------ trip_features
@pytest.mark.parametrize("id_kind", ["str", "int", "int32", "float"])
def test_trip_features_matches_course_recipe(id_kind):
    trips = random_trips(2000, seed=1, id_kind=id_kind)
    features = trip_features(trips)
    assert list(features.columns) == ["PU_DO", "trip_distance"]
    assert features["trip_distance"].dtype == np.float64
    expected = reference_pu_do(random_trips(2000, seed=1, id_kind="str"))
    pd.testing.assert_frame_equal(features, expected, check_dtype=False)


def test_trip_features_id_spellings_agree():
    trips = pd.DataFrame(
        {
            "PULocationID": np.array(["130", 130, 130.0, np.int32(7)], dtype=object),
            "DOLocationID": [205, 205.0, 205, 1],
            "trip_distance": [1, 2, 3, 4],  # ints become float64
            "extra": ["ignored"] * 4,
        },
        index=[10, 11, 12, 13],
    )
    features = trip_features(trips)
    assert features["PU_DO"].tolist() == ["130_205", "130_205", "130_205", "7_1"]
    assert features["trip_distance"].dtype == np.float64
    assert features.index.tolist() == [10, 11, 12, 13]


def test_trip_features_nullable_dtypes_and_no_aliasing():
    trips = pd.DataFrame(
        {
            "PULocationID": pd.array(["1", "2"], dtype="string"),
            "DOLocationID": pd.array([3, 4], dtype="Int64"),
            "trip_distance": [1.0, 2.0],
        }
    )
    features = trip_features(trips)
    assert features["PU_DO"].tolist() == ["1_3", "2_4"]
    features.loc[0, "trip_distance"] = 99.0
    assert trips.loc[0, "trip_distance"] == 1.0  # features do not alias the input


def test_trip_features_keeps_nan_distance_and_handles_empty():
    trips = pd.DataFrame({"PULocationID": ["1"], "DOLocationID": ["2"], "trip_distance": [np.nan]})
    assert np.isnan(trip_features(trips)["trip_distance"].iloc[0])
    empty = trip_features(trips.iloc[:0])
    assert list(empty.columns) == ["PU_DO", "trip_distance"] and len(empty) == 0


@pytest.mark.parametrize(
    ("column", "values", "message"),
    [
        ("PULocationID", [1.5, 2.0], "integral"),
        ("DOLocationID", ["abc", "1"], "integral"),
        ("PULocationID", [None, 3], "no location id"),
        ("trip_distance", ["far", 1.0], "not numeric"),
    ],
)
def test_trip_features_rejects_bad_values(column, values, message):
    trips = pd.DataFrame({"PULocationID": [1, 2], "DOLocationID": [3, 4], "trip_distance": [1.0, 2.0]})
    trips[column] = pd.Series(values, dtype=object)
    with pytest.raises(FeatureError, match=message) as info:
        trip_features(trips)
    assert column in str(info.value)


def test_trip_features_missing_column_is_named():
    trips = pd.DataFrame({"PULocationID": [1], "trip_distance": [1.0]})
    with pytest.raises(TaxiMlopsError, match="DOLocationID"):
        trip_features(trips)
    with pytest.raises(ValueError, match="DOLocationID"):  # also a ValueError
        trip_features(trips)


# ---------------------------------------------------------------- TripVectorizer
@pytest.mark.parametrize("id_kind", ["str", "int"])
def test_vectorizer_matches_dictvectorizer_on_generated_data(id_kind):
    fit_features = trip_features(random_trips(3000, seed=2, id_kind=id_kind, max_id=120))
    # Wider id range: many pairs unseen at fit must be ignored, like DictVectorizer does.
    new_features = trip_features(random_trips(3000, seed=3, id_kind=id_kind, max_id=265))
    assert_matches_reference(fit_features, new_features)


def test_vectorizer_unknown_categories_give_no_entry():
    vec = TripVectorizer().fit(pd.DataFrame({"PU_DO": ["1_2", "3_4"], "trip_distance": [1.0, 2.0]}))
    X = vec.transform(pd.DataFrame({"PU_DO": ["9_9", "3_4", None], "trip_distance": [5.0, 0.5, 1.0]}))
    assert list(vec.get_feature_names_out()) == ["PU_DO=1_2", "PU_DO=3_4", "trip_distance"]
    np.testing.assert_array_equal(X.toarray(), [[0, 0, 5.0], [0, 1, 0.5], [0, 0, 1.0]])
    assert X.indptr.tolist() == [0, 1, 3, 4]


def test_vectorizer_keeps_nan_like_dictvectorizer():
    features = pd.DataFrame({"PU_DO": ["1_2", "3_4"], "trip_distance": [np.nan, 2.0]})
    ref = DictVectorizer().fit_transform(features.to_dict(orient="records")).toarray()
    ours = TripVectorizer().fit_transform(features).toarray()
    np.testing.assert_array_equal(ours, ref)  # NaN == NaN for assert_array_equal


def test_vectorizer_generic_columns_match_reference():
    # Several string and numeric columns whose feature ranges interleave
    # ("a=..." < "b" < "c=..."), which exercises the per-row sort.
    rng = np.random.default_rng(4)
    frame = pd.DataFrame(
        {
            "c": rng.choice(["x", "y", "z"], 500),
            "b": rng.normal(size=500),
            "a": rng.choice(["p", "q"], 500),
            "d": rng.integers(0, 3, 500),
            "flag": rng.random(500) > 0.5,
        }
    )
    ref = DictVectorizer()
    ref_X = ref.fit_transform(frame.to_dict(orient="records"))
    ours = TripVectorizer()
    X = ours.fit_transform(frame)
    assert list(ours.get_feature_names_out()) == list(ref.get_feature_names_out())
    assert_same_matrix(X, ref_X)
    X.check_format(full_check=True)
    assert np.all(np.diff(X.indices.reshape(500, -1), axis=1) > 0)  # rows sorted by index


def test_vectorizer_output_is_int32_and_lasso_accepts_it():
    features = trip_features(random_trips(2000, seed=5))
    X = TripVectorizer().fit_transform(features)
    assert isinstance(X, sp.csr_matrix)
    assert X.indices.dtype == np.int32 and X.indptr.dtype == np.int32
    y = 3.0 * features["trip_distance"].to_numpy() + 1.0
    Lasso(alpha=0.001).fit(X, y)  # scikit-learn rejects int64 sparse indices here


def test_vectorizer_json_round_trip_gives_identical_transforms():
    fit_features = trip_features(random_trips(2000, seed=6, max_id=100))
    new_features = trip_features(random_trips(500, seed=7))
    vec = TripVectorizer().fit(fit_features)
    state = json.loads(json.dumps(vec.to_dict()))
    assert set(state) >= {"feature_names", "categorical", "numeric"}
    clone = TripVectorizer.from_dict(state)
    assert list(clone.get_feature_names_out()) == list(vec.get_feature_names_out())
    a, b = vec.transform(new_features), clone.transform(new_features)
    assert (a != b).nnz == 0 and a.indices.dtype == b.indices.dtype == np.int32


def test_vectorizer_from_dict_rejects_tampered_state():
    state = TripVectorizer().fit(pd.DataFrame({"PU_DO": ["1_2"], "trip_distance": [1.0]})).to_dict()
    with pytest.raises(FeatureError, match="belongs to no column"):
        TripVectorizer.from_dict({**state, "feature_names": ["evil=1", *state["feature_names"]]})
    with pytest.raises(FeatureError, match="sorted"):
        TripVectorizer.from_dict({**state, "feature_names": state["feature_names"][::-1]})
    with pytest.raises(FeatureError, match="format"):
        TripVectorizer.from_dict({"feature_names": []})


def test_vectorizer_errors_are_clear():
    vec = TripVectorizer()
    with pytest.raises(FeatureError, match="not fitted"):
        vec.transform(pd.DataFrame({"PU_DO": ["1_2"], "trip_distance": [1.0]}))
    vec.fit(pd.DataFrame({"PU_DO": ["1_2"], "trip_distance": [1.0]}))
    with pytest.raises(FeatureError, match="'trip_distance'"):
        vec.transform(pd.DataFrame({"PU_DO": ["1_2"]}))
    with pytest.raises(FeatureError, match=r"PU_DO.*strings"):
        TripVectorizer().fit(pd.DataFrame({"PU_DO": pd.Series(["1_2", 3], dtype=object)}))
    with pytest.raises(FeatureError, match="no rows"):
        TripVectorizer().fit(pd.DataFrame({"PU_DO": pd.Series([], dtype=object)}))
    with pytest.raises(FeatureError, match="'PU_DO'"):
        TripVectorizer(categorical=["PU_DO"], numeric=["trip_distance"]).fit(
            pd.DataFrame({"trip_distance": [1.0]})
        )


# ----------------------------------------------------------------------- real data
def read_course_month(name: str) -> pd.DataFrame:
    """The course's read_dataframe: duration filter 1..60 minutes, ids astype(str)."""
    path = TLC_DIR / name
    if not path.exists():
        pytest.skip(f"real TLC file {path} not present")
    df = pd.read_parquet(path)
    df["duration"] = (df.lpep_dropoff_datetime - df.lpep_pickup_datetime).dt.total_seconds() / 60
    df = df[(df.duration >= 1) & (df.duration <= 60)].copy()
    df[["PULocationID", "DOLocationID"]] = df[["PULocationID", "DOLocationID"]].astype(str)
    df["PU_DO"] = df["PULocationID"] + "_" + df["DOLocationID"]
    return df


@pytest.mark.real_data
def test_vectorizer_matches_dictvectorizer_on_real_months():
    train = read_course_month("green_tripdata_2021-01.parquet")
    val = read_course_month("green_tripdata_2021-02.parquet")
    train_features, val_features = trip_features(train), trip_features(val)
    # Our PU_DO is the course's PU_DO.
    assert train_features["PU_DO"].equals(train["PU_DO"])
    assert_matches_reference(train_features, val_features)
