"""The one deployable artifact: raw trip fields in, minutes out.

A ``TripDurationModel`` bundles the fitted vectorizer with the fitted estimator
and applies ``components.features.trip_features`` itself, so training,
evaluation, the MLflow pyfunc and the KServe predictor cannot prepare features
differently.

On disk it is ONE zip file holding data only (no pickle):
``manifest.json`` (format, candidate, hyperparameters, estimator type and codec),
``vectorizer.json`` and the estimator payload written by its codec. Whoever loads
it passes the sha256 recorded at registration; a mismatch is refused before a
single byte is parsed.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.errors import ModelIntegrityError
from components.features.trip_features import FEATURE_FIELDS, TARGET_COLUMN, trip_features
from components.features.vectorizer import TripVectorizer
from components.models.estimator_codecs import codec_named, qualified_type_name
from components.storage.atomic_write import write_atomically

MODEL_FORMAT = "taxi-mlops/trip-duration-model"
MODEL_FORMAT_VERSION = 1
MODEL_FILE_NAME = "trip_duration_model.zip"
_MANIFEST = "manifest.json"
_VECTORIZER = "vectorizer.json"


@dataclass
class TripDurationModel:
    """Vectorizer + estimator, predicting trip duration in minutes from raw trip fields."""

    candidate: str
    vectorizer: TripVectorizer
    estimator: Any
    codec: str
    params: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def predict(self, trips: pd.DataFrame | Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Minutes for each trip; ``trips`` has PULocationID, DOLocationID, trip_distance."""
        frame = trips if isinstance(trips, pd.DataFrame) else pd.DataFrame(list(trips))
        matrix = self.vectorizer.transform(trip_features(frame))
        return np.asarray(self.estimator.predict(matrix), dtype=np.float64)

    def predict_matrix(self, matrix: Any) -> np.ndarray:
        """Minutes for rows already vectorized by this model's own vectorizer."""
        return np.asarray(self.estimator.predict(matrix), dtype=np.float64)

    def save(self, path: str | Path) -> str:
        """Write the model file and return its sha256."""
        codec = codec_named(self.codec)
        manifest = {
            "format": MODEL_FORMAT,
            "format_version": MODEL_FORMAT_VERSION,
            "candidate": self.candidate,
            "params": self.params,
            "estimator_type": qualified_type_name(self.estimator),
            "codec": codec.name,
            "inputs": list(FEATURE_FIELDS),
            "output": TARGET_COLUMN,
            "metadata": self.metadata,
        }
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(_MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
            archive.writestr(_VECTORIZER, json.dumps(self.vectorizer.to_dict()))
            archive.writestr(codec.member_name, codec.dump(self.estimator))
        payload = buffer.getvalue()
        # A crash never leaves a truncated model file behind.
        write_atomically(path, payload)
        return hashlib.sha256(payload).hexdigest()


def load_duration_model(path: str | Path, expected_sha256: str | None) -> TripDurationModel:
    """Load a model file after checking its sha256 against the recorded one.

    ``expected_sha256=None`` is only for files this process has just written
    itself (e.g. a training task's own output); anything fetched from a store
    must pass the recorded checksum.
    """
    source = Path(path)
    payload = _checked_payload(source, expected_sha256)
    try:
        with zipfile.ZipFile(io.BytesIO(payload)) as archive:
            manifest = json.loads(archive.read(_MANIFEST))
            _check_manifest(source, manifest)
            codec = codec_named(manifest["codec"])
            vectorizer = TripVectorizer.from_dict(json.loads(archive.read(_VECTORIZER)))
            estimator = codec.load(archive.read(codec.member_name), manifest["estimator_type"])
    # A damaged archive surfaces as any of these, depending on where the damage is.
    except (zipfile.BadZipFile, KeyError, ValueError, EOFError, NotImplementedError, zlib.error) as exc:
        raise ModelIntegrityError(f"{source}: not a trip duration model file ({exc})") from exc
    return TripDurationModel(
        candidate=manifest["candidate"],
        vectorizer=vectorizer,
        estimator=estimator,
        codec=codec.name,
        params=manifest.get("params", {}),
        metadata=manifest.get("metadata", {}),
    )


def verify_model_file(path: str | Path, expected_sha256: str) -> None:
    """Refuse a model file whose sha256 differs from the recorded one, without parsing it.

    For a step that only passes the file on (deploy stages it for the predictors,
    which load it with this same check): the bytes are the registered ones, which
    registration loaded, so there is no need to import the estimator's library here.
    """
    _checked_payload(Path(path), expected_sha256)


def _checked_payload(source: Path, expected_sha256: str | None) -> bytes:
    try:
        payload = source.read_bytes()
    except OSError as exc:
        raise ModelIntegrityError(f"{source}: cannot read model file ({exc.strerror})") from exc
    actual = hashlib.sha256(payload).hexdigest()
    if expected_sha256 is not None and actual != expected_sha256.lower():
        raise ModelIntegrityError(
            f"{source}: sha256 {actual} does not match the recorded {expected_sha256}; "
            "refusing to load a model file that changed after registration"
        )
    return payload


def _check_manifest(source: Path, manifest: Mapping[str, Any]) -> None:
    if manifest.get("format") != MODEL_FORMAT:
        raise ModelIntegrityError(
            f"{source}: not a trip duration model file (format {manifest.get('format')!r})"
        )
    if manifest.get("format_version") != MODEL_FORMAT_VERSION:
        raise ModelIntegrityError(
            f"{source}: model format version {manifest.get('format_version')} is not supported "
            f"(this code reads version {MODEL_FORMAT_VERSION})"
        )
