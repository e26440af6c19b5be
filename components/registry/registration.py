"""Register the gate's winner as an MLflow model version and give it its alias.

A version is created with the tag ``registration=pending`` and the owner
process (``taxi_mlops.owner``) in the same database write; the alias follows,
and clearing the pending tag is the last write. An error on the way deletes the
version again. A SIGKILL runs no error handler, so that alone is not all or
nothing: what a killed registration leaves is a version still marked pending,
which ``components.registry.recovery`` removes once its owner is gone, and which
no deployment takes (``serving.rollout`` refuses a pending version).

In cluster mode (``model_store_uri`` set) the model file and its sha256 sidecar
are uploaded to ``<model_store_uri>/<sha256>/`` and verified there before the
version exists, and the version's ``storage_uri`` tag names that folder: an
upload that fails or does not check out raises, and nothing is registered.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from components.features.trip_features import FEATURE_FIELDS
from components.models.duration_model import MODEL_FILE_NAME, load_duration_model
from components.monitoring.reference_profile import PROFILE_FILE_NAME
from components.registry.model_code import PYFUNC_ENTRY, stage_model_code
from components.registry.model_store import upload_model_files
from components.registry.process_owner import OWNER_TAG, process_owner
from components.registry.tracking import client_for
from components.registry.versions import (
    CHALLENGER,
    CHAMPION,
    PENDING,
    PENDING_TAG,
    PROFILE_ARTIFACT_KEY,
    PROFILE_SHA256_TAG,
    PYFUNC_ARTIFACT_KEY,
    SHA256_TAG,
    STORAGE_URI_TAG,
)
from components.storage.checksums import file_sha256
from components.storage.object_transfer import connection_for
from components.storage.s3 import S3Connection

# What loading the pyfunc needs; pinned to what trained it. Listing them avoids
# MLflow's requirement inference, which imports the model in a subprocess.
PYFUNC_PACKAGES = ("mlflow", "numpy", "pandas", "scipy", "scikit-learn", "skops", "xgboost")


def pyfunc_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{package}=={version(package)}" for package in PYFUNC_PACKAGES]


@dataclass(frozen=True)
class Registration:
    model_name: str
    model_version: str | None
    alias: str | None
    sha256: str | None
    reason: str
    storage_uri: str | None = None  # cluster mode: the model store folder; None in local mode

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def register_winner(
    *,
    tracking_uri: str,
    model_name: str,
    model_file: Path,
    gate: Mapping[str, Any],
    input_example: pd.DataFrame,
    run_id: str,
    version_tags: Mapping[str, str],
    model_store_uri: str = "",
    s3: S3Connection | None = None,
    reference_profile: Path | None = None,
) -> Registration:
    """Log the winner as a pyfunc model under ``run_id`` and register it, when the gate passed.

    The alias is ``champion`` when there was no champion before, else ``challenger``
    (the canary decides later whether the challenger is promoted). A non-empty
    ``model_store_uri`` (``s3://models/<model_name>``) stores the model there first,
    through ``s3`` (default: ``S3Connection.from_env()``); empty means local mode.
    ``reference_profile`` (a ``reference_profile.json``) is logged beside the model file,
    its sha256 in the version tag ``reference_profile_sha256``.
    """
    if not gate["passed"]:
        return Registration(
            model_name, None, None, None, f"gate failed, nothing registered: {gate['reason']}"
        )

    import mlflow
    from mlflow.models import infer_signature

    sha256 = file_sha256(model_file)
    model = load_duration_model(model_file, sha256)
    # Before any MLflow write: a store that fails here leaves no run artifact and no version behind.
    storage_uri = _store_model(model_file, sha256, model_store_uri, s3) if model_store_uri else None
    # The example shows the serving contract: integer zone ids, as clients send them.
    example = (
        input_example.loc[:, list(FEATURE_FIELDS)]
        .head(5)
        .astype({"PULocationID": "int64", "DOLocationID": "int64", "trip_distance": "float64"})
        .reset_index(drop=True)
    )
    signature = infer_signature(example, model.predict(example))
    alias = CHAMPION if gate.get("champion_rmse") is None else CHALLENGER

    client = client_for(tracking_uri)
    with (
        tempfile.TemporaryDirectory(prefix="taxi-mlops-register-") as staging,
        mlflow.start_run(run_id=run_id),
    ):
        # KFP names the artifact file after the output ("winner"); the registry gets the canonical name.
        staged_file = Path(staging) / MODEL_FILE_NAME
        shutil.copyfile(model_file, staged_file)
        artifacts = {PYFUNC_ARTIFACT_KEY: str(staged_file)}
        if reference_profile is not None:
            staged_profile = Path(staging) / PROFILE_FILE_NAME
            shutil.copyfile(reference_profile, staged_profile)
            artifacts[PROFILE_ARTIFACT_KEY] = str(staged_profile)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(PYFUNC_ENTRY),
            artifacts=artifacts,
            model_config={"sha256": sha256},
            # The model loads anywhere with these packages: the code it needs travels with it.
            code_paths=[str(stage_model_code(Path(staging) / "code"))],
            pip_requirements=pyfunc_requirements(),
            signature=signature,
            input_example=example,
        )
    # register_model creates the registered model on first use and links the logged model.
    tags = {SHA256_TAG: sha256, **version_tags, PENDING_TAG: PENDING, OWNER_TAG: process_owner().text()}
    if storage_uri is not None:
        tags[STORAGE_URI_TAG] = storage_uri
    if reference_profile is not None:
        tags[PROFILE_SHA256_TAG] = file_sha256(reference_profile)
    # The tags are written in the same transaction as the version row: no kill can leave
    # a version without its pending mark.
    version = mlflow.register_model(info.model_uri, model_name, tags=tags)
    try:
        client.set_registered_model_alias(model_name, alias, version.version)
        client.delete_model_version_tag(model_name, version.version, PENDING_TAG)  # the last write
    except BaseException:
        client.delete_model_version(model_name, version.version)
        raise
    return Registration(model_name, str(version.version), alias, sha256, gate["reason"], storage_uri)


def _store_model(model_file: Path, sha256: str, model_store_uri: str, s3: S3Connection | None) -> str:
    """Upload and verify the model file and its sidecar; the folder URI for the ``storage_uri`` tag."""
    stored = upload_model_files(
        connection_for(model_store_uri, s3), model_file, model_store_uri, sha256=sha256
    )
    return stored.folder_uri
