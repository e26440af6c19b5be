"""Operations evidence from Prometheus: what the canary judge reads on a cluster (no splitter there).

The predictor pods expose ``trip_duration_http_requests_total{model_version, status_class}``
and ``trip_duration_http_request_seconds`` (``serving/predictor.py``), which the cluster
Prometheus scrapes (``manifests/components/monitoring``). For each revision the judge asks,
over the step so far (``increase`` over ``[now - step start]``, so a pod restart's counter
reset is absorbed the way Prometheus always absorbs it):

- requests: ``sum(increase(trip_duration_http_requests_total{model_version="V"}[R]))``
- errors:   the same with ``status_class="5xx"``
- p99:      ``histogram_quantile(0.99, sum by (le) (rate(..._seconds_bucket{model_version="V"}[R])))``

Only the HTTP API's ``/api/v1/query`` is used (instant queries, JSON); a Prometheus that
cannot be reached or answers an error is a :class:`CanaryJudgeError` naming the query, and
the analysis is not made (missing data never passes).
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Final

from components.canary.analysis import RevisionOps
from serving.canary_judge import CANARY, CHAMPION, CanaryJudgeError
from serving.deployment_state import DeploymentState

REQUESTS_METRIC: Final = "trip_duration_http_requests_total"
LATENCY_METRIC: Final = "trip_duration_http_request_seconds_bucket"
#: Shortest range asked for: Prometheus needs two scrapes inside a range to compute an increase.
MIN_RANGE_SECONDS: Final = 60


class PrometheusOps:
    """:class:`serving.canary_judge.OpsSource` over a Prometheus server's HTTP API."""

    def __init__(self, url: str, timeout: float = 10.0, now: datetime | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._now = now  # tests pin the clock; None: wall clock at each read

    def snapshot(self, state: DeploymentState) -> dict[str, list[int]]:
        return {}  # ranges are measured from the step's start time instead

    def since(
        self, state: DeploymentState, baseline: Mapping[str, list[int]], step_started: datetime
    ) -> dict[str, RevisionOps]:
        now = (self._now or datetime.now(UTC)).astimezone(UTC)
        seconds = max(MIN_RANGE_SECONDS, math.ceil((now - step_started.astimezone(UTC)).total_seconds()))
        window = f"{seconds}s"
        figures: dict[str, RevisionOps] = {}
        for role, revision in ((CHAMPION, state.champion), (CANARY, state.canary)):
            if revision is None:
                continue
            selector = f'model_version="{_label_value(revision.model_version)}"'
            requests = self.value(f"sum(increase({REQUESTS_METRIC}{{{selector}}}[{window}]))")
            errors = self.value(
                f'sum(increase({REQUESTS_METRIC}{{{selector},status_class="5xx"}}[{window}]))'
            )
            p99 = self.value(
                f"histogram_quantile(0.99, sum by (le) (rate({LATENCY_METRIC}{{{selector}}}[{window}])))"
            )
            figures[role] = RevisionOps(
                requests=round(requests or 0.0),
                errors=round(errors or 0.0),
                p99_ms=None if p99 is None else p99 * 1000.0,
            )
        return figures

    def value(self, query: str) -> float | None:
        """The single value of an instant query; None when it has no sample (or NaN: no traffic)."""
        address = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": query})
        try:
            with urllib.request.urlopen(address, timeout=self.timeout) as response:
                answer = json.load(response)
        except urllib.error.HTTPError as exc:
            raise CanaryJudgeError(f"Prometheus at {self.url} refused {query!r}: HTTP {exc.code}") from exc
        except (OSError, ValueError) as exc:
            raise CanaryJudgeError(f"cannot query Prometheus at {self.url} ({query!r}): {exc}") from exc
        if answer.get("status") != "success":
            raise CanaryJudgeError(f"Prometheus at {self.url}: {query!r} failed: {answer.get('error')}")
        result = (answer.get("data") or {}).get("result") or []
        if not result:
            return None
        number = float(result[0]["value"][1])
        return None if math.isnan(number) else number


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')
