"""The vectorize step: cleaned trips -> fitted vectorizer + design matrices.

Pure functions (no kfp import), so the pipeline component is a thin wrapper
and everything here is unit-testable. Artifacts are written in formats that
load without executing code: the design matrix as one ``.npz`` read with
``allow_pickle=False``, the vectorizer as JSON.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from components.errors import TaxiMlopsError
from components.features.trip_features import TARGET_COLUMN, FeatureError, trip_features
from components.features.vectorizer import TripVectorizer
from components.storage.atomic_write import write_atomically

# Arrays stored in a design-matrix .npz; nothing else is accepted on load.
_NPZ_KEYS = frozenset({"data", "indices", "indptr", "shape", "target"})


class VectorizeError(TaxiMlopsError, ValueError):
    """A vectorize input or artifact is unusable (bad target, corrupt file)."""


@dataclass(frozen=True)
class DesignMatrix:
    """Features and target of one split: ``X`` (CSR, float64) and ``y`` (float64, one per row)."""

    X: sp.csr_matrix
    y: np.ndarray

    def __post_init__(self) -> None:
        if self.X.shape[0] != len(self.y):
            raise VectorizeError(f"design matrix has {self.X.shape[0]} rows but {len(self.y)} targets")

    @property
    def n_rows(self) -> int:
        return int(self.X.shape[0])


def _target(trips: pd.DataFrame, target_column: str, split: str) -> np.ndarray:
    if target_column not in trips.columns:
        raise VectorizeError(f"{split} trips: missing target column {target_column!r}")
    try:
        y = trips[target_column].to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError) as exc:
        raise VectorizeError(f"{split} trips: target {target_column!r} is not numeric ({exc})") from exc
    n_bad = int(np.count_nonzero(~np.isfinite(y)))
    if n_bad:
        # A NaN target makes every regressor fail later with a far vaguer message.
        raise VectorizeError(f"{split} trips: {n_bad} row(s) have a missing/infinite {target_column!r}")
    return y


def vectorize_trips(
    train_trips: pd.DataFrame,
    val_trips: pd.DataFrame,
    target_column: str = TARGET_COLUMN,
) -> tuple[TripVectorizer, DesignMatrix, DesignMatrix]:
    """Fit a :class:`TripVectorizer` on the training trips and vectorize both splits.

    Inputs are cleaned trip frames (``PULocationID``, ``DOLocationID``,
    ``trip_distance`` and the target, other columns ignored). Validation
    (pickup, dropoff) pairs never seen in training get no one-hot entry.
    """
    if len(train_trips) == 0:
        raise VectorizeError("train trips: no rows to fit the vectorizer on")
    y_train = _target(train_trips, target_column, "train")
    y_val = _target(val_trips, target_column, "validation")
    vectorizer = TripVectorizer()
    X_train = vectorizer.fit_transform(trip_features(train_trips))
    X_val = vectorizer.transform(trip_features(val_trips))
    return vectorizer, DesignMatrix(X_train, y_train), DesignMatrix(X_val, y_val)


def save_design_matrix(path: str | os.PathLike[str], X: sp.spmatrix | sp.sparray, y: np.ndarray) -> Path:
    """Write ``X`` (converted to CSR) and ``y`` to one uncompressed ``.npz`` file; return its path.

    Uncompressed because the file is written once and read once per training
    run inside the cluster: zlib would cost more time than the bytes it saves.
    """
    csr = sp.csr_matrix(X)
    target = np.asarray(y, dtype=np.float64)
    if csr.shape[0] != len(target):
        raise VectorizeError(f"X has {csr.shape[0]} rows but y has {len(target)} values")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Write through a file object: np.savez would append ".npz" to a bare path.
    with out.open("wb") as fh:
        np.savez(
            fh,
            data=csr.data.astype(np.float64, copy=False),
            indices=csr.indices,
            indptr=csr.indptr,
            shape=np.asarray(csr.shape, dtype=np.int64),
            target=target,
        )
    return out


def load_design_matrix(path: str | os.PathLike[str]) -> DesignMatrix:
    """Read a file written by :func:`save_design_matrix`, validating its structure."""
    try:
        with np.load(Path(path), allow_pickle=False) as npz:
            keys = set(npz.files)
            if keys != _NPZ_KEYS:
                raise VectorizeError(f"{path}: not a design matrix (arrays {sorted(keys)})")
            arrays = {k: npz[k] for k in _NPZ_KEYS}
    except (OSError, ValueError) as exc:
        if isinstance(exc, VectorizeError):
            raise
        raise VectorizeError(f"{path}: cannot read design matrix ({exc})") from exc
    shape = arrays["shape"]
    if shape.shape != (2,) or not np.issubdtype(shape.dtype, np.integer):
        raise VectorizeError(f"{path}: bad shape array {shape!r}")
    try:
        X = sp.csr_matrix(
            (arrays["data"], arrays["indices"], arrays["indptr"]),
            shape=(int(shape[0]), int(shape[1])),
            copy=False,
        )
        X.check_format(full_check=True)
    except (ValueError, TypeError) as exc:
        raise VectorizeError(f"{path}: corrupt sparse matrix ({exc})") from exc
    return DesignMatrix(X, arrays["target"].astype(np.float64, copy=False))


def save_vectorizer(path: str | os.PathLike[str], vectorizer: TripVectorizer) -> Path:
    """Write the vectorizer's JSON state (see :meth:`TripVectorizer.to_dict`); return the path."""
    return write_atomically(path, json.dumps(vectorizer.to_dict(), indent=1) + "\n")


def load_vectorizer(path: str | os.PathLike[str]) -> TripVectorizer:
    """Read a vectorizer written by :func:`save_vectorizer`."""
    try:
        state = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise VectorizeError(f"{path}: cannot read vectorizer JSON ({exc})") from exc
    try:
        return TripVectorizer.from_dict(state)
    except FeatureError as exc:
        raise VectorizeError(f"{path}: {exc}") from exc
