"""Faults through the real local stack (splitter + real KServe predictors): no request pays for another.

Traffic here goes only to 127.0.0.1, is bounded in count and time, and stops by itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
from support.model_fixtures import ridge_revisions

from serving.deployment_state import Revision, deploy, update_state
from serving.local_stack import PREDICTOR_HOST, LocalStack, kserve_predictor_command

PREDICT = "/v1/models/duration:predict"
TRIP = {"instances": [{"PULocationID": 43, "DOLocationID": 151, "trip_distance": 1.2}]}
NESTED = b'{"instances":' + b"[" * 6000 + b"]" * 6000 + b"}"
HUGE_ZONE = (
    b'{"instances": [{"PULocationID": '
    + str(10**400).encode()
    + b', "DOLocationID": 1, "trip_distance": 1.0}]}'
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def revisions(tmp_path_factory: pytest.TempPathFactory) -> tuple[Revision, Revision]:
    return ridge_revisions(tmp_path_factory.mktemp("fault-models"))


@pytest.fixture(scope="module")
def stack(revisions, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """Champion v1 with a 20% canary v2, both real predictors."""
    v1, v2 = revisions
    state_path = tmp_path_factory.mktemp("state") / "deployment.json"
    update_state(state_path, lambda s: deploy(s, v1, 0))
    update_state(state_path, lambda s: deploy(s, v2, 20))
    with LocalStack(
        state_path,
        port=0,
        predictor_command=kserve_predictor_command,
        ready_timeout=90,
        poll_interval=0.2,
        seed=3,
    ) as local:
        assert local.last_report is not None and local.last_report.ok, local.last_report
        yield local


def _predictor_pids(stack: LocalStack) -> dict[str, int]:
    return {p["model_version"]: p["pid"] for p in stack.predictors()}


def test_bad_requests_are_400_and_never_cost_the_next_good_one(stack: LocalStack):
    with httpx.Client(base_url=stack.url, timeout=10) as client:
        seen: Counter[tuple[str, int]] = Counter()
        for _ in range(100):
            for name, body in (("nested", NESTED), ("huge-zone", HUGE_ZONE)):
                answer = client.post(PREDICT, content=body, headers={"content-type": "application/json"})
                seen[(name, answer.status_code)] += 1
                assert "error" in answer.json()
            good = client.post(PREDICT, json=TRIP)
            seen[("good", good.status_code)] += 1
    assert seen == {("nested", 400): 100, ("huge-zone", 400): 100, ("good", 200): 100}


def test_only_the_splitter_is_reachable_the_predictors_listen_on_loopback(stack: LocalStack):
    import psutil

    assert PREDICTOR_HOST == "127.0.0.1"
    for predictor in stack.predictors():
        process = psutil.Process(predictor["pid"])
        listening = {
            conn.laddr.ip
            for proc in (process, *process.children(recursive=True))
            for conn in getattr(proc, "net_connections", proc.connections)(kind="inet")
            if conn.status == psutil.CONN_LISTEN
        }
        assert listening == {"127.0.0.1"}, (predictor, listening)


async def _steady_load(url: str, rate: float, seconds: float, at: float, fault) -> Counter[int]:
    """``rate`` requests/s for ``seconds`` (rate * seconds requests in all); ``fault()`` runs at ``at`` s."""
    statuses: Counter[int] = Counter()
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, timeout=10, limits=limits) as client:

        async def one() -> None:
            try:
                statuses[(await client.post(PREDICT, json=TRIP)).status_code] += 1
            except httpx.HTTPError as exc:
                statuses[-1] += 1  # no answer at all
                print("no answer:", exc)

        started = time.monotonic()
        tasks = []
        fired = False
        for number in range(int(rate * seconds)):
            due = started + number / rate
            if not fired and time.monotonic() - started >= at:
                fault()
                fired = True
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    return statuses


def test_kill_9_of_the_canary_at_200_per_second_fails_no_request(stack: LocalStack):
    canary_pid = _predictor_pids(stack)["2"]

    def kill_canary() -> None:
        os.kill(canary_pid, signal.SIGKILL)

    statuses = asyncio.run(_steady_load(stack.url, rate=200, seconds=8, at=2.0, fault=kill_canary))
    assert statuses == {200: 1600}, statuses
    with httpx.Client(base_url=stack.url, timeout=10) as client:
        status = client.get("/status").json()
    (canary,) = [row for row in status["revisions"] if row["revision"] == "canary"]
    assert canary["failovers"] >= 1, canary  # the kill really hit requests, which the champion answered
    # The supervisor brings the canary back (a new process) and the probe admits it again.
    deadline = time.monotonic() + 90
    while True:
        pids = _predictor_pids(stack)
        with httpx.Client(base_url=stack.url, timeout=10) as client:
            live = client.get("/status").json()
        if pids.get("2") not in (None, canary_pid) and live["canary"] and live["canary"]["healthy"]:
            break
        assert time.monotonic() < deadline, json.dumps(live)[:2000]
        time.sleep(0.2)
