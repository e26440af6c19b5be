"""PrometheusOps against a real Prometheus scraping real predictors: what the cluster judge would read.

Two real predictor processes (``python -m serving``) on 127.0.0.1: version 3 healthy, version 4
with the test-only fault switch answering 503 to about 30% of requests and 20 ms late
(``serving.fault_injection``). Debian's Prometheus scrapes both every second. After a known
number of requests the judge's operations source reads each version's requests, 5xx and p99
back through the HTTP API. ``increase()`` extrapolates towards the end of its range, so the
counts may come back a little high (by at most the share of the range that 1.1 scrape
intervals make), never low; the p99 is compared with the quantile of the predictor's own histogram
buckets, read from its ``/metrics``, which is what Prometheus interpolates in.

Skipped without the prometheus binary, unless TAXI_MLOPS_REQUIRE_PROMETHEUS=1 (CI), which
makes that a failure (``support.prometheus_binaries``).
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
import requests
import yaml
from support.model_fixtures import client_records, fit_fixture_model
from support.predictor_process import Server, free_port, launch_predictor, stop_processes, wait_ready
from support.prometheus_binaries import require_binary

from components.models.duration_model import MODEL_FILE_NAME
from serving.deployment_state import DeploymentState, Revision
from serving.fault_injection import TEST_FAULTS_ENV
from serving.prometheus_ops import PrometheusOps

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
V1 = "/v1/models/duration:predict"
SENT = 300  # requests to each predictor
QUANTILE = 0.99
SCRAPE_SECONDS = 1.0


@dataclass(frozen=True)
class Stack:
    prometheus: str
    predictors: dict[str, Server]  # by model version
    revisions: dict[str, Revision]
    records: list[dict]


def _wait(condition, what: str, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    pytest.fail(f"{what} not within {seconds:g}s")


def _query(url: str, query: str) -> list[dict]:
    answer = requests.get(f"{url}/api/v1/query", params={"query": query}, timeout=5).json()
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    binary = require_binary("prometheus")
    root = tmp_path_factory.mktemp("prometheus-ops")
    model, _, validation = fit_fixture_model(root / "tlc")
    folder = root / "model"
    sha256 = model.save(folder / MODEL_FILE_NAME)
    faults = {TEST_FAULTS_ENV: json.dumps({"4": {"error_rate": 0.3, "delay_ms": 20, "seed": 3}})}
    predictors: dict[str, Server] = {}
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for version in ("3", "4"):
            port = free_port()
            args = [
                *("--model_name", "duration", "--model-uri", str(folder), "--model-sha256", sha256),
                *("--model-version", version, "--http_port", str(port), "--bind-host", "127.0.0.1"),
            ]
            process, stdout, stderr = launch_predictor(args, root / f"logs-v{version}", env=faults)
            processes.append(process)
            predictors[version] = Server(f"http://127.0.0.1:{port}", process, stdout, stderr)
        for server in predictors.values():
            wait_ready(server)
        prometheus_port = free_port()
        config = root / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
                    "scrape_configs": [
                        {
                            "job_name": "predictor",
                            "honor_labels": True,
                            "static_configs": [
                                {"targets": [s.url.removeprefix("http://") for s in predictors.values()]}
                            ],
                        }
                    ],
                }
            )
        )
        with (root / "prometheus.log").open("wb") as log:
            prometheus = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={root / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{prometheus_port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        processes.append(prometheus)
        url = f"http://127.0.0.1:{prometheus_port}"

        def ready() -> bool:
            try:
                return requests.get(f"{url}/-/ready", timeout=1).status_code == 200
            except requests.ConnectionError:
                return False

        _wait(ready, "Prometheus ready")
        revisions = {v: Revision(v, str(folder), sha256) for v in predictors}
        yield Stack(url, predictors, revisions, client_records(validation, 5))
    finally:
        stop_processes(*processes)


def _sum(url: str, query: str) -> float | None:
    result = _query(url, query)
    return float(result[0]["value"][1]) if result else None


def _bucket_quantile(metrics_text: str, version: str, quantile: float) -> float:
    """Prometheus' histogram_quantile on the predictor's own cumulative buckets (linear in a bucket)."""
    buckets = []
    for line in metrics_text.splitlines():
        if (
            line.startswith("trip_duration_http_request_seconds_bucket{")
            and f'model_version="{version}"' in line
        ):
            labels, value = line.rsplit(" ", 1)
            bound = labels.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((math.inf if bound == "+Inf" else float(bound), float(value)))
    buckets.sort()
    total = buckets[-1][1]
    rank = quantile * total
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if math.isinf(upper):
                return lower
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    raise AssertionError("unreachable")


def test_requests_errors_and_p99_per_version_come_back_from_a_real_prometheus(stack: Stack):
    url = stack.prometheus
    # Both predictors scraped, their counters already there at 0 (created at start): a range that
    # begins before the traffic sees it all as increase.
    _wait(
        lambda: len(_query(url, 'trip_duration_http_requests_total{status_class="5xx"} == 0')) == 2,
        "both predictors scraped at zero",
    )
    step_started = datetime.now(UTC)
    time.sleep(2.5)  # two more scrapes at zero inside the step
    sent: dict[str, dict[int, int]] = {}
    body = {"instances": stack.records}
    with requests.Session() as session:
        for version, server in stack.predictors.items():
            codes: dict[int, int] = {}
            for _ in range(SENT):
                code = session.post(server.url + V1, json=body, timeout=10).status_code
                codes[code] = codes.get(code, 0) + 1
            sent[version] = codes
    assert set(sent["3"]) == {200}
    assert set(sent["4"]) == {200, 503} and 0.2 < sent["4"][503] / SENT < 0.4
    # Prometheus has scraped the final counts (the raw counter, no extrapolation), then a little more.
    for version in stack.predictors:
        _wait(
            lambda v=version: (
                _sum(url, f'sum(trip_duration_http_requests_total{{model_version="{v}"}})') == SENT
            ),
            f"version {version}'s {SENT} requests scraped",
        )
    time.sleep(2.5)

    state = DeploymentState(champion=stack.revisions["3"], canary=stack.revisions["4"], canary_percent=50)
    figures = PrometheusOps(url).since(state, {}, step_started)

    # increase() scales the sampled increase by (sampled interval + extrapolation) / sampled
    # interval: towards the range's start not at all (the counters begin at 0), towards its end by
    # at most 1.1 scrape intervals. The sampled interval is at least the step's span, so counts
    # come back at most that share high, never low (measured here: 309 and 315 for 300).
    span = (datetime.now(UTC) - step_started).total_seconds()
    tolerance = 1.0 + 1.1 * SCRAPE_SECONDS / span
    champion, canary = figures["champion"], figures["canary"]
    assert SENT <= champion.requests <= SENT * tolerance + 1
    assert champion.errors == 0
    assert SENT <= canary.requests <= SENT * tolerance + 1
    assert sent["4"][503] <= canary.errors <= sent["4"][503] * tolerance + 1

    # p99 from the buckets the predictors expose (rate() scales every bucket alike).
    for role, version in (("champion", "3"), ("canary", "4")):
        metrics = requests.get(stack.predictors[version].url + "/metrics", timeout=5).text
        expected = _bucket_quantile(metrics, version, QUANTILE) * 1000.0
        assert figures[role].p99_ms == pytest.approx(expected, rel=0.05), role
    assert canary.p99_ms >= 20.0  # the injected delay is inside the measured request
    assert champion.p99_ms < canary.p99_ms


def test_a_version_prometheus_never_saw_reads_as_no_traffic(stack: Stack):
    state = DeploymentState(
        champion=stack.revisions["3"],
        canary=Revision("99", stack.revisions["3"].model_uri, stack.revisions["3"].sha256),
        canary_percent=10,
    )
    figures = PrometheusOps(stack.prometheus).since(state, {}, datetime.now(UTC))
    assert (figures["canary"].requests, figures["canary"].errors, figures["canary"].p99_ms) == (0, 0, None)
