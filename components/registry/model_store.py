"""The model store: where a registered model's file lives in S3 (MinIO in the cluster).

The layout is the cluster contract's (docs/cluster-contract.md):
``<model_store_uri>/<sha256>/trip_duration_model.zip`` and the
``trip_duration_model.zip.sha256`` sidecar beside it (hex digest + newline), so
a version's folder is named by the bytes it holds and is never overwritten
with different ones. KServe's storage initializer downloads the folder; the
predictor checks the file against the sidecar.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from components.models.duration_model import MODEL_FILE_NAME
from components.storage.checksums import file_sha256
from components.storage.object_transfer import (
    DEFAULT_ATTEMPTS,
    DEFAULT_BACKOFF,
    ObjectIntegrityError,
    ObjectStoreError,
    StoredObject,
    upload_file,
)
from components.storage.s3 import S3Connection, S3UriError, parse_s3_uri

SIDECAR_SUFFIX: Final = ".sha256"


@dataclass(frozen=True)
class StoredModel:
    """A model file and its sidecar in the contract layout; ``folder_uri`` ends with ``/``."""

    folder_uri: str
    model: StoredObject
    sidecar: StoredObject


def check_store_uri(uri: str) -> str:
    """A folder URI (``s3://bucket[/prefix]``) without trailing slashes, or ObjectStoreError."""
    try:
        return parse_s3_uri(uri).uri
    except S3UriError as exc:
        raise ObjectStoreError(uri, exc.problem) from None


def model_folder_uri(model_store_uri: str, sha256: str) -> str:
    """``<model_store_uri>/<sha256>/``: the folder a model version's ``storage_uri`` tag names."""
    return f"{check_store_uri(model_store_uri)}/{sha256}/"


def upload_model_files(
    conn: S3Connection,
    model_file: Path | str,
    model_store_uri: str,
    *,
    sha256: str | None = None,
    attempts: int = DEFAULT_ATTEMPTS,
    backoff: float = DEFAULT_BACKOFF,
) -> StoredModel:
    """Upload a model file and its sidecar to ``<model_store_uri>/<sha256>/`` (the contract layout).

    ``sha256`` is the digest the caller already checked; the file must still have it.
    The model goes first and the sidecar last, so a folder with a sidecar holds a
    verified model. The local file name does not matter: the key is the canonical one.
    """
    path = Path(model_file)
    digest = file_sha256(path)
    if sha256 is not None and digest != sha256:
        raise ObjectIntegrityError(
            str(path), f"sha256 {digest} does not match the recorded {sha256}; the file changed"
        )
    folder = model_folder_uri(model_store_uri, digest)
    model = upload_file(conn, path, folder + MODEL_FILE_NAME, attempts=attempts, backoff=backoff)
    with tempfile.TemporaryDirectory(prefix="taxi-mlops-sidecar-") as staging:
        sidecar_path = Path(staging) / (MODEL_FILE_NAME + SIDECAR_SUFFIX)
        # Same format as `sha256sum` without the name: serving/model_source.py reads the first token.
        sidecar_path.write_text(f"{digest}\n", encoding="ascii")
        sidecar = upload_file(
            conn,
            sidecar_path,
            folder + MODEL_FILE_NAME + SIDECAR_SUFFIX,
            attempts=attempts,
            backoff=backoff,
            content_type="text/plain",
        )
    return StoredModel(folder, model, sidecar)
