"""The candidate registry: every entry builds, defaults resolve, bad names fail early and clearly."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from components.errors import CandidateConfigError, TaxiMlopsError
from components.models.candidates import (
    CANDIDATES,
    DEFAULT_CANDIDATES,
    build_estimator,
    candidate_spec,
    resolve_params,
)
from components.models.estimator_codecs import CODECS

NAMES = sorted(CANDIDATES)
# What a vectorizer of PU_DO + trip_distance would call its columns.
FEATURE_NAMES = ["PU_DO=1_2", "PU_DO=1_3", "PU_DO=7_7", "trip_distance"]
# Hyperparameters each family accepts besides its defaults, where the estimator has one.
EXTRA_PARAM: dict[str, tuple[str, Any]] = {
    "linear_regression": ("fit_intercept", False),
    "lasso": ("tol", 1e-3),
    "ridge": ("fit_intercept", False),
    "xgboost": ("subsample", 0.5),
}


def needs_feature_names(name: str) -> bool:
    return bool(getattr(CANDIDATES[name], "needs_feature_names", False))


def build(name: str, params: Mapping[str, Any] | None = None) -> Any:
    """``build_estimator``, handing over feature names to the candidates that read them."""
    if needs_feature_names(name):
        return build_estimator(name, params, feature_names=FEATURE_NAMES)
    return build_estimator(name, params)


def sample_override(name: str) -> tuple[str, Any]:
    """A hyperparameter ``name`` accepts, with a value different from its default."""
    if name in EXTRA_PARAM:
        return EXTRA_PARAM[name]
    # A candidate added later: take a numeric default and change it.
    for key, value in sorted(CANDIDATES[name].defaults.items()):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return key, value * 2 + 1
    pytest.fail(f"{name}: add a sample hyperparameter to EXTRA_PARAM")


def test_registry_entries_are_consistent():
    assert NAMES, "no candidates registered"
    assert tuple(CANDIDATES) == DEFAULT_CANDIDATES
    for key, spec in CANDIDATES.items():
        assert spec.name == key
        assert spec.codec in CODECS, f"{key}: codec {spec.codec!r} is not a known estimator codec"
        assert spec.description
        # Defaults arrive from pipeline parameters as JSON: they must survive a JSON round trip.
        assert json.loads(json.dumps(dict(spec.defaults))) == dict(spec.defaults)


@pytest.mark.parametrize("name", NAMES)
def test_every_candidate_builds_with_its_defaults(name: str):
    estimator = build(name)
    assert callable(estimator.fit) and callable(estimator.predict)
    params = estimator.get_params(deep=False)
    for key, value in CANDIDATES[name].defaults.items():
        assert params[key] == value, f"{name}.{key}"
    # A fresh object every call: two training tasks never share a fitted estimator.
    assert build(name) is not estimator


@pytest.mark.parametrize("name", NAMES)
def test_every_candidate_fits_and_predicts(name: str):
    rng = np.random.default_rng(7)
    X = sp.random(60, len(FEATURE_NAMES), density=0.4, format="csr", random_state=3, dtype=np.float64)
    y = rng.normal(10.0, 2.0, 60)
    small = {"n_estimators": 5, "max_depth": 3, "n_jobs": 1}
    overrides = {k: v for k, v in small.items() if k in CANDIDATES[name].defaults}
    predictions = np.asarray(build(name, overrides).fit(X, y).predict(X))
    assert predictions.shape == (60,)
    assert np.isfinite(predictions).all()


@pytest.mark.parametrize("name", NAMES)
def test_defaults_resolve_to_a_copy(name: str):
    for overrides in (None, {}):
        resolved = resolve_params(name, overrides)
        assert resolved == dict(CANDIDATES[name].defaults)
    resolved["injected"] = 1
    assert "injected" not in CANDIDATES[name].defaults
    assert "injected" not in resolve_params(name)


@pytest.mark.parametrize("call", [candidate_spec, resolve_params, build_estimator])
def test_unknown_candidate_names_the_bad_name_and_the_known_ones(call):
    with pytest.raises(CandidateConfigError) as info:
        call("random_forest")
    message = str(info.value)
    assert "'random_forest'" in message
    for known in CANDIDATES:
        assert known in message
    assert isinstance(info.value, TaxiMlopsError)


@pytest.mark.parametrize("name", NAMES)
def test_unknown_hyperparameter_names_it_and_lists_accepted_ones(name: str):
    accepted_param, value = sample_override(name)
    with pytest.raises(CandidateConfigError) as info:
        build(name, {"alpah": 0.1, accepted_param: value})
    message = str(info.value)
    assert repr(name) in message
    assert "alpah" in message
    accepted = message.split("accepted:", 1)[1]
    accepted_names = {part.strip() for part in accepted.split(",")}
    assert accepted_param in accepted_names
    assert set(CANDIDATES[name].defaults) <= accepted_names
    assert "alpah" not in accepted_names


def test_every_unknown_hyperparameter_is_reported():
    with pytest.raises(CandidateConfigError, match=r"hyperparameter\(s\) max_dept, n_estimator;"):
        resolve_params("xgboost", {"n_estimator": 10, "max_dept": 3, "learning_rate": 0.1})


@pytest.mark.parametrize("name", NAMES)
def test_overrides_apply_and_keep_the_other_defaults(name: str):
    key, value = sample_override(name)
    resolved = resolve_params(name, {key: value})
    assert resolved == {**CANDIDATES[name].defaults, key: value}
    assert build(name, {key: value}).get_params(deep=False)[key] == value


def test_override_replaces_a_default():
    lasso_defaults = CANDIDATES["lasso"].defaults
    new_alpha = lasso_defaults["alpha"] * 7
    estimator = build_estimator("lasso", {"alpha": new_alpha})
    assert estimator.alpha == new_alpha
    assert estimator.max_iter == lasso_defaults["max_iter"]
    xgb = build_estimator("xgboost", {"n_estimators": 20, "max_depth": 6})
    assert (xgb.n_estimators, xgb.max_depth) == (20, 6)
    assert xgb.learning_rate == CANDIDATES["xgboost"].defaults["learning_rate"]


def test_unknown_name_message_is_sorted_for_stable_logs():
    with pytest.raises(CandidateConfigError) as info:
        candidate_spec("nope")
    listed = re.split(r",\s*", str(info.value).split("known candidates:", 1)[1].strip())
    assert listed == sorted(CANDIDATES)


FEATURE_NAME_CANDIDATES = [name for name in NAMES if needs_feature_names(name)]


@pytest.mark.parametrize("name", FEATURE_NAME_CANDIDATES)
def test_candidate_that_reads_feature_names_gets_them_from_the_caller_only(name: str):
    estimator = build(name)
    assert list(estimator.get_params(deep=False)["feature_names"]) == FEATURE_NAMES
    with pytest.raises(CandidateConfigError, match="feature names"):
        build_estimator(name)
    # The vectorizer owns the feature names: a pipeline parameter may not override them.
    with pytest.raises(CandidateConfigError, match="feature_names"):
        resolve_params(name, {"feature_names": ["x"]})


def _tiny_regression() -> tuple[sp.csr_matrix, np.ndarray]:
    X = sp.random(60, 5, density=0.5, format="csr", random_state=1, dtype=np.float64)
    return X, np.asarray(X.sum(axis=1)).ravel()


def test_integral_floats_from_kfp_become_ints_where_the_default_is_an_int():
    # KFP hands pipeline parameters over as protobuf doubles: 20 arrives as 20.0.
    resolved = resolve_params("xgboost", {"n_estimators": 20.0, "max_depth": 3.0, "learning_rate": 0.5})
    assert resolved["n_estimators"] == 20 and type(resolved["n_estimators"]) is int
    assert resolved["max_depth"] == 3 and type(resolved["max_depth"]) is int
    assert resolved["learning_rate"] == 0.5
    # Float hyperparameters stay floats, even when integral.
    alpha = resolve_params("ridge", {"alpha": 2.0})["alpha"]
    assert alpha == 2.0 and type(alpha) is float
    assert resolve_params("ridge", {"fit_intercept": False})["fit_intercept"] is False
    X, y = _tiny_regression()
    build_estimator("xgboost", {"n_estimators": 5.0, "max_depth": 2.0, "n_jobs": 1.0}).fit(X, y)


@pytest.mark.parametrize("key", ["max_leaves", "max_bin"])
def test_integral_floats_become_ints_for_xgboost_params_without_a_default(key: str):
    X, y = _tiny_regression()
    build_estimator("xgboost", {"n_estimators": 5, "n_jobs": 1, key: 8.0}).fit(X, y)
