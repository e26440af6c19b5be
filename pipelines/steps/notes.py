"""Step notes: one-line messages a step prints for the people watching it.

They go to stdout with a fixed prefix: the KFP UI shows them in the task's log,
and the local runner (pipelines/local_run.py) turns them into progress lines.
"""

from __future__ import annotations

import logging
import sys

NOTE_PREFIX = "[taxi-mlops]"

log = logging.getLogger("taxi_mlops.steps")


def _notes_to_stdout() -> None:
    if not log.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter(f"{NOTE_PREFIX} %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


_notes_to_stdout()
