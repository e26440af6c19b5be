"""Real ``python -m serving`` predictor processes on 127.0.0.1, for the tests that talk to one over HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_SECONDS = 60.0


@dataclass(frozen=True)
class Server:
    url: str
    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    def log_lines(self) -> int:
        return sum(len(p.read_bytes().splitlines()) for p in (self.stdout, self.stderr))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def launch_predictor(
    args: list[str], logs: Path, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], Path, Path]:
    """``python -m serving ARGS`` with its output in ``logs``; ``env`` adds to this process's environment."""
    logs.mkdir(parents=True, exist_ok=True)
    stdout, stderr = logs / "stdout.log", logs / "stderr.log"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "serving", *args],
            stdout=out,
            stderr=err,
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
    return process, stdout, stderr


def wait_ready(server: Server) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"server exited with {server.process.returncode}:\n{server.stderr.read_text()}")
        try:
            if requests.get(f"{server.url}/v2/health/ready", timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    pytest.fail(f"server not ready after {STARTUP_SECONDS}s:\n{server.stderr.read_text()}")


def stop_processes(*processes: subprocess.Popen[bytes]) -> None:
    """SIGTERM all first (KServe shuts down gracefully), then wait; SIGKILL what hangs."""
    running = [p for p in processes if p.poll() is None]
    for process in running:
        process.terminate()
    for process in running:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
