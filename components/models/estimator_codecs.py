"""Store fitted estimators as bytes without pickle.

A model file may come from an artifact store we do not control, so loading it
must never execute code. Each codec uses a format that is data only:

* ``linear-npz``: scikit-learn's linear regressors (LinearRegression, Ridge,
  Lasso) as an ``.npz`` of their coefficients, intercept and JSON parameters,
  restored only as one of those three classes. Their predictions are a dot
  product of those arrays, so nothing else needs storing; and neither saving
  nor loading imports skops, whose start-up (~1.2 s) and type scan (~0.3 s a
  load) cost more than everything else these models do.
* ``skops``: any other scikit-learn estimator through skops, loaded with an
  explicit list of trusted types (the estimator's own class); anything else in
  the file is refused. (Linear models saved before ``linear-npz`` use it too.)
* ``xgboost-ubj``: XGBoost's own Universal Binary JSON model format.
* ``target-encoded-xgboost``: an ``.npz`` of plain arrays (loaded with
  ``allow_pickle=False``) holding the encodings and the booster's UBJ bytes.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from components.errors import ModelIntegrityError

TARGET_ENCODED_CODEC = "target-encoded-xgboost"
# Model files written before the model took its candidate's name (0.1.0) say this instead.
_LEGACY_CODEC_NAMES = {"category-encoded-xgboost": TARGET_ENCODED_CODEC}


@dataclass(frozen=True)
class EstimatorCodec:
    name: str
    member_name: str  # file name inside the model archive
    dump: Callable[[Any], bytes]
    load: Callable[[bytes, str], Any]  # (payload, qualified estimator type) -> estimator


def qualified_type_name(obj: object) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _skops_dump(estimator: Any) -> bytes:
    import skops.io as sio

    return sio.dumps(estimator)


def _skops_load(payload: bytes, estimator_type: str) -> Any:
    import skops.io as sio

    # Only the type the manifest names is trusted on top of skops' own safe
    # defaults (numpy arrays, builtins, scikit-learn internals it vets).
    untrusted = set(sio.get_untrusted_types(data=payload)) - {estimator_type}
    if untrusted:
        raise ModelIntegrityError(
            f"model file holds types that are not trusted: {', '.join(sorted(untrusted))}"
        )
    estimator = sio.loads(payload, trusted=[estimator_type])
    # skops trusts scikit-learn's own estimators by default: make sure the file holds
    # the estimator its manifest names, not some other one filed under that name.
    if qualified_type_name(estimator) != estimator_type:
        raise ModelIntegrityError(
            f"model file holds a {qualified_type_name(estimator)}, but its manifest names {estimator_type}"
        )
    return estimator


def _linear_classes() -> dict[str, type]:
    from sklearn.linear_model import Lasso, LinearRegression, Ridge

    return {f"{cls.__module__}.{cls.__qualname__}": cls for cls in (LinearRegression, Ridge, Lasso)}


def _linear_dump(estimator: Any) -> bytes:
    import numpy as np

    if qualified_type_name(estimator) not in _linear_classes():
        raise TypeError(f"linear-npz codec cannot store a {qualified_type_name(estimator)}")
    buffer = io.BytesIO()
    np.savez(
        buffer,
        coef=np.asarray(estimator.coef_, dtype=np.float64),
        intercept=np.asarray(estimator.intercept_, dtype=np.float64),
        params=np.array(json.dumps(estimator.get_params(deep=False), sort_keys=True)),
    )
    return buffer.getvalue()


def _linear_load(payload: bytes, estimator_type: str) -> Any:
    import numpy as np

    cls = _linear_classes().get(estimator_type)
    if cls is None:
        raise ModelIntegrityError(f"linear-npz codec cannot restore a {estimator_type}")
    with np.load(io.BytesIO(payload), allow_pickle=False) as arrays:
        coef, intercept, params = arrays["coef"], arrays["intercept"], str(arrays["params"])
    if coef.ndim != 1 or coef.dtype != np.float64 or intercept.shape != ():
        raise ModelIntegrityError(
            f"linear-npz: coefficients of shape {coef.shape} ({coef.dtype}) and an intercept of "
            f"shape {intercept.shape}; expected one float64 row and one scalar"
        )
    try:
        estimator = cls(**json.loads(params))
    except TypeError as exc:  # a parameter the class does not take
        raise ModelIntegrityError(
            f"linear-npz: parameters {params} do not fit {estimator_type} ({exc})"
        ) from exc
    estimator.coef_ = coef
    estimator.intercept_ = intercept[()]
    estimator.n_features_in_ = coef.shape[0]
    return estimator


def _xgboost_dump(estimator: Any) -> bytes:
    return bytes(estimator.get_booster().save_raw(raw_format="ubj"))


def _xgboost_load(payload: bytes, estimator_type: str) -> Any:
    from xgboost import XGBRegressor

    if estimator_type != qualified_type_name(XGBRegressor()):
        raise ModelIntegrityError(f"xgboost-ubj codec cannot restore a {estimator_type}")
    estimator = XGBRegressor()
    estimator.load_model(bytearray(payload))
    return estimator


def _target_encoded_dump(estimator: Any) -> bytes:
    from components.models.target_encoded_xgboost import dump_target_encoded_xgboost

    return dump_target_encoded_xgboost(estimator)


def _target_encoded_load(payload: bytes, estimator_type: str) -> Any:
    from components.models.target_encoded_xgboost import (
        LEGACY_TYPE_NAMES,
        TargetEncodedXGBoost,
        load_target_encoded_xgboost,
    )

    if (
        estimator_type != qualified_type_name(TargetEncodedXGBoost())
        and estimator_type not in LEGACY_TYPE_NAMES
    ):
        raise ModelIntegrityError(f"{TARGET_ENCODED_CODEC} codec cannot restore a {estimator_type}")
    return load_target_encoded_xgboost(payload)


CODECS: dict[str, EstimatorCodec] = {
    codec.name: codec
    for codec in (
        EstimatorCodec("linear-npz", "estimator.npz", _linear_dump, _linear_load),
        EstimatorCodec("skops", "estimator.skops", _skops_dump, _skops_load),
        EstimatorCodec("xgboost-ubj", "estimator.ubj", _xgboost_dump, _xgboost_load),
        EstimatorCodec(TARGET_ENCODED_CODEC, "estimator.npz", _target_encoded_dump, _target_encoded_load),
    )
}


def codec_named(name: str) -> EstimatorCodec:
    try:
        return CODECS[_LEGACY_CODEC_NAMES.get(name, name)]
    except KeyError:
        raise ModelIntegrityError(
            f"unknown estimator codec {name!r}; known: {', '.join(sorted(CODECS))}"
        ) from None
