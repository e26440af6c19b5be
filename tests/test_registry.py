"""MLflow tracking and the model registry, against a real MLflow on sqlite in a temp dir.

One store per module (creating the sqlite schema takes seconds); tests that
register use their own model name unless they build on the shared champion.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from support.tlc_fixtures import write_tlc_dir

from components.data.ingest import load_month
from components.errors import ModelIntegrityError
from components.evaluation.gate import gate_against_champion
from components.features.design_matrix import vectorize_trips
from components.features.trip_features import FEATURE_FIELDS
from components.models.duration_model import MODEL_FILE_NAME, TripDurationModel, load_duration_model
from components.models.train import fit_candidate
from components.registry import tracking
from components.registry.registration import Registration, register_winner
from components.registry.versions import (
    CHALLENGER,
    CHAMPION,
    SHA256_TAG,
    champion_model,
    fetch_model_file,
    version_for_alias,
)

# Real MLflow: each registration logs a pyfunc model (about a second); the
# schema creation of the sqlite store is paid once per module.
pytestmark = pytest.mark.timeout(300)

EXPERIMENT = "taxi-test"
MODEL_NAME = "taxi-trip-duration"


@dataclass(frozen=True)
class Store:
    uri: str
    artifacts: Path
    root: Path

    @property
    def client(self) -> MlflowClient:
        return tracking.client_for(self.uri)


@dataclass(frozen=True)
class Fitted:
    model: TripDurationModel
    path: Path
    rmse: float
    example: pd.DataFrame  # cleaned validation trips, as the register step passes them


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    artifacts = root / "artifacts"
    previous_uri = os.environ.get("MLFLOW_TRACKING_URI")
    with pytest.MonkeyPatch.context() as patch:
        # champion_model() downloads into tempfile.mkdtemp(): keep those under the test's dir.
        (root / "tmp").mkdir()
        patch.setattr(tempfile, "tempdir", str(root / "tmp"))
        # Without an explicit artifact location the artifacts would land in ./mlruns of the CWD.
        tracking.ensure_experiment(uri, EXPERIMENT, artifact_location=artifacts.as_uri())
        yield Store(uri, artifacts, root)
        # client_for() sets the process-wide tracking URI: do not leak ours to other test modules.
        mlflow.set_tracking_uri(previous_uri)  # type: ignore[arg-type]  # None unsets it


@pytest.fixture(scope="module")
def trips(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, pd.DataFrame]:
    data_dir = write_tlc_dir(tmp_path_factory.mktemp("tlc"))
    train, _ = load_month("green", "2021-01", data_dir=data_dir)
    validation, _ = load_month("green", "2021-02", data_dir=data_dir)
    return train, validation


@pytest.fixture(scope="module")
def models(trips, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Fitted]:
    train_trips, val_trips = trips
    vectorizer, train, validation = vectorize_trips(train_trips, val_trips)
    out = {}
    for name in ("ridge", "lasso"):
        model, result = fit_candidate(name, None, vectorizer, train, validation)
        # Not the registry's canonical file name: register_winner must not depend on it.
        path = tmp_path_factory.mktemp(name) / f"{name}.zip"
        model.save(path)
        out[name] = Fitted(model, path, result.rmse, val_trips.head(20))
    return out


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def candidate_run_id(store: Store, name: str) -> str:
    """A finished nested candidate run, as the train step leaves it for the register step."""
    parent = tracking.open_pipeline_run(store.uri, EXPERIMENT, f"pipeline-{name}", f"job-{name}", {})
    with tracking.candidate_run(store.uri, parent, name) as run_id:
        pass
    return run_id


def register(
    store: Store,
    model_name: str,
    fitted: Fitted,
    champion_rmse: float | None = None,
    min_improvement: float = 0.0,
    model_file: Path | None = None,
) -> Registration:
    gate = gate_against_champion(
        fitted.model.candidate,
        fitted.rmse,
        champion_rmse,
        None if champion_rmse is None else "1",
        min_improvement,
    )
    return register_winner(
        tracking_uri=store.uri,
        model_name=model_name,
        model_file=model_file or fitted.path,
        gate=asdict(gate),
        input_example=fitted.example,
        run_id=candidate_run_id(store, fitted.model.candidate),
        version_tags={"candidate": fitted.model.candidate, "rmse": f"{fitted.rmse:.6f}"},
    )


def versions_of(store: Store, model_name: str) -> list[str]:
    # MLflow hands versions back as str or int depending on the call: compare them as str.
    return sorted(
        (str(v.version) for v in store.client.search_model_versions(f"name='{model_name}'")), key=int
    )


@pytest.fixture(scope="module")
def champion(store: Store, models: dict[str, Fitted]) -> Registration:
    """Version 1 of MODEL_NAME, registered with no champion before it."""
    return register(store, MODEL_NAME, models["ridge"])


# ------------------------------------------------------------------ tracking


def test_pipeline_run_with_nested_candidate_runs(store: Store):
    params = {"color": "green", "train_month": "2021-01", "min_improvement": 0.01}
    parent = tracking.open_pipeline_run(store.uri, EXPERIMENT, "nightly-42", "kfp-job-42", params)
    run = store.client.get_run(parent)
    assert run.info.status == "RUNNING"
    assert run.info.run_name == "nightly-42"
    assert run.data.tags[tracking.PIPELINE_RUN_TAG] == "nightly-42"
    assert run.data.tags[tracking.KFP_JOB_TAG] == "kfp-job-42"
    assert run.data.params == {key: str(value) for key, value in params.items()}
    experiment = store.client.get_experiment(run.info.experiment_id)
    assert experiment.name == EXPERIMENT

    children = []
    for name in ("ridge", "lasso"):
        with tracking.candidate_run(store.uri, parent, name) as child_id:
            assert store.client.get_run(child_id).info.status == "RUNNING"
            tracking.log_run_values(store.uri, child_id, metrics={"rmse": 1.5}, params={"alpha": 1.0})
        children.append(child_id)
    for name, child_id in zip(("ridge", "lasso"), children, strict=True):
        child = store.client.get_run(child_id)
        assert child.data.tags["mlflow.parentRunId"] == parent
        assert child.data.tags[tracking.CANDIDATE_TAG] == name
        assert child.info.run_name == name
        assert child.info.experiment_id == run.info.experiment_id
        assert child.info.status == "FINISHED"
        assert child.data.metrics == {"rmse": 1.5}

    tracking.close_pipeline_run(store.uri, parent, succeeded=True)
    closed = store.client.get_run(parent)
    assert closed.info.status == "FINISHED"
    assert closed.info.end_time is not None
    assert "pipeline_error" not in closed.data.tags


def test_candidate_run_is_failed_when_its_body_raises(store: Store):
    parent = tracking.open_pipeline_run(store.uri, EXPERIMENT, "", "kfp-job-fail", {})
    assert store.client.get_run(parent).data.tags[tracking.PIPELINE_RUN_TAG] == "kfp-job-fail"
    with (
        pytest.raises(RuntimeError, match="boom"),
        tracking.candidate_run(store.uri, parent, "xgboost") as child,
    ):
        raise RuntimeError("boom")
    assert store.client.get_run(child).info.status == "FAILED"


def test_failed_pipeline_run_records_the_error(store: Store):
    parent = tracking.open_pipeline_run(store.uri, EXPERIMENT, "broken", "kfp-job-broken", {})
    tracking.close_pipeline_run(store.uri, parent, succeeded=False, error="ingest: no rows left" + "x" * 6000)
    run = store.client.get_run(parent)
    assert run.info.status == "FAILED"
    assert run.data.tags["pipeline_error"].startswith("ingest: no rows left")
    assert len(run.data.tags["pipeline_error"]) == 5000


def test_find_pipeline_run_by_tag(store: Store):
    first = tracking.open_pipeline_run(store.uri, EXPERIMENT, "find-a", "kfp-find-a", {})
    second = tracking.open_pipeline_run(store.uri, EXPERIMENT, "find-b", "kfp-find-b", {})
    find = tracking.find_pipeline_run
    assert find(store.uri, EXPERIMENT, tracking.KFP_JOB_TAG, "kfp-find-a") == first
    assert find(store.uri, EXPERIMENT, tracking.KFP_JOB_TAG, "kfp-find-b") == second
    assert find(store.uri, EXPERIMENT, tracking.PIPELINE_RUN_TAG, "find-b") == second
    assert find(store.uri, EXPERIMENT, tracking.KFP_JOB_TAG, "kfp-find-c") is None
    assert find(store.uri, "no-such-experiment", tracking.KFP_JOB_TAG, "kfp-find-a") is None
    # A retried pipeline reuses its name: the newest run wins.
    time.sleep(0.01)
    retry = tracking.open_pipeline_run(store.uri, EXPERIMENT, "find-a", "kfp-find-a-retry", {})
    assert find(store.uri, EXPERIMENT, tracking.PIPELINE_RUN_TAG, "find-a") == retry


def test_ensure_experiment_is_idempotent(store: Store):
    experiment_id = store.client.get_experiment_by_name(EXPERIMENT).experiment_id
    assert tracking.ensure_experiment(store.uri, EXPERIMENT) == experiment_id
    other = tracking.ensure_experiment(store.uri, "taxi-other", artifact_location=store.artifacts.as_uri())
    assert other != experiment_id
    assert store.client.get_experiment(other).artifact_location == store.artifacts.as_uri()


# ------------------------------------------------------------------ registry


def test_first_registration_becomes_champion(store: Store, models: dict[str, Fitted], champion: Registration):
    ridge = models["ridge"]
    assert champion.model_version == "1"
    assert champion.alias == CHAMPION
    assert champion.sha256 == sha256_of(ridge.path)
    assert "no champion yet" in champion.reason

    version = store.client.get_model_version(MODEL_NAME, "1")
    assert version.tags[SHA256_TAG] == sha256_of(ridge.path)
    assert version.tags["candidate"] == "ridge"
    assert version.tags["rmse"] == f"{ridge.rmse:.6f}"
    assert str(store.client.get_model_version_by_alias(MODEL_NAME, CHAMPION).version) == "1"
    assert version.aliases == [CHAMPION]
    # The model went to the experiment's artifact location, not to ./mlruns of the CWD.
    download_uri = store.client.get_model_version_download_uri(MODEL_NAME, "1")
    stored = Path(url2pathname(urlparse(download_uri).path)) / "artifacts" / MODEL_FILE_NAME
    assert stored.resolve().is_relative_to(store.artifacts.resolve())
    assert sha256_of(stored) == sha256_of(ridge.path)


def test_champion_model_is_a_verified_file_that_predicts_like_the_original(
    store: Store, models: dict[str, Fitted], champion: Registration, trips
):
    found = champion_model(store.uri, MODEL_NAME)
    assert found is not None
    assert (found.name, found.version, found.alias) == (MODEL_NAME, champion.model_version, CHAMPION)
    assert found.sha256 == champion.sha256 == sha256_of(found.path)
    assert found.path.name == MODEL_FILE_NAME
    assert found.path.resolve().is_relative_to(store.root.resolve()), "download leaked out of the temp dir"
    loaded = found.load()
    _, val_trips = trips
    np.testing.assert_array_equal(loaded.predict(val_trips), models["ridge"].model.predict(val_trips))


def test_second_registration_becomes_challenger(
    store: Store, models: dict[str, Fitted], champion: Registration
):
    before = versions_of(store, MODEL_NAME)
    lasso = models["lasso"]
    registration = register(store, MODEL_NAME, lasso, champion_rmse=lasso.rmse * 2)
    assert registration.alias == CHALLENGER
    assert registration.model_version == str(int(before[-1]) + 1)
    assert registration.sha256 == sha256_of(lasso.path)
    challenger = version_for_alias(store.uri, MODEL_NAME, CHALLENGER)
    assert challenger is not None and str(challenger.version) == registration.model_version
    assert challenger.tags[SHA256_TAG] == sha256_of(lasso.path)
    # The champion keeps its alias until the canary promotes the challenger.
    held = version_for_alias(store.uri, MODEL_NAME, CHAMPION)
    assert held is not None and str(held.version) == champion.model_version


def test_failed_gate_registers_nothing(store: Store, models: dict[str, Fitted], champion: Registration):
    before = versions_of(store, MODEL_NAME)
    aliases_before = store.client.get_registered_model(MODEL_NAME).aliases
    lasso = models["lasso"]
    gate = gate_against_champion("lasso", lasso.rmse, lasso.rmse, champion.model_version, 0.01)
    assert not gate.passed
    registration = register_winner(
        tracking_uri=store.uri,
        model_name=MODEL_NAME,
        model_file=lasso.path,
        gate=asdict(gate),
        input_example=lasso.example,
        run_id=candidate_run_id(store, "lasso"),
        version_tags={},
    )
    assert (registration.model_version, registration.alias, registration.sha256) == (None, None, None)
    assert registration.reason.startswith("gate failed, nothing registered")
    assert gate.reason in registration.reason
    assert versions_of(store, MODEL_NAME) == before
    assert store.client.get_registered_model(MODEL_NAME).aliases == aliases_before


def test_pyfunc_predicts_minutes_from_int_ids(
    store: Store, models: dict[str, Fitted], champion: Registration, trips, monkeypatch: pytest.MonkeyPatch
):
    # Loading a model with code_paths prepends its code dir to sys.path: restore it afterwards.
    monkeypatch.setattr(sys, "path", list(sys.path))
    mlflow.set_tracking_uri(store.uri)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@{CHAMPION}")
    _, val_trips = trips
    request = (
        val_trips.loc[:, list(FEATURE_FIELDS)]
        .head(50)
        .astype({"PULocationID": "int64", "DOLocationID": "int64"})
        .reset_index(drop=True)
    )
    predicted = np.asarray(pyfunc.predict(request), dtype=np.float64)
    expected = models["ridge"].model.predict(request)
    np.testing.assert_array_equal(predicted, expected)
    # Minutes, and not a constant: the model distinguishes trips.
    assert np.all((predicted > 0) & (predicted < 120))
    assert np.std(predicted) > 1.0
    assert pyfunc.metadata.get_model_info().signature is not None


def test_tampered_artifact_is_refused(store: Store, models: dict[str, Fitted]):
    name = "taxi-tampered"
    registration = register(store, name, models["ridge"])
    assert registration.alias == CHAMPION
    # Only this version's copy: other registrations hold byte-identical files.
    download_uri = store.client.get_model_version_download_uri(name, registration.model_version)
    stored = Path(url2pathname(urlparse(download_uri).path)) / "artifacts" / MODEL_FILE_NAME
    assert stored.resolve().is_relative_to(store.artifacts.resolve())
    assert sha256_of(stored) == registration.sha256
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0x01
    stored.write_bytes(bytes(data))
    found = champion_model(store.uri, name)
    assert found is not None
    with pytest.raises(ModelIntegrityError, match="sha256"):
        found.load()


def test_version_without_sha256_tag_is_refused(store: Store, models: dict[str, Fitted]):
    name = "taxi-untagged"
    registration = register(store, name, models["ridge"])
    store.client.delete_model_version_tag(name, registration.model_version, SHA256_TAG)
    with pytest.raises(ModelIntegrityError, match=SHA256_TAG):
        champion_model(store.uri, name)


def test_no_champion_yet(store: Store):
    assert champion_model(store.uri, "taxi-never-registered") is None
    assert version_for_alias(store.uri, "taxi-never-registered", CHAMPION) is None


def test_alias_failure_deletes_the_new_version(
    store: Store, models: dict[str, Fitted], monkeypatch: pytest.MonkeyPatch
):
    # Fault injection: the alias call is the last step of a registration; making it fail
    # is the only way to observe the rollback of a half-registered version.
    name = "taxi-alias-fails"

    def refuse(self: MlflowClient, *args: Any, **kwargs: Any) -> None:
        raise ConnectionError("registry went away while setting the alias")

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", refuse)
    with pytest.raises(ConnectionError, match="registry went away"):
        register(store, name, models["ridge"])
    monkeypatch.undo()

    assert versions_of(store, name) == []
    assert champion_model(store.uri, name) is None
    # The registry still works afterwards, and numbering is not confused by the rollback.
    registration = register(store, name, models["ridge"])
    assert registration.alias == CHAMPION
    assert versions_of(store, name) == [registration.model_version]


def test_model_file_name_does_not_matter_for_the_registry(
    store: Store, models: dict[str, Fitted], tmp_path: Path
):
    # The register step gets the KFP output path of the evaluate step's `winner` artifact.
    kfp_output = tmp_path / "evaluate" / "winner"
    kfp_output.parent.mkdir()
    shutil.copyfile(models["ridge"].path, kfp_output)
    name = "taxi-kfp-named-file"
    registration = register(store, name, models["ridge"], model_file=kfp_output)
    assert registration.alias == CHAMPION
    found = champion_model(store.uri, name)
    assert found is not None
    assert found.load().candidate == "ridge"


def test_fetch_model_file_checks_the_download(store: Store, champion: Registration, tmp_path: Path):
    version = store.client.get_model_version(MODEL_NAME, champion.model_version)
    fetched = fetch_model_file(store.uri, version, CHAMPION, dest_dir=tmp_path / "download")
    assert fetched.path.is_relative_to(tmp_path / "download")
    assert sha256_of(fetched.path) == version.tags[SHA256_TAG]
    assert load_duration_model(fetched.path, fetched.sha256).candidate == "ridge"
