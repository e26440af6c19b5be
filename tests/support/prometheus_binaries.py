"""Debian's Prometheus binaries for the tests that run them: skip locally when missing, fail in CI.

``.ci/run`` installs ``prometheus`` and ``prometheus-alertmanager`` and exports
``TAXI_MLOPS_REQUIRE_PROMETHEUS=1``, so there a missing binary is a failure, never a
quiet skip; on a developer's machine the skip reason is the apt-get line to run.
"""

from __future__ import annotations

import os

import pytest

from serving.observability import ObservabilityError, find_binary

REQUIRE_ENV = "TAXI_MLOPS_REQUIRE_PROMETHEUS"


def require_binary(name: str) -> str:
    """The path of ``name`` (prometheus, promtool, prometheus-alertmanager, amtool), or skip/fail."""
    try:
        return find_binary(name)
    except ObservabilityError as exc:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 and {exc}")
        pytest.skip(str(exc))
