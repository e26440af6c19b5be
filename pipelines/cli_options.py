"""Click options more than one command module of the CLI shares."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click


def state_dir_option(command: Any) -> Any:
    return click.option(
        "--state-dir",
        type=click.Path(file_okay=False, path_type=Path),
        help="Local state folder [env TAXI_MLOPS_STATE_DIR; default ./.taxi-mlops].",
    )(command)


def parse_candidates(names: str, overrides: tuple[str, ...]) -> list[dict[str, Any]]:
    """``"ridge,xgboost"`` + ``("xgboost.n_estimators=300",)`` -> the pipeline's candidates parameter."""
    from components.models.candidates import candidate_spec, resolve_params

    chosen = [name.strip() for name in names.split(",") if name.strip()]
    if not chosen:
        raise click.BadParameter("name at least one candidate", param_hint="--candidates")
    for name in chosen:
        candidate_spec(name)
    params: dict[str, dict[str, Any]] = {name: {} for name in chosen}
    for override in overrides:
        key, sep, raw = override.partition("=")
        model, dot, param = key.partition(".")
        if not (sep and dot and model and param):
            raise click.BadParameter(f"{override!r} is not MODEL.NAME=VALUE", param_hint="--param")
        if model not in params:
            raise click.BadParameter(f"{model!r} is not among --candidates {names!r}", param_hint="--param")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw  # a bare word such as reg:squarederror is a string
        params[model][param] = value
    for name, overrides_for_model in params.items():
        resolve_params(name, overrides_for_model)  # rejects unknown hyperparameter names now
    return [{"name": name, "params": params[name]} for name in chosen]


def field_overrides(overrides: Sequence[str], option: str) -> dict[str, str]:
    """``("a=1", "b=x")`` -> ``{"a": "1", "b": "x"}``; anything else is a usage error naming ``option``."""
    pairs: dict[str, str] = {}
    for override in overrides:
        name, sep, value = override.partition("=")
        if not sep or not name.strip():
            raise click.BadParameter(f"{override!r} is not FIELD=VALUE", param_hint=option)
        pairs[name.strip()] = value.strip()
    return pairs
