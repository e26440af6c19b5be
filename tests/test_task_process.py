"""Task processes start up without garbage collection and collect as usual once the step runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Imports a step module as a KFP component body does, then calls the step (with an
# argument it refuses, so it stops at once), reporting the collector's state around it.
PROBE = """
import gc, json
from pipelines.steps.vectorize import vectorize_step
during_startup = gc.isenabled()
try:
    vectorize_step(train_trips_path="/nonexistent", val_trips_path="/nonexistent",
                   vectorizer_path="/nonexistent/v", train_matrix_path="/nonexistent/t",
                   val_matrix_path="/nonexistent/m")
except Exception as exc:
    failed = type(exc).__name__
print(json.dumps({"startup": during_startup, "step": gc.isenabled(), "frozen": gc.get_freeze_count(),
                  "failed": failed}))
"""


def _probe(kfp_runtime: bool) -> dict:
    env = {key: value for key, value in os.environ.items() if key != "_KFP_RUNTIME"}
    if kfp_runtime:
        env["_KFP_RUNTIME"] = "true"
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_in_a_task_process_the_collector_waits_for_the_step():
    seen = _probe(kfp_runtime=True)
    assert seen["startup"] is False  # paused while the step module and its libraries import
    assert seen["step"] is True  # back on for the step's own work
    assert seen["frozen"] > 100_000  # what start-up imported is frozen, so collections skip it
    assert seen["failed"]  # the step really ran (and refused the missing files)


def test_elsewhere_the_collector_is_left_alone():
    seen = _probe(kfp_runtime=False)
    assert seen == {"startup": True, "step": True, "frozen": 0, "failed": seen["failed"]}


STEP_MODULES = [
    "canary",
    "deploy",
    "evaluate",
    "ingest",
    "monitor",
    "register",
    "retrain_decision",
    "tracking_run",
    "train",
    "vectorize",
]


@pytest.mark.parametrize("module", STEP_MODULES)
def test_every_step_function_ends_the_start_up(module: str):
    import importlib
    import inspect

    from pipelines.steps.task_process import task_step

    marked = task_step(lambda: None).__code__
    steps = importlib.import_module(f"pipelines.steps.{module}")
    functions = [
        f
        for name, f in vars(steps).items()
        if name.endswith("_step") and name != "task_step" and inspect.isfunction(f)
    ]
    assert functions, module
    for function in functions:
        assert function.__code__ is marked, f"{module}.{function.__name__} lacks @task_step"


def test_the_list_names_every_step_module():
    folder = REPO / "pipelines" / "steps"
    helpers = {"__init__", "notes", "task_process"}
    assert sorted(p.stem for p in folder.glob("*.py") if p.stem not in helpers) == STEP_MODULES
