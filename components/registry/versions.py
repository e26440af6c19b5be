"""The MLflow model registry as the project uses it: versions, aliases, verified downloads.

Aliases carry the deployment roles: ``champion`` serves production traffic,
``challenger`` is a gate winner waiting for (or in) its canary.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

from components.errors import ModelIntegrityError
from components.models.duration_model import (
    MODEL_FILE_NAME,
    TripDurationModel,
    load_duration_model,
    verify_model_file,
)
from components.monitoring.reference_profile import (
    PROFILE_FILE_NAME,
    ProfileError,
    ReferenceProfile,
    load_profile,
)
from components.registry.leftovers import PENDING, PENDING_TAG
from components.registry.tracking import client_for
from components.storage.checksums import file_sha256

CHAMPION = "champion"
CHALLENGER = "challenger"
#: The champion the last promotion replaced: a one-step undo (deploy it again to go back).
PREVIOUS = "previous"
SHA256_TAG = "model_sha256"
# Cluster mode: the model store folder s3://models/<model_name>/<sha256>/ holding the verified
# model file and its sidecar (docs/cluster-contract.md); KServe's storageUri is this value.
STORAGE_URI_TAG = "storage_uri"
# The pyfunc keeps its artifacts under this key; the file sits in artifacts/ of the model dir.
PYFUNC_ARTIFACT_KEY = "trip_duration_model"
# The reference profile (components/monitoring) sits beside it, checked against this tag.
PROFILE_ARTIFACT_KEY = "reference_profile"
PROFILE_SHA256_TAG = "reference_profile_sha256"


@dataclass(frozen=True)
class RegisteredModelFile:
    """A model version resolved to a verified local model file."""

    name: str
    version: str
    alias: str
    sha256: str
    path: Path

    def load(self) -> TripDurationModel:
        return load_duration_model(self.path, self.sha256)

    def verify(self) -> None:
        """Raise ModelIntegrityError unless the file's sha256 is the recorded one (no parsing)."""
        verify_model_file(self.path, self.sha256)


def is_pending(version: ModelVersion) -> bool:
    """True while the version's registration has not finished (or died before it could)."""
    return version.tags.get(PENDING_TAG) == PENDING


def version_for_alias(tracking_uri: str, model_name: str, alias: str) -> ModelVersion | None:
    """The version that holds ``alias``, or None when the model or the alias does not exist."""
    client = client_for(tracking_uri)
    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException as exc:
        if exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST) or "not found" in str(exc).lower():
            return None
        raise


def fetch_model_file(
    tracking_uri: str, version: ModelVersion, alias: str = "", dest_dir: Path | None = None
) -> RegisteredModelFile:
    """Download a version's model file and check it against the sha256 recorded at registration."""
    expected = version.tags.get(SHA256_TAG)
    if not expected:
        raise ModelIntegrityError(
            f"model {version.name} version {version.version} has no {SHA256_TAG} tag; "
            "refusing to load an unverifiable model file"
        )
    path = _download(tracking_uri, version, "", dest_dir, "taxi-mlops-model-") / "artifacts" / MODEL_FILE_NAME
    if not path.is_file():
        raise ModelIntegrityError(
            f"model {version.name} version {version.version} has no artifacts/{MODEL_FILE_NAME}"
        )
    return RegisteredModelFile(version.name, str(version.version), alias, expected, path)


def fetch_reference_profile(
    tracking_uri: str, version: ModelVersion, dest_dir: Path | None = None
) -> ReferenceProfile:
    """A version's reference profile, checked against the sha256 recorded at registration."""
    expected = version.tags.get(PROFILE_SHA256_TAG)
    where = f"model {version.name} version {version.version}"
    if not expected:
        raise ProfileError(
            f"{where} has no {PROFILE_SHA256_TAG} tag (registered without a reference profile)"
        )
    local = _download(
        tracking_uri, version, f"/artifacts/{PROFILE_FILE_NAME}", dest_dir, "taxi-mlops-profile-"
    )
    actual = file_sha256(local)
    if actual != expected.lower():
        raise ProfileError(f"{where}: {PROFILE_FILE_NAME} sha256 {actual} is not the recorded {expected}")
    return load_profile(local)


def _download(
    tracking_uri: str, version: ModelVersion, subpath: str, dest_dir: Path | None, prefix: str
) -> Path:
    """``models:/<name>/<version><subpath>`` downloaded into ``dest_dir`` (default: a new temp dir)."""
    import mlflow.artifacts

    target = dest_dir or Path(tempfile.mkdtemp(prefix=prefix))
    client_for(tracking_uri)  # models:/ URIs resolve through the process's registry URI
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{version.name}/{version.version}{subpath}",
        dst_path=str(target),
        tracking_uri=tracking_uri,
    )
    return Path(local)


def champion_model(
    tracking_uri: str, model_name: str, dest_dir: Path | None = None
) -> RegisteredModelFile | None:
    """The current champion's model file (downloaded into ``dest_dir``), or None without a champion."""
    version = version_for_alias(tracking_uri, model_name, CHAMPION)
    if version is None:
        return None
    return fetch_model_file(tracking_uri, version, CHAMPION, dest_dir)
