"""The replay's serving stack: ``taxi-mlops serve`` as its own process on a free 127.0.0.1 port.

Its own process, as a user runs it, and so that the splitter does not share one
interpreter (and its lock) with the replay's client: measured in the same process, the
two spent half the replay's time waiting on each other. The canary judge is left to
the replay (``--no-canary-judge``), which calls it on the event-time clock.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from components.errors import TaxiMlopsError
from pipelines.settings import Settings
from serving.deployment_state import load_state
from serving.local_stack import log_tail, orphan_proof, stop_process_group


class ServeProcessError(TaxiMlopsError):
    """``serve`` did not come up, or did not route what the deployment state says (names its log)."""


class ServeProcess:
    def __init__(self, settings: Settings, ready_timeout: float = 180.0) -> None:
        self.settings = settings
        self.ready_timeout = ready_timeout
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = settings.state_dir / "logs" / "serve.log"
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ServeProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "TAXI_MLOPS_STATE_DIR": str(self.settings.state_dir),
            "MLFLOW_TRACKING_URI": self.settings.tracking_uri,
        }
        command = [
            sys.executable,
            "-m",
            "pipelines.cli",
            "serve",
            "--no-canary-judge",
            "--port",
            str(self.port),
        ]
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                orphan_proof(command),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=Path(__file__).resolve().parents[2],
                start_new_session=True,
            )
        self.wait_routed()
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._process is not None:
            stop_process_group(self._process, grace=15.0)
            self._process = None

    def wait_routed(self) -> None:
        """Until the splitter routes the deployment state's generation (a new canary's predictor is up)."""
        wanted = load_state(self.settings.deployment_state_path).generation
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise ServeProcessError(
                    f"serve exited with {self._process.returncode}; its log {self.log_path}:\n"
                    + log_tail(self.log_path)
                )
            if self._routed() >= wanted:
                return
            time.sleep(0.2)
        raise ServeProcessError(
            f"serve did not route generation {wanted} in {self.ready_timeout:g} s; its log {self.log_path}:\n"
            + log_tail(self.log_path)
        )

    def _routed(self) -> int:
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=2.0) as answer:
                return int(json.loads(answer.read()).get("generation", -1))
        except (urllib.error.URLError, OSError, ValueError):
            return -1
