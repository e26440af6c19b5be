"""The local stack end to end: a state file, a supervisor, real predictor processes, real HTTP.

Most tests use the fake predictor of ``test_traffic_splitter`` (starts in
~50 ms, same flags and endpoints) so the controller's behaviour can be
exercised quickly: state changes written by ``update_state`` (what the CLI
does from another terminal) move traffic, a revision that cannot start leaves
the old routing in place, a crashed predictor comes back, a restart keeps the
state, SIGTERM leaves no orphans. ``test_real_predictors_canary_and_promote``
runs the actual ``python -m serving`` with real model files.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from support.model_fixtures import ridge_revisions
from test_traffic_splitter import PREDICT, TRIP, fake_predictor_command, free_port, rev

from serving.deployment_state import (
    Revision,
    deploy,
    load_state,
    promote,
    rollback,
    set_percent,
    update_state,
)
from serving.local_stack import PROMETHEUS_TARGETS_FILE, LocalStack, kserve_predictor_command

TESTS_DIR = Path(__file__).resolve().parent


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def status(stack_url: str) -> dict:
    return httpx.get(stack_url + "/status", timeout=5).json()


def wait_routed(stack_url: str, generation: int, timeout: float = 15.0) -> dict:
    return wait_for(  # type: ignore[return-value]
        lambda: (doc := status(stack_url))["generation"] == generation and doc,
        timeout,
        f"generation {generation} to be routed",
    )


def hits(stack_url: str, n: int, path: str = PREDICT) -> Counter[tuple[str, str]]:
    seen: Counter[tuple[str, str]] = Counter()
    with httpx.Client(base_url=stack_url, timeout=10) as client:
        for _ in range(n):
            response = client.post(path, json=TRIP)
            assert response.status_code == 200, response.text
            seen[(response.headers["x-taxi-revision"], response.headers["x-model-version"])] += 1
    return seen


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by a dead parent's init) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def pids(stack: LocalStack) -> dict[str, int]:
    return {p["model_version"]: p["pid"] for p in stack.predictors()}


@pytest.fixture
def state_path(tmp_path: Path) -> Path:
    return tmp_path / "deployment.json"


@pytest.fixture
def stack(state_path: Path) -> Iterator[LocalStack]:
    local = LocalStack(
        state_path,
        port=0,
        predictor_command=fake_predictor_command,
        ready_timeout=10,
        poll_interval=0.1,
        retry_interval=60,
        seed=11,
    )
    local.start()
    try:
        yield local
    finally:
        local.stop()


def test_state_file_changes_move_traffic(stack: LocalStack, state_path: Path):
    assert httpx.get(stack.url + "/healthz").status_code == 503  # nothing deployed yet

    update_state(state_path, lambda s: deploy(s, rev("1"), 30))
    wait_routed(stack.url, 1)
    assert hits(stack.url, 50) == {("champion", "1"): 50}

    update_state(state_path, lambda s: deploy(s, rev("2"), 30))
    wait_routed(stack.url, 2)
    assert set(hits(stack.url, 200)) == {("champion", "1"), ("canary", "2")}
    canary_pid = pids(stack)["2"]

    update_state(state_path, rollback)
    wait_routed(stack.url, 3)
    assert hits(stack.url, 300) == {("champion", "1"): 300}  # 0 canary hits after rollback
    wait_for(lambda: not pid_alive(canary_pid), 10, "the rolled back canary to stop")
    assert set(pids(stack)) == {"1"}

    update_state(state_path, lambda s: deploy(s, rev("3"), 50))
    wait_routed(stack.url, 4)
    champion_pid, new_canary_pid = pids(stack)["1"], pids(stack)["3"]
    update_state(state_path, promote)
    document = wait_routed(stack.url, 5)
    assert hits(stack.url, 100) == {("champion", "3"): 100}  # every hit carries the new version
    assert pids(stack) == {"3": new_canary_pid}  # promotion reuses the canary's process
    wait_for(lambda: not pid_alive(champion_pid), 10, "the retired champion to stop")
    assert document["supervisor"]["ok"] and document["supervisor"]["routed_generation"] == 5


def _targets(stack: LocalStack) -> list[dict]:
    return json.loads(stack.targets_path.read_text(encoding="utf-8"))


def _predictor_targets(stack: LocalStack) -> dict[str, tuple[str, str]]:
    """revision -> (model_version, host:port) of the predictors listed in the targets file."""
    return {
        group["labels"]["revision"]: (group["labels"]["model_version"], group["targets"][0])
        for group in _targets(stack)
        if group["labels"]["role"] == "predictor"
    }


def test_prometheus_targets_follow_champion_and_canary(stack: LocalStack, state_path: Path):
    """The file_sd list a local Prometheus reads (taxi-mlops observe): the splitter, and exactly the
    routed predictors with their revision and version, rewritten on every change; empty once stopped."""
    assert stack.targets_path == state_path.parent / PROMETHEUS_TARGETS_FILE
    splitter = {"targets": [stack.url.removeprefix("http://")], "labels": {"role": "splitter"}}
    assert _targets(stack) == [splitter]  # nothing deployed: the splitter alone

    update_state(state_path, lambda s: deploy(s, rev("1"), 30))
    wait_routed(stack.url, 1)
    wait_for(lambda: "champion" in _predictor_targets(stack), 10, "the champion's target")
    assert _targets(stack)[0] == splitter
    ports = {p["model_version"]: p["port"] for p in stack.predictors()}
    assert _predictor_targets(stack) == {"champion": ("1", f"127.0.0.1:{ports['1']}")}

    update_state(state_path, lambda s: deploy(s, rev("2"), 30))
    wait_routed(stack.url, 2)
    wait_for(lambda: "canary" in _predictor_targets(stack), 10, "the canary's target")
    ports = {p["model_version"]: p["port"] for p in stack.predictors()}
    assert _predictor_targets(stack) == {
        "champion": ("1", f"127.0.0.1:{ports['1']}"),
        "canary": ("2", f"127.0.0.1:{ports['2']}"),
    }
    # Each listed address is that predictor (the fake one answers readiness, not /metrics).
    for _, address in _predictor_targets(stack).values():
        assert httpx.get(f"http://{address}/v2/health/ready", timeout=5).status_code == 200

    update_state(state_path, promote)
    wait_routed(stack.url, 3)
    wait_for(lambda: set(_predictor_targets(stack)) == {"champion"}, 10, "the promoted canary's target")
    assert _predictor_targets(stack)["champion"][0] == "2"

    # The splitter serves the verdict gauges of the monitor folder beside the state file.
    assert "taxi_monitor_verdict_readable 1" in httpx.get(stack.url + "/metrics", timeout=5).text
    stack.stop()
    assert _targets(stack) == []


def test_failed_revision_keeps_the_old_routing(stack: LocalStack, state_path: Path):
    update_state(state_path, lambda s: deploy(s, rev("1"), 0))
    assert stack.reconcile().ok
    broken = Revision("2", "/models/broken", "2" * 64)
    update_state(state_path, lambda s: deploy(s, broken, 50))
    report = stack.reconcile()
    assert not report.ok
    assert report.desired_generation == 2 and report.routed_generation == 1
    assert "exited with status 1" in report.message and "no model file" in report.message  # the log tail
    assert hits(stack.url, 40) == {("champion", "1"): 40}
    supervisor = status(stack.url)["supervisor"]
    assert supervisor["ok"] is False and "version 2" in supervisor["message"]

    update_state(state_path, rollback)
    wait_routed(stack.url, 3)
    assert stack.last_report is not None and stack.last_report.ok
    update_state(state_path, lambda s: deploy(s, rev("4"), 100))
    wait_routed(stack.url, 4)
    assert hits(stack.url, 20) == {("canary", "4"): 20}


def test_rollback_while_the_canary_is_still_starting(stack: LocalStack, state_path: Path):
    """The controller does not sit out a slow start the state no longer wants."""
    update_state(state_path, lambda s: deploy(s, rev("1"), 0))
    stack.reconcile()
    update_state(state_path, lambda s: deploy(s, Revision("2", "/models/slow", "2" * 64), 50))
    wait_for(lambda: "2" in pids(stack), 5, "the slow canary to be starting")
    slow_pid = pids(stack)["2"]
    started = time.monotonic()
    update_state(state_path, rollback)
    wait_routed(stack.url, 3, timeout=10)
    assert time.monotonic() - started < 5  # not the 10 s ready_timeout, let alone the 30 s load
    wait_for(lambda: not pid_alive(slow_pid), 10, "the abandoned canary to stop")
    assert hits(stack.url, 20) == {("champion", "1"): 20}


def test_crashed_predictor_is_restarted(stack: LocalStack, state_path: Path):
    update_state(state_path, lambda s: deploy(s, rev("1"), 0))
    stack.reconcile()
    old_pid, old_url = pids(stack)["1"], status(stack.url)["champion"]["url"]
    os.kill(old_pid, signal.SIGKILL)
    wait_for(lambda: status(stack.url)["champion"]["url"] != old_url, 10, "a new champion to be routed")
    assert pids(stack)["1"] != old_pid
    assert hits(stack.url, 10) == {("champion", "1"): 10}


def test_restart_keeps_the_state(state_path: Path):
    update_state(state_path, lambda s: deploy(s, rev("1"), 0))
    update_state(state_path, lambda s: deploy(s, rev("2"), 20))
    update_state(state_path, lambda s: set_percent(s, 25))
    options = {
        "port": 0,
        "predictor_command": fake_predictor_command,
        "ready_timeout": 10,
        "poll_interval": 0.1,
    }
    seen = []
    for _ in range(2):
        with LocalStack(state_path, **options) as local:
            document = status(local.url)
            seen.append(
                (
                    document["champion"]["model_version"],
                    document["canary"]["model_version"],
                    document["canary_percent"],
                    document["generation"],
                )
            )
            old_pids = list(pids(local).values())
        assert not any(pid_alive(pid) for pid in old_pids)  # stop() leaves nothing behind
    assert seen == [("1", "2", 25, 3), ("1", "2", 25, 3)]
    assert load_state(state_path).generation == 3


def test_predictor_ports_pool(state_path: Path):
    ports = [free_port(), free_port()]
    update_state(state_path, lambda s: deploy(s, rev("1"), 0))
    update_state(state_path, lambda s: deploy(s, rev("2"), 10))
    with LocalStack(
        state_path, port=0, predictor_ports=ports, predictor_command=fake_predictor_command
    ) as local:
        assert sorted(p["port"] for p in local.predictors()) == sorted(ports)
        update_state(state_path, lambda s: deploy(s, rev("3"), 10))  # a third process: no port left
        report = local.reconcile()
        assert not report.ok and "no free predictor port" in report.message
        assert hits(local.url, 20).keys() <= {("champion", "1"), ("canary", "2")}


def test_metrics_serve_the_autopilots_state_from_the_loops_folder(tmp_path: Path):
    """The stack finds the folder the loop writes (``Settings.state_dir``/autopilot) from its state file."""
    from components.names import AUTOPILOT_DIR_NAME
    from components.retraining.loop_state import LoopMemory
    from pipelines.settings import Settings

    settings = Settings.from_env({}, state_dir=tmp_path / "state")
    memory = LoopMemory(settings.state_dir / AUTOPILOT_DIR_NAME)  # where pipelines/autopilot/loop.py keeps it
    memory.state.bad_months["2021-03"] = "green_tripdata_2021-03.parquet: not a parquet file"
    memory.record({"kind": "no_retrain", "event_time": "2021-03-20T00:00:00+00:00", "reason": "unreadable"})
    memory.save()
    state_path = settings.deployment_state_path  # <state_dir>/deployment/state.json, as `serve` uses it
    with LocalStack(state_path, port=0, predictor_command=fake_predictor_command) as local:
        text = httpx.get(local.url + "/metrics", timeout=5).text
    assert 'taxi_autopilot_unreadable_month{month="2021-03"} 1' in text
    assert "taxi_autopilot_retraining_running 0" in text and "taxi_splitter_generation" in text


SERVE = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[3])
    from test_traffic_splitter import fake_predictor_command
    from serving.local_stack import run_local_stack

    run_local_stack(sys.argv[1], port=int(sys.argv[2]), predictor_command=fake_predictor_command,
                    poll_interval=0.1)
    """
)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=lambda s: s.name)
def test_no_orphans_after_the_supervisor_goes(state_path: Path, sig: signal.Signals):
    """SIGTERM/SIGINT: clean stop, exit status 0. SIGKILL: the kernel stops the children (PDEATHSIG)."""
    update_state(state_path, lambda s: deploy(s, rev("1"), 0))
    update_state(state_path, lambda s: deploy(s, rev("2"), 50))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(TESTS_DIR.parent)}
    supervisor = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(state_path), str(port), str(TESTS_DIR)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def routed() -> bool:
            try:
                return status(url)["generation"] == 2
            except httpx.HTTPError:
                return False

        wait_for(routed, 30, "the supervisor to route generation 2")
        children = [p["pid"] for p in status(url)["supervisor"]["predictors"]]
        assert len(children) == 2 and all(pid_alive(pid) for pid in children)
        supervisor.send_signal(sig)
        output, _ = supervisor.communicate(timeout=30)
        if sig != signal.SIGKILL:
            assert supervisor.returncode == 0, output
            assert "received: stopping" in output and "local stack stopped" in output
        wait_for(lambda: not any(pid_alive(pid) for pid in children), 10, "the predictors to be gone")
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait(10)


# --------------------------------------------------------------------------- real predictor processes


@pytest.fixture(scope="module")
def model_revisions(tmp_path_factory: pytest.TempPathFactory) -> tuple[Revision, Revision]:
    """Two real ridge model files (alpha 1 and 50): versions 1 and 2."""
    return ridge_revisions(tmp_path_factory.mktemp("canary-models"))


V2_TRIP = {
    "inputs": [
        {"name": "PULocationID", "shape": [1], "datatype": "INT64", "data": [43]},
        {"name": "DOLocationID", "shape": [1], "datatype": "INT64", "data": [151]},
        {"name": "trip_distance", "shape": [1], "datatype": "FP64", "data": [1.2]},
    ]
}


def test_real_predictors_canary_and_promote(model_revisions, state_path: Path):
    v1, v2 = model_revisions
    update_state(state_path, lambda s: deploy(s, v1, 0))
    update_state(state_path, lambda s: deploy(s, v2, 50))
    with LocalStack(
        state_path,
        port=0,
        predictor_command=kserve_predictor_command,
        ready_timeout=90,
        poll_interval=0.2,
        seed=5,
    ) as local:
        assert local.last_report is not None and local.last_report.ok, local.last_report
        predictions: dict[str, set[float]] = {"1": set(), "2": set()}
        with httpx.Client(base_url=local.url, timeout=10) as client:
            for _ in range(60):
                response = client.post(PREDICT, json=TRIP)
                assert response.status_code == 200, response.text
                version = response.headers["x-model-version"]  # one value: the splitter's stamp
                predictions[version].add(round(response.json()["predictions"][0], 9))
            infer = client.post("/v2/models/duration/infer", json=V2_TRIP)
            assert infer.status_code == 200
            assert infer.json()["model_version"] == infer.headers["x-model-version"]
            refused = client.post(PREDICT, json={"instances": [{"PULocationID": "x"}]})
            assert refused.status_code == 400 and "error" in refused.json()
        # Both revisions served, each its own model: one answer per version, and they differ.
        assert all(len(values) == 1 for values in predictions.values()), predictions
        assert predictions["1"] != predictions["2"]

        canary_pid = pids(local)["2"]
        update_state(state_path, promote)
        wait_routed(local.url, 3)
        assert hits(local.url, 40) == {("champion", "2"): 40}
        assert pids(local) == {"2": canary_pid}


def test_corrupt_state_keeps_routing_and_is_reported(tmp_path: Path):
    """A running stack keeps its last good routing on a corrupt state file and says why, in
    /status and in `taxi-mlops status` (which then ends in one error: line, exit 1)."""
    state_dir = tmp_path / "state"
    state_file = state_dir / "deployment" / "state.json"
    update_state(state_file, lambda s: deploy(s, rev("1"), 0))
    local = LocalStack(
        state_file, port=0, predictor_command=fake_predictor_command, ready_timeout=10, poll_interval=0.1
    )
    local.start()
    try:
        wait_routed(local.url, 1)
        state_file.write_bytes(state_file.read_bytes()[:40])  # truncated mid-write by hand
        report = wait_for(
            lambda: status(local.url)["supervisor"].get("state_error"), 10, "the supervisor to see it"
        )
        assert str(state_file) in report and "truncated" in report
        assert status(local.url)["generation"] == 1
        assert hits(local.url, 20) == {("champion", "1"): 20}  # the last good routing serves on

        env = {
            k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "TAXI_MLOPS_STATE_DIR")
        }
        result = subprocess.run(
            [
                str(Path(sys.executable).with_name("taxi-mlops")),
                "status",
                "--url",
                local.url,
                "--state-dir",
                str(state_dir),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert "supervisor: keeps the last good routing (generation 1)" in result.stdout
        assert str(state_file) in result.stdout
        assert result.stderr.splitlines() == [result.stderr.strip()]
        assert result.stderr.startswith(f"error: {state_file}: deployment state is not valid JSON")
    finally:
        local.stop()
