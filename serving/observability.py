"""``taxi-mlops observe``: a local Prometheus and Alertmanager watching the local stack, with our receiver.

Three processes on 127.0.0.1, each in its own process group (stopped together,
and with the supervisor if it dies -- ``serving.local_stack.orphan_proof``):

- Debian's ``prometheus``: scrapes the local stack through the file_sd targets
  file ``taxi-mlops serve`` keeps beside its state (``PROMETHEUS_TARGETS_FILE``:
  the splitter, with the monitor verdict's gauges, and every routed predictor),
  so champion and canary changes are followed without a restart; evaluates the
  one rules file (``manifests/components/monitoring/rules/taxi-mlops.rules.yml``,
  the cluster's too) and sends alerts to
- Debian's ``prometheus-alertmanager``: groups them and posts them to
- our receiver (``serving.alert_receiver``), which appends each one to
  ``<state>/alerts/alerts.jsonl``: what the retraining policy acts on.

The generated ``prometheus.yml`` and ``alertmanager.yml``, the two data folders
and the three logs live in ``<state>/observe/``. Alertmanager's cluster gossip
(0.0.0.0:9094 by default) is turned off: one local instance has no peers.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from components.errors import TaxiMlopsError
from components.storage.atomic_write import write_atomically
from serving.alert_receiver import ALERTS_DIR_NAME, ALERTS_FILE_NAME
from serving.local_stack import (
    PROMETHEUS_TARGETS_FILE,
    answers_200,
    log_tail,
    orphan_proof,
    stop_process_group,
)

REPO_ROOT: Final = Path(__file__).resolve().parents[1]
#: The one rules file, shared with the cluster's monitoring component.
RULES_FILE: Final = REPO_ROOT / "manifests" / "components" / "monitoring" / "rules" / "taxi-mlops.rules.yml"
OBSERVE_DIR_NAME: Final = "observe"
#: The Debian package that ships each binary we run or test with.
DEBIAN_PACKAGES: Final[Mapping[str, str]] = {
    "prometheus": "prometheus",
    "promtool": "prometheus",
    "prometheus-alertmanager": "prometheus-alertmanager",
    "amtool": "prometheus-alertmanager",
}
SPLITTER_JOB: Final = "taxi-splitter"
PREDICTOR_JOB: Final = "taxi-predictor"
RECEIVER_NAME: Final = "taxi-mlops-receiver"
HOST: Final = "127.0.0.1"

Progress = Callable[[str], None]


class ObservabilityError(TaxiMlopsError):
    """The local Prometheus/Alertmanager cannot start (binary missing, port taken, bad config)."""


def apt_install_line(*binaries: str) -> str:
    packages = sorted({DEBIAN_PACKAGES[name] for name in binaries})
    return f"sudo apt-get install -y --no-install-recommends {' '.join(packages)}"


def find_binary(name: str) -> str:
    """The path of ``name`` on PATH, or an error naming the Debian package and the install line."""
    path = shutil.which(name)
    if path is None:
        raise ObservabilityError(
            f"{name} not found on PATH; it comes with Debian's {DEBIAN_PACKAGES[name]} package: "
            f"{apt_install_line(name)}"
        )
    return path


def duration(seconds: float) -> str:
    """Seconds in Prometheus/Alertmanager duration syntax: 15 -> "15s", 0.5 -> "500ms"."""
    if not math.isfinite(seconds) or seconds <= 0:
        raise ObservabilityError(f"a duration must be a positive number of seconds, got {seconds!r}")
    milliseconds = round(seconds * 1000)
    if milliseconds < 1:
        raise ObservabilityError(f"{seconds!r} s is below a millisecond")
    return f"{milliseconds // 1000}s" if milliseconds % 1000 == 0 else f"{milliseconds}ms"


@dataclass(frozen=True)
class ObserveConfig:
    """Where everything lives and how fast it runs (user defaults; the tests use ~1 s)."""

    state_dir: Path  # <state>: observe/ and alerts/ go here
    deployment_dir: Path  # where `serve` keeps its state and the targets file
    prometheus_port: int = 9090
    alertmanager_port: int = 9093
    receiver_port: int = 9095
    scrape_interval: float = 15.0
    evaluation_interval: float = 15.0
    group_wait: float = 30.0
    group_interval: float = 300.0
    repeat_interval: float = 4 * 3600.0
    rules_file: Path = RULES_FILE
    ready_timeout: float = 60.0

    @property
    def observe_dir(self) -> Path:
        return self.state_dir / OBSERVE_DIR_NAME

    @property
    def targets_file(self) -> Path:
        return self.deployment_dir / PROMETHEUS_TARGETS_FILE

    @property
    def alerts_file(self) -> Path:
        return self.state_dir / ALERTS_DIR_NAME / ALERTS_FILE_NAME

    @property
    def prometheus_url(self) -> str:
        return f"http://{HOST}:{self.prometheus_port}"

    @property
    def alertmanager_url(self) -> str:
        return f"http://{HOST}:{self.alertmanager_port}"

    @property
    def receiver_url(self) -> str:
        return f"http://{HOST}:{self.receiver_port}"


def prometheus_config(config: ObserveConfig) -> dict[str, Any]:
    """prometheus.yml: splitter and predictors from the stack's targets file, our rules, our Alertmanager."""

    def job(name: str, role: str) -> dict[str, Any]:
        return {
            "job_name": name,
            # The predictor's own model_version label is the truth; the file's copy must not rename it.
            "honor_labels": True,
            "file_sd_configs": [
                # The stack replaces the file atomically; Prometheus watches it, and re-reads it on a
                # timer too in case the folder did not exist yet when it started.
                {"files": [str(config.targets_file)], "refresh_interval": "10s"}
            ],
            "relabel_configs": [
                {"source_labels": ["role"], "regex": role, "action": "keep"},
                {"regex": "role", "action": "labeldrop"},
            ],
        }

    return {
        "global": {
            "scrape_interval": duration(config.scrape_interval),
            "scrape_timeout": duration(min(config.scrape_interval, 10.0)),
            "evaluation_interval": duration(config.evaluation_interval),
        },
        "rule_files": [str(config.rules_file)],
        "alerting": {
            "alertmanagers": [{"static_configs": [{"targets": [f"{HOST}:{config.alertmanager_port}"]}]}]
        },
        "scrape_configs": [job(SPLITTER_JOB, "splitter"), job(PREDICTOR_JOB, "predictor")],
    }


def alertmanager_config(config: ObserveConfig) -> dict[str, Any]:
    """alertmanager.yml: every alert, grouped per rule and model version, to our receiver."""
    return {
        "route": {
            "receiver": RECEIVER_NAME,
            "group_by": ["alertname", "model_version"],
            "group_wait": duration(config.group_wait),
            "group_interval": duration(config.group_interval),
            "repeat_interval": duration(config.repeat_interval),
        },
        "receivers": [
            {
                "name": RECEIVER_NAME,
                "webhook_configs": [
                    # Resolved notifications too: the retraining policy sees when drift is over.
                    {"url": f"{config.receiver_url}/alerts", "send_resolved": True, "max_alerts": 0}
                ],
            }
        ],
    }


def write_configs(config: ObserveConfig) -> tuple[Path, Path]:
    """Write prometheus.yml and alertmanager.yml into ``<state>/observe/``; returns their paths."""
    if not config.rules_file.is_file():
        raise ObservabilityError(f"{config.rules_file}: the alert rules file is missing")
    header = "# Generated by `taxi-mlops observe` on every start; edits are overwritten.\n"
    paths = (config.observe_dir / "prometheus.yml", config.observe_dir / "alertmanager.yml")
    for path, document in zip(paths, (prometheus_config(config), alertmanager_config(config)), strict=True):
        write_atomically(path, header + yaml.safe_dump(document, sort_keys=False))
    return paths


@dataclass(eq=False)
class _Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    ready_url: str

    def alive(self) -> bool:
        return self.process.poll() is None

    def ready(self) -> bool:
        host, port_path = self.ready_url.removeprefix("http://").split(":", 1)
        port, _, path = port_path.partition("/")
        return answers_200(host, int(port), "/" + path)

    def log_tail(self, lines: int = 15) -> str:
        return log_tail(self.log_path, lines)


@dataclass
class ObservabilityStack:
    """The three processes of ``taxi-mlops observe``: ``start()`` (all ready, or none left), ``stop()``."""

    config: ObserveConfig
    progress: Progress = print
    children: list[_Child] = field(default_factory=list)

    def commands(self) -> list[tuple[str, list[str], str]]:
        """(name, argv, readiness URL) of each process, in start order (every binary found first)."""
        config = self.config
        prometheus, alertmanager = find_binary("prometheus"), find_binary("prometheus-alertmanager")
        observe = config.observe_dir
        return [
            (
                "alert-receiver",
                [
                    sys.executable,
                    "-m",
                    "serving.alert_receiver",
                    *("--host", HOST, "--port", str(config.receiver_port)),
                    *("--alerts-file", str(config.alerts_file)),
                ],
                f"{config.receiver_url}/healthz",
            ),
            (
                "alertmanager",
                [
                    alertmanager,
                    f"--config.file={observe / 'alertmanager.yml'}",
                    f"--storage.path={observe / 'alertmanager-data'}",
                    f"--web.listen-address={HOST}:{config.alertmanager_port}",
                    f"--web.external-url={config.alertmanager_url}",
                    "--cluster.listen-address=",  # no HA gossip: it would listen on 0.0.0.0:9094
                ],
                f"{config.alertmanager_url}/-/ready",
            ),
            (
                "prometheus",
                [
                    prometheus,
                    f"--config.file={observe / 'prometheus.yml'}",
                    f"--storage.tsdb.path={observe / 'prometheus-data'}",
                    f"--web.listen-address={HOST}:{config.prometheus_port}",
                    f"--web.external-url={config.prometheus_url}",
                    "--storage.tsdb.retention.time=15d",
                ],
                f"{config.prometheus_url}/-/ready",
            ),
        ]

    def start(self) -> None:
        commands = self.commands()  # a missing binary stops us before anything runs
        self._check_ports()
        write_configs(self.config)
        logs = self.config.observe_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        try:
            for name, argv, ready_url in commands:
                log_path = logs / f"{name}.log"
                with open(log_path, "ab") as log_file:
                    process = subprocess.Popen(
                        orphan_proof(argv),
                        stdin=subprocess.DEVNULL,
                        stdout=log_file,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                        cwd=self.config.observe_dir,
                        env={**os.environ, "PYTHONUNBUFFERED": "1"},
                    )
                self.children.append(_Child(name, process, log_path, ready_url))
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _check_ports(self) -> None:
        for what, port in (
            ("--prometheus-port", self.config.prometheus_port),
            ("--alertmanager-port", self.config.alertmanager_port),
            ("--receiver-port", self.config.receiver_port),
        ):
            with socket.socket() as probe:
                try:
                    probe.bind((HOST, port))
                except OSError as exc:
                    raise ObservabilityError(
                        f"{HOST}:{port} is taken ({exc.strerror}); another Prometheus/Alertmanager? "
                        f"choose another with {what}"
                    ) from exc

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.config.ready_timeout
        waiting = list(self.children)
        while waiting:
            for child in list(waiting):
                if not child.alive():
                    raise ObservabilityError(
                        f"{child.name} exited with status {child.process.returncode} before it was ready "
                        f"(log {child.log_path}):\n{child.log_tail()}"
                    )
                if child.ready():
                    waiting.remove(child)
            if waiting and time.monotonic() > deadline:
                names = ", ".join(child.name for child in waiting)
                tails = "\n".join(f"{child.name}:\n{child.log_tail()}" for child in waiting)
                raise ObservabilityError(f"not ready after {self.config.ready_timeout:g} s: {names}\n{tails}")
            time.sleep(0.1)

    def dead(self) -> list[_Child]:
        return [child for child in self.children if not child.alive()]

    def stop(self, grace: float = 10.0) -> None:
        """Stop in reverse order (Prometheus first: it flushes its head block; the receiver last)."""
        while self.children:
            child = self.children.pop()
            stop_process_group(child.process, grace)

    def urls(self) -> Sequence[tuple[str, str]]:
        config = self.config
        return (
            ("Prometheus", config.prometheus_url),
            ("  its alerts", f"{config.prometheus_url}/alerts"),
            ("Alertmanager", config.alertmanager_url),
            ("Alert receiver", f"{config.receiver_url}/alerts"),
        )


def run_observability(config: ObserveConfig, progress: Progress = print) -> None:
    """``taxi-mlops observe``: run the three until SIGINT or SIGTERM (or one of them dies), then stop them."""
    stop_requested = threading.Event()
    received: list[str] = []

    def request_stop(signum: int, _frame: object) -> None:
        received.append(signal.Signals(signum).name)
        stop_requested.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    stack = ObservabilityStack(config, progress)
    try:
        stack.start()
        for name, url in stack.urls():
            progress(f"{name:<15} {url}")
        progress(f"scraping {config.targets_file} (written by `taxi-mlops serve`)")
        progress(f"rules {config.rules_file}")
        progress(f"alerts are appended to {config.alerts_file}; Ctrl-C stops")
        while not stop_requested.wait(1.0):
            dead = stack.dead()
            if dead:
                child = dead[0]
                raise ObservabilityError(
                    f"{child.name} exited with status {child.process.returncode} (log {child.log_path}):\n"
                    f"{child.log_tail()}"
                )
        progress(
            f"{received[0] if received else 'stop'} received: stopping Prometheus, Alertmanager, receiver"
        )
    finally:
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    progress("observability stopped")
