"""How a pipeline build adjusts its tasks: locally as they are, on a cluster ``configure_for_cluster``."""

from __future__ import annotations

from collections.abc import Callable

from kfp import dsl

#: Applied to every task a pipeline builder creates (image, env, secrets for the cluster build).
TaskSettings = Callable[[dsl.PipelineTask], object]


def as_is(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """The local build's task settings: none."""
    return task
