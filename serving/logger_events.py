"""KServe's payload-logger events: what they say, how a request meets its response, what was answered.

The contract ``serving.inference_log_sink`` receives, kept apart from the sink's
plumbing. What KServe's logger sends, read at kserve v0.19.0, the version
scripts/cluster/up.sh installs (pkg/logger is the same at v0.20.0 and on master; there
is no v0.21 tag; the kserve SDK 0.21 models the same ``LoggerSpec``):

- A ``logger`` on the predictor becomes internal annotations on every revision's pods
  (pkg/controller/v1beta1/inferenceservice/components/component.go:60-75, called at
  predictor.go:107), and the pod webhook puts the agent sidecar in front of the model
  server (pkg/webhook/admission/pod/agent_injector.go:225-306). So both revisions of a
  canary -- champion and canary -- are logged, each by its own agent, as long as the
  revision was created with the logger.
- Per request the agent's handler (pkg/logger/handler.go:115-208) queues two events
  with the same id: ``Ce-Type: org.kubeflow.serving.inference.request`` carrying the
  request body as received, and -- only when the model server answered 200
  (handler.go:183) -- ``org.kubeflow.serving.inference.response`` carrying the
  response body. The id is the client's ``Ce-Id`` header, else a uuid the agent makes
  (handler.go:210-216). Both events carry the *request's* Content-Type
  (handler.go:144,189-195). A refused request (400) therefore leaves a request event
  that never gets its response: it is counted as unpaired, not logged, as locally.
- Each event is posted in CloudEvents binary mode (pkg/logger/worker.go:122-153):
  ``Ce-Specversion: 1.0``, ``Ce-Id``, ``Ce-Type``, ``Ce-Source`` (the pod name as the
  webhook saw it, else ``http://localhost:<agent port>/``, cmd/agent/main.go:292-294),
  ``Ce-Time`` (arrival of the request / end of the response, handler.go:123,181),
  and the extensions ``Ce-Inferenceservicename``, ``Ce-Namespace``, ``Ce-Component``,
  ``Ce-Endpoint``, ``Ce-Recordedtime``, ``Ce-Metadata`` (JSON: the allow-listed
  request headers, ``{"X-Request-Id": ["..."]}``, always sent) and ``Ce-Annotations``
  (JSON map, only when non-empty). cloudevents/sdk-go v2.16.2 (KServe's go.mod)
  writes the values as they are, not percent-encoded
  (v2/protocol/http/write_request.go, SetExtension).
- Five workers send concurrently, one goroutine per event (cmd/agent/main.go:64,
  pkg/logger/dispatcher.go:64-81): a response can arrive before its request, so
  pairing holds whichever half comes first. An event is sent once; the answer's status
  is only logged, and anything but 200 as an error (worker.go:154-167). So this sink
  answers 200 for every event it kept and a 4xx ``{"error": ...}`` naming the problem
  for one it refused.

What the logger does not carry, and how the sink learns it:

- *Request id*: the predictor logs the client's ``x-request-id`` (else ``ce-id``). The
  agent forwards request headers only if ``metadataHeaders`` lists them, compared with
  Go's canonical header keys as they are (handler.go:131-140), so the InferenceService
  lists ``X-Request-Id`` and ``X-Event-Time`` in that form. Request id = ``X-Request-Id``
  from ``Ce-Metadata``, else ``Ce-Id``; event time = ``X-Event-Time``, else the request
  event's ``Ce-Time``, else now. (Without any id from the client, the agent's uuid is
  logged while the predictor answered with its own: nothing can tie those two.)
- *Model version*: no response header is forwarded and v1's ``{"predictions": [...]}``
  names no version. ``Ce-Endpoint`` is the pod label ``endpoint``, which nothing sets
  in v1beta1 (read at agent_injector.go:238, defined at pkg/constants/constants.go:387,
  written nowhere), so it is empty. What the agent does forward per revision are the pod
  annotations ``metadataAnnotations`` names (agent_injector.go:293-306): the deploy code
  writes :data:`~components.names.MODEL_VERSION_ANNOTATION` on each revision's pods next
  to the model it runs, and the sink reads it from ``Ce-Annotations``. A v2 answer also
  states ``model_version`` in its body; when both are there they must agree.
- *Revision* (champion/canary): nothing on a pod can say it (a promote changes it
  without a new revision); the sink asks the InferenceService (``serving.inference_log_sink``).
"""

from __future__ import annotations

import collections
import json
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import Message
from http import HTTPStatus
from typing import Any, Final

import numpy as np
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferRequest
from kserve.protocol.rest.v2_datamodels import InferenceRequest
from pydantic import ValidationError

from components.errors import TaxiMlopsError
from components.names import EVENT_TIME_HEADER, MODEL_VERSION_ANNOTATION, REQUEST_ID_HEADER, SERVED_MODEL_NAME
from serving.trip_request import TripBatch, parse_v1, parse_v2

REQUEST_TYPE: Final = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE: Final = "org.kubeflow.serving.inference.response"
_HALVES: Final = {REQUEST_TYPE: "request", RESPONSE_TYPE: "response"}
SPEC_VERSION: Final = "1.0"
#: The predictor's v2 output (serving.predictor.OUTPUT_NAME; importing it would load the model code).
OUTPUT_NAME: Final = "duration"
#: As the predictor: a client's id is bounded so one header cannot bloat every row.
MAX_REQUEST_ID_CHARS: Final = 200


class EventRefused(TaxiMlopsError):
    """An event (or the pair it completes) the sink cannot log; ``reason`` is the metric label."""

    def __init__(self, reason: str, message: str, status: int = HTTPStatus.BAD_REQUEST) -> None:
        self.reason = reason
        self.status = int(status)
        super().__init__(message)


# --------------------------------------------------------------------------- one event


@dataclass(frozen=True)
class LoggedEvent:
    """One CloudEvent from the logger: which half, its id and time, what it forwarded, its body."""

    event_id: str
    half: str  # "request" or "response"
    time: datetime | None
    metadata: Mapping[str, Sequence[str]]  # forwarded request headers, names lower-cased
    annotations: Mapping[str, str]  # forwarded pod annotations
    body: bytes


def parse_event(headers: Message, body: bytes) -> LoggedEvent:
    """A binary-mode CloudEvent from its HTTP headers and body, or :class:`EventRefused` naming the header."""
    content_type = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if content_type.startswith("application/cloudevents"):
        raise EventRefused(
            "structured_mode",
            f"Content-Type {content_type}: structured CloudEvents are not read here; "
            "KServe's logger sends binary mode (ce-* headers, the payload as the body)",
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
        )
    spec = headers.get("Ce-Specversion")
    if spec != SPEC_VERSION:
        raise EventRefused(
            "bad_header", f"ce-specversion must be {SPEC_VERSION!r} (a CloudEvent), got {spec!r}"
        )
    event_id = (headers.get("Ce-Id") or "").strip()
    if not event_id:
        raise EventRefused("bad_header", "ce-id is missing: the id pairs a request with its response")
    event_type = headers.get("Ce-Type")
    if event_type not in _HALVES:
        raise EventRefused(
            "bad_header", f"ce-type {event_type!r} is neither {REQUEST_TYPE} nor {RESPONSE_TYPE}"
        )
    return LoggedEvent(
        event_id=event_id,
        half=_HALVES[event_type],
        time=_header_time(headers.get("Ce-Time")),
        metadata=_metadata(headers.get("Ce-Metadata")),
        annotations=_annotations(headers.get("Ce-Annotations")),
        body=body,
    )


def _header_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return _utc(datetime.fromisoformat(value))
    except ValueError:
        raise EventRefused("bad_header", f"ce-time {value[:60]!r} is not an RFC 3339 time") from None


def _json_header(name: str, value: str) -> Any:
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        raise EventRefused("bad_header", f"{name} is not JSON: {value[:80]!r}") from None


def _metadata(value: str | None) -> dict[str, list[str]]:
    if not value:
        return {}
    decoded = _json_header("ce-metadata", value)
    if not isinstance(decoded, dict) or not all(
        isinstance(values, list) and all(isinstance(v, str) for v in values) for values in decoded.values()
    ):
        raise EventRefused("bad_header", "ce-metadata must map header names to lists of strings")
    # Go sends canonical names (X-Request-Id); the contract's names are lower-case.
    return {str(name).lower(): values for name, values in decoded.items()}


def _annotations(value: str | None) -> dict[str, str]:
    if not value:
        return {}
    decoded = _json_header("ce-annotations", value)
    if not isinstance(decoded, dict) or not all(isinstance(v, str) for v in decoded.values()):
        raise EventRefused("bad_header", "ce-annotations must map annotation names to strings")
    return decoded


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


# --------------------------------------------------------------------------- pairing


@dataclass(frozen=True)
class Offer:
    """What offering one event did: the completed pair (request, response), if any, and halves lost."""

    pair: tuple[LoggedEvent, LoggedEvent] | None
    lost: tuple[LoggedEvent, ...] = ()


class PendingPairs:
    """Halves waiting for their other half, by event id: at most ``max_pending``, each for ``ttl`` seconds.

    A half that waits longer, is pushed out by a full map, or is replaced by a second
    event of the same half and id is *lost* (returned, so the caller counts it).
    """

    def __init__(
        self, ttl_seconds: float, max_pending: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl_seconds
        self.max_pending = max_pending
        self.clock = clock
        # Insertion order is arrival order and the TTL is the same for all: the oldest is first.
        self._waiting: collections.OrderedDict[str, tuple[float, LoggedEvent]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._waiting)

    def offer(self, event: LoggedEvent) -> Offer:
        now = self.clock()
        with self._lock:
            lost = self._expire(now)
            held = self._waiting.pop(event.event_id, None)
            if held is not None and held[1].half != event.half:
                other = held[1]
                pair = (other, event) if other.half == "request" else (event, other)
                return Offer(pair, tuple(lost))
            if held is not None:
                lost.append(held[1])  # a second request (or response) under one id: keep the newer
            self._waiting[event.event_id] = (now + self.ttl, event)
            while len(self._waiting) > self.max_pending:
                lost.append(self._waiting.popitem(last=False)[1][1])
            return Offer(None, tuple(lost))

    def expire(self) -> list[LoggedEvent]:
        with self._lock:
            return self._expire(self.clock())

    def _expire(self, now: float) -> list[LoggedEvent]:
        lost = []
        while self._waiting:
            deadline, event = next(iter(self._waiting.values()))
            if deadline > now:
                break
            self._waiting.popitem(last=False)
            lost.append(event)
        return lost


# --------------------------------------------------------------------------- a pair -> trips


@dataclass(frozen=True)
class AnsweredTrips:
    """One answered request as the prediction log records it (the revision comes later)."""

    request_id: str
    event_time: datetime
    model_name: str
    model_version: str
    trips: TripBatch
    minutes: np.ndarray


def answered_trips(request: LoggedEvent, response: LoggedEvent) -> AnsweredTrips:
    """Parse a request/response pair exactly as the predictor did; :class:`EventRefused` if it cannot be."""
    if not request.body.strip():
        # The agent logs every request but the kubelet's probes, a GET of model metadata too.
        raise EventRefused("not_a_prediction", "the request had no body: not a prediction")
    sent = _json_body(request.body, "request")
    answer = _json_body(response.body, "response")
    if not isinstance(sent, dict) or not isinstance(answer, dict):
        raise EventRefused("not_a_prediction", "the pair is not a prediction (bodies are not JSON objects)")
    annotated = request.annotations.get(MODEL_VERSION_ANNOTATION) or response.annotations.get(
        MODEL_VERSION_ANNOTATION
    )
    if "instances" in sent:
        trips = _trips(lambda: parse_v1(sent))
        minutes = _minutes(answer.get("predictions"), "predictions", len(trips))
        model_name, stated = SERVED_MODEL_NAME, None
    elif "inputs" in sent:
        model_name = str(answer.get("model_name") or SERVED_MODEL_NAME)
        trips = _trips(lambda: parse_v2(_infer_request(sent, model_name)))
        minutes = _minutes(_v2_output(answer), f"outputs[{OUTPUT_NAME}].data", len(trips))
        stated = answer.get("model_version")
        stated = None if stated in (None, "") else str(stated)
    else:
        raise EventRefused(
            "not_a_prediction", 'the request body has neither "instances" (v1) nor "inputs" (v2)'
        )
    if stated is not None and annotated is not None and stated != annotated:
        raise EventRefused(
            "version_mismatch",
            f"the answer says model_version {stated!r} but the revision's {MODEL_VERSION_ANNOTATION} "
            f"annotation says {annotated!r}",
            HTTPStatus.UNPROCESSABLE_ENTITY,
        )
    version = stated or annotated
    if version is None:
        raise EventRefused(
            "no_model_version",
            f"no model version: the events carry no {MODEL_VERSION_ANNOTATION} annotation "
            "(logger metadataAnnotations) and the answer names none",
            HTTPStatus.UNPROCESSABLE_ENTITY,
        )
    return AnsweredTrips(
        request_id=_request_id(request),
        event_time=_event_time(request),
        model_name=model_name,
        model_version=version,
        trips=trips,
        minutes=minutes,
    )


def _json_body(body: bytes, half: str) -> Any:
    try:
        return json.loads(body)
    except RecursionError:
        raise EventRefused("bad_body", f"the {half} body nests too deeply to decode") from None
    except (ValueError, UnicodeDecodeError):
        # Binary tensor data (v2's binary extension) is undecodable here: the JSON header's length
        # travels in a header the logger does not forward for the response.
        raise EventRefused(
            "bad_body",
            f"the {half} body is not JSON (binary tensor data cannot be logged; send JSON)",
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
        ) from None


def _trips(parse: Callable[[], TripBatch]) -> TripBatch:
    try:
        return parse()
    except InvalidInput as exc:  # TripRequestError and KServe's own decoding errors
        raise EventRefused(
            "bad_body", f"the request cannot be read as the predictor read it: {exc}"
        ) from None


def _infer_request(sent: dict[str, Any], model_name: str) -> InferRequest:
    # The predictor's route: FastAPI validates InferenceRequest, KServe makes the InferRequest.
    try:
        return InferRequest.from_inference_request(InferenceRequest.model_validate(sent), model_name)
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(part) for part in problem.get("loc", ()))
        raise EventRefused(
            "bad_body", f"the v2 request is invalid at {where}: {problem.get('msg')}"
        ) from None


def _v2_output(answer: Mapping[str, Any]) -> Any:
    for output in answer.get("outputs") or []:
        if isinstance(output, dict) and output.get("name") == OUTPUT_NAME:
            return output.get("data")
    raise EventRefused("bad_body", f'the v2 answer has no output named "{OUTPUT_NAME}"')


def _minutes(values: Any, field: str, trips: int) -> np.ndarray:
    if not isinstance(values, list) or len(values) != trips:
        got = f"{len(values)} values" if isinstance(values, list) else type(values).__name__
        raise EventRefused("bad_body", f"the answer's {field} must hold {trips} minutes, got {got}")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        raise EventRefused("bad_body", f"the answer's {field} must be finite numbers")
    return np.asarray(values, dtype=np.float64)


def _request_id(request: LoggedEvent) -> str:
    # Ce-Id already is the client's ce-id header when it sent one (handler.go:210-216).
    forwarded = request.metadata.get(REQUEST_ID_HEADER)
    sent = forwarded[0] if forwarded else request.event_id
    return sent[:MAX_REQUEST_ID_CHARS]


def _event_time(request: LoggedEvent) -> datetime:
    """``X-Event-Time`` as the predictor reads it, else when the agent got the request, else now."""
    forwarded = request.metadata.get(EVENT_TIME_HEADER)
    if forwarded:
        try:
            return _utc(datetime.fromisoformat(forwarded[0]))
        except ValueError:
            pass  # as the predictor: an unreadable event time falls back to the arrival time
    return request.time or datetime.now(UTC)
