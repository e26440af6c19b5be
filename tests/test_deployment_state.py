"""Deployment state: transitions as a table, idempotency, the JSON file, and the writers' lock.

The concurrency test uses real processes racing on one file: without the lock,
read-change-write cycles would interleave and generations would be lost.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from serving.deployment_state import (
    DeploymentState,
    DeploymentStateError,
    Revision,
    deploy,
    load_state,
    promote,
    rollback,
    save_state,
    set_percent,
    update_state,
)

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def rev(version: str) -> Revision:
    return Revision(model_version=version, model_uri=f"/models/{version}", sha256=f"{int(version):064x}")


V1, V2, V3 = rev("1"), rev("2"), rev("3")
EMPTY = DeploymentState()
CHAMPION_ONLY = DeploymentState(champion=V1, generation=1)
WITH_CANARY = DeploymentState(champion=V1, canary=V2, canary_percent=20, generation=2)


def _shape(state: DeploymentState) -> tuple:
    version = lambda r: r.model_version if r else None  # noqa: E731
    return version(state.champion), version(state.canary), state.canary_percent


TRANSITIONS = [
    # (name, start, command, expected (champion, canary, percent), changed, words in the sentence)
    ("first deploy -> champion 100%", EMPTY, lambda s: deploy(s, V1, 20), ("1", None, 0), True, "first"),
    ("deploy champion again", CHAMPION_ONLY, lambda s: deploy(s, V1, 20), ("1", None, 0), False, "already"),
    ("deploy new -> canary", CHAMPION_ONLY, lambda s: deploy(s, V2, 20), ("1", "2", 20), True, "canary"),
    ("deploy canary again", WITH_CANARY, lambda s: deploy(s, V2, 20), ("1", "2", 20), False, "already"),
    ("redeploy canary, new %", WITH_CANARY, lambda s: deploy(s, V2, 50), ("1", "2", 50), True, "20% -> 50%"),
    ("newer canary replaces", WITH_CANARY, lambda s: deploy(s, V3, 10), ("1", "3", 10), True, "replacing"),
    ("dark canary at 0%", CHAMPION_ONLY, lambda s: deploy(s, V2, 0), ("1", "2", 0), True, "0%"),
    ("promote", WITH_CANARY, promote, ("2", None, 0), True, "promoted"),
    ("promote without canary", CHAMPION_ONLY, promote, ("1", None, 0), False, "no canary"),
    ("rollback", WITH_CANARY, rollback, ("1", None, 0), True, "rolled back"),
    ("rollback without canary", CHAMPION_ONLY, rollback, ("1", None, 0), False, "no canary"),
    ("set percent", WITH_CANARY, lambda s: set_percent(s, 100), ("1", "2", 100), True, "20% -> 100%"),
    ("set same percent", WITH_CANARY, lambda s: set_percent(s, 20), ("1", "2", 20), False, "already"),
]


@pytest.mark.parametrize(
    ("start", "command", "expected", "changed", "words"),
    [case[1:] for case in TRANSITIONS],
    ids=[case[0] for case in TRANSITIONS],
)
def test_transitions(start, command, expected, changed, words):
    result = command(start)
    assert _shape(result.state) == expected
    assert result.changed is changed
    assert words in result.message
    if changed:
        assert result.state.generation == start.generation + 1
        assert result.state.updated_at
    else:
        assert result.state is start  # a no-op returns the very same state


@pytest.mark.parametrize(
    ("start", "command"),
    [
        (EMPTY, lambda s: deploy(s, V1, 30)),
        (CHAMPION_ONLY, lambda s: deploy(s, V2, 30)),
        (WITH_CANARY, lambda s: deploy(s, V3, 30)),
        (WITH_CANARY, promote),
        (WITH_CANARY, rollback),
        (WITH_CANARY, lambda s: set_percent(s, 5)),
    ],
    ids=["deploy-first", "deploy-canary", "deploy-replacing-canary", "promote", "rollback", "set_percent"],
)
def test_each_command_is_idempotent(start, command):
    once = command(start)
    assert once.changed
    twice = command(once.state)
    assert twice.changed is False
    assert twice.state is once.state


def test_full_lifecycle_sentences_and_generations():
    s1 = deploy(EMPTY, V1, 10, now=NOW)
    s2 = deploy(s1.state, V2, 10, now=NOW)
    s3 = promote(s2.state, now=NOW)
    s4 = deploy(s3.state, V3, 25, now=NOW)
    s5 = rollback(s4.state, now=NOW)
    assert [s.state.generation for s in (s1, s2, s3, s4, s5)] == [1, 2, 3, 4, 5]
    assert s5.state.champion == V2 and s5.state.canary is None
    assert s2.message == "version 2 is canary with 10% of traffic; champion version 1 keeps 90%"
    assert s3.message.startswith("promoted version 2 to champion with 100% of traffic")
    assert s5.state.updated_at == NOW.isoformat()
    assert s4.state.describe() == "champion version 2 (75%), canary version 3 (25%), generation 4"


@pytest.mark.parametrize(
    ("command", "match"),
    [
        (lambda: deploy(CHAMPION_ONLY, V2, 101), "0 to 100"),
        (lambda: deploy(CHAMPION_ONLY, V2, -1), "0 to 100"),
        (lambda: deploy(CHAMPION_ONLY, V2, 12.5), "integer"),
        (lambda: set_percent(CHAMPION_ONLY, 10), "no canary"),
        (lambda: promote(EMPTY), "nothing is deployed"),
        (lambda: rollback(EMPTY), "nothing is deployed"),
        (lambda: set_percent(EMPTY, 10), "nothing is deployed"),
        (lambda: deploy(CHAMPION_ONLY, Revision("1", "/other", "f" * 64), 10), "different model file"),
        (lambda: Revision("4", "/models/4", "not-a-checksum"), "64 hex digits"),
        (lambda: Revision("", "/models/4", "a" * 64), "model_version"),
        (lambda: DeploymentState(canary=V2, canary_percent=10), "needs a champion"),
        (lambda: DeploymentState(champion=V1, canary_percent=10), "no canary"),
    ],
)
def test_invalid_requests_are_refused(command, match):
    with pytest.raises(DeploymentStateError, match=match):
        command()


def test_sha256_is_normalized_to_lowercase():
    assert Revision("1", "/m", "AB" * 32).sha256 == "ab" * 32


def test_state_survives_a_reload(tmp_path: Path):
    path = tmp_path / "deep" / "state.json"
    assert load_state(path) == EMPTY  # no file yet: nothing deployed
    state = deploy(deploy(EMPTY, V1, 10).state, V2, 35).state
    save_state(path, state)
    assert load_state(path) == state
    document = json.loads(path.read_text())
    assert document["format"] == "taxi-mlops/deployment-state"
    assert document["canary"]["model_version"] == "2"
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []  # no temp leftovers


def test_update_state_writes_only_real_changes(tmp_path: Path):
    path = tmp_path / "state.json"
    assert update_state(path, lambda s: deploy(s, V1, 10)).changed
    stamp = path.stat().st_mtime_ns
    again = update_state(path, lambda s: deploy(s, V1, 10))
    assert not again.changed and path.stat().st_mtime_ns == stamp
    with pytest.raises(DeploymentStateError, match="no canary"):
        update_state(path, lambda s: set_percent(s, 10))
    assert load_state(path).generation == 1


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "not valid JSON"),
        ('{"hello": 1}', "not a deployment state"),
        ('{"format": "taxi-mlops/deployment-state", "format_version": 9}', "format_version 9"),
        ('{"format": "taxi-mlops/deployment-state", "format_version": 1}', "malformed"),
        (
            '{"format": "taxi-mlops/deployment-state", "format_version": 1, "champion": null, '
            '"canary": null, "canary_percent": 140, "generation": 0}',
            "0 to 100",
        ),
    ],
)
def test_corrupt_files_name_the_file(tmp_path: Path, content: str, match: str):
    path = tmp_path / "state.json"
    path.write_text(content)
    with pytest.raises(DeploymentStateError, match=match) as caught:
        load_state(path)
    assert str(path) in str(caught.value)


WRITER = textwrap.dedent(
    """
    import sys
    from serving.deployment_state import Revision, deploy, update_state

    path, worker, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    for i in range(count):
        version = str(1000 * (worker + 1) + i)
        revision = Revision(version, "/models/" + version, format(int(version), "064x"))
        update_state(path, lambda state: deploy(state, revision, 10))
    """
)


def test_concurrent_writers_lose_no_change(tmp_path: Path):
    """Four processes deploy 25 distinct versions each: every one of the 100 changes is counted."""
    path = tmp_path / "state.json"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(worker), "25"], env=env)
        for worker in range(4)
    ]
    try:
        codes = [writer.wait(timeout=60) for writer in writers]
    finally:
        for writer in writers:
            writer.kill()
    assert codes == [0, 0, 0, 0]
    final = load_state(path)
    assert final.generation == 100
    assert final.champion is not None and final.canary is not None
