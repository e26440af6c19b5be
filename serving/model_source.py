"""Model URI in, verified model out: the only way the predictor gets a model.

Three kinds of URI, one rule: no model is loaded unless its bytes match a
sha256 recorded somewhere other than the file itself.

* a local directory holding ``trip_duration_model.zip`` (what KServe's storage
  initializer leaves in ``/mnt/models``), or the file itself;
* ``s3://bucket/prefix``: ``prefix/trip_duration_model.zip`` on MinIO/S3,
  reached with ``S3Connection.from_env()`` (AWS_ACCESS_KEY_ID,
  AWS_SECRET_ACCESS_KEY, S3_ENDPOINT_URL) and fetched by
  ``components.storage.object_transfer`` (retries, verified before it is renamed into place);
* ``models:/<name>@<alias>`` or ``models:/<name>/<version>``: the MLflow
  registry, whose version tag ``model_sha256`` was written at registration.

For the first two the checksum is ``expected_sha256`` (``--model-sha256``) or a
sidecar ``trip_duration_model.zip.sha256`` next to the file/object (its first
token is the hex digest, so ``sha256sum`` output works). Given both, they must
agree. Given neither, loading is refused rather than trusting whatever bytes
happen to be there.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from components.errors import ModelIntegrityError, StorageError, TaxiMlopsError
from components.models.duration_model import MODEL_FILE_NAME, TripDurationModel, load_duration_model
from components.registry.model_store import SIDECAR_SUFFIX
from components.storage.object_transfer import ObjectStoreError, download_file, read_object
from components.storage.s3 import S3Connection, S3Location, S3UriError, parse_s3_uri

_SHA256_RE: Final = re.compile(r"^[0-9a-f]{64}$")
_MODELS_URI_RE: Final = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")


class ModelSourceError(TaxiMlopsError):
    """The model URI cannot be resolved to a file (bad URI, missing file, unreachable store)."""


@dataclass(frozen=True)
class ModelRecord:
    """Which model is being served: reported in logs and as the metrics' ``model_version``."""

    uri: str
    sha256: str
    model_version: str | None
    path: Path

    @property
    def version_label(self) -> str:
        """``model_version`` if known, else a sha256 prefix, so two deployments never share a label."""
        return self.model_version or f"sha256:{self.sha256[:12]}"


@dataclass(frozen=True)
class LoadedModel:
    model: TripDurationModel
    record: ModelRecord


def normalize_sha256(value: str, what: str = "sha256") -> str:
    """Lower-case hex digest, or ModelIntegrityError for anything that is not one."""
    digest = value.strip().lower()
    if not _SHA256_RE.fullmatch(digest):
        raise ModelIntegrityError(f"{what}: {value.strip()[:80]!r} is not a sha256 hex digest")
    return digest


def _agreed_sha256(where: str, given: str | None, sidecar: str | None, sidecar_name: str) -> str:
    """The sha256 to verify against: the given one, the sidecar's, or a refusal."""
    if given is None and sidecar is None:
        raise ModelIntegrityError(
            f"no recorded sha256 for {where}: pass --model-sha256 or put {sidecar_name} next to it; "
            "refusing to load an unverifiable model file"
        )
    if given is not None and sidecar is not None and given != sidecar:
        raise ModelIntegrityError(
            f"{where}: --model-sha256 {given} disagrees with {sidecar_name} ({sidecar}); "
            "refusing to guess which one is right"
        )
    return given or sidecar  # type: ignore[return-value]  # one of them is set, checked above


def _sidecar_digest(text: str, where: str) -> str:
    tokens = text.split()
    if not tokens:
        raise ModelIntegrityError(f"{where}: empty sha256 sidecar")
    return normalize_sha256(tokens[0], where)


def _check_version(uri: str, given: str | None, actual: str | None) -> str | None:
    if given is not None and actual is not None and given != actual:
        raise ModelSourceError(
            f"{uri}: --model-version {given} disagrees with the registry's version {actual}"
        )
    return actual or given


def resolve_local(uri: str, expected_sha256: str | None, model_version: str | None) -> ModelRecord:
    """A local directory or file, checked against the given sha256 or its sidecar."""
    source = Path(uri.removeprefix("file://"))
    path = source / MODEL_FILE_NAME if source.is_dir() else source
    if not path.is_file():
        where = f"no {MODEL_FILE_NAME} in {source}" if source.is_dir() else "no such file or directory"
        raise ModelSourceError(f"{uri}: {where}")
    sidecar_path = path.with_name(path.name + SIDECAR_SUFFIX)
    sidecar = (
        _sidecar_digest(sidecar_path.read_text(encoding="utf-8", errors="replace"), str(sidecar_path))
        if sidecar_path.is_file()
        else None
    )
    sha256 = _agreed_sha256(str(path), expected_sha256, sidecar, sidecar_path.name)
    return ModelRecord(uri=uri, sha256=sha256, model_version=model_version, path=path)


def _model_file_location(uri: str) -> S3Location:
    """``s3://bucket/prefix`` (KServe's storageUri: a folder) or the model file itself."""
    try:
        location = parse_s3_uri(uri)
    except S3UriError:
        raise ModelSourceError(f"{uri}: expected s3://bucket/prefix") from None
    return location if location.key.endswith(MODEL_FILE_NAME) else location.join(MODEL_FILE_NAME)


def resolve_s3(
    uri: str,
    expected_sha256: str | None,
    model_version: str | None,
    s3: S3Connection | None,
    download_dir: Path,
) -> ModelRecord:
    """Download ``prefix/trip_duration_model.zip`` (and read its sidecar, if any) from S3/MinIO.

    Through ``components.storage.object_transfer``: transient failures are retried, and the file
    only appears in ``download_dir`` once its bytes match the agreed sha256.
    """
    where = _model_file_location(uri).uri
    try:
        conn = s3 or S3Connection.from_env()
    except StorageError as exc:
        raise ModelSourceError(f"{where}: {exc.problem}") from exc
    try:
        sidecar = _read_s3_sidecar(conn, where + SIDECAR_SUFFIX)
        # Check the checksum source before paying for the download.
        sha256 = _agreed_sha256(where, expected_sha256, sidecar, MODEL_FILE_NAME + SIDECAR_SUFFIX)
        path = download_dir / MODEL_FILE_NAME
        download_file(conn, where, path, expected_sha256=sha256)
    except ModelIntegrityError:
        raise  # tampered bytes or disagreeing checksums: an integrity refusal, not an unreachable store
    except ObjectStoreError as exc:
        raise ModelSourceError(f"{where}: {exc.problem}") from exc
    return ModelRecord(uri=uri, sha256=sha256, model_version=model_version, path=path)


def _read_s3_sidecar(conn: S3Connection, sidecar_uri: str) -> str | None:
    try:
        text = read_object(conn, sidecar_uri, limit=4096).decode("utf-8", errors="replace")
    except ObjectStoreError as exc:
        if exc.code == "NoSuchKey":
            return None
        raise
    return _sidecar_digest(text, sidecar_uri)


def resolve_registry(
    uri: str,
    expected_sha256: str | None,
    model_version: str | None,
    tracking_uri: str | None,
    download_dir: Path,
) -> ModelRecord:
    """``models:/name@alias`` or ``models:/name/version``, verified against the version's sha256 tag."""
    from mlflow.exceptions import MlflowException

    from components.registry.tracking import client_for
    from components.registry.versions import fetch_model_file, version_for_alias

    match = _MODELS_URI_RE.fullmatch(uri)
    if match is None:
        raise ModelSourceError(f"{uri}: expected models:/<name>@<alias> or models:/<name>/<version>")
    if not tracking_uri:
        raise ModelSourceError(f"{uri}: a registry URI needs --tracking-uri (or MLFLOW_TRACKING_URI)")
    name, alias = match["name"], match["alias"]
    try:
        if alias is not None:
            version = version_for_alias(tracking_uri, name, alias)
            if version is None:
                raise ModelSourceError(f"{uri}: no version of model {name!r} holds alias {alias!r}")
        else:
            version = client_for(tracking_uri).get_model_version(name, match["version"])
        registered = fetch_model_file(tracking_uri, version, alias or "", download_dir)
    except MlflowException as exc:
        raise ModelSourceError(f"{uri}: {exc.message}") from exc
    sha256 = registered.sha256.lower()
    if expected_sha256 is not None and expected_sha256 != sha256:
        raise ModelIntegrityError(
            f"{uri}: --model-sha256 {expected_sha256} disagrees with the registry's {sha256}"
        )
    resolved_version = _check_version(uri, model_version, registered.version)
    return ModelRecord(uri=uri, sha256=sha256, model_version=resolved_version, path=registered.path)


def resolve_model(
    uri: str,
    *,
    expected_sha256: str | None = None,
    model_version: str | None = None,
    tracking_uri: str | None = None,
    s3: S3Connection | None = None,
    download_dir: Path | None = None,
) -> ModelRecord:
    """Where the model file is (downloaded if remote) and the sha256 it must have."""
    given = None if expected_sha256 is None else normalize_sha256(expected_sha256, "--model-sha256")
    if uri.startswith("models:/"):
        target = download_dir or Path(tempfile.mkdtemp(prefix="taxi-mlops-serving-"))
        return resolve_registry(uri, given, model_version, tracking_uri, target)
    if uri.startswith("s3://"):
        target = download_dir or Path(tempfile.mkdtemp(prefix="taxi-mlops-serving-"))
        return resolve_s3(uri, given, model_version, s3, target)
    if "://" in uri and not uri.startswith("file://"):
        raise ModelSourceError(f"{uri}: unsupported scheme; use a local path, s3:// or models:/")
    return resolve_local(uri, given, model_version)


def load_model(
    uri: str,
    *,
    expected_sha256: str | None = None,
    model_version: str | None = None,
    tracking_uri: str | None = None,
    s3: S3Connection | None = None,
    download_dir: Path | None = None,
) -> LoadedModel:
    """Resolve ``uri`` and load the model; ModelIntegrityError if its bytes are not the recorded ones."""
    record = resolve_model(
        uri,
        expected_sha256=expected_sha256,
        model_version=model_version,
        tracking_uri=tracking_uri,
        s3=s3,
        download_dir=download_dir,
    )
    return LoadedModel(load_duration_model(record.path, record.sha256), record)
