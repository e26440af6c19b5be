"""MLflow "model from code" entry point for the registered trip duration model.

MLflow copies this file into the model directory and runs it on load, instead
of unpickling a Python object: the only thing loaded from the artifact store is
the data-only model file, checked against its recorded sha256 first.
Do not import this module: it calls ``mlflow.models.set_model`` at import time,
which is what MLflow's loader expects.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel, PythonModelContext

from components.models.duration_model import TripDurationModel, load_duration_model


class TripDurationPyfunc(PythonModel):
    """Raw trip fields (PULocationID, DOLocationID, trip_distance) -> minutes."""

    def __init__(self) -> None:
        self._model: TripDurationModel | None = None

    def load_context(self, context: PythonModelContext) -> None:
        self._model = load_duration_model(
            context.artifacts["trip_duration_model"], context.model_config["sha256"]
        )

    def predict(
        self, context: PythonModelContext, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> np.ndarray:
        if self._model is None:
            raise RuntimeError("model used before load_context")
        return self._model.predict(model_input)


set_model(TripDurationPyfunc())
