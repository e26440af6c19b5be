"""The serving baseline: the course's module-4 web service (Flask + gunicorn), on OUR model file.

Same shape as the course's ``predict.py``: ``POST /predict`` takes one ride's JSON
object and answers ``{"duration": minutes}``; ``prepare_features`` ->
``predict`` -> ``jsonify``. The only change is the model: instead of a pickled
``(dv, model)`` it loads the very file the KServe predictor serves, through
``components.models.duration_model.load_duration_model(path, sha256)``, so both
services compute the same features with the same vectorizer and estimator and
return the same number for the same ride. Like the course's service it does
no input validation (a bad ride is a 500 or a meaningless number).

Run it as the course does, under gunicorn (one sync worker is gunicorn's
default; ``bench/bench_serving.py`` passes ``--workers 1 --worker-class sync``
explicitly for the one-worker comparison with the predictor)::

    BASELINE_MODEL_PATH=/path/to/trip_duration_model.zip BASELINE_MODEL_SHA256=<hex> \\
        PYTHONPATH=. gunicorn --workers 1 --bind 127.0.0.1:9696 --chdir bench serving_baseline_flask:app

    curl -s -X POST -H 'Content-Type: application/json' \\
        -d '{"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66}' \\
        http://127.0.0.1:9696/predict

``python bench/serving_baseline_flask.py`` starts Flask's development server instead.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from flask import Flask, jsonify, request

from components.models.duration_model import TripDurationModel, load_duration_model

MODEL_PATH_ENV = "BASELINE_MODEL_PATH"
MODEL_SHA256_ENV = "BASELINE_MODEL_SHA256"


def load_model() -> TripDurationModel:
    """The model file named by $BASELINE_MODEL_PATH, checked against $BASELINE_MODEL_SHA256."""
    path = os.environ.get(MODEL_PATH_ENV)
    sha256 = os.environ.get(MODEL_SHA256_ENV)
    if not path or not sha256:
        sys.exit(f"serving_baseline_flask: set {MODEL_PATH_ENV} (model .zip) and {MODEL_SHA256_ENV}")
    return load_duration_model(path, sha256)


model = load_model()


def prepare_features(ride: dict[str, Any]) -> dict[str, Any]:
    # The course builds PU_DO and trip_distance here. Our model file applies the
    # training feature function itself, so the features it takes are the raw fields.
    return {
        "PULocationID": ride["PULocationID"],
        "DOLocationID": ride["DOLocationID"],
        "trip_distance": ride["trip_distance"],
    }


def predict(features: dict[str, Any]) -> float:
    preds = model.predict([features])
    return float(preds[0])


app = Flask("duration-prediction")


@app.route("/predict", methods=["POST"])
def predict_endpoint() -> Any:
    ride = request.get_json()
    features = prepare_features(ride)
    pred = predict(features)
    result = {"duration": pred}
    return jsonify(result)


if __name__ == "__main__":
    app.run(debug=False, host="127.0.0.1", port=9696)
