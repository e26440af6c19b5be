"""The KServe predictor: validated trips in, ``TripDurationModel.predict`` minutes out.

Nothing here computes a feature: requests are parsed by ``serving.trip_request``
and answered by the model file's own ``predict``, which applies the one feature
function training used -- or, for speed, by a ``serving.pair_lookup`` table
built at load time from that same function and vectorizer over every zone pair
the validator admits, and checked against ``predict`` on all of them before it
serves. So an answer from this server is, bit for bit, the number the
registered model gives for the same trips.

Every answer carries the served version (``x-model-version`` header, v2
``model_version``), and the Prometheus metrics on ``/metrics`` are labelled
with it, so a canary can compare champion and challenger on the same scrape.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Final

import kserve
from kserve.errors import ModelNotReady
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
from kserve.utils.utils import generate_uuid
from prometheus_client import Counter, Gauge, Histogram

from components.features.trip_domain import MAX_LOCATION_ID, MIN_LOCATION_ID
from components.models.duration_model import TripDurationModel
from components.names import SERVED_MODEL_NAME
from serving.model_source import ModelRecord, load_model
from serving.pair_lookup import PairLookup, PairLookupError
from serving.trip_request import (
    DEFAULT_LIMITS,
    RequestLimits,
    TripBatch,
    TripRequestError,
    parse_request,
)

#: The one v2 output: trip duration in minutes, FP64, shape [n].
OUTPUT_NAME: Final = "duration"
MODEL_VERSION_HEADER: Final = "x-model-version"

_LABELS: Final = ("model_name", "model_version")
# prometheus_client's default REGISTRY is the one KServe's /metrics endpoint exposes.
PREDICTIONS: Final = Counter("trip_duration_predictions", "Trips predicted (rows, not requests).", _LABELS)
REQUESTS: Final = Counter(
    "trip_duration_requests",
    "Prediction requests by outcome: ok, or invalid (refused with HTTP 400).",
    (*_LABELS, "outcome"),
)
LATENCY: Final = Histogram(
    "trip_duration_request_seconds",
    "Time to validate and predict one request (excludes HTTP and JSON decoding).",
    _LABELS,
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
MODEL_INFO: Final = Gauge(
    "trip_duration_model_info",
    "1 for the model this server serves; labels say which file it is.",
    (*_LABELS, "sha256"),
)


@dataclass(frozen=True)
class ModelSpec:
    """Where the model comes from and what it must hash to (the command line's model flags)."""

    uri: str
    sha256: str | None = None
    model_version: str | None = None
    tracking_uri: str | None = None


class TripDurationPredictor(kserve.Model):
    """Trip duration in minutes for v1 ``instances`` and v2 named-input requests."""

    def __init__(
        self,
        spec: ModelSpec,
        name: str = SERVED_MODEL_NAME,
        limits: RequestLimits = DEFAULT_LIMITS,
    ) -> None:
        super().__init__(name, return_response_headers=True)
        self.spec = spec
        self.limits = limits
        self.record: ModelRecord | None = None
        self._model: TripDurationModel | None = None
        self._lookup: PairLookup | None = None

    def load(self) -> bool:
        """Fetch and verify the model; ready only once it is loaded.

        Raises ModelIntegrityError / ModelSourceError instead of returning
        False, so the server process stops with the reason rather than
        starting without a model.
        """
        loaded = load_model(
            self.spec.uri,
            expected_sha256=self.spec.sha256,
            model_version=self.spec.model_version,
            tracking_uri=self.spec.tracking_uri,
        )
        self._model, self.record = loaded.model, loaded.record
        self._lookup = _build_lookup(loaded.model)
        version = self.record.version_label
        MODEL_INFO.labels(self.name, version, self.record.sha256).set(1)
        # Create the series now, so a scrape before the first request already shows this version.
        PREDICTIONS.labels(self.name, version)
        LATENCY.labels(self.name, version)
        for outcome in ("ok", "invalid"):
            REQUESTS.labels(self.name, version, outcome)
        self.ready = True
        return self.ready

    def get_input_types(self) -> list[dict[str, Any]]:
        return [
            {"name": "PULocationID", "datatype": "INT64", "shape": [-1]},
            {"name": "DOLocationID", "datatype": "INT64", "shape": [-1]},
            {"name": "trip_distance", "datatype": "FP64", "shape": [-1]},
        ]

    def get_output_types(self) -> list[dict[str, Any]]:
        return [{"name": OUTPUT_NAME, "datatype": "FP64", "shape": [-1]}]

    def predict(
        self,
        payload: dict[str, Any] | InferRequest,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> dict[str, Any] | InferResponse:
        """``{"predictions": [...]}`` for v1, an InferResponse with output ``duration`` for v2."""
        if self._model is None or self.record is None:
            raise ModelNotReady(self.name)
        version = self.record.version_label
        started = time.perf_counter()
        try:
            trips = parse_request(payload, self.limits)
        except TripRequestError:
            REQUESTS.labels(self.name, version, "invalid").inc()
            raise
        minutes = self._minutes(trips)
        LATENCY.labels(self.name, version).observe(time.perf_counter() - started)
        PREDICTIONS.labels(self.name, version).inc(len(minutes))
        REQUESTS.labels(self.name, version, "ok").inc()
        if response_headers is not None:
            response_headers[MODEL_VERSION_HEADER] = version
        if isinstance(payload, InferRequest):
            return self._v2_response(payload, minutes)
        return {"predictions": minutes.tolist()}

    def _minutes(self, trips: TripBatch) -> Any:
        assert self._model is not None
        if self._lookup is not None and self._lookup.covers(trips.pickup, trips.dropoff):
            return self._lookup.predict(trips.pickup, trips.dropoff, trips.distance)
        return self._model.predict(trips.frame())

    def _v2_response(self, request: InferRequest, minutes: Any) -> InferResponse:
        output = InferOutput(name=OUTPUT_NAME, shape=[len(minutes)], datatype="FP64")
        output.set_data_from_numpy(minutes, binary_data=request.use_binary_outputs)
        assert self.record is not None
        return InferResponse(
            response_id=request.id or generate_uuid(),
            model_name=self.name,
            model_version=self.record.version_label,
            infer_outputs=[output],
            use_binary_outputs=request.use_binary_outputs,
            requested_outputs=request.request_outputs,
        )


def _build_lookup(model: TripDurationModel) -> PairLookup | None:
    """The per-zone-pair table, or None (answers then come from ``model.predict``, just slower)."""
    try:
        return PairLookup.build(model, MIN_LOCATION_ID, MAX_LOCATION_ID)
    except PairLookupError as exc:
        kserve.logging.logger.warning("serving without the zone-pair lookup: %s", exc)
        return None
