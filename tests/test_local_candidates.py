"""How the local runner hands kfp.local the candidates: costliest first, boosters on their share of cores."""

from __future__ import annotations

import pytest

from components.models.candidates import CANDIDATES
from pipelines.local_run import LOCAL_PARALLEL_TASKS, local_candidates, pipeline_arguments
from pipelines.settings import Settings

ALL = [{"name": name, "params": {}} for name in CANDIDATES]


def test_the_costliest_fit_starts_first_and_the_rest_keep_their_order():
    names = [c["name"] for c in local_candidates(ALL, cpu_count=2)]
    assert names[0] == "xgboost"  # ~18 s of fit: it must not be the one left running alone at the end
    costs = [CANDIDATES[name].relative_cost for name in names]
    assert costs == sorted(costs, reverse=True)
    cheap = [name for name in CANDIDATES if CANDIDATES[name].relative_cost == 1.0]
    assert [name for name in names if name in cheap] == cheap  # stable among equals


@pytest.mark.parametrize(("cores", "threads"), [(1, 1), (2, 1), (3, 1), (4, 2), (8, 4)])
def test_boosters_get_their_share_of_the_cores(cores: int, threads: int):
    chosen = {c["name"]: c["params"] for c in local_candidates(ALL, cpu_count=cores)}
    for name, params in chosen.items():
        if "n_jobs" in CANDIDATES[name].defaults:
            assert params["n_jobs"] == max(1, cores // LOCAL_PARALLEL_TASKS) == threads
        else:
            assert "n_jobs" not in params  # linear models have no such parameter


def test_what_the_user_set_is_kept():
    chosen = local_candidates(
        [{"name": "ridge", "params": {"alpha": 0.5}}, {"name": "xgboost", "params": {"n_jobs": 2}}],
        cpu_count=2,
    )
    assert chosen == [
        {"name": "xgboost", "params": {"n_jobs": 2}},
        {"name": "ridge", "params": {"alpha": 0.5}},
    ]


def test_the_pipeline_gets_them_and_the_experiment_artifact_location(tmp_path):
    from pipelines.local_run import RunRequest

    settings = Settings.from_env(env={}, state_dir=tmp_path)
    arguments = pipeline_arguments(settings, RunRequest(candidates=ALL), "local-test")
    assert [c["name"] for c in arguments["candidates"]] == [c["name"] for c in local_candidates(ALL)]
    assert arguments["artifact_location"] == (tmp_path / "mlartifacts").as_uri()
