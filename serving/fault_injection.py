"""Test-only faults in a predictor: a share of 5xx answers, added latency. Off unless a test turns it on.

The canary judge's end-to-end tests need a canary that fails on errors or on latency
while the champion beside it is healthy. They set ``TAXI_MLOPS_TEST_FAULTS`` in the
environment the local stack starts predictors with, as JSON keyed by model version::

    TAXI_MLOPS_TEST_FAULTS='{"4": {"error_rate": 0.3}, "5": {"delay_ms": 250}}'

A predictor whose version is not named serves normally. The variable is never set by
the product: no image, manifest, script or command mentions it, and
``tests/test_canary_e2e.py`` checks exactly that. A value that is not valid JSON of
this shape stops the predictor at start, so a typo cannot silently disable a test.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from components.errors import TaxiMlopsError
from serving.error_responses import POST_ONLY_SUFFIXES

TEST_FAULTS_ENV: Final = "TAXI_MLOPS_TEST_FAULTS"


class FaultConfigError(TaxiMlopsError):
    """``TAXI_MLOPS_TEST_FAULTS`` is set but is not what it must be."""


@dataclass(frozen=True)
class Faults:
    error_rate: float = 0.0  # share of inference requests answered 503
    delay_ms: float = 0.0  # added before every inference request is handled
    seed: int = 0


def faults_for(model_version: str, env: Mapping[str, str] | None = None) -> Faults | None:
    """The faults the environment asks of ``model_version``, or None (the normal case)."""
    raw = (os.environ if env is None else env).get(TEST_FAULTS_ENV)
    if not raw:
        return None
    try:
        table = json.loads(raw)
        entry = table.get(str(model_version)) if isinstance(table, dict) else None
        if entry is None:
            return None
        faults = Faults(**entry)
    except (ValueError, TypeError) as exc:
        raise FaultConfigError(
            f"{TEST_FAULTS_ENV}={raw!r}: not {{version: {{error_rate, delay_ms}}}} ({exc})"
        ) from exc
    if not 0.0 <= faults.error_rate <= 1.0 or faults.delay_ms < 0:
        raise FaultConfigError(f"{TEST_FAULTS_ENV}: error_rate must be in [0, 1] and delay_ms >= 0")
    return faults


class FaultInjector:
    """ASGI middleware: delays and fails inference requests as :class:`Faults` says."""

    def __init__(self, app: Any, faults: Faults) -> None:
        self.app = app
        self.faults = faults
        self._rng = random.Random(faults.seed)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not str(scope["path"]).endswith(POST_ONLY_SUFFIXES):
            await self.app(scope, receive, send)
            return
        if self.faults.delay_ms:
            await asyncio.sleep(self.faults.delay_ms / 1000.0)
        if self._rng.random() < self.faults.error_rate:
            body = b'{"error": "injected fault (TAXI_MLOPS_TEST_FAULTS)"}'
            await send(
                {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


def install_test_faults(app: Any, model_version: str) -> Faults | None:
    """Add :class:`FaultInjector` to ``app`` when the environment asks it of this version."""
    faults = faults_for(model_version)
    if faults is not None:
        app.add_middleware(FaultInjector, faults=faults)
    return faults
