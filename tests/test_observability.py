"""`taxi-mlops observe` without the end-to-end run: its generated configs pass promtool and amtool,
and what stops it before anything starts (a missing binary, a taken port) is one clear error line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support.predictor_process import free_port
from support.prometheus_binaries import require_binary

from serving.observability import ObservabilityError, ObserveConfig, duration, write_configs

SCRIPT = str(Path(sys.executable).with_name("taxi-mlops"))


def test_generated_configs_pass_promtool_and_amtool(tmp_path: Path) -> None:
    config = ObserveConfig(state_dir=tmp_path / "state", deployment_dir=tmp_path / "state" / "deployment")
    prometheus_yml, alertmanager_yml = write_configs(config)
    checked = subprocess.run(
        [require_binary("promtool"), "check", "config", str(prometheus_yml)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 1 rule files found" in checked.stdout + checked.stderr
    amtool = subprocess.run(
        [require_binary("amtool"), "check-config", str(alertmanager_yml)], capture_output=True, text=True
    )
    assert amtool.returncode == 0, amtool.stdout + amtool.stderr
    document = yaml.safe_load(prometheus_yml.read_text())
    assert document["global"] == {
        "scrape_interval": "15s",
        "scrape_timeout": "10s",
        "evaluation_interval": "15s",
    }
    assert {job["file_sd_configs"][0]["files"][0] for job in document["scrape_configs"]} == {
        str(config.targets_file)
    }
    route = yaml.safe_load(alertmanager_yml.read_text())["route"]
    assert (route["group_wait"], route["group_interval"]) == ("30s", "300s")


@pytest.mark.parametrize(("seconds", "text"), [(15, "15s"), (0.5, "500ms"), (1.25, "1250ms"), (300, "300s")])
def test_durations(seconds: float, text: str) -> None:
    assert duration(seconds) == text


@pytest.mark.parametrize("bad", [0, -1, float("nan"), 0.0001])
def test_bad_durations_are_refused(bad: float) -> None:
    with pytest.raises(ObservabilityError):
        duration(bad)


def _observe(tmp_path: Path, *args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TAXI_MLOPS_STATE_DIR": str(tmp_path / "state")}
    if path is not None:
        env["PATH"] = path
    return subprocess.run([SCRIPT, "observe", *args], capture_output=True, text=True, env=env, timeout=60)


def test_a_missing_binary_is_one_error_naming_it_and_the_apt_get_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    done = _observe(tmp_path, path=str(empty))
    assert done.returncode == 1
    assert "error: prometheus not found on PATH" in done.stderr
    assert "apt-get install -y --no-install-recommends prometheus" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "state" / "observe").exists()  # nothing was started or written


def test_a_taken_port_is_one_error_naming_the_flag(tmp_path: Path) -> None:
    require_binary("prometheus")
    require_binary("prometheus-alertmanager")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _observe(
            tmp_path,
            *("--prometheus-port", str(port), "--alertmanager-port", str(free_port())),
            *("--receiver-port", str(free_port())),
        )
    assert done.returncode == 1
    assert f"127.0.0.1:{port} is taken" in done.stderr and "--prometheus-port" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("flag", ["--scrape-interval", "--group-wait"])
def test_a_bad_duration_flag_is_a_usage_error(tmp_path: Path, flag: str) -> None:
    done = _observe(tmp_path, flag, "soon")
    assert done.returncode == 2 and "not a duration" in done.stderr
