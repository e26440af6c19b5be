"""One alert end to end, all real: drifted replay -> monitor -> gauge -> rule -> Alertmanager -> receiver.

A ridge model registered with its reference profile (``support.monitoring_state``) is
deployed and served by the real ``taxi-mlops serve`` (splitter + a KServe predictor
process); ``taxi-mlops observe`` runs Debian's Prometheus and Alertmanager and our
receiver with 1-second intervals. First the validation month itself is replayed and
judged: verdict ok, its gauges scraped, the rules evaluated on them, and nothing sent.
Then 2,500 trips of a month whose distances are 1.5 times longer: verdict drift, the
TaxiDataDrift rule fires, Alertmanager posts it, and the receiver's alerts.jsonl holds
it with the retraining label. Every process is stopped at the end (and checked gone).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from support.monitoring_state import Registered, registered_ridge
from support.predictor_process import free_port
from support.prometheus_binaries import require_binary

from components.monitoring.prediction_log import read_prediction_log
from pipelines.settings import Settings
from serving.local_stack import stop_process_group

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

TRIPS = 2_500  # per replay: above the monitor's smallest judged window (2,000)
DISTANCE_SCALE = 1.5
SCRIPT = str(Path(sys.executable).with_name("taxi-mlops"))


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def drifted_month(source: Path, folder: Path) -> Path:
    """The generated 2021-02 file moved to March (times +28 days) with every distance x1.5."""
    table = pq.read_table(source)
    columns = {}
    for name in table.column_names:
        column = table[name]
        if name.endswith("_datetime"):
            column = pc.add(column, pa.scalar(timedelta(days=28), pa.duration("us")))
        elif name == "trip_distance":
            column = pc.multiply(column, DISTANCE_SCALE)
        columns[name] = column.cast(table.schema.field(name).type)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "green_tripdata_2021-03.parquet"
    pq.write_table(pa.table(columns, schema=table.schema), target)
    return target


def _run(args: list[str], env: dict[str, str], timeout: float = 300) -> str:
    done = subprocess.run(
        [SCRIPT, *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"taxi-mlops {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [SCRIPT, *args], stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def _query(prometheus: str, promql: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=5).json()
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def _received(receiver: str) -> list[dict[str, Any]]:
    return httpx.get(f"{receiver}/alerts", timeout=5).json()["alerts"]


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> Registered:
    return registered_ridge(tmp_path_factory.mktemp("observe-e2e"))


@pytest.fixture
def world(registered: Registered, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The served model and `taxi-mlops observe`, both running; stopped (and checked) afterwards."""
    require_binary("prometheus")
    require_binary("prometheus-alertmanager")
    root = Path(registered.tracking_uri.removeprefix("sqlite:///")).parent
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": registered.tracking_uri,
        "TAXI_MLOPS_STATE_DIR": str(tmp_path / "state"),
        "TAXI_MLOPS_CACHE_DIR": str(tmp_path / "cache"),
        "TAXI_MLOPS_TLC_BASE_URL": "http://127.0.0.1:9/trip-data",  # nothing is downloaded
    }
    settings = Settings.from_env(env)
    _run(["deploy", "--version", registered.version], env)
    ports = {name: free_port() for name in ("serve", "prometheus", "alertmanager", "receiver")}
    processes: list[subprocess.Popen[bytes]] = []
    try:
        serve = _start(["serve", "--port", str(ports["serve"])], env, tmp_path / "serve.log")
        processes.append(serve)
        splitter = f"http://127.0.0.1:{ports['serve']}"

        def champion_routed() -> bool:
            assert serve.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                return httpx.get(f"{splitter}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(champion_routed, 180, "the champion to be served")
        observe = _start(
            [
                "observe",
                *(
                    "--prometheus-port",
                    str(ports["prometheus"]),
                    "--alertmanager-port",
                    str(ports["alertmanager"]),
                ),
                *("--receiver-port", str(ports["receiver"])),
                *("--scrape-interval", "1s", "--evaluation-interval", "1s"),
                *("--group-wait", "1s", "--group-interval", "1s"),
            ],
            env,
            tmp_path / "observe.log",
        )
        processes.append(observe)
        prometheus = f"http://127.0.0.1:{ports['prometheus']}"

        def both_targets_up() -> bool:
            assert observe.poll() is None, (tmp_path / "observe.log").read_text()
            try:
                targets = httpx.get(f"{prometheus}/api/v1/targets", timeout=2).json()["data"]["activeTargets"]
            except (httpx.TransportError, json.JSONDecodeError):
                return False
            return {(t["labels"]["job"], t["health"]) for t in targets} == {
                ("taxi-splitter", "up"),
                ("taxi-predictor", "up"),
            }

        wait_for(both_targets_up, 60, "Prometheus to scrape the splitter and the predictor")
        yield {
            "env": env,
            "settings": settings,
            "splitter": splitter,
            "prometheus": prometheus,
            "receiver": f"http://127.0.0.1:{ports['receiver']}",
            "observe": observe,
            "serve": serve,
            "tlc": root / "tlc",
            "drift_dir": tmp_path / "tlc-drift",
        }
    finally:
        for process in reversed(processes):
            stop_process_group(process, 15.0)


def _replay(world: dict[str, Any], month: str, data_dir: Path, logged_before: int) -> None:
    out = _run(
        [
            *("replay", "--month", month, "--data-dir", str(data_dir), "--url", world["splitter"]),
            *("--rate", "1000", "--limit", str(TRIPS)),
        ],
        world["env"],
    )
    assert f"sent {TRIPS}, ok {TRIPS}, refused 0, failed 0" in out, out
    log_dir = world["settings"].prediction_log_dir
    # The writer renames a segment into place within about a second: wait for all of them.
    wait_for(lambda: len(read_prediction_log(log_dir)) >= logged_before + TRIPS, 30, f"{month} in the log")


def test_a_drifted_replay_raises_the_drift_alert_end_to_end_and_an_ok_one_raises_none(world) -> None:
    prometheus, receiver, env = world["prometheus"], world["receiver"], world["env"]
    alerts_file = world["settings"].state_dir / "alerts" / "alerts.jsonl"

    # ---- the reference month itself: verdict ok, scraped, evaluated, and nothing sent
    _replay(world, "2021-02", world["tlc"], 0)
    assert "verdict OK" in _run(["monitor", "--month", "2021-02"], env)
    ok = wait_for(
        lambda: _query(prometheus, 'taxi_monitor_verdict{verdict="ok"} == 1'), 30, "the ok verdict's gauge"
    )
    assert ok[0]["metric"]["model_version"] == "1" and ok[0]["metric"]["job"] == "taxi-splitter"
    seen_at = time.time()

    def evaluated_since(moment: float) -> bool:
        groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=5).json()["data"]["groups"]
        (group,) = [g for g in groups if g["name"] == "taxi-mlops-monitoring"]
        return datetime.fromisoformat(group["lastEvaluation"]).timestamp() > moment  # Go's RFC 3339

    # Rules evaluated on the ok gauges for a few seconds (group_wait is 1 s: a sent alert would be in).
    wait_for(lambda: evaluated_since(seen_at + 4), 30, "rules evaluated on the ok verdict")
    assert _query(prometheus, 'ALERTS{alertstate="firing"}') == []
    assert _query(prometheus, 'ALERTS{alertname=~"TaxiDataDrift|TaxiAccuracyDegraded"}') == []
    assert _received(receiver) == [] and not alerts_file.exists()
    # The predictor's own series, through the file_sd target the stack wrote:
    served = _query(
        prometheus, 'sum by (model_version) (trip_duration_http_requests_total{status_class="2xx"})'
    )
    assert served[0]["metric"]["model_version"] == "1" and float(served[0]["value"][1]) >= TRIPS

    # ---- distances x1.5: verdict drift -> gauge -> rule -> Alertmanager -> receiver -> alerts.jsonl
    drifted_month(world["tlc"] / "green_tripdata_2021-02.parquet", world["drift_dir"])
    _replay(world, "2021-03", world["drift_dir"], TRIPS)
    assert "verdict DRIFT" in _run(["monitor", "--month", "2021-03"], env)

    def drift_received() -> list[dict[str, Any]]:
        return [
            alert
            for alert in _received(receiver)
            if alert["labels"]["alertname"] == "TaxiDataDrift" and alert["status"] == "firing"
        ]

    received = wait_for(drift_received, 60, "the drift alert at the receiver")
    features = {alert["labels"]["feature"] for alert in received}
    assert "trip_distance" in features
    distance = next(alert for alert in received if alert["labels"]["feature"] == "trip_distance")
    assert distance["labels"]["model_version"] == "1"
    assert distance["labels"]["action"] == "retrain-candidate" and distance["labels"]["severity"] == "warning"
    assert "trip_distance drifted" in distance["annotations"]["summary"]
    assert distance["receiver"] == "taxi-mlops-receiver" and distance["generatorURL"].startswith(prometheus)
    on_disk = [json.loads(line) for line in alerts_file.read_text(encoding="utf-8").splitlines()]
    assert distance in on_disk  # what /alerts lists is what the file holds
    assert _query(prometheus, 'ALERTS{alertname="TaxiDataDrift",alertstate="firing",feature="trip_distance"}')

    # ---- Ctrl-C's signal stops all three observe processes
    observe: subprocess.Popen[bytes] = world["observe"]
    children = psutil.Process(observe.pid).children(recursive=True)
    names = " ".join(" ".join(child.cmdline()) for child in children)
    assert (
        "prometheus-alertmanager" in names and "serving.alert_receiver" in names and "--config.file" in names
    )
    observe.send_signal(signal.SIGTERM)
    assert observe.wait(timeout=60) == 0
    _, alive = psutil.wait_procs(children, timeout=10)
    assert alive == [], [child.pid for child in alive]
