"""Repair what a killed process left in MLflow: a version still being registered, a run still RUNNING.

A SIGKILL skips every ``except`` and ``finally``, so the writer cannot clean up
after itself; it records its owner process instead (``process_owner``), and
``run``, ``deploy`` and ``status`` call these first. Each returns one sentence
per repair (which version or run, and why) and is idempotent. Only owners on
this host whose process is gone are judged dead: a live owner is still at work,
and another host's pid says nothing here.
"""

from __future__ import annotations

from mlflow.entities import RunStatus
from mlflow.entities.model_registry import ModelVersion

from components.registry.process_owner import OWNER_TAG, ProcessOwner
from components.registry.tracking import client_for
from components.registry.versions import is_pending

# Set on a run closed because its process was gone (the run's own close never ran).
KILLED_TAG = "killed"
_PARENT_TAG = "mlflow.parentRunId"


def recover_registrations(tracking_uri: str, model_name: str) -> list[str]:
    """Remove every pending version whose registering process is dead.

    Removed, not finished, even when its file, its sha256 tag and its alias are
    all in place: finishing would take the dead run's gate decision on trust
    without the run that made it (its summary, its deploy step and its own close
    never ran), and a removed version costs only a rerun, whereas a wrongly
    finished champion is what the next gate compares against. Deleting the
    version also deletes the alias it may already hold.
    """
    client = client_for(tracking_uri)
    removed = []
    # No such model yet: the search finds nothing.
    for version in client.search_model_versions(f"name = '{model_name}'"):
        owner = _dead_owner(version.tags.get(OWNER_TAG)) if is_pending(version) else None
        if owner is None:
            continue
        # A search leaves the aliases out; the version itself has them.
        held = client.get_model_version(model_name, version.version).aliases
        aliases = ", ".join(f"alias {alias}" for alias in held) or "no alias"
        client.delete_model_version(model_name, version.version)
        removed.append(
            f"removed {model_name} version {version.version}: its registration ({owner.describe()}, "
            f"{aliases}) was killed before it finished"
        )
    return removed


def close_dead_runs(tracking_uri: str, experiment: str) -> list[str]:
    """Close as FAILED every RUNNING run of ``experiment`` whose owner is dead, and its nested runs."""
    client = client_for(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    running = client.search_runs(
        [found.experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000
    )
    closed = []
    for run in running:
        owner = _dead_owner(run.data.tags.get(OWNER_TAG))
        if owner is None:
            continue
        reason = f"no process left ({owner.describe()})"
        nested = [r for r in running if r.data.tags.get(_PARENT_TAG) == run.info.run_id]
        for dead in [*nested, run]:
            client.set_tag(dead.info.run_id, KILLED_TAG, reason)
            client.set_terminated(dead.info.run_id, status=RunStatus.to_string(RunStatus.FAILED))
        name = run.info.run_name or run.info.run_id
        closed.append(f"closed MLflow run {name} ({run.info.run_id}) as FAILED: killed, {reason}")
    return closed


def pending_owner(version: ModelVersion) -> ProcessOwner | None:
    """Who is still registering a pending version (None when it is not pending or unowned)."""
    return ProcessOwner.parse(version.tags.get(OWNER_TAG)) if is_pending(version) else None


def _dead_owner(tag: str | None) -> ProcessOwner | None:
    owner = ProcessOwner.parse(tag)
    return owner if owner is not None and owner.alive() is False else None
