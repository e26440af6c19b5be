"""Is there anything a killed process may have left in a local sqlite registry? (cheap, no MLflow import)

``run``, ``deploy`` and ``status`` check for leftovers before every command, and
importing MLflow and opening its store costs ~2.5 s, most of which the main
command otherwise spends in the background. So for a sqlite registry a
read-only query looks first for the only two things recovery acts on: a live
(not deleted) version marked pending, and a RUNNING run with an owner tag. Any
surprise (another schema, a locked or missing table) answers "maybe", and the
full recovery through MLflow's API decides.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from components.registry.process_owner import OWNER_TAG

# A version whose registration has not finished (see registration.py): set when the version is
# created, removed by the registration's last write. Such a version is never deployed.
PENDING_TAG = "registration"
PENDING = "pending"
_SQLITE = "sqlite:///"
_DELETED_STAGE = "Deleted_Internal"  # MLflow keeps a deleted version's row (and tags) with this stage

_PENDING_QUERY = """
SELECT 1 FROM model_version_tags t JOIN model_versions v ON v.name = t.name AND v.version = t.version
WHERE t.key = ? AND t.value = ? AND v.current_stage != ? LIMIT 1
"""
_RUNNING_QUERY = """
SELECT 1 FROM runs r JOIN tags g ON g.run_uuid = r.run_uuid
WHERE r.status = 'RUNNING' AND g.key = ? LIMIT 1
"""


def registry_exists(tracking_uri: str) -> bool:
    """False only for a sqlite URI whose database file is not there (any server may hold runs)."""
    return not tracking_uri.startswith(_SQLITE) or Path(tracking_uri[len(_SQLITE) :]).is_file()


def maybe_left_behind(tracking_uri: str) -> bool:
    """False when the registry surely holds no pending version and no owned RUNNING run."""
    if not registry_exists(tracking_uri):
        return False
    if not tracking_uri.startswith(_SQLITE):
        return True
    database = Path(tracking_uri[len(_SQLITE) :])
    try:
        with sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True, timeout=5) as connection:
            pending = connection.execute(_PENDING_QUERY, (PENDING_TAG, PENDING, _DELETED_STAGE)).fetchone()
            running = connection.execute(_RUNNING_QUERY, (OWNER_TAG,)).fetchone()
    except sqlite3.Error:
        return True
    return pending is not None or running is not None
