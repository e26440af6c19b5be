"""The canary decides, end to end, with no human step: a real local stack (splitter + KServe predictors),
a real MLflow registry, real trips replayed through it, labels joined from the month's file, and the
canary judge's loop acting through the real rollout (state file + aliases).

Each test deploys one challenger as a canary at 10% and replays the month in chunks until the judge
has promoted or rolled it back. Faults (5xx, slowness) are injected into a canary only through the
test-only switch TAXI_MLOPS_TEST_FAULTS (serving/fault_injection.py; tests/test_fault_injection.py
checks the product never sets it).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pandas as pd
import pytest
from support.monitoring_state import Registered, registered_ridge
from support.predictor_process import free_port

from components.canary.decision_store import decision_history, last_decision
from components.canary.policy import CanaryPolicy, Step
from components.data.trip_ids import trip_ids
from components.evaluation.gate import gate_against_champion
from components.models.duration_model import MODEL_FILE_NAME, load_duration_model
from components.monitoring.labels import label_month, write_labels
from components.monitoring.prediction_log import read_prediction_log
from components.names import CANARY_DIR_NAME, LABELS_DIR_NAME, PREDICTION_LOG_DIR_NAME
from components.registry import tracking
from components.registry.registration import register_winner
from components.registry.versions import PREVIOUS, version_for_alias
from serving.canary_judge import CanaryJudgeLoop, JudgeFolders, LocalRollout, SplitterOps, local_scorer
from serving.deployment_state import load_state
from serving.fault_injection import TEST_FAULTS_ENV
from serving.local_stack import LocalStack
from serving.replay import replay_trips
from serving.rollout import RolloutTarget, deploy_version

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

#: Small minimums so a generated month decides in seconds; the defaults are for real traffic.
POLICY = CanaryPolicy(
    steps=(Step(10, min_requests=150, min_labelled=0), Step(50, min_requests=150, min_labelled=300)),
    promote_min_labelled=400,
    min_pairs=150,
    resamples=300,
    interval_seconds=1.0,
    max_error_rate=0.05,
    # A p99 of ~150 requests is their second-slowest request: one stall of the 2 shared cores
    # decides it (seen in CI, beside another test worker: 2,501 ms for an identical model), where the
    # default step's 1,000 requests would not. So latency is judged only where it is the subject
    # (the slow canary's test, LATENCY_POLICY), with limits only the injected 800 ms delay crosses.
    judge_latency=False,
    max_p99_ms=600.0,
    max_p99_ratio=4.0,
    p99_ratio_floor_ms=600.0,
)
LATENCY_POLICY = replace(POLICY, judge_latency=True)
CHUNK = 300


@dataclass(frozen=True)
class World:
    registered: Registered
    trips: pd.DataFrame  # the live month, in pickup order
    ids: list[str]
    versions: dict[str, str]  # kind -> registered version


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("canary-e2e")
    registered = registered_ridge(root)
    model_file = root / "registered" / "model.zip"
    # 15% too high: the champion's ridge with every coefficient and its intercept x1.15.
    model = load_duration_model(model_file, None)
    model.estimator.coef_ = model.estimator.coef_ * 1.15
    model.estimator.intercept_ = model.estimator.intercept_ * 1.15
    too_high = root / "too-high" / MODEL_FILE_NAME
    model.save(too_high)
    versions = {}
    for kind, path in (
        ("equal", model_file),
        ("too_high", too_high),
        ("errors", model_file),
        ("slow", model_file),
        ("quiet", model_file),
    ):
        versions[kind] = _register(registered, path, kind)
    trips = registered.val_trips.sort_values("pickup_datetime", kind="stable").reset_index(drop=True)
    return World(registered, trips, list(trip_ids(trips, "green")), versions)


def _register(registered: Registered, path: Path, kind: str) -> str:
    import mlflow

    experiment = tracking.ensure_experiment(registered.tracking_uri, "registration", None)
    run_id = tracking.client_for(registered.tracking_uri).create_run(experiment).info.run_id
    gate = gate_against_champion(kind, 1.0, 2.0, registered.version, 0.0)
    try:
        registration = register_winner(
            tracking_uri=registered.tracking_uri,
            model_name=registered.model_name,
            model_file=path,
            gate=asdict(gate),
            input_example=registered.val_trips.head(5),
            run_id=run_id,
            version_tags={"kind": kind},
        )
    finally:
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
    assert registration.model_version is not None
    return str(registration.model_version)


@dataclass
class Live:
    target: RolloutTarget
    stack: LocalStack
    folders: JudgeFolders


@pytest.fixture
def live(world: World, tmp_path: Path) -> Iterator[Live]:
    state_path = tmp_path / "deployment" / "state.json"
    target = RolloutTarget(
        state_path,
        tmp_path / "deployment" / "models",
        world.registered.tracking_uri,
        world.registered.model_name,
    )
    deploy_version(target, world.registered.version, 0)
    folders = JudgeFolders(
        state_path.parent / PREDICTION_LOG_DIR_NAME,
        state_path.parent / LABELS_DIR_NAME,
        state_path.parent / CANARY_DIR_NAME,
    )
    stack = LocalStack(state_path, port=free_port(), log_dir=tmp_path / "logs", seed=11)
    stack.start()
    try:
        yield Live(target, stack, folders)
    finally:
        stack.stop()


def _decide(
    world: World, live: Live, canary_kind: str, *, labels: bool, policy: CanaryPolicy = POLICY
) -> dict:
    """Deploy the canary at 10%, replay chunk by chunk (labels joined after each), until the judge acts."""
    version = world.versions[canary_kind]
    deploy_version(live.target, version, 10)
    live.stack.reconcile(timeout=120)
    judge = CanaryJudgeLoop(
        LocalRollout(live.target), SplitterOps(live.stack.url), live.folders, local_scorer(), policy
    )
    with judge:
        for start in range(0, len(world.trips), CHUNK):
            chunk = world.trips.iloc[start : start + CHUNK]
            replay_trips(live.stack.url, chunk, world.ids[start : start + CHUNK], rate=400)
            if labels:
                time.sleep(1.2)  # the predictors flush their log segments every second
                log = read_prediction_log(live.folders.prediction_log_dir)
                found, _ = label_month(log, world.trips, pd.Series(world.ids).to_numpy())
                write_labels(found, live.folders.labels_dir / "green-2021-02.parquet")
            # Wait for an analysis that saw this chunk (or a verdict reached while it was sent).
            analysed = len(decision_history(live.folders.canary_dir, version))
            deadline = time.monotonic() + 30 + 10 * policy.interval_seconds
            while True:
                history = decision_history(live.folders.canary_dir, version)
                if history and history[-1]["action"] in ("promote", "rollback"):
                    return history[-1]
                if len(history) > analysed:
                    break
                assert time.monotonic() < deadline, f"the judge made no analysis: {judge.last_error}"
                time.sleep(0.2)
    pytest.fail(f"no verdict after the whole month: {json.dumps(last_decision(live.folders.canary_dir))}")


def _alias(world: World, alias: str) -> str | None:
    found = version_for_alias(world.registered.tracking_uri, world.registered.model_name, alias)
    return None if found is None else str(found.version)


def test_an_equal_challenger_is_stepped_up_and_promoted(world: World, live: Live) -> None:
    decision = _decide(world, live, "equal", labels=True)
    assert decision["verdict"] == "pass" and decision["action"] == "promote", decision["reason"]
    actions = [d["action"] for d in decision_history(live.folders.canary_dir, world.versions["equal"])]
    assert "set_percent" in actions  # 10% -> 50% before the promotion
    state = load_state(live.target.state_path)
    assert state.champion.model_version == world.versions["equal"] and state.canary is None
    assert _alias(world, "champion") == world.versions["equal"]
    assert _alias(world, PREVIOUS) == world.registered.version  # a one-step undo
    assert decision["labelled_pairs"] >= POLICY.promote_min_labelled
    assert decision["offline_mismatches"] == 0  # what was served is what the models give offline
    latency = [check for check in decision["checks"] if check["name"].startswith("p99")]
    assert len(latency) == 2 and all(check["detail"].startswith("not judged") for check in latency)


def test_predictions_15_percent_too_high_are_rolled_back_on_accuracy(world: World, live: Live) -> None:
    decision = _decide(world, live, "too_high", labels=True)
    assert decision["verdict"] == "fail" and decision["action"] == "rollback"
    failed = [check["name"] for check in decision["checks"] if check["passed"] is False]
    assert failed == ["accuracy"], decision["reason"]
    assert decision["accuracy"]["ratio_ci"][0] > decision["accuracy"]["limit"]
    state = load_state(live.target.state_path)
    assert state.canary is None and state.champion.model_version == world.registered.version
    assert _alias(world, "champion") == world.registered.version


def test_a_canary_answering_5xx_is_rolled_back_on_errors_before_any_label(
    world: World, live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        TEST_FAULTS_ENV, json.dumps({world.versions["errors"]: {"error_rate": 0.3, "seed": 3}})
    )
    decision = _decide(world, live, "errors", labels=False)
    assert decision["action"] == "rollback" and decision["labelled_pairs"] == 0
    failed = [check["name"] for check in decision["checks"] if check["passed"] is False]
    assert failed == ["error_rate"], decision["reason"]
    assert load_state(live.target.state_path).canary is None


def test_a_slow_canary_is_rolled_back_on_p99(
    world: World, live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TEST_FAULTS_ENV, json.dumps({world.versions["slow"]: {"delay_ms": 800}}))
    decision = _decide(world, live, "slow", labels=False, policy=LATENCY_POLICY)
    assert decision["action"] == "rollback"
    failed = {check["name"] for check in decision["checks"] if check["passed"] is False}
    assert "p99_latency" in failed, decision["reason"]
    assert decision["operations"]["canary"]["p99_ms"] > POLICY.max_p99_ms


def test_too_few_requests_holds_then_rolls_back_at_the_deadline(world: World, live: Live) -> None:
    # The canary can never reach its step's minimum: every analysis holds until 2 days of event time.
    starved = POLICY.with_overrides({"deadline_days": 2.0})
    starved = CanaryPolicy(**{**asdict(starved), "steps": (Step(10, 10**9, 0), *starved.steps[1:])})
    decision = _decide(world, live, "quiet", labels=True, policy=starved)
    assert decision["verdict"] == "inconclusive" and decision["action"] == "rollback"
    assert "deadline (2 days of event time)" in decision["reason"]
    earlier = decision_history(live.folders.canary_dir, world.versions["quiet"])[:-1]
    assert earlier and {d["action"] for d in earlier} == {"hold"}
    assert load_state(live.target.state_path).canary is None
