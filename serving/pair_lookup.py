"""Predict trips from zone ids and distance with the model's features precomputed per zone pair.

A served request carries a few trips of (PULocationID, DOLocationID,
trip_distance). Running :func:`components.features.trip_features` and the
vectorizer on a one-row DataFrame costs about a millisecond of pandas
overhead per request, for a result that depends only on the zone pair and
the distance. So, when a predictor loads a model, this module runs the
model's *own* feature function and vectorizer once over every pickup/dropoff
pair the request validator admits (265 x 265 = 70,225 rows), keeps the rows,
and at request time only looks them up and writes the distance in.

Nothing here defines a feature: the table is the vectorizer's output, and
:meth:`PairLookup.build` checks it against the model's ``predict`` on every pair
(with varied distances) before it is used, so the lookup gives the model's
numbers bit for bit or is not built at all. For an estimator that encodes its
input itself (``TargetEncodedXGBoost``), the encoded rows are tabled too,
after checking that only the trailing distance column varies with distance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import scipy.sparse as sp

from components.features.trip_features import trip_features
from components.models.duration_model import TripDurationModel

# Distances used to probe which parts of a row depend on the distance.
_PROBE_DISTANCES = (1.0, 7.25)


@runtime_checkable
class EncodingEstimator(Protocol):
    """An estimator whose ``predict(X)`` is ``predict_encoded(encode(X))``."""

    def encode(self, matrix: Any) -> np.ndarray: ...

    def predict_encoded(self, encoded: np.ndarray) -> np.ndarray: ...


class PairLookupError(RuntimeError):
    """The precomputed table does not reproduce the model; the caller must not use it."""


@dataclass(frozen=True)
class PairLookup:
    """Per zone pair, the model's design-matrix row (and encoded row, when the estimator encodes)."""

    model: TripDurationModel
    min_id: int
    max_id: int
    rows: sp.csr_matrix  # one vectorized row per pair, distance entry = 1.0
    distance_offset: np.ndarray  # per pair: position of the distance entry inside its row
    encoded: np.ndarray | None  # per pair: the estimator's encoded row (distance column last)

    @property
    def n_ids(self) -> int:
        return self.max_id - self.min_id + 1

    @classmethod
    def build(cls, model: TripDurationModel, min_id: int, max_id: int) -> PairLookup:
        """Table every (PU, DO) in ``min_id..max_id``; raises PairLookupError if it differs from the model."""
        ids = np.arange(min_id, max_id + 1, dtype=np.int64)
        pu = np.repeat(ids, len(ids))
        do = np.tile(ids, len(ids))
        rows = _vectorize(model, pu, do, np.full(len(pu), _PROBE_DISTANCES[0]))
        distance_offset = _distance_offsets(model, rows)
        encoded = None
        if isinstance(model.estimator, EncodingEstimator):
            encoded = _distance_free_encoding(model, rows, pu, do)
        lookup = cls(model, int(min_id), int(max_id), rows, distance_offset, encoded)
        lookup._check_against_model(pu, do)
        return lookup

    def covers(self, pu: np.ndarray, do: np.ndarray) -> bool:
        """Whether every id is inside the table's range."""
        lo, hi = self.min_id, self.max_id
        return bool(len(pu) and pu.min() >= lo and pu.max() <= hi and do.min() >= lo and do.max() <= hi)

    def predict(self, pu: np.ndarray, do: np.ndarray, distance: np.ndarray) -> np.ndarray:
        """Minutes per trip; ids must be inside the range (see :meth:`covers`)."""
        pair = (pu - self.min_id) * self.n_ids + (do - self.min_id)
        if self.encoded is not None:
            encoded = self.encoded[pair]  # fancy indexing copies: the table stays untouched
            encoded[:, -1] = distance
            return np.asarray(self.model.estimator.predict_encoded(encoded), dtype=np.float64)
        return self.model.predict_matrix(self.design_matrix(pair, distance))

    def design_matrix(self, pair: np.ndarray, distance: np.ndarray) -> sp.csr_matrix:
        """The vectorizer's rows for these pairs, with each trip's distance written in."""
        matrix = self.rows[pair]
        matrix.data[matrix.indptr[:-1] + self.distance_offset[pair]] = distance
        return matrix

    def _check_against_model(self, pu: np.ndarray, do: np.ndarray) -> None:
        # Varied distances (including 0, which a sparse format might drop) on every pair.
        distance = np.resize(np.array([0.0, 0.4, 2.5, 13.0, 61.7]), len(pu))
        expected = self.model.predict(_trips(pu, do, distance))
        got = self.predict(pu, do, distance)
        if not np.array_equal(expected, got):
            n_diff = int(np.count_nonzero(expected != got))
            raise PairLookupError(f"lookup differs from the model's predict on {n_diff} of {len(pu)} pairs")


def _trips(pu: np.ndarray, do: np.ndarray, distance: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"PULocationID": pu, "DOLocationID": do, "trip_distance": distance})


def _vectorize(
    model: TripDurationModel, pu: np.ndarray, do: np.ndarray, distance: np.ndarray
) -> sp.csr_matrix:
    """The model's own design matrix: the training feature function, then its vectorizer."""
    return model.vectorizer.transform(trip_features(_trips(pu, do, distance))).tocsr()


def _distance_offsets(model: TripDurationModel, rows: sp.csr_matrix) -> np.ndarray:
    """Position of the trip_distance entry within each row (every row has exactly one)."""
    names = list(model.vectorizer.get_feature_names_out())
    if "trip_distance" not in names:
        raise PairLookupError("the vectorizer has no trip_distance column")
    is_distance = rows.indices == names.index("trip_distance")
    per_row = np.add.reduceat(is_distance.astype(np.int64), rows.indptr[:-1])
    if len(per_row) != rows.shape[0] or not np.all(per_row == 1):
        raise PairLookupError("some vectorized rows do not hold exactly one trip_distance entry")
    # One distance entry per row, in row order: subtract each row's start.
    return np.flatnonzero(is_distance) - rows.indptr[:-1]


def _distance_free_encoding(
    model: TripDurationModel, rows: sp.csr_matrix, pu: np.ndarray, do: np.ndarray
) -> np.ndarray:
    """Encoded rows; checks that only the last column depends on distance, and equals it.

    ``rows`` are the pairs already vectorized at the first probe distance; only the
    second probe needs vectorizing.
    """
    second_rows = _vectorize(model, pu, do, np.full(len(pu), _PROBE_DISTANCES[1]))
    probes = [np.asarray(model.estimator.encode(r), dtype=np.float64) for r in (rows, second_rows)]
    first, second = probes
    if not np.array_equal(first[:, :-1], second[:, :-1]):
        raise PairLookupError("the encoding depends on distance beyond its last column")
    for probe, d in zip(probes, _PROBE_DISTANCES, strict=True):
        if not np.all(probe[:, -1] == d):
            raise PairLookupError("the encoding's last column is not the trip distance")
    return np.ascontiguousarray(first)
