"""Train one candidate model on the vectorized training month and score it on validation."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from components.features.design_matrix import DesignMatrix
from components.features.vectorizer import TripVectorizer
from components.models.candidates import build_estimator, candidate_spec, resolve_params
from components.models.duration_model import TripDurationModel
from components.models.metrics import regression_metrics


@dataclass(frozen=True)
class CandidateResult:
    """What one candidate achieved; becomes a row of the evaluation table."""

    name: str
    params: dict[str, Any]
    rmse: float
    mae: float
    train_seconds: float
    mlflow_run_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit_candidate(
    name: str,
    overrides: Mapping[str, Any] | None,
    vectorizer: TripVectorizer,
    train: DesignMatrix,
    validation: DesignMatrix,
) -> tuple[TripDurationModel, CandidateResult]:
    """Fit candidate ``name`` and measure RMSE/MAE (minutes) on the validation month."""
    spec = candidate_spec(name)
    params = resolve_params(name, overrides)
    feature_names = vectorizer.get_feature_names_out()
    estimator = build_estimator(name, overrides, feature_names=feature_names)
    started = time.perf_counter()
    if spec.fit is not None:
        spec.fit(estimator, train.X, train.y, feature_names)
    else:
        estimator.fit(train.X, train.y)
    train_seconds = time.perf_counter() - started
    model = TripDurationModel(
        candidate=name, vectorizer=vectorizer, estimator=estimator, codec=spec.codec, params=params
    )
    scores = regression_metrics(validation.y, model.predict_matrix(validation.X))
    result = CandidateResult(
        name=name,
        params=params,
        rmse=scores["rmse"],
        mae=scores["mae"],
        train_seconds=round(train_seconds, 3),
    )
    return model, result
