"""A step in the one-step process a KFP task gives it: start-up without garbage collection.

Each task is a fresh interpreter that imports its step's libraries (MLflow, pandas,
scikit-learn, XGBoost: about a million long-lived objects), runs the step and exits.
The cyclic garbage collector keeps walking those objects while they are being
imported and again at exit, and finds nothing to free: measured here, importing
them takes 3.4 s of CPU with the collector on and 2.5 s with it off, and the exit
collections cost another ~0.4 s. So in a task process the collector is off from
the moment this package is imported until the step function starts; then
everything imported so far is frozen (collections skip it from then on) and the
collector runs as usual for the step's own work. At exit it is frozen again.

``_KFP_RUNTIME=true`` is set by the command KFP compiles for every lightweight
component, locally and on a cluster; tests and other long-lived processes that
import a step are left alone.
"""

from __future__ import annotations

import atexit
import functools
import gc
import os
from collections.abc import Callable
from typing import ParamSpec, TypeVar

_P = ParamSpec("_P")
_R = TypeVar("_R")
_paused_for_startup = False


def in_task_process() -> bool:
    return os.environ.get("_KFP_RUNTIME") == "true"


def begin_task_startup() -> None:
    """In a task process, pause the collector until the step starts, and skip the exit collections."""
    global _paused_for_startup
    if in_task_process() and gc.isenabled() and not _paused_for_startup:
        gc.disable()
        _paused_for_startup = True
        atexit.register(gc.freeze)  # registered first, so it runs after every later exit handler


def end_task_startup() -> None:
    """Freeze what start-up imported and turn the collector back on (once; no-op elsewhere)."""
    global _paused_for_startup
    if _paused_for_startup:
        gc.freeze()
        gc.enable()
        _paused_for_startup = False


def task_step(step: Callable[_P, _R]) -> Callable[_P, _R]:
    """Mark a step function: start-up ends when it is called."""

    @functools.wraps(step)
    def run(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        end_task_startup()
        return step(*args, **kwargs)

    return run
