"""The reference profile: built from a real fitted model on generated TLC months, saved, registered, read."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from support.tlc_fixtures import write_tlc_dir

from components.data.ingest import load_month
from components.evaluation.gate import gate_against_champion
from components.features.design_matrix import vectorize_trips
from components.features.trip_features import TARGET_COLUMN
from components.models.metrics import regression_metrics
from components.models.train import fit_candidate
from components.monitoring.reference_profile import (
    DISTANCE_EDGES,
    PROFILE_FILE_NAME,
    ProfileError,
    ReferenceProfile,
    build_reference_profile,
    load_profile,
    save_profile,
)
from components.registry import tracking
from components.registry.registration import register_winner
from components.registry.versions import PROFILE_SHA256_TAG, fetch_reference_profile


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory):
    data_dir = write_tlc_dir(tmp_path_factory.mktemp("tlc"))
    train_trips, _ = load_month("green", "2021-01", data_dir=data_dir)
    val_trips, _ = load_month("green", "2021-02", data_dir=data_dir)
    vectorizer, train, validation = vectorize_trips(train_trips, val_trips)
    model, result = fit_candidate("ridge", None, vectorizer, train, validation)
    return model, result, train_trips, val_trips


@pytest.fixture(scope="module")
def profile(fitted) -> ReferenceProfile:
    model, _, train_trips, val_trips = fitted
    return build_reference_profile(model, train_trips, val_trips, sample_rows=300, seed=7)


def _ids(trips: pd.DataFrame, column: str) -> np.ndarray:
    return pd.to_numeric(trips[column]).to_numpy(dtype=np.int64)


def test_zone_counts_are_the_months_own(profile: ReferenceProfile, fitted):
    _, _, train_trips, val_trips = fitted
    for month, trips in ((profile.training, train_trips), (profile.validation, val_trips)):
        assert month.rows == len(trips)
        assert len(month.pickup_counts) == len(month.dropoff_counts) == 266  # index = zone id
        assert month.pickup_counts[0] == 0
        expected = np.bincount(_ids(trips, "PULocationID"), minlength=266)
        assert month.pickup_counts == expected.tolist()
        assert sum(month.dropoff_counts) == len(trips)


def test_distributions_cover_every_trip_on_fixed_bins(profile: ReferenceProfile, fitted):
    _, _, train_trips, _ = fitted
    distance = profile.training.distance
    assert distance.edges == list(DISTANCE_EDGES)
    assert sum(distance.counts) == distance.n == len(train_trips)
    assert distance.quantiles == sorted(distance.quantiles)
    assert distance.quantiles[50] == pytest.approx(float(train_trips["trip_distance"].median()))
    assert sum(profile.scores.predictions.counts) == profile.validation.rows
    assert sum(profile.scores.residuals.counts) == profile.validation.rows


def test_scores_are_the_models_validation_scores(profile: ReferenceProfile, fitted):
    model, result, _, val_trips = fitted
    scores = regression_metrics(val_trips[TARGET_COLUMN].to_numpy(), model.predict(val_trips))
    assert profile.scores.rmse == pytest.approx(scores["rmse"]) == pytest.approx(result.rmse)
    assert profile.scores.mae == pytest.approx(scores["mae"])
    assert profile.candidate == "ridge"


def test_seen_pairs_are_exactly_the_training_pairs(profile: ReferenceProfile, fitted):
    _, _, train_trips, _ = fitted
    pickup, dropoff = _ids(train_trips, "PULocationID"), _ids(train_trips, "DOLocationID")
    assert profile.is_seen_pair(pickup, dropoff).all()
    assert len(profile.seen_pairs) == len(set(zip(pickup.tolist(), dropoff.tolist(), strict=True)))
    unseen = [
        (pu, do) for pu in range(1, 266) for do in range(1, 266) if pu * 1000 + do not in profile.seen_pairs
    ]
    pu, do = unseen[0]
    assert not profile.is_seen_pair(np.array([pu]), np.array([do]))[0]


def test_the_sample_is_seeded_rows_of_the_validation_month(profile: ReferenceProfile, fitted):
    model, _, train_trips, val_trips = fitted
    sample = profile.sample
    assert {len(values) for values in sample.values()} == {300}
    again = build_reference_profile(model, train_trips, val_trips, sample_rows=300, seed=7)
    other = build_reference_profile(model, train_trips, val_trips, sample_rows=300, seed=8)
    assert again.sample == sample and other.sample != sample
    rows = pd.DataFrame(sample)
    predicted = model.predict(rows.astype({"PULocationID": "int64", "DOLocationID": "int64"}))
    np.testing.assert_allclose(rows["prediction"], predicted)
    everything = build_reference_profile(model, train_trips, val_trips, sample_rows=10**9)
    assert len(everything.sample["prediction"]) == len(val_trips)  # never more rows than there are


def test_save_and_load_round_trip(profile: ReferenceProfile, tmp_path: Path):
    path = tmp_path / PROFILE_FILE_NAME
    save_profile(profile, path)
    assert load_profile(path) == profile
    assert json.loads(path.read_text())["format"] == "taxi-mlops/reference-profile"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not a reference profile"),
        (b'{"format": "something-else"}', "not a reference profile"),
        (b'{"format": "taxi-mlops/reference-profile", "format_version": 99}', "format_version 99"),
        (b'{"format": "taxi-mlops/reference-profile", "format_version": 1}', "missing or has a bad field"),
    ],
)
def test_a_file_that_is_not_a_profile_is_refused_by_name(content: bytes, message: str, tmp_path: Path):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(ProfileError, match=message) as info:
        load_profile(path)
    assert str(path) in str(info.value)


def test_registration_keeps_the_profile_beside_the_model_and_checks_it(
    profile: ReferenceProfile, fitted, tmp_path: Path
):
    model, result, _, val_trips = fitted
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    with pytest.MonkeyPatch.context() as patch:
        (tmp_path / "tmp").mkdir()
        patch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
        try:
            experiment = tracking.ensure_experiment(uri, "profiles", (tmp_path / "artifacts").as_uri())
            run_id = tracking.client_for(uri).create_run(experiment).info.run_id
            model_file = tmp_path / "model.zip"
            model.save(model_file)
            profile_file = tmp_path / PROFILE_FILE_NAME
            save_profile(profile, profile_file)
            gate = gate_against_champion("ridge", result.rmse, None, None, 0.01)
            registration = register_winner(
                tracking_uri=uri,
                model_name="profiled",
                model_file=model_file,
                gate=asdict(gate),
                input_example=val_trips.head(5),
                run_id=run_id,
                version_tags={},
                reference_profile=profile_file,
            )
            version = tracking.client_for(uri).get_model_version("profiled", registration.model_version)
            assert PROFILE_SHA256_TAG in version.tags
            assert fetch_reference_profile(uri, version, tmp_path / "fetch") == profile

            # The same file with one byte changed is refused, naming the version and the tag.
            artifact = next((tmp_path / "artifacts").rglob(PROFILE_FILE_NAME))
            artifact.write_bytes(artifact.read_bytes().replace(b'"seed":7', b'"seed":8'))
            with pytest.raises(ProfileError, match="is not the recorded"):
                fetch_reference_profile(uri, version, tmp_path / "fetch-again")
        finally:
            mlflow.set_tracking_uri(previous)  # type: ignore[arg-type]
