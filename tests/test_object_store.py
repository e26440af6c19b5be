"""Verified object transfer and the model store (register_winner included), against a real S3 server (moto).

Faults come from ``FaultyProxy``, a real HTTP proxy on a loopback socket in front
of the store: 503s, dropped connections, bodies cut short on the way in or out,
and a store that keeps a short upload. Nothing is mocked; what each test counts
is what the proxy saw on the wire.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow
import numpy as np
import pytest
from minio.error import S3Error
from support.model_fixtures import fit_fixture_model
from support.s3_server import Fault, FaultyProxy, faulty_proxy, upload_object
from support.tlc_fixtures import write_tlc_dir

from components.data.tlc_source import resolve_trip_file
from components.errors import ModelIntegrityError
from components.evaluation.gate import gate_against_champion
from components.models.duration_model import MODEL_FILE_NAME, TripDurationModel, load_duration_model
from components.registry import tracking
from components.registry.model_store import check_store_uri, model_folder_uri, upload_model_files
from components.registry.registration import register_winner
from components.registry.versions import SHA256_TAG, STORAGE_URI_TAG
from components.storage.object_transfer import (
    ObjectIntegrityError,
    ObjectStoreError,
    StoredObject,
    connection_for,
    download_file,
    object_location,
    read_object,
    upload_file,
)
from components.storage.s3 import S3Connection
from serving.model_source import load_model, resolve_model

pytestmark = pytest.mark.timeout(120)

BUCKET = "objects"
FAST = 0.01  # backoff for tests: the retry count is the point, not the wait


@pytest.fixture(scope="module")
def store(s3_conn: S3Connection) -> S3Connection:
    for bucket in (BUCKET, "models"):
        s3_conn.client().make_bucket(bucket)
    return s3_conn


@pytest.fixture
def proxy(store: S3Connection) -> Iterator[FaultyProxy]:
    with faulty_proxy(store) as running:
        yield running


@pytest.fixture
def payload(tmp_path: Path) -> Path:
    """300 KB of random bytes: several read chunks, one PUT."""
    path = tmp_path / "upload" / "payload.bin"
    path.parent.mkdir()
    path.write_bytes(os.urandom(300_000))
    return path


@pytest.fixture
def key(request: pytest.FixtureRequest) -> str:
    """A key of its own for each test (the store is shared by the module)."""
    return f"s3://{BUCKET}/{request.node.name.replace('[', '-').rstrip(']')}/payload.bin"


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def object_exists(conn: S3Connection, uri: str) -> bool:
    location = object_location(uri)
    try:
        conn.client().stat_object(location.bucket, location.key)
    except S3Error as exc:
        assert exc.code == "NoSuchKey"
        return False
    return True


def actions(proxy: FaultyProxy, method: str) -> list[str]:
    return [seen.action for seen in proxy.seen if seen.method == method]


def files_in(folder: Path) -> list[str]:
    """Everything in ``folder``, hidden temporary files included."""
    return sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------------ round trip


def test_round_trip_keeps_size_and_sha256(store: S3Connection, payload: Path, key: str, tmp_path: Path):
    data = payload.read_bytes()
    stored = upload_file(store, payload, key)
    assert stored == StoredObject(key, len(data), sha256_of(data))
    location = object_location(key)
    assert store.client().stat_object(location.bucket, location.key).metadata[
        "x-amz-meta-sha256"
    ] == sha256_of(data)

    dest = tmp_path / "down" / "copy.bin"
    assert download_file(store, key, dest) == stored  # checked against the recorded sha256
    assert dest.read_bytes() == data
    assert files_in(dest.parent) == ["copy.bin"]
    assert download_file(store, key, dest, expected_sha256=stored.sha256.upper()) == stored


def test_small_object_read(store: S3Connection, key: str):
    upload_object(store, BUCKET, object_location(key).key, b"abc\n")
    assert read_object(store, key) == b"abc\n"
    with pytest.raises(ObjectStoreError, match="larger than the 2 bytes"):
        read_object(store, key, limit=2)


# ------------------------------------------------------------------- integrity


def test_bytes_replaced_behind_our_back_are_refused_once(
    store: S3Connection, proxy: FaultyProxy, payload: Path, key: str, tmp_path: Path
):
    stored = upload_file(store, payload, key)
    # Same recorded sha256, other bytes: what a tampering or a buggy copy would leave.
    other = os.urandom(stored.size)
    location = object_location(key)
    store.client().put_object(
        location.bucket, location.key, io.BytesIO(other), len(other), metadata={"sha256": stored.sha256}
    )

    dest = tmp_path / "down" / "copy.bin"
    with pytest.raises(ObjectIntegrityError) as err:
        download_file(proxy.connection, key, dest, backoff=FAST)
    assert str(err.value) == f"{key}: sha256 {sha256_of(other)} does not match the recorded {stored.sha256}"
    assert isinstance(err.value, ModelIntegrityError)  # callers that refuse tampered models refuse this too
    assert files_in(dest.parent) == []  # no dest, no temporary file
    assert actions(proxy, "GET") == ["pass"]  # a mismatch is not retried


def test_failed_download_leaves_the_existing_file_alone(
    store: S3Connection, payload: Path, key: str, tmp_path: Path
):
    upload_file(store, payload, key)
    dest = tmp_path / "copy.bin"
    dest.write_bytes(b"the previous good copy")
    with pytest.raises(ObjectIntegrityError):
        download_file(store, key, dest, expected_sha256="0" * 64)
    assert dest.read_bytes() == b"the previous good copy"
    assert files_in(tmp_path) == ["copy.bin", "upload"]


def test_expected_sha256_disagreeing_with_the_recorded_one(
    store: S3Connection, payload: Path, key: str, tmp_path: Path
):
    stored = upload_file(store, payload, key)
    with pytest.raises(
        ObjectIntegrityError, match=f"expected sha256 {'0' * 64} but the object records {stored.sha256}"
    ):
        download_file(store, key, tmp_path / "copy.bin", expected_sha256="0" * 64)
    assert not (tmp_path / "copy.bin").exists()


def test_expected_sha256_mismatch_without_recorded_sha256(store: S3Connection, key: str, tmp_path: Path):
    upload_object(store, BUCKET, object_location(key).key, b"plain upload, no metadata")
    with pytest.raises(ObjectIntegrityError, match=f"does not match the recorded {'1' * 64}"):
        download_file(store, key, tmp_path / "copy.bin", expected_sha256="1" * 64)
    assert files_in(tmp_path) == []


def test_unverifiable_download_is_refused_unless_asked_for(store: S3Connection, key: str, tmp_path: Path):
    data = b"plain upload, no metadata"
    upload_object(store, BUCKET, object_location(key).key, data)
    with pytest.raises(ObjectIntegrityError, match="no sha256 given and none recorded"):
        download_file(store, key, tmp_path / "copy.bin")
    assert files_in(tmp_path) == []
    stored = download_file(store, key, tmp_path / "copy.bin", require_sha256=False)
    assert stored == StoredObject(key, len(data), sha256_of(data))


# --------------------------------------------------------------------- missing


@pytest.mark.parametrize(
    ("uri", "code"),
    [(f"s3://{BUCKET}/nothing/here.bin", "NoSuchKey"), ("s3://no-such-bucket/here.bin", "NoSuchBucket")],
)
def test_missing_object_names_the_uri(
    store: S3Connection, proxy: FaultyProxy, tmp_path: Path, uri: str, code: str
):
    with pytest.raises(ObjectStoreError) as err:
        download_file(proxy.connection, uri, tmp_path / "copy.bin", backoff=FAST)
    assert str(err.value).startswith(f"{uri}: {code} (")
    assert err.value.code == code and err.value.missing
    assert not isinstance(err.value, ModelIntegrityError)
    assert files_in(tmp_path) == []
    assert actions(proxy, "GET") == ["pass"]  # a 404 is an answer, not a transient failure


def test_upload_to_a_missing_bucket_is_not_retried(proxy: FaultyProxy, payload: Path):
    with pytest.raises(ObjectStoreError, match=r"^s3://no-such-bucket/x\.bin: NoSuchBucket") as err:
        upload_file(proxy.connection, payload, "s3://no-such-bucket/x.bin", backoff=FAST)
    assert err.value.missing
    assert actions(proxy, "PUT") == ["pass"]


@pytest.mark.parametrize(
    "uri", ["http://bucket/key", "s3://", "s3://bucket", "s3://bucket/", "s3://bucket/folder/", "bucket/key"]
)
def test_bad_object_uri(uri: str):
    with pytest.raises(ObjectStoreError, match="expected s3://bucket/key"):
        object_location(uri)


def test_store_uris():
    assert check_store_uri("s3://models/taxi/") == "s3://models/taxi"
    assert model_folder_uri("s3://models/taxi", "ab" * 32) == f"s3://models/taxi/{'ab' * 32}/"
    for bad in ("s3://", "models/taxi", "file:///models"):
        with pytest.raises(ObjectStoreError, match=r"expected s3://bucket\[/prefix\]"):
            check_store_uri(bad)


def test_connection_from_env_names_what_is_missing(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    with pytest.raises(ObjectStoreError, match=r"^s3://models/taxi: S3 access needs AWS_ACCESS_KEY_ID"):
        connection_for("s3://models/taxi", None)


# --------------------------------------------------------------------- retries


def test_upload_outlasts_503s(store: S3Connection, proxy: FaultyProxy, payload: Path, key: str):
    # Five 503s: more than the client's own per-request retries (4 requests), so both layers work.
    proxy.add(Fault("status_503", "PUT", times=5))
    stored = upload_file(proxy.connection, payload, key, backoff=FAST)
    assert actions(proxy, "PUT") == ["status_503"] * 5 + ["pass"]
    assert stored.sha256 == sha256_of(payload.read_bytes())
    assert download_file(store, key, payload.with_name("copy.bin")) == stored


def test_upload_outlasts_dropped_connections(
    store: S3Connection, proxy: FaultyProxy, payload: Path, key: str
):
    proxy.add(Fault("drop", "PUT", times=2)).add(Fault("drop", "HEAD", times=1))
    stored = upload_file(proxy.connection, payload, key, backoff=FAST)
    assert actions(proxy, "PUT") == ["drop", "drop", "pass"]
    assert actions(proxy, "HEAD") == ["drop", "pass"]  # the verification is retried too
    assert download_file(store, key, payload.with_name("copy.bin")) == stored


def test_download_outlasts_bodies_cut_short(
    store: S3Connection, proxy: FaultyProxy, payload: Path, key: str, tmp_path: Path
):
    stored = upload_file(store, payload, key)
    # A body cut mid-stream cannot be retried by the HTTP client: the whole download is.
    proxy.add(Fault("cut_response", "GET", times=2, after_bytes=1000))
    dest = tmp_path / "down" / "copy.bin"
    assert download_file(proxy.connection, key, dest, backoff=FAST) == stored
    assert actions(proxy, "GET") == ["cut_response", "cut_response", "pass"]
    assert dest.read_bytes() == payload.read_bytes()
    assert files_in(dest.parent) == ["copy.bin"]


def test_download_gives_up_and_leaves_nothing(
    store: S3Connection, proxy: FaultyProxy, payload: Path, key: str, tmp_path: Path
):
    upload_file(store, payload, key)
    proxy.add(Fault("cut_response", "GET", times=None, after_bytes=1000))
    dest = tmp_path / "down" / "copy.bin"
    with pytest.raises(
        ObjectStoreError,
        match=rf"^{re.escape(key)}: cannot reach the object store .* gave up after 3 attempts",
    ):
        download_file(proxy.connection, key, dest, backoff=FAST)
    assert actions(proxy, "GET") == ["cut_response"] * 3
    assert files_in(dest.parent) == []


def test_upload_cut_mid_body_never_lands(store: S3Connection, proxy: FaultyProxy, payload: Path, key: str):
    proxy.add(Fault("cut_request", "PUT", times=None, after_bytes=64_000))
    with pytest.raises(
        ObjectStoreError,
        match=rf"^{re.escape(key)}: cannot reach the object store .* gave up after 3 attempts",
    ):
        upload_file(proxy.connection, payload, key, backoff=FAST)
    assert len(actions(proxy, "PUT")) >= 3 and set(actions(proxy, "PUT")) == {"cut_request"}
    assert not object_exists(store, key)


def test_short_upload_kept_by_the_store_is_removed(
    store: S3Connection, proxy: FaultyProxy, payload: Path, key: str
):
    # The store answers 200 but keeps 1000 bytes: only the check after the PUT can tell.
    proxy.add(Fault("truncate_body", "PUT", times=None, after_bytes=1000))
    with pytest.raises(ObjectStoreError, match=r"stored object has 1000 bytes .* expected 300000 bytes"):
        upload_file(proxy.connection, payload, key, backoff=FAST)
    assert actions(proxy, "PUT") == ["truncate_body"] * 3
    assert not object_exists(store, key)


def test_tlc_mirror_download_outlasts_bodies_cut_short(
    store: S3Connection, proxy: FaultyProxy, tmp_path: Path
):
    data = (write_tlc_dir(tmp_path / "tlc") / "green_tripdata_2021-01.parquet").read_bytes()
    upload_object(store, "tlc-data", "green_tripdata_2021-01.parquet", data)
    proxy.add(Fault("cut_response", "GET", times=2, after_bytes=100))
    found = resolve_trip_file(
        "green", "2021-01", s3_uri="s3://tlc-data", s3=proxy.connection, cache_dir=tmp_path / "cache"
    )
    assert found.path.read_bytes() == data
    assert actions(proxy, "GET") == ["cut_response", "cut_response", "pass"]
    assert files_in(found.path.parent) == [found.path.name]


# ------------------------------------------------------------ model store layout


def test_model_files_in_the_contract_layout(store: S3Connection, payload: Path, tmp_path: Path):
    sha256 = sha256_of(payload.read_bytes())
    stored = upload_model_files(store, payload, "s3://models/layout-test/", sha256=sha256)
    folder = f"s3://models/layout-test/{sha256}/"
    assert stored.folder_uri == folder
    assert stored.model == StoredObject(folder + MODEL_FILE_NAME, payload.stat().st_size, sha256)
    assert stored.sidecar.uri == folder + MODEL_FILE_NAME + ".sha256"
    assert read_object(store, stored.sidecar.uri) == f"{sha256}\n".encode()
    # The predictor's reader finds the file through the folder URI and checks it against the sidecar.
    resolved = resolve_model(folder, s3=store, download_dir=tmp_path / "serving")
    assert resolved.sha256 == sha256
    assert resolved.path.read_bytes() == payload.read_bytes()


def test_model_file_that_changed_is_not_uploaded(store: S3Connection, payload: Path):
    with pytest.raises(
        ObjectIntegrityError, match=f"does not match the recorded {'2' * 64}; the file changed"
    ):
        upload_model_files(store, payload, "s3://models/changed", sha256="2" * 64)
    assert not list(store.client().list_objects("models", prefix="changed/", recursive=True))


# ------------------------------------------------------------- register_winner


@dataclass(frozen=True)
class Built:
    path: Path
    sha256: str
    model: TripDurationModel
    rmse: float
    example: object  # cleaned validation trips (a DataFrame)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    model, result, validation = fit_fixture_model(tmp_path_factory.mktemp("tlc"))
    # KFP names the file after the output: the store must use the canonical name anyway.
    path = tmp_path_factory.mktemp("model") / "winner"
    sha256 = model.save(path)
    return Built(path, sha256, load_duration_model(path, sha256), result.rmse, validation.head(20))


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    previous_uri = os.environ.get("MLFLOW_TRACKING_URI")
    tracking.ensure_experiment(uri, "store-test", artifact_location=(root / "artifacts").as_uri())
    yield uri
    # client_for() sets the process-wide tracking URI: do not leak ours to other test modules.
    mlflow.set_tracking_uri(previous_uri)  # type: ignore[arg-type]  # None unsets it


def register(built: Built, tracking_uri: str, model_name: str, conn: S3Connection):
    parent = tracking.open_pipeline_run(tracking_uri, "store-test", model_name, f"job-{model_name}", {})
    with tracking.candidate_run(tracking_uri, parent, "ridge") as run_id:
        pass
    return register_winner(
        tracking_uri=tracking_uri,
        model_name=model_name,
        model_file=built.path,
        gate=asdict(gate_against_champion("ridge", built.rmse, None, None, 0.0)),
        input_example=built.example,  # type: ignore[arg-type]
        run_id=run_id,
        version_tags={"candidate": "ridge"},
        model_store_uri=f"s3://models/{model_name}",
        s3=conn,
    )


def registered_versions(tracking_uri: str, model_name: str) -> list[object]:
    return list(tracking.client_for(tracking_uri).search_model_versions(f"name='{model_name}'"))


def test_register_with_a_failing_store_registers_nothing(
    built: Built, tracking_uri: str, store: S3Connection, proxy: FaultyProxy
):
    proxy.add(Fault("truncate_body", "PUT", times=None, after_bytes=1000))
    with pytest.raises(
        ObjectStoreError,
        match=f"^{re.escape(f's3://models/broken-store/{built.sha256}/{MODEL_FILE_NAME}')}: ",
    ):
        register(built, tracking_uri, "broken-store", proxy.connection)
    assert registered_versions(tracking_uri, "broken-store") == []
    assert not list(store.client().list_objects("models", prefix="broken-store/", recursive=True))


def test_register_stores_and_tags_the_verified_model(
    built: Built, tracking_uri: str, store: S3Connection, tmp_path: Path
):
    registration = register(built, tracking_uri, "stored", store)
    folder = f"s3://models/stored/{built.sha256}/"
    assert registration.storage_uri == folder
    assert registration.to_dict()["storage_uri"] == folder
    (version,) = registered_versions(tracking_uri, "stored")
    assert version.tags[STORAGE_URI_TAG] == folder  # type: ignore[attr-defined]
    assert version.tags[SHA256_TAG] == built.sha256  # type: ignore[attr-defined]

    model = download_file(store, folder + MODEL_FILE_NAME, tmp_path / "model.zip")
    assert model.sha256 == built.sha256
    assert read_object(store, folder + MODEL_FILE_NAME + ".sha256") == f"{built.sha256}\n".encode()
    # What the predictor does with storageUri: the same predictions as the model that was trained.
    loaded = load_model(folder, s3=store, download_dir=tmp_path / "serving")
    records = [{"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66}]
    np.testing.assert_array_equal(loaded.model.predict(records), built.model.predict(records))
