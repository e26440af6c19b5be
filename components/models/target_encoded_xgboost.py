"""A gradient-boosted regressor that target-encodes the one-hot categories it is given.

The vectorized features are ~13,000 one-hot ``PU_DO=<pu>_<do>`` columns plus
``trip_distance``. Trees split on one pickup/dropoff pair at a time, so plain
boosting needs thousands of deep trees to learn what each pair means. This
estimator first summarises every category from the training targets
(smoothed mean duration, smoothed minutes per unit of each numeric feature,
smoothed mean of each numeric feature, and how often it was seen) and then
boosts shallow trees on those few dense columns plus the raw numeric ones.

Training rows get out-of-fold encodings, so a row never sees its own target.
Categories are recognised from DictVectorizer's naming (``name=value``), which
is why the estimator takes the vectorizer's feature names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, RegressorMixin

from components.models.onehot_layout import OneHotLayout

# The class's qualified name in model files written before it took its candidate's name (0.1.0).
LEGACY_TYPE_NAMES = frozenset({"components.category_encoding.CategoryEncodedBooster"})
# Numeric values below this are too small to divide by (a 0.0-mile trip).
_MIN_DIVISOR = 0.1


class TargetEncodedXGBoost(RegressorMixin, BaseEstimator):
    """Target encoding of one-hot category groups + XGBoost on the encoded columns."""

    def __init__(
        self,
        feature_names: Sequence[str] = (),
        smoothing: float = 5.0,
        n_folds: int = 5,
        n_estimators: int = 600,
        learning_rate: float = 0.05,
        max_depth: int = 6,
        random_state: int = 42,
        n_jobs: int = 2,
    ) -> None:
        self.feature_names = feature_names
        self.smoothing = smoothing
        self.n_folds = n_folds
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.max_depth = max_depth
        self.random_state = random_state
        self.n_jobs = n_jobs

    # -- fitting ---------------------------------------------------------------------------

    def fit(self, X: Any, y: Any) -> TargetEncodedXGBoost:
        from xgboost import XGBRegressor

        layout = self._layout()
        matrix = self._check_matrix(X)
        target = np.asarray(y, dtype=np.float64)
        levels = _row_levels(matrix, layout)
        numeric = _numeric_block(matrix, layout)
        self.prior_ = float(target.mean())
        self.numeric_prior_ = numeric.mean(axis=0) if len(numeric) else np.zeros(numeric.shape[1])
        self.rate_prior_ = _rate_prior(target, numeric)
        self.stats_ = [
            _level_stats(levels[:, g], layout.group_sizes[g], target, numeric)
            for g in range(len(layout.group_sizes))
        ]
        encoded = self._encode_out_of_fold(levels, numeric, target, layout)
        self.booster_ = XGBRegressor(
            n_estimators=self.n_estimators,
            learning_rate=self.learning_rate,
            max_depth=self.max_depth,
            random_state=self.random_state,
            n_jobs=self.n_jobs,
            tree_method="hist",
        ).fit(encoded, target)
        self.n_features_in_ = matrix.shape[1]
        return self

    def predict(self, X: Any) -> np.ndarray:
        return self.predict_encoded(self.encode(X))

    def encode(self, X: Any) -> np.ndarray:
        """The dense columns the booster sees: per-group encodings, then the raw numeric columns."""
        layout = self._layout()
        matrix = self._check_matrix(X)
        return self._encode(_row_levels(matrix, layout), _numeric_block(matrix, layout), self.stats_)

    def predict_encoded(self, encoded: np.ndarray) -> np.ndarray:
        """Predictions for rows :meth:`encode` produced (a serving lookup may have tabled them)."""
        return np.asarray(self.booster_.predict(encoded), dtype=np.float64)

    # -- encoding ----------------------------------------------------------------------------

    def _encode_out_of_fold(
        self, levels: np.ndarray, numeric: np.ndarray, target: np.ndarray, layout: OneHotLayout
    ) -> np.ndarray:
        rng = np.random.default_rng(self.random_state)
        fold_of_row = rng.integers(0, self.n_folds, size=len(target))
        encoded = np.empty((len(target), self._n_encoded(layout)), dtype=np.float64)
        for fold in range(self.n_folds):
            held_out = fold_of_row == fold
            kept = ~held_out
            stats = [
                _level_stats(levels[kept, g], layout.group_sizes[g], target[kept], numeric[kept])
                for g in range(len(layout.group_sizes))
            ]
            encoded[held_out] = self._encode(levels[held_out], numeric[held_out], stats)
        return encoded

    def _n_encoded(self, layout: OneHotLayout) -> int:
        n_numeric = len(layout.numeric_columns)
        return len(layout.group_sizes) * (2 + 2 * n_numeric) + n_numeric

    def _encode(
        self, levels: np.ndarray, numeric: np.ndarray, stats: list[dict[str, np.ndarray]]
    ) -> np.ndarray:
        k = self.smoothing
        columns: list[np.ndarray] = []
        for group, group_stats in enumerate(stats):
            level = levels[:, group]
            seen = level >= 0
            safe = np.where(seen, level, 0)
            count = group_stats["count"]
            columns.append(_smoothed(group_stats["sum_target"], count, self.prior_, safe, seen, k))
            columns.append(np.where(seen, count[safe], 0.0))
            for j in range(numeric.shape[1]):
                sums, rates = group_stats["sum_numeric"][:, j], group_stats["sum_rate"][:, j]
                rate_counts = group_stats["rate_count"][:, j]
                columns.append(_smoothed(sums, count, self.numeric_prior_[j], safe, seen, k))
                columns.append(_smoothed(rates, rate_counts, self.rate_prior_[j], safe, seen, k))
        columns.extend(numeric[:, j] for j in range(numeric.shape[1]))
        return np.column_stack(columns) if columns else np.empty((len(levels), 0))

    # -- helpers -----------------------------------------------------------------------------

    def _layout(self) -> OneHotLayout:
        if not len(self.feature_names):
            raise ValueError("TargetEncodedXGBoost needs the vectorizer's feature_names")
        # Parsing 13k feature names costs ~8 ms: more than the prediction of one trip.
        # Cache it, keyed on the very feature_names object it was built from.
        cached = getattr(self, "_layout_cache", None)
        if cached is not None and cached[0] is self.feature_names:
            return cached[1]
        layout = OneHotLayout.from_feature_names(list(self.feature_names))
        self._layout_cache = (self.feature_names, layout)
        return layout

    def _check_matrix(self, X: Any) -> sp.csr_matrix:
        matrix = sp.csr_matrix(X)
        if matrix.shape[1] != len(self.feature_names):
            raise ValueError(
                f"X has {matrix.shape[1]} columns but {len(self.feature_names)} feature names were given"
            )
        return matrix


def _smoothed(
    sums: np.ndarray, counts: np.ndarray, prior: float, level: np.ndarray, seen: np.ndarray, k: float
) -> np.ndarray:
    """(sum + k * prior) / (count + k) per row's level; the prior for unseen levels.

    ``k`` pseudo-observations of the prior pull rare pairs towards the overall
    mean, so a pair seen once does not get its single trip as its estimate.
    """
    return np.where(seen, (sums[level] + k * prior) / (counts[level] + k), prior)


def _row_levels(matrix: sp.csr_matrix, layout: OneHotLayout) -> np.ndarray:
    """Per row and group, the level index of its one-hot column (-1 when none is set)."""
    n_rows = matrix.shape[0]
    levels = np.full((n_rows, len(layout.group_sizes)), -1, dtype=np.int64)
    rows = np.repeat(np.arange(n_rows), np.diff(matrix.indptr))
    columns = matrix.indices
    group = layout.group_of_column[columns]
    categorical = (group >= 0) & (matrix.data != 0)
    levels[rows[categorical], group[categorical]] = layout.level_of_column[columns[categorical]]
    return levels


def _numeric_block(matrix: sp.csr_matrix, layout: OneHotLayout) -> np.ndarray:
    return np.asarray(matrix[:, layout.numeric_columns].toarray(), dtype=np.float64)


def _rate_prior(target: np.ndarray, numeric: np.ndarray) -> np.ndarray:
    priors = np.zeros(numeric.shape[1])
    for j in range(numeric.shape[1]):
        usable = numeric[:, j] >= _MIN_DIVISOR
        priors[j] = float(np.median(target[usable] / numeric[usable, j])) if usable.any() else 0.0
    return priors


def _level_stats(
    level: np.ndarray, n_levels: int, target: np.ndarray, numeric: np.ndarray
) -> dict[str, np.ndarray]:
    """Sums and counts per level, from which any smoothed mean can be derived."""
    seen = level >= 0
    index = level[seen]
    stats = {
        "count": np.bincount(index, minlength=n_levels).astype(np.float64),
        "sum_target": np.bincount(index, weights=target[seen], minlength=n_levels),
        "sum_numeric": np.zeros((n_levels, numeric.shape[1])),
        "sum_rate": np.zeros((n_levels, numeric.shape[1])),
        "rate_count": np.zeros((n_levels, numeric.shape[1])),
    }
    for j in range(numeric.shape[1]):
        values = numeric[seen, j]
        stats["sum_numeric"][:, j] = np.bincount(index, weights=values, minlength=n_levels)
        usable = values >= _MIN_DIVISOR
        stats["sum_rate"][:, j] = np.bincount(
            index[usable], weights=target[seen][usable] / values[usable], minlength=n_levels
        )
        stats["rate_count"][:, j] = np.bincount(index[usable], minlength=n_levels)
    return stats


# -- persistence (data only: numpy arrays and XGBoost's own model format) --------------------

_STAT_KEYS = ("count", "sum_target", "sum_numeric", "sum_rate", "rate_count")


def dump_target_encoded_xgboost(estimator: TargetEncodedXGBoost) -> bytes:
    import io
    import json

    arrays: dict[str, np.ndarray] = {
        "params_json": np.array(json.dumps({**estimator.get_params(), "feature_names": []})),
        "feature_names": np.array(list(estimator.feature_names), dtype=np.str_),
        "prior": np.array(estimator.prior_),
        "numeric_prior": np.asarray(estimator.numeric_prior_),
        "rate_prior": np.asarray(estimator.rate_prior_),
        "booster": np.frombuffer(
            bytes(estimator.booster_.get_booster().save_raw(raw_format="ubj")), dtype=np.uint8
        ),
    }
    for group, stats in enumerate(estimator.stats_):
        for key in _STAT_KEYS:
            arrays[f"group{group}_{key}"] = stats[key]
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def load_target_encoded_xgboost(payload: bytes) -> TargetEncodedXGBoost:
    import io
    import json

    from xgboost import XGBRegressor

    with np.load(io.BytesIO(payload), allow_pickle=False) as arrays:
        params = json.loads(str(arrays["params_json"]))
        params["feature_names"] = [str(name) for name in arrays["feature_names"]]
        estimator = TargetEncodedXGBoost(**params)
        estimator.prior_ = float(arrays["prior"])
        estimator.numeric_prior_ = arrays["numeric_prior"]
        estimator.rate_prior_ = arrays["rate_prior"]
        n_groups = len(OneHotLayout.from_feature_names(params["feature_names"]).group_sizes)
        estimator.stats_ = [
            {key: arrays[f"group{group}_{key}"] for key in _STAT_KEYS} for group in range(n_groups)
        ]
        booster = XGBRegressor()
        booster.load_model(bytearray(arrays["booster"].tobytes()))
    estimator.booster_ = booster
    estimator.n_features_in_ = len(params["feature_names"])
    return estimator
