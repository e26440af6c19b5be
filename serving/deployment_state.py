"""The desired deployment, like an InferenceService spec: which revision is champion, which is canary.

On a cluster, KServe keeps this in the InferenceService: the champion (last
promoted) revision, the latest (canary) revision and ``canaryTrafficPercent``.
Locally the same facts live in one small JSON file. ``taxi-mlops deploy``,
``promote`` and ``rollback`` change it (possibly from another terminal) and the
local stack's supervisor reconciles the running predictors towards it, so
nothing here starts or stops a process.

Transitions are pure functions of the old state: they return a new state (or
the very same one when nothing changes, so repeating a command is harmless) and
a sentence saying what changed. ``generation`` grows by one with every real
change, which is how the supervisor notices there is something to do.

The file is replaced atomically (temp file + ``os.replace``) and every
read-change-write cycle holds an ``fcntl`` lock on a sidecar ``.lock`` file,
so two commands running at the same time cannot lose each other's change.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from components.errors import TaxiMlopsError
from components.storage.atomic_write import write_atomically

STATE_FORMAT = "taxi-mlops/deployment-state"
STATE_FORMAT_VERSION = 1
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class DeploymentStateError(TaxiMlopsError):
    """A transition is not allowed, or the state file is unusable."""


@dataclass(frozen=True)
class Revision:
    """One deployable model: a registered version, where its file is, and the checksum it must match."""

    model_version: str
    model_uri: str
    sha256: str

    def __post_init__(self) -> None:
        # Checksums are compared as text, so one spelling: lowercase.
        object.__setattr__(self, "sha256", str(self.sha256).strip().lower())
        if not str(self.model_version).strip():
            raise DeploymentStateError("a revision needs a model_version")
        if not str(self.model_uri).strip():
            raise DeploymentStateError(f"revision {self.model_version}: model_uri is empty")
        if not _SHA256.match(str(self.sha256)):
            raise DeploymentStateError(
                f"revision {self.model_version}: sha256 must be 64 hex digits, got {self.sha256!r}"
            )

    def describe(self) -> str:
        """``version 3`` - how sentences and logs name a revision."""
        return f"version {self.model_version}"


@dataclass(frozen=True)
class DeploymentState:
    """Champion, optional canary and the canary's share of traffic (the champion gets the rest)."""

    champion: Revision | None = None
    canary: Revision | None = None
    canary_percent: int = 0
    generation: int = 0
    updated_at: str = ""
    # The version promote or rollback last took out of the canary role: the ``challenger`` alias
    # must not stay on it. Recorded in the state (not inferred) because a registered winner that
    # waits for its canary also holds ``challenger`` without being in the state, and only the
    # retired one may lose it when aliases are reconciled after a command was killed.
    retired_canary: str | None = None
    # The champion the last promotion replaced: it keeps the ``previous`` alias, a one-step undo.
    previous_champion: str | None = None

    def __post_init__(self) -> None:
        _check_percent(self.canary_percent)
        if self.canary is not None and self.champion is None:
            raise DeploymentStateError("a canary needs a champion beside it")
        if self.canary is None and self.canary_percent != 0:
            raise DeploymentStateError(f"canary_percent is {self.canary_percent} but there is no canary")
        if self.generation < 0:
            raise DeploymentStateError(f"generation must be >= 0, got {self.generation}")

    @property
    def champion_percent(self) -> int:
        """The champion's share: everything the canary does not get (0 when nothing is deployed)."""
        return 0 if self.champion is None else 100 - self.canary_percent

    def describe(self) -> str:
        """One line for humans: ``champion version 1 (80%), canary version 2 (20%), generation 4``."""
        if self.champion is None:
            return f"nothing deployed (generation {self.generation})"
        text = f"champion {self.champion.describe()} ({self.champion_percent}%)"
        if self.canary is not None:
            text += f", canary {self.canary.describe()} ({self.canary_percent}%)"
        return f"{text}, generation {self.generation}"

    def to_dict(self) -> dict[str, Any]:
        """The JSON document written to the state file."""
        return {
            "format": STATE_FORMAT,
            "format_version": STATE_FORMAT_VERSION,
            "champion": asdict(self.champion) if self.champion else None,
            "canary": asdict(self.canary) if self.canary else None,
            "canary_percent": self.canary_percent,
            "generation": self.generation,
            "updated_at": self.updated_at,
            "retired_canary": self.retired_canary,
            "previous_champion": self.previous_champion,
        }

    @classmethod
    def from_dict(cls, data: Any) -> DeploymentState:
        """Inverse of ``to_dict``; raises ``DeploymentStateError`` (or KeyError/TypeError) on bad input."""
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
            raise DeploymentStateError(f"not a deployment state document (format is not {STATE_FORMAT!r})")
        if data.get("format_version") != STATE_FORMAT_VERSION:
            raise DeploymentStateError(
                f"format_version {data.get('format_version')!r} is not the supported {STATE_FORMAT_VERSION}"
            )
        percent = data["canary_percent"]
        generation = data["generation"]
        if type(percent) is not int or type(generation) is not int:
            raise DeploymentStateError("canary_percent and generation must be integers")
        return cls(
            champion=_revision_from(data["champion"]),
            canary=_revision_from(data["canary"]),
            canary_percent=percent,
            generation=generation,
            updated_at=str(data.get("updated_at", "")),
            # Optional: files written before the field existed have no retired canary.
            retired_canary=_optional_version(data.get("retired_canary")),
            previous_champion=_optional_version(data.get("previous_champion")),
        )


class Transition(NamedTuple):
    """What a command did: the resulting state, a sentence for the user, and whether anything changed."""

    state: DeploymentState
    message: str
    changed: bool


# --------------------------------------------------------------------------- transitions


def deploy(
    state: DeploymentState, revision: Revision, canary_percent: int, *, now: datetime | None = None
) -> Transition:
    """Roll out ``revision``: the first deployment ever becomes champion at 100%, later ones a canary.

    Deploying the champion's version again changes nothing. Deploying a new
    version while another canary is live replaces that canary (as a new
    latest revision does in KServe). Deploying the current canary again only
    adjusts its percentage.
    """
    _check_percent(canary_percent)
    champion, canary = state.champion, state.canary
    if champion is None:
        new = _changed(state, now, champion=revision, canary=None, canary_percent=0, retired_canary=None)
        return Transition(
            new, f"first deployment: {revision.describe()} is champion with 100% of traffic", True
        )
    if revision.model_version == champion.model_version:
        _check_same_revision(champion, revision, "champion")
        return Transition(state, f"{revision.describe()} is already champion; nothing changed", False)
    if canary is not None and revision.model_version == canary.model_version:
        _check_same_revision(canary, revision, "canary")
        if canary_percent == state.canary_percent:
            return Transition(
                state, f"{revision.describe()} is already canary at {canary_percent}%; nothing changed", False
            )
        new = _changed(state, now, canary_percent=canary_percent)
        return Transition(
            new,
            f"canary {revision.describe()}: {state.canary_percent}% -> {canary_percent}% of traffic",
            True,
        )
    new = _changed(state, now, canary=revision, canary_percent=canary_percent, retired_canary=None)
    replaced = f" (replacing canary {canary.describe()})" if canary is not None else ""
    return Transition(
        new,
        f"{revision.describe()} is canary with {canary_percent}% of traffic{replaced}; "
        f"champion {champion.describe()} keeps {100 - canary_percent}%",
        True,
    )


def promote(state: DeploymentState, *, now: datetime | None = None) -> Transition:
    """The canary becomes champion with 100% of traffic; without a canary nothing changes."""
    champion = _require_champion(state, "promote")
    if state.canary is None:
        return Transition(
            state, f"no canary to promote; champion {champion.describe()} keeps 100% of traffic", False
        )
    new = _changed(
        state,
        now,
        champion=state.canary,
        canary=None,
        canary_percent=0,
        retired_canary=state.canary.model_version,
        previous_champion=champion.model_version,
    )
    return Transition(
        new,
        f"promoted {state.canary.describe()} to champion with 100% of traffic "
        f"(was {state.canary_percent}%); {champion.describe()} retired (alias previous)",
        True,
    )


def rollback(state: DeploymentState, *, now: datetime | None = None) -> Transition:
    """Remove the canary (0% of traffic); the champion stays. Without a canary nothing changes."""
    champion = _require_champion(state, "roll back")
    if state.canary is None:
        return Transition(
            state, f"no canary to roll back; champion {champion.describe()} keeps 100% of traffic", False
        )
    new = _changed(state, now, canary=None, canary_percent=0, retired_canary=state.canary.model_version)
    return Transition(
        new,
        f"rolled back canary {state.canary.describe()} (had {state.canary_percent}%); "
        f"champion {champion.describe()} has 100% of traffic",
        True,
    )


def set_percent(state: DeploymentState, canary_percent: int, *, now: datetime | None = None) -> Transition:
    """Change the canary's share of traffic (0 keeps it running without traffic)."""
    _check_percent(canary_percent)
    _require_champion(state, "set the canary percentage")
    if state.canary is None:
        raise DeploymentStateError("there is no canary to send traffic to; deploy a new version first")
    if canary_percent == state.canary_percent:
        return Transition(
            state, f"canary {state.canary.describe()} already has {canary_percent}%; nothing changed", False
        )
    new = _changed(state, now, canary_percent=canary_percent)
    return Transition(
        new,
        f"canary {state.canary.describe()}: {state.canary_percent}% -> {canary_percent}% of traffic",
        True,
    )


def _changed(state: DeploymentState, now: datetime | None, **fields: Any) -> DeploymentState:
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return replace(state, generation=state.generation + 1, updated_at=moment.isoformat(), **fields)


def _check_percent(percent: Any) -> None:
    if type(percent) is not int or not 0 <= percent <= 100:
        raise DeploymentStateError(f"canary percent must be an integer from 0 to 100, got {percent!r}")


def _require_champion(state: DeploymentState, action: str) -> Revision:
    if state.champion is None:
        raise DeploymentStateError(f"cannot {action}: nothing is deployed yet")
    return state.champion


def _check_same_revision(current: Revision, requested: Revision, role: str) -> None:
    if current != requested:
        raise DeploymentStateError(
            f"{requested.describe()} is the {role} but with a different model file "
            f"(sha256 {current.sha256[:12]}…, uri {current.model_uri}); "
            f"refusing to redeploy a version under the same number"
        )


def _optional_version(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str | int) or isinstance(value, bool) or not str(value).strip():
        raise DeploymentStateError(f"retired_canary must be a version number or null, got {value!r}")
    return str(value)


def _revision_from(data: Any) -> Revision | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise DeploymentStateError(f"a revision must be an object, got {type(data).__name__}")
    return Revision(
        model_version=str(data["model_version"]), model_uri=str(data["model_uri"]), sha256=str(data["sha256"])
    )


# --------------------------------------------------------------------------- persistence


def load_state(path: str | os.PathLike[str]) -> DeploymentState:
    """Read the state file; a missing file means nothing was ever deployed (generation 0).

    Whatever is wrong with an existing file (unreadable, not UTF-8, truncated or
    invalid JSON, a document that breaks a rule) is one ``DeploymentStateError``
    naming the file and the problem: every command that reads it reports that
    line, and a running supervisor keeps its last good routing.
    """
    source = Path(path)
    try:
        raw = source.read_bytes()
    except FileNotFoundError:
        return DeploymentState()
    except OSError as exc:
        raise DeploymentStateError(f"{source}: cannot read deployment state ({exc.strerror})") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DeploymentStateError(
            f"{source}: deployment state is not UTF-8 text (byte {exc.start} of {len(raw)}); "
            "the file is corrupt"
        ) from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DeploymentStateError(f"{source}: deployment state {_json_problem(text)} ({exc})") from None
    except RecursionError:
        raise DeploymentStateError(f"{source}: deployment state is nested too deeply to be one") from None
    try:
        return DeploymentState.from_dict(document)
    except DeploymentStateError as exc:
        raise DeploymentStateError(f"{source}: {exc}") from None
    except KeyError as exc:
        raise DeploymentStateError(f"{source}: deployment state is malformed (no field {exc})") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise DeploymentStateError(f"{source}: deployment state is malformed ({exc})") from None


def _json_problem(text: str) -> str:
    """What kind of broken: every file this module writes is one JSON object ending in ``}``."""
    if not text.strip():
        return "is empty"
    if not text.rstrip().endswith("}"):
        return "is not valid JSON and looks truncated (it ends before its closing brace)"
    return "is not valid JSON"


def save_state(path: str | os.PathLike[str], state: DeploymentState) -> None:
    """Write the state file atomically, holding the state lock."""
    with state_lock(path):
        _write_unlocked(Path(path), state)


def update_state(
    path: str | os.PathLike[str],
    change: Callable[[DeploymentState], Transition],
    then: Callable[[DeploymentState], None] | None = None,
) -> Transition:
    """Load, apply ``change`` (e.g. ``lambda s: promote(s)``) and save - all under one lock.

    This is what CLI commands use: a concurrent command waits for this one and
    then sees its result, so no change is lost. Nothing is written when the
    transition changed nothing. ``then`` runs with the resulting state while the
    lock is still held (the rollout moves the registry aliases there), so no other
    command can change the state between the write and what follows it.
    """
    target = Path(path)
    with state_lock(target):
        result = change(load_state(target))
        if result.changed:
            _write_unlocked(target, result.state)
        if then is not None:
            then(result.state)
        return result


def with_state(path: str | os.PathLike[str], action: Callable[[DeploymentState], None]) -> DeploymentState:
    """Run ``action`` on the current state under the state lock (a reconcile that must not race a change)."""
    target = Path(path)
    with state_lock(target):
        state = load_state(target)
        action(state)
        return state


@contextlib.contextmanager
def state_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Exclusive inter-process lock for the state at ``path`` (a sidecar ``<name>.lock`` file).

    The lock is on a sidecar because the state file itself is replaced by
    ``os.replace``: a lock on the old inode would not exclude a writer that
    opened the new one.
    """
    lock_path = _lock_path(Path(path))
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def _write_unlocked(target: Path, state: DeploymentState) -> None:
    write_atomically(target, json.dumps(state.to_dict(), indent=2) + "\n")
