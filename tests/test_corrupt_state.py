"""A corrupt or truncated deployment state file: every command that reads it says so in one line.

The real ``taxi-mlops`` CLI in a subprocess (as a user runs it), on a state dir
with no registry: whatever the file's damage, ``status``, ``deploy``,
``promote``, ``rollback`` and a fresh ``serve`` exit 1 with exactly one
``error:`` line on stderr that names the file and what is wrong, and no traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)
CLI = str(Path(sys.executable).with_name("taxi-mlops"))
GOOD = (
    '{\n  "format": "taxi-mlops/deployment-state",\n  "format_version": 1,\n  "champion": {\n'
    '    "model_version": "1",\n    "model_uri": "/models/v1",\n    "sha256": "' + "a" * 64 + '"\n  },\n'
    '  "canary": null,\n  "canary_percent": 0,\n  "generation": 1,\n  "updated_at": ""\n}\n'
)
DAMAGE = {
    "garbage bytes": (b"\xff\xfe\x00\x13garbage\x00", "not UTF-8"),
    "truncated": (GOOD.encode()[: len(GOOD) // 2], "looks truncated"),
    "empty": (b"", "is empty"),
    "wrong document": (b'{"champion": "1"}', "not a deployment state document"),
}
COMMANDS = {
    "status": ["status", "--url", "http://127.0.0.1:9"],
    "deploy": ["deploy", "--version", "1"],
    "promote": ["promote"],
    "rollback": ["rollback"],
    "serve": ["serve", "--port", "0"],
}


def run_cli(state_dir: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "TAXI_MLOPS_STATE_DIR")}
    return subprocess.run(
        [CLI, *args, "--state-dir", str(state_dir)],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
        check=False,
    )


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("damage", ["garbage bytes", "truncated"])
def test_each_command_gives_one_error_line(tmp_path: Path, damage: str, command: str):
    content, problem = DAMAGE[damage]
    state_file = tmp_path / "state" / "deployment" / "state.json"
    state_file.parent.mkdir(parents=True)
    state_file.write_bytes(content)
    result = run_cli(tmp_path / "state", COMMANDS[command])
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {state_file}: deployment state ") and problem in lines[0]
    assert state_file.read_bytes() == content  # nobody "repaired" it by overwriting it


@pytest.mark.parametrize("damage", ["empty", "wrong document"])
def test_other_damage_is_named_too(tmp_path: Path, damage: str):
    content, problem = DAMAGE[damage]
    state_file = tmp_path / "state" / "deployment" / "state.json"
    state_file.parent.mkdir(parents=True)
    state_file.write_bytes(content)
    result = run_cli(tmp_path / "state", COMMANDS["promote"])
    assert result.returncode == 1
    assert result.stderr.splitlines() == [result.stderr.strip()]
    assert str(state_file) in result.stderr and problem in result.stderr


def test_a_registry_without_the_deployed_model_is_one_line_not_a_traceback(tmp_path: Path):
    """The state file decides what is served; a registry that lacks its model only gets reported."""
    from mlflow.tracking import MlflowClient

    state_dir = tmp_path / "state"
    state_file = state_dir / "deployment" / "state.json"
    state_file.parent.mkdir(parents=True)
    state_file.write_text(GOOD, encoding="utf-8")
    MlflowClient(f"sqlite:///{state_dir / 'mlflow.db'}").search_experiments()  # an empty registry
    result = run_cli(state_dir, COMMANDS["status"])
    assert result.returncode == 0, result
    assert "Traceback" not in result.stdout + result.stderr
    assert "aliases not reconciled with the deployment state" in result.stdout
    assert "desired: champion version 1 (100%)" in result.stdout
