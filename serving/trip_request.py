"""Request bodies in, validated trips out: the predictor's input contract.

The model itself would happily featurize a string id, a negative distance or
NaN (``trip_features`` leaves cleaning to the cleaning step), and answer with
a confident number. A serving endpoint must not: every value is checked here,
and a bad one is refused with a :class:`TripRequestError` that names the field
and the row, so the client can fix its request from the message alone.

Two wire formats, both KServe's own:

* v1 ``{"instances": [{"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66}, ...]}``
  (other keys in an instance are ignored);
* v2 (Open Inference Protocol) named inputs ``PULocationID``, ``DOLocationID``
  (INT32/INT64) and ``trip_distance`` (FP32/FP64/INT32/INT64), each of shape
  ``[n]`` (other inputs are ignored).

:class:`TripRequestError` is a ``kserve.errors.InvalidInput``, which KServe's
REST server maps to HTTP 400 with ``{"error": message}`` -- the same status
KServe uses for its own decoding errors (body not JSON, missing ``data``), so
clients see one convention.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import pandas as pd
from kserve.constants.constants import PredictorProtocol
from kserve.errors import InvalidInput
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.infer_type import InferInput, InferRequest

from components.errors import TaxiMlopsError
from components.features.trip_domain import MAX_LOCATION_ID, MAX_TRIP_DISTANCE_MILES, MIN_LOCATION_ID
from components.features.trip_features import FEATURE_FIELDS

DEFAULT_MAX_BATCH_ROWS: Final = 10_000

_LOCATION_FIELDS: Final = ("PULocationID", "DOLocationID")
_DISTANCE_FIELD: Final = "trip_distance"
_V2_DATATYPES: Final[Mapping[str, tuple[str, ...]]] = {
    "PULocationID": ("INT32", "INT64"),
    "DOLocationID": ("INT32", "INT64"),
    "trip_distance": ("FP32", "FP64", "INT32", "INT64"),
}


class TripRequestError(TaxiMlopsError, InvalidInput):
    """A request the predictor refuses; KServe answers it with HTTP 400.

    ``field`` and ``row`` say where the problem is (None when it is not about
    one field or one row, e.g. an empty batch).
    """

    def __init__(self, message: str, *, field: str | None = None, row: int | None = None) -> None:
        self.field = field
        self.row = row
        where = ""
        if field is not None and row is not None:
            where = f"{field} (row {row}): "
        elif field is not None:
            where = f"{field}: "
        InvalidInput.__init__(self, where + message)


@dataclass(frozen=True)
class RequestLimits:
    """Limits a request must respect; ``max_batch_rows`` bounds the work one request can cause."""

    max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS

    def __post_init__(self) -> None:
        if self.max_batch_rows < 1:
            raise ValueError(f"max_batch_rows must be at least 1, got {self.max_batch_rows}")


DEFAULT_LIMITS: Final = RequestLimits()


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return f"string {value[:40]!r}"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def _is_number(value: Any) -> bool:
    # bool is an int subclass in Python, but true/false is never a zone or a distance.
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


def _as_float(value: Any, field: str, row: int, limit: str) -> float:
    """``float(value)``; a JSON integer too big for a float (400 digits) is refused, not an OverflowError."""
    try:
        return float(value)
    except OverflowError:
        digits = len(str(abs(int(value))))
        message = f"a {digits}-digit number is far beyond {limit}"
        raise TripRequestError(message, field=field, row=row) from None


def location_id(value: Any, field: str, row: int) -> int:
    """A zone id: an integral number (130 or 130.0) in 1..265."""
    if not _is_number(value):
        raise TripRequestError(f"must be an integer zone id, got {_type_name(value)}", field=field, row=row)
    number = _as_float(value, field, row, f"the TLC zones {MIN_LOCATION_ID}..{MAX_LOCATION_ID}")
    if not math.isfinite(number) or number != math.floor(number):
        raise TripRequestError(f"must be an integer zone id, got {value!r}", field=field, row=row)
    if not MIN_LOCATION_ID <= number <= MAX_LOCATION_ID:
        raise TripRequestError(
            f"zone id {int(number)} is outside the TLC zones {MIN_LOCATION_ID}..{MAX_LOCATION_ID}",
            field=field,
            row=row,
        )
    return int(number)


def trip_distance(value: Any, field: str, row: int) -> float:
    """A distance in miles: a finite number in 0..500."""
    if not _is_number(value):
        raise TripRequestError(f"must be a number of miles, got {_type_name(value)}", field=field, row=row)
    number = _as_float(value, field, row, f"the {MAX_TRIP_DISTANCE_MILES:g} miles a taxi trip can cover")
    if not math.isfinite(number):
        raise TripRequestError(f"must be a finite number of miles, got {value!r}", field=field, row=row)
    if number < 0:
        raise TripRequestError(f"must not be negative, got {value!r}", field=field, row=row)
    if number > MAX_TRIP_DISTANCE_MILES:
        raise TripRequestError(
            f"{value!r} miles is beyond the {MAX_TRIP_DISTANCE_MILES:g} miles a taxi trip can cover",
            field=field,
            row=row,
        )
    return number


def _check_batch_size(n_rows: int, field: str, limits: RequestLimits) -> None:
    if n_rows == 0:
        raise TripRequestError("empty batch: send at least one trip", field=field)
    if n_rows > limits.max_batch_rows:
        raise TripRequestError(
            f"batch of {n_rows} trips is larger than the limit of {limits.max_batch_rows}; "
            "split it into smaller requests",
            field=field,
        )


@dataclass(frozen=True)
class TripBatch:
    """Validated trips as arrays: zone ids (int64) and distances in miles (float64)."""

    pickup: np.ndarray
    dropoff: np.ndarray
    distance: np.ndarray

    def __len__(self) -> int:
        return len(self.pickup)

    def frame(self) -> pd.DataFrame:
        """The trips as the DataFrame ``TripDurationModel.predict`` takes."""
        return pd.DataFrame(
            {"PULocationID": self.pickup, "DOLocationID": self.dropoff, "trip_distance": self.distance},
            columns=list(FEATURE_FIELDS),
        )


def _batch(pu: list[int], do: list[int], distance: list[float]) -> TripBatch:
    return TripBatch(
        np.asarray(pu, dtype=np.int64), np.asarray(do, dtype=np.int64), np.asarray(distance, dtype=np.float64)
    )


_TOO_DEEP: Final = "body nests too deeply to decode; send a flat list of trips"


def _decode_json(body: bytes | str) -> Any:
    """A body KServe left undecoded because its Content-Type was not JSON (e.g. curl's default)."""
    try:
        return json.loads(body)
    except RecursionError:
        raise TripRequestError(_TOO_DEEP) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise TripRequestError(f"body is not JSON ({exc}); send application/json") from exc


def parse_v1(payload: Any, limits: RequestLimits = DEFAULT_LIMITS) -> TripBatch:
    """Trips from a v1 body ``{"instances": [{...}, ...]}`` (decoded by KServe, or raw bytes)."""
    if isinstance(payload, (bytes, str)):
        payload = _decode_json(payload)
    if not isinstance(payload, Mapping):
        raise TripRequestError(f'body must be a JSON object with "instances", got {_type_name(payload)}')
    if "instances" not in payload:
        raise TripRequestError('body has no "instances" list', field="instances")
    instances = payload["instances"]
    if not isinstance(instances, list):
        raise TripRequestError(f"must be a list of trips, got {_type_name(instances)}", field="instances")
    _check_batch_size(len(instances), "instances", limits)
    pu: list[int] = []
    do: list[int] = []
    distance: list[float] = []
    for row, instance in enumerate(instances):
        if not isinstance(instance, Mapping):
            raise TripRequestError(
                f"each instance must be an object with {', '.join(FEATURE_FIELDS)}, "
                f"got {_type_name(instance)}",
                field="instances",
                row=row,
            )
        for name in FEATURE_FIELDS:
            if name not in instance:
                raise TripRequestError("missing field", field=name, row=row)
        pu.append(location_id(instance["PULocationID"], "PULocationID", row))
        do.append(location_id(instance["DOLocationID"], "DOLocationID", row))
        distance.append(trip_distance(instance[_DISTANCE_FIELD], _DISTANCE_FIELD, row))
    return _batch(pu, do, distance)


def _v2_values(infer_input: InferInput) -> Sequence[Any]:
    """The flat values of a v2 input of shape [n], checked against its shape and datatype."""
    name = infer_input.name
    datatype = infer_input.datatype
    if datatype not in _V2_DATATYPES[name]:
        raise TripRequestError(
            f"datatype {datatype} is not accepted; use {' or '.join(_V2_DATATYPES[name])}", field=name
        )
    shape = list(infer_input.shape)
    if len(shape) != 1:
        raise TripRequestError(f"shape must be [n] (one value per trip), got {shape}", field=name)
    data = infer_input.data
    values = data.tolist() if isinstance(data, np.ndarray) else data
    if not isinstance(values, list):
        raise TripRequestError(f"data must be a flat list, got {_type_name(values)}", field=name)
    if len(values) != shape[0]:
        raise TripRequestError(f"shape says {shape[0]} values but data holds {len(values)}", field=name)
    return values


def parse_v2(request: InferRequest, limits: RequestLimits = DEFAULT_LIMITS) -> TripBatch:
    """Trips from a v2 ``InferRequest`` with inputs PULocationID, DOLocationID, trip_distance."""
    by_name: dict[str, InferInput] = {}
    for infer_input in request.inputs:
        if infer_input.name in by_name:
            raise TripRequestError("input given twice", field=infer_input.name)
        by_name[infer_input.name] = infer_input
    for name in FEATURE_FIELDS:
        if name not in by_name:
            raise TripRequestError(
                f"missing input; a request needs inputs {', '.join(FEATURE_FIELDS)}", field=name
            )
    columns = {name: _v2_values(by_name[name]) for name in FEATURE_FIELDS}
    # Sizes first: an oversized batch is refused before any value is looked at.
    for name in FEATURE_FIELDS:
        _check_batch_size(len(columns[name]), name, limits)
    if len({len(values) for values in columns.values()}) > 1:
        sizes = ", ".join(f"{name}={len(values)}" for name, values in columns.items())
        raise TripRequestError(f"inputs must have the same length (one value per trip), got {sizes}")
    pu = [location_id(v, "PULocationID", row) for row, v in enumerate(columns["PULocationID"])]
    do = [location_id(v, "DOLocationID", row) for row, v in enumerate(columns["DOLocationID"])]
    distance = [trip_distance(v, _DISTANCE_FIELD, row) for row, v in enumerate(columns[_DISTANCE_FIELD])]
    return _batch(pu, do, distance)


class TripDataPlane(DataPlane):
    """KServe's data plane, except that v1 JSON with NaN/Infinity tokens still decodes.

    Python's ``json.dumps`` writes a float NaN as the bare token ``NaN``, which
    strict JSON (KServe's orjson) refuses as "Unrecognized request format" at
    some column. Decoding it leniently lets :func:`parse_v1` refuse the value
    instead, naming the field and row. (v2 bodies are decoded by FastAPI,
    which already accepts the tokens.) Anything still not JSON keeps KServe's
    own error.
    """

    def decode(
        self,
        body: Any,
        headers: Any,
        protocol_version: str = PredictorProtocol.REST_V1.value,
        model_name: str | None = None,
    ) -> tuple[Any, dict[str, Any]]:
        try:
            return super().decode(body, headers, protocol_version, model_name)
        except InvalidInput as strict_error:
            if protocol_version != PredictorProtocol.REST_V1.value or not isinstance(body, bytes):
                raise
            try:
                lenient = json.loads(body)
            except RecursionError:
                raise TripRequestError(_TOO_DEEP) from None
            except (ValueError, UnicodeDecodeError):
                raise strict_error from None
            return super().decode(lenient, headers, protocol_version, model_name)


def parse_request(payload: Any, limits: RequestLimits = DEFAULT_LIMITS) -> TripBatch:
    """Trips from either protocol: ``InferRequest`` is v2, anything else is a v1 body."""
    if isinstance(payload, InferRequest):
        return parse_v2(payload, limits)
    return parse_v1(payload, limits)
