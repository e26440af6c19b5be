"""serving.model_source: every way in verifies the sha256, against real stores.

Local folders and files, a real moto S3 server on 127.0.0.1 and a real MLflow
registry on sqlite; the refusals are the point (no checksum, wrong checksum,
tampered bytes), so each is checked with its message.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from support.model_fixtures import client_records, fit_fixture_model
from support.s3_server import upload_object

from components.errors import ModelIntegrityError
from components.evaluation.gate import gate_against_champion
from components.models.duration_model import MODEL_FILE_NAME, TripDurationModel, load_duration_model
from components.registry import tracking
from components.registry.registration import register_winner
from components.storage.s3 import S3Connection
from serving.model_source import ModelSourceError, load_model, resolve_model

pytestmark = pytest.mark.timeout(180)

REGISTERED_NAME = "taxi-trip-duration-serving"


@dataclass(frozen=True)
class Built:
    path: Path  # <dir>/trip_duration_model.zip
    sha256: str
    model: TripDurationModel
    trips: pd.DataFrame  # cleaned validation trips
    rmse: float


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    model, result, validation = fit_fixture_model(tmp_path_factory.mktemp("tlc"))
    path = tmp_path_factory.mktemp("model") / MODEL_FILE_NAME
    sha256 = model.save(path)
    return Built(path, sha256, load_duration_model(path, sha256), validation, result.rmse)


def _records(built: Built, n: int = 15) -> list[dict[str, object]]:
    return client_records(built.trips, n)


def _assert_same_model(loaded: TripDurationModel, built: Built) -> None:
    records = _records(built)
    np.testing.assert_array_equal(loaded.predict(records), built.model.predict(records))


def _copy_model(built: Built, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copyfile(built.path, folder / MODEL_FILE_NAME))


def _tamper(path: Path) -> None:
    payload = bytearray(path.read_bytes())
    payload[len(payload) // 2] ^= 0xFF
    path.write_bytes(bytes(payload))


# --------------------------------------------------------------------- local


def test_local_directory_with_given_sha256(built: Built):
    loaded = load_model(str(built.path.parent), expected_sha256=built.sha256.upper(), model_version="7")
    assert loaded.record.path == built.path
    assert loaded.record.sha256 == built.sha256
    assert loaded.record.model_version == "7"
    assert loaded.record.version_label == "7"
    _assert_same_model(loaded.model, built)


def test_local_file_with_sha256sum_sidecar(built: Built, tmp_path: Path):
    path = _copy_model(built, tmp_path)
    # sha256sum's own output format: "<hex>  <name>".
    (tmp_path / f"{MODEL_FILE_NAME}.sha256").write_text(f"{built.sha256}  {MODEL_FILE_NAME}\n")
    loaded = load_model(str(path))
    assert loaded.record.sha256 == built.sha256
    assert loaded.record.model_version is None
    assert loaded.record.version_label == f"sha256:{built.sha256[:12]}"
    _assert_same_model(loaded.model, built)


def test_local_without_any_recorded_sha256_is_refused(built: Built, tmp_path: Path):
    _copy_model(built, tmp_path)
    with pytest.raises(ModelIntegrityError, match=r"no recorded sha256 for .*trip_duration_model\.zip"):
        load_model(str(tmp_path))


def test_local_tampered_file_is_refused(built: Built, tmp_path: Path):
    _tamper(_copy_model(built, tmp_path))
    with pytest.raises(ModelIntegrityError, match=f"does not match the recorded {built.sha256}"):
        load_model(str(tmp_path), expected_sha256=built.sha256)


def test_local_tampered_file_is_refused_by_its_sidecar(built: Built, tmp_path: Path):
    path = _copy_model(built, tmp_path)
    (tmp_path / f"{MODEL_FILE_NAME}.sha256").write_text(built.sha256)
    _tamper(path)
    with pytest.raises(ModelIntegrityError, match="does not match the recorded"):
        load_model(str(tmp_path))


def test_given_sha256_and_sidecar_must_agree(built: Built, tmp_path: Path):
    _copy_model(built, tmp_path)
    (tmp_path / f"{MODEL_FILE_NAME}.sha256").write_text("0" * 64)
    with pytest.raises(ModelIntegrityError, match=r"disagrees with trip_duration_model\.zip\.sha256"):
        load_model(str(tmp_path), expected_sha256=built.sha256)


@pytest.mark.parametrize(
    ("uri", "error", "message"),
    [
        ("/no/such/dir", ModelSourceError, "no such file or directory"),
        ("gs://bucket/model", ModelSourceError, "unsupported scheme"),
        ("models:/only-a-name", ModelSourceError, "expected models:/<name>@<alias>"),
    ],
)
def test_unresolvable_uris(uri: str, error: type[Exception], message: str):
    with pytest.raises(error, match=message):
        resolve_model(uri, expected_sha256="a" * 64, tracking_uri="sqlite:///unused.db")


def test_directory_without_the_model_file(tmp_path: Path):
    with pytest.raises(ModelSourceError, match=f"no {MODEL_FILE_NAME} in"):
        resolve_model(str(tmp_path), expected_sha256="a" * 64)


def test_malformed_sha256_is_refused(built: Built):
    with pytest.raises(ModelIntegrityError, match="is not a sha256 hex digest"):
        resolve_model(str(built.path), expected_sha256="abc123")


# ------------------------------------------------------------ S3 (moto server)


def test_s3_prefix_with_sidecar(built: Built, s3_conn: S3Connection, tmp_path: Path):
    upload_object(s3_conn, "models", f"duration/v3/{MODEL_FILE_NAME}", built.path.read_bytes())
    upload_object(s3_conn, "models", f"duration/v3/{MODEL_FILE_NAME}.sha256", f"{built.sha256}\n".encode())
    loaded = load_model("s3://models/duration/v3/", s3=s3_conn, download_dir=tmp_path, model_version="3")
    assert loaded.record.path == tmp_path / MODEL_FILE_NAME
    assert loaded.record.sha256 == built.sha256
    assert loaded.record.uri == "s3://models/duration/v3/"
    assert loaded.record.model_version == "3"
    _assert_same_model(loaded.model, built)


def test_s3_object_key_with_given_sha256(built: Built, s3_conn: S3Connection, tmp_path: Path):
    upload_object(s3_conn, "models", f"plain/{MODEL_FILE_NAME}", built.path.read_bytes())
    loaded = load_model(
        f"s3://models/plain/{MODEL_FILE_NAME}",
        expected_sha256=built.sha256,
        s3=s3_conn,
        download_dir=tmp_path,
    )
    _assert_same_model(loaded.model, built)


def test_s3_without_recorded_sha256_is_refused_before_download(
    built: Built, s3_conn: S3Connection, tmp_path: Path
):
    upload_object(s3_conn, "models", f"unverified/{MODEL_FILE_NAME}", built.path.read_bytes())
    with pytest.raises(ModelIntegrityError, match="no recorded sha256 for s3://models/unverified/"):
        load_model("s3://models/unverified", s3=s3_conn, download_dir=tmp_path)
    assert not (tmp_path / MODEL_FILE_NAME).exists()


def test_s3_tampered_object_is_refused(built: Built, s3_conn: S3Connection, tmp_path: Path):
    payload = bytearray(built.path.read_bytes())
    payload[100] ^= 0x01
    upload_object(s3_conn, "models", f"tampered/{MODEL_FILE_NAME}", bytes(payload))
    upload_object(s3_conn, "models", f"tampered/{MODEL_FILE_NAME}.sha256", built.sha256.encode())
    with pytest.raises(ModelIntegrityError, match=f"does not match the recorded {built.sha256}"):
        load_model("s3://models/tampered", s3=s3_conn, download_dir=tmp_path)


@pytest.mark.parametrize(
    ("uri", "code"), [("s3://models/nothing-here", "NoSuchKey"), ("s3://no-bucket/x", "NoSuchBucket")]
)
def test_s3_missing_object(s3_conn: S3Connection, tmp_path: Path, uri: str, code: str):
    upload_object(s3_conn, "models", "placeholder", b"x")
    with pytest.raises(ModelSourceError, match=code):
        load_model(uri, expected_sha256="a" * 64, s3=s3_conn, download_dir=tmp_path)


def test_s3_without_credentials_says_which_are_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ModelSourceError, match="AWS_ACCESS_KEY_ID"):
        load_model("s3://models/x", expected_sha256="a" * 64, download_dir=tmp_path)


# ------------------------------------------------------- MLflow registry (sqlite)


@dataclass(frozen=True)
class Registry:
    uri: str
    version: str
    artifacts: Path


@pytest.fixture(scope="module")
def registry(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    previous_uri = os.environ.get("MLFLOW_TRACKING_URI")
    tracking.ensure_experiment(uri, "serving-test", artifact_location=(root / "artifacts").as_uri())
    parent = tracking.open_pipeline_run(uri, "serving-test", "serving", "job-serving", {})
    with tracking.candidate_run(uri, parent, "ridge") as run_id:
        pass
    gate = gate_against_champion("ridge", built.rmse, None, None, 0.0)
    registration = register_winner(
        tracking_uri=uri,
        model_name=REGISTERED_NAME,
        model_file=built.path,
        gate=asdict(gate),
        input_example=built.trips.head(20),
        run_id=run_id,
        version_tags={"candidate": "ridge"},
    )
    assert registration.alias == "champion"
    assert registration.model_version is not None
    yield Registry(uri, registration.model_version, root / "artifacts")
    # client_for() sets the process-wide tracking URI: do not leak ours to other test modules.
    mlflow.set_tracking_uri(previous_uri)  # type: ignore[arg-type]  # None unsets it


def test_registry_alias(built: Built, registry: Registry, tmp_path: Path):
    loaded = load_model(
        f"models:/{REGISTERED_NAME}@champion", tracking_uri=registry.uri, download_dir=tmp_path
    )
    assert loaded.record.model_version == registry.version
    assert loaded.record.sha256 == built.sha256
    assert loaded.record.path.is_relative_to(tmp_path)
    _assert_same_model(loaded.model, built)


def test_registry_version_number(built: Built, registry: Registry, tmp_path: Path):
    loaded = load_model(
        f"models:/{REGISTERED_NAME}/{registry.version}",
        tracking_uri=registry.uri,
        download_dir=tmp_path,
        expected_sha256=built.sha256,
        model_version=registry.version,
    )
    assert loaded.record.model_version == registry.version
    _assert_same_model(loaded.model, built)


def test_registry_unknown_alias(registry: Registry, tmp_path: Path):
    with pytest.raises(ModelSourceError, match=r"no version of model .* holds alias 'challenger'"):
        load_model(f"models:/{REGISTERED_NAME}@challenger", tracking_uri=registry.uri, download_dir=tmp_path)


def test_registry_unknown_version(registry: Registry, tmp_path: Path):
    with pytest.raises(ModelSourceError, match=f"models:/{REGISTERED_NAME}/99"):
        load_model(f"models:/{REGISTERED_NAME}/99", tracking_uri=registry.uri, download_dir=tmp_path)


def test_registry_sha256_disagreeing_with_the_tag_is_refused(registry: Registry, tmp_path: Path):
    with pytest.raises(ModelIntegrityError, match="disagrees with the registry's"):
        load_model(
            f"models:/{REGISTERED_NAME}@champion",
            tracking_uri=registry.uri,
            download_dir=tmp_path,
            expected_sha256="b" * 64,
        )


def test_registry_version_disagreeing_with_the_registry_is_refused(registry: Registry, tmp_path: Path):
    with pytest.raises(ModelSourceError, match="--model-version 42 disagrees"):
        load_model(
            f"models:/{REGISTERED_NAME}@champion",
            tracking_uri=registry.uri,
            download_dir=tmp_path,
            model_version="42",
        )


def test_registry_tampered_artifact_is_refused(registry: Registry, tmp_path: Path):
    # Damage the stored artifact itself (then put it back): the download must be refused, not served.
    stored = list(registry.artifacts.rglob(MODEL_FILE_NAME))
    assert len(stored) == 1, stored
    original = stored[0].read_bytes()
    _tamper(stored[0])
    try:
        with pytest.raises(ModelIntegrityError, match="does not match the recorded"):
            load_model(
                f"models:/{REGISTERED_NAME}@champion", tracking_uri=registry.uri, download_dir=tmp_path
            )
    finally:
        stored[0].write_bytes(original)


def test_registry_needs_a_tracking_uri(tmp_path: Path):
    with pytest.raises(ModelSourceError, match="needs --tracking-uri"):
        load_model(f"models:/{REGISTERED_NAME}@champion", tracking_uri=None, download_dir=tmp_path)
