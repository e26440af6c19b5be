"""The canary judge's loop on real files: real model files, a real prediction log, real labels, the
real deployment state file.

Two stand-ins, both for interfaces the end-to-end tests (tests/test_canary_e2e.py) drive for real:
the operations figures come from counters the traffic loop below keeps (the live stack's
splitter reports the same numbers on /status), and the actions change the deployment state
file without the MLflow alias step (serving.rollout adds only that).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.model_fixtures import ridge_revisions
from support.tlc_fixtures import write_tlc_dir

from components.canary.decision_store import HISTORY_FILE, decision_history, last_decision
from components.canary.policy import CanaryPolicy, Step
from components.data.ingest import load_month
from components.data.trip_ids import trip_ids
from components.models.duration_model import MODEL_FILE_NAME, load_duration_model
from components.monitoring.labels import month_labels, write_labels
from components.monitoring.prediction_log import PredictionLogWriter
from serving.canary_judge import (
    MEMORY_FILE,
    REPORT_FILE,
    CumulativeOps,
    JudgeFolders,
    OpsReading,
    judge_once,
    local_scorer,
)
from serving.deployment_state import (
    DeploymentState,
    Revision,
    deploy,
    load_state,
    promote,
    rollback,
    save_state,
    set_percent,
    update_state,
)

POLICY = CanaryPolicy(
    steps=(Step(10, min_requests=100, min_labelled=0), Step(50, min_requests=100, min_labelled=300)),
    promote_min_labelled=600,
    max_error_rate=0.05,
    min_pairs=150,
    resamples=400,
)
START = datetime(2021, 2, 1, tzinfo=UTC)


class StateFileActions:
    """The rollout's three moves on the deployment state file (the alias step left out)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def state(self) -> DeploymentState:
        return load_state(self.path)

    def set_percent(self, percent: int) -> str:
        return update_state(self.path, lambda s: set_percent(s, percent)).message

    def promote(self) -> str:
        return update_state(self.path, promote).message

    def rollback(self) -> str:
        return update_state(self.path, rollback).message


class CountingOps(CumulativeOps):
    def __init__(self) -> None:
        self.requests = {"champion": 0, "canary": 0}
        self.errors = {"champion": 0, "canary": 0}

    def read(self, state: DeploymentState) -> dict[str, OpsReading]:
        return {role: OpsReading(self.requests[role], self.errors[role], 3.0) for role in self.requests}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("judge")
    champion, _ = ridge_revisions(root / "models")
    # A canary 15% too high: the champion's ridge with every coefficient and the intercept x1.15.
    model = load_duration_model(Path(champion.model_uri) / MODEL_FILE_NAME, champion.sha256)
    model.estimator.coef_ = model.estimator.coef_ * 1.15
    model.estimator.intercept_ = model.estimator.intercept_ * 1.15
    high_dir = root / "models" / "v3"
    too_high = Revision("3", str(high_dir), model.save(high_dir / MODEL_FILE_NAME))
    trips, _ = load_month("green", "2021-02", data_dir=write_tlc_dir(root / "tlc", rows=6000))
    trips = trips.reset_index(drop=True)
    return {"champion": champion, "too_high": too_high, "trips": trips, "ids": trip_ids(trips, "green")}


def _log_trip(
    writer: PredictionLogWriter,
    request_id: str,
    moment: datetime,
    role: str,
    revision: Revision,
    trip: Any,
    minutes: np.ndarray,
) -> None:
    """One answered trip in the prediction log, as the predictor of ``revision`` (``role``) logs it."""
    writer.put_batch(
        request_id=request_id,
        event_time=moment,
        model_name="duration",
        model_version=revision.model_version,
        revision=role,
        pickup=np.array([trip.PULocationID]),
        dropoff=np.array([trip.DOLocationID]),
        distance=np.array([trip.trip_distance]),
        minutes=minutes,
    )


def _run(
    world,
    tmp_path: Path,
    canary: Revision,
    rounds: int = 12,
    per_round: int = 400,
    replayed_before: bool = False,
) -> list[dict]:
    """Deploy ``canary`` at 10%, then alternate a round of logged traffic and one analysis.

    ``replayed_before``: the champion already served the whole month (event times over 28 days)
    before the canary came, and the month is replayed again for it, as a second replay does."""
    state_path = tmp_path / "state.json"
    champion = world["champion"]
    folders = JudgeFolders(tmp_path / "log", tmp_path / "labels", tmp_path / "canary")
    trips, ids = world["trips"], world["ids"]
    if replayed_before:
        earlier = PredictionLogWriter(folders.prediction_log_dir)
        answers = local_scorer()(champion).predict(trips)
        for number, trip in enumerate(trips.itertuples()):
            # the ids the replay below sends again
            _log_trip(earlier, f"{ids[number]}-r{number % 12}", START + timedelta(minutes=7 * number),
                      "champion", champion, trip, answers[number : number + 1])  # fmt: skip
        earlier.close()
    state = deploy(deploy(DeploymentState(), champion, 0).state, canary, 10).state
    save_state(state_path, state)
    write_labels(month_labels(trips, ids), folders.labels_dir / "green-2021-02.parquet")
    score = local_scorer()
    ops = CountingOps()
    rng = np.random.default_rng(7)
    decisions = []
    for round_number in range(rounds):
        state = load_state(state_path)
        if state.canary is None:
            break
        chunk = trips.iloc[(round_number * per_round) % len(trips) :][:per_round]
        to_canary = rng.random(len(chunk)) < state.canary_percent / 100
        answers = {
            "champion": score(state.champion).predict(chunk),
            "canary": score(state.canary).predict(chunk),
        }
        writer = PredictionLogWriter(folders.prediction_log_dir)
        for number, (is_canary, (index, trip)) in enumerate(zip(to_canary, chunk.iterrows(), strict=True)):
            role, revision = ("canary", state.canary) if is_canary else ("champion", state.champion)
            minutes = answers[role][number : number + 1]
            moment = START + timedelta(minutes=round_number * per_round + number)
            _log_trip(writer, str(ids[index]) + f"-r{round_number}", moment, role, revision, trip, minutes)
            ops.requests[role] += 1
        writer.close()
        # Labels are keyed by trip id; this round's requests carry a round suffix, so label them too.
        labels = month_labels(chunk, np.array([f"{ids[i]}-r{round_number}" for i in chunk.index]))
        write_labels(labels, folders.labels_dir / f"round-{round_number}.parquet")
        decision = judge_once(StateFileActions(state_path), ops, folders, score, POLICY)
        assert decision is not None
        decisions.append(decision)
        if decision["action"] in ("promote", "rollback"):
            break
    return decisions


def test_equal_canary_steps_up_and_is_promoted(world, tmp_path: Path) -> None:
    equal = replace(world["champion"], model_version="2")  # the champion's own file as version 2
    decisions = _run(world, tmp_path, equal)
    actions = [d["action"] for d in decisions]
    assert "set_percent" in actions and actions[-1] == "promote", actions
    assert actions.index("set_percent") < actions.index("promote")
    state = load_state(tmp_path / "state.json")
    assert state.champion.model_version == "2" and state.canary is None
    assert state.previous_champion == "1"
    final = decisions[-1]
    assert final["verdict"] == "pass" and final["labelled_pairs"] >= POLICY.promote_min_labelled
    assert final["offline_mismatches"] == 0  # the logged minutes are what the models give offline
    assert final["accuracy"]["mae_ratio"] == pytest.approx(1.0)
    # Recorded: every analysis in the history, the newest as latest.json, the page, no memory left.
    canary_dir = tmp_path / "canary"
    assert [d["action"] for d in decision_history(canary_dir, "2")] == actions
    assert last_decision(canary_dir)["action"] == "promote"
    page = (canary_dir / REPORT_FILE).read_text()
    assert "Canary: version 2" in page and "<svg" in page and "<script" not in page
    assert not (canary_dir / MEMORY_FILE).exists()


def test_predictions_15_percent_too_high_are_rolled_back_on_accuracy(world, tmp_path: Path) -> None:
    decisions = _run(world, tmp_path, world["too_high"])
    final = decisions[-1]
    assert final["action"] == "rollback" and final["verdict"] == "fail"
    assert "accuracy" in final["reason"] and final["accuracy"]["ratio_ci"][0] > POLICY.mae_margin + 1
    assert final["percent"] == 10  # caught at the first step, before more traffic was risked
    state = load_state(tmp_path / "state.json")
    assert state.canary is None and state.champion.model_version == "1"


def test_no_canary_means_no_analysis_and_the_last_verdict_stays(world, tmp_path: Path) -> None:
    decisions = _run(world, tmp_path, world["too_high"])
    folders = JudgeFolders(tmp_path / "log", tmp_path / "labels", tmp_path / "canary")
    again = judge_once(
        StateFileActions(tmp_path / "state.json"), CountingOps(), folders, local_scorer(), POLICY
    )
    assert again is None
    assert last_decision(folders.canary_dir) == decisions[-1]
    lines = (folders.canary_dir / HISTORY_FILE).read_text().splitlines()
    assert len(lines) == len(decisions)


def test_a_second_replay_of_a_month_is_the_canarys_own_traffic(world, tmp_path: Path) -> None:
    """The canary's life is what was logged after it was deployed: the earlier replay's 28 days of
    event time neither count as its evidence nor run its 14-day deadline down."""
    equal = replace(world["champion"], model_version="2")
    decisions = _run(world, tmp_path, equal, replayed_before=True)
    assert decisions[-1]["action"] == "promote", decisions[-1]["reason"]
    assert decisions[-1]["canary_started_event"] == START.isoformat()  # the replay starts the month again
    first = decisions[0]
    assert first["logged_since_canary"] <= 400  # one round, not the month logged before


def _log_in_order(world, folders: JudgeFolders, canary: Revision, order: np.ndarray) -> None:
    """The first 1,500 trips logged (20% answered by ``canary``) in ``order``, one segment per 100."""
    trips, ids, score = world["trips"].iloc[:1500], world["ids"][:1500], local_scorer()
    to_canary = np.random.default_rng(3).random(len(trips)) < 0.2
    answers = {"champion": score(world["champion"]).predict(trips), "canary": score(canary).predict(trips)}
    for block in np.array_split(order, 15):
        writer = PredictionLogWriter(folders.prediction_log_dir)
        for number in block:
            role, revision = ("canary", canary) if to_canary[number] else ("champion", world["champion"])
            trip = trips.iloc[number]
            moment = START + timedelta(minutes=int(number))
            _log_trip(
                writer, str(ids[number]), moment, role, revision, trip, answers[role][number : number + 1]
            )
        writer.close()
    write_labels(month_labels(trips, ids), folders.labels_dir / "green-2021-02.parquet")


def test_the_verdict_depends_on_the_trips_not_on_the_order_the_log_holds_them_in(
    world, tmp_path: Path
) -> None:
    """Two predictors' flushes interleave differently on every run; a replay's canary decision must not."""
    canary = world["too_high"]
    decisions = []
    clock = START + timedelta(days=2)  # the caller's event clock, later than any logged trip
    for name, order in (
        ("forward", np.arange(1500)),
        ("shuffled", np.random.default_rng(9).permutation(1500)),
    ):
        folders = JudgeFolders(
            tmp_path / name / "log", tmp_path / name / "labels", tmp_path / name / "canary"
        )
        state_path = tmp_path / name / "state.json"
        save_state(
            state_path, deploy(deploy(DeploymentState(), world["champion"], 0).state, canary, 20).state
        )
        # Deployed "before" the traffic: the judge counts what was logged after the state changed.
        _log_in_order(world, folders, canary, order)
        ops = CountingOps()
        ops.requests = {"champion": 1200, "canary": 300}
        decision = judge_once(
            StateFileActions(state_path), ops, folders, local_scorer(), POLICY, event_now=clock
        )
        assert decision is not None
        decisions.append(decision)
    forward, shuffled = decisions
    assert forward["labelled_pairs"] == shuffled["labelled_pairs"] == 1500
    assert forward["accuracy"] == shuffled["accuracy"]  # the same bootstrap interval, to the last digit
    assert forward["event_time"] == shuffled["event_time"] == clock.isoformat()
