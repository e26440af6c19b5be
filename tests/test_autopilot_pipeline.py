"""The cluster's closed loop: the autopilot pipeline (monitor -> retrain_decision -> dsl.If -> training).

- The retrain-decision step on real files and a real MLflow (sqlite): verdict histories that do and
  do not retrain, the cooldown across two runs through the decision log, a re-run over the same log
  deciding nothing twice, a window judged twice counted once, overlapping windows counted once, the
  champion's data end from its run's lineage params, and the same on moto's S3 as on MinIO.
- The compiled graph, local and cluster builds: the wiring from the decision's outputs into the
  training sub-pipeline's window parameters.
- What the pipeline's pods may do: the autopilot runs only the training and monitoring steps plus the
  decision, which talks to MLflow and S3, reads the InferenceService once (a live canary counts as a
  retraining running) and never calls the KFP API, so the deployer Role (get/create/patch of
  InferenceServices) stays all it needs. The Kubernetes API is faked by tests/test_cluster_rollout.py's
  recording server (no cluster here), driven by the real rollout verbs.
- kfp.local runs (``SubprocessRunner(use_venv=False)``): a calm log -> no_retrain, branch skipped;
  a decayed log -> the monitor says degraded, the decision says retrain, the training pipeline runs on
  the decision's windows (e2e).
- ``submit --pipeline autopilot --schedule``: the KFP API is faked (no cluster here) by the real
  ``kfp.Client`` talking to tests/test_submit.py's recording server.
"""

# No "from __future__ import annotations": KFP reads the test pipeline's real annotations.

import ast
import json
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from support.monitoring_state import Registered, log_frame, registered_ridge, write_segment
from test_cluster_rollout import ISVC, MODEL_NAME, _revision, fake_kube, target, tracking_uri  # noqa: F401
from test_submit import FakeKfp, _check_cluster_spec, _routes, fake_kfp  # noqa: F401 - the fixture

from components.features.trip_features import TARGET_COLUMN
from components.monitoring.labels import write_labels
from components.registry.tracking import PIPELINE_RUN_TAG, SUMMARY_ARTIFACT
from components.retraining.policy import RetrainingPolicyError
from components.storage.json_records import append_record, read_records
from pipelines.steps.retrain_decision import (
    DECISION_DIR,
    DECISION_FILE,
    DecisionRequest,
    RetrainDecisionError,
    disjoint_windows,
    lineage_data,
    parse_policy,
    retrain_decision_step,
)

REPO = Path(__file__).resolve().parent.parent
#: The step tests' log: LOG_TRIPS trips every 10 minutes from LOG_START, all labelled.
LOG_START = datetime(2021, 3, 1)
LOG_TRIPS = 3000
NEWEST = LOG_START + timedelta(minutes=10 * (LOG_TRIPS - 1))  # 2021-03-21T19:50


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> Registered:
    return registered_ridge(tmp_path_factory.mktemp("autopilot"))


def _world(registered: Registered, root: Path, trips: int = LOG_TRIPS) -> dict[str, str]:
    """A prediction log of ``trips`` labelled trips from LOG_START; empty monitor location."""
    frame = log_frame(registered, registered.val_trips.head(trips), LOG_START, timedelta(minutes=10))
    write_segment(root / "log", frame, "1")
    labels = frame[["request_id"]].assign(**{TARGET_COLUMN: registered.val_trips.head(trips)[TARGET_COLUMN]})
    write_labels(labels, root / "labels" / "green-2021-03.parquet")
    (root / "monitor").mkdir(parents=True, exist_ok=True)
    return {
        "prediction_log": str(root / "log"),
        "labels": str(root / "labels"),
        "monitor": str(root / "monitor"),
    }


def _verdict(registered: Registered, kind: str, start: str, end: str, version: str = "") -> dict:
    """A stored verdict with the monitor's parts (components/monitoring/monitor.py): a ``degraded`` one
    is worse overall and in some pickup zones (the congestion a retrained model can learn)."""
    degraded = kind == "degraded"
    return {
        "verdict": kind,
        "model_version": version or registered.version,
        "window": {"start": start, "end": end},
        "drift": {"detected": kind == "drift"},
        "accuracy": {"rmse": 9.0 if degraded else 6.0, "baseline_rmse": 6.0, "degraded": degraded},
        "segments": {
            "degraded": degraded,
            "statistic": 0.12 if degraded else 0.03,
            "threshold": 0.07,
            "moved": [{"zone": 74, "trips": 120, "slower_by": 0.25}] if degraded else [],
            "verdict": "degraded" if degraded else "ok",
        },
    }


def _history(where: dict[str, str], *verdicts: dict) -> None:
    for verdict in verdicts:
        append_record(Path(where["monitor"]) / "history.jsonl", verdict)


def _decide(registered: Registered, where: dict[str, str], **request: Any):
    return retrain_decision_step(
        DecisionRequest(
            tracking_uri=registered.tracking_uri, model_name=registered.model_name, **where, **request
        )
    )


def _decisions(where: dict[str, str]) -> list[dict]:
    return read_records(
        Path(where["monitor"]) / DECISION_DIR / DECISION_FILE, lambda text, _: json.loads(text)
    )


def _two_degraded_days(registered: Registered) -> tuple[dict, dict]:
    return (
        _verdict(registered, "degraded", "2021-03-14T00:00:00+00:00", "2021-03-17T00:00:00+00:00"),
        _verdict(registered, "degraded", "2021-03-17T00:00:00+00:00", "2021-03-20T00:00:00+00:00"),
    )


# --------------------------------------------------------------------------- the step


def test_two_degraded_windows_retrain_on_the_newest_labelled_days(registered: Registered, tmp_path: Path):
    where = _world(registered, tmp_path)
    _history(where, _verdict(registered, "ok", "2021-03-10T00:00:00+00:00", "2021-03-14T00:00:00+00:00"))
    _history(where, *_two_degraded_days(registered))
    outcome = _decide(registered, where)

    assert outcome.kind == "retrain"
    (record,) = _decisions(where)
    assert record == outcome.record
    # The outputs are the decision's windows: held out, the newest day of labels; trained on, 30 days before.
    assert outcome.windows == dict(
        zip(
            ("train_start", "train_end", "holdout_start", "holdout_end"),
            record["train_window"] + record["holdout_window"],
            strict=True,
        )
    )
    bounds = [
        datetime.fromisoformat(outcome.windows[key]) for key in ("train_start", "train_end", "holdout_end")
    ]
    assert outcome.windows["train_end"] == outcome.windows["holdout_start"]
    assert (bounds[1] - bounds[0], bounds[2] - bounds[1]) == (timedelta(days=30), timedelta(days=1))
    assert NEWEST - timedelta(hours=1) < bounds[2] <= NEWEST
    assert record["trigger"] == "degraded" and record["event_time"] == NEWEST.isoformat()
    assert record["reason"].startswith("retraining: ")
    assert record["details"] == {"change_start": "2021-03-14T00:00:00"}
    assert record["signals"]["labelled_until"] == NEWEST.isoformat()
    assert record["signals"]["labelled_since_training"] == LOG_TRIPS  # no lineage: every label is new
    assert [v["verdict"] for v in record["signals"]["verdicts"]] == ["ok", "degraded", "degraded"]
    assert record["policy"]["degraded_windows"] == 2
    assert outcome.log_location == str(tmp_path / "monitor" / DECISION_DIR / DECISION_FILE)


def test_calm_verdicts_do_not_retrain_and_say_why(registered: Registered, tmp_path: Path):
    where = _world(registered, tmp_path)
    _history(
        where,
        _verdict(registered, "ok", "2021-03-14T00:00:00+00:00", "2021-03-17T00:00:00+00:00"),
        _verdict(registered, "drift", "2021-03-17T00:00:00+00:00", "2021-03-20T00:00:00+00:00"),
        # Another version's decay says nothing about the champion.
        _verdict(registered, "degraded", "2021-03-18T00:00:00+00:00", "2021-03-19T00:00:00+00:00", "99"),
        _verdict(registered, "degraded", "2021-03-19T00:00:00+00:00", "2021-03-20T00:00:00+00:00", "99"),
    )
    outcome = _decide(registered, where)
    assert outcome.kind == "no_retrain"
    assert outcome.windows == dict.fromkeys(("train_start", "train_end", "holdout_start", "holdout_end"), "")
    (record,) = _decisions(where)
    assert record["reason"].startswith("not retraining: newest verdict drift")
    assert record["train_window"] is None and record["trigger"] is None
    # Only the champion's windows were counted.
    assert [v["verdict"] for v in record["signals"]["verdicts"]] == ["ok", "drift"]


def test_the_cooldown_holds_across_two_runs_through_the_decision_log(registered: Registered, tmp_path: Path):
    where = _world(registered, tmp_path)
    _history(where, *_two_degraded_days(registered))
    assert _decide(registered, where).kind == "retrain"

    # The next run: a day more of traffic, still degraded, but the last retraining started a day ago.
    later = log_frame(
        registered, registered.val_trips.iloc[LOG_TRIPS : LOG_TRIPS + 144], NEWEST, timedelta(minutes=10)
    )
    write_segment(Path(where["prediction_log"]), later.iloc[1:], "2")
    _history(
        where, _verdict(registered, "degraded", "2021-03-20T00:00:00+00:00", "2021-03-22T00:00:00+00:00")
    )
    second = _decide(registered, where)
    assert second.kind == "no_retrain"
    assert (
        "but the last retraining started at 2021-03-21T19:50:00: cooling down until 2021-03-23T19:50:00"
        in (second.record["reason"])
    )
    assert [r["kind"] for r in _decisions(where)] == ["retrain", "no_retrain"]


def test_a_rerun_over_the_same_log_starts_no_second_retraining(registered: Registered, tmp_path: Path):
    """Without a cooldown, and even on request: the same champion at the same event time retrains once."""
    where = _world(registered, tmp_path)
    _history(where, *_two_degraded_days(registered))
    no_cooldown = json.dumps({"cooldown_days": 0})
    assert _decide(registered, where, policy_overrides=no_cooldown).kind == "retrain"
    again = _decide(registered, where, policy_overrides=no_cooldown, requested="the on-call asked")
    assert again.kind == "no_retrain"
    assert again.record["reason"].startswith(
        f"not retraining: a retraining of version {registered.version} was already decided at event time "
        f"{NEWEST.isoformat()}"
    )
    assert again.record["signals"]["requested"] == "the on-call asked"
    assert [r["kind"] for r in _decisions(where)] == ["retrain", "no_retrain"]


def test_a_request_retrains_without_any_verdict(registered: Registered, tmp_path: Path):
    where = _world(registered, tmp_path)
    outcome = _decide(registered, where, requested="new zones map")
    assert outcome.kind == "retrain" and outcome.record["trigger"] == "requested"
    assert outcome.record["reason"] == "retraining: requested (new zones map)"


def test_a_window_judged_twice_counts_once(registered: Registered, tmp_path: Path):
    where = _world(registered, tmp_path)
    first, _ = _two_degraded_days(registered)
    _history(where, first, {**first, "evaluated_at": "later"})  # a monitor re-run over the same window
    outcome = _decide(registered, where)
    assert outcome.kind == "no_retrain"  # two degraded windows are needed, there is one
    assert outcome.record["signals"]["verdicts"] == [
        {"verdict": "degraded", "start": first["window"]["start"], "end": first["window"]["end"]}
    ]


def test_overlapping_windows_of_an_hourly_schedule_count_as_one(registered: Registered, tmp_path: Path):
    """Ten hourly runs of 24-hour windows, all degraded: one day of evidence, not ten windows."""
    where = _world(registered, tmp_path)
    ends = [datetime(2021, 3, 21, 10) + timedelta(hours=h) for h in range(10)]
    hourly = [
        _verdict(registered, "degraded", (end - timedelta(hours=24)).isoformat(), end.isoformat())
        for end in ends
    ]
    _history(where, *hourly)
    outcome = _decide(registered, where)
    assert outcome.kind == "no_retrain"  # two degraded windows are needed, there is one
    assert [v["end"] for v in outcome.record["signals"]["verdicts"]] == [ends[-1].isoformat()]


def test_disjoint_windows_walk_back_from_the_newest():
    def window(start: str, end: str, kind: str = "degraded") -> dict:
        return {"verdict": kind, "window": {"start": start, "end": end}}

    days = [window(f"2021-03-0{d}T00:00:00", f"2021-03-0{d + 1}T00:00:00") for d in range(1, 5)]
    assert disjoint_windows(days) == days
    overlapping = [days[0], window("2021-03-01T12:00:00", "2021-03-02T12:00:00", "ok"), days[1]]
    assert disjoint_windows(overlapping) == [days[0], days[1]]
    # An open window (no start) holds everything before it.
    assert disjoint_windows([days[0], window("", "2021-03-03T00:00:00")]) == [
        window("", "2021-03-03T00:00:00")
    ]
    assert disjoint_windows([]) == []


def test_lineage_params_give_the_end_of_the_newest_data():
    window_run = {
        "data.train.window": "2021-02-08T00:00:00/2021-03-10T00:00:00",
        "data.val.window": "2021-03-10T00:00:00/2021-03-20T00:00:00",
        "data.green.2021-03.source": "/data/green_tripdata_2021-03.parquet",  # a window's file: no rows
        "data.train.rows": "1234",
    }
    assert lineage_data(window_run)["data"]["val"]["end"] == "2021-03-20T00:00:00"
    month_run = {"data.green.2021-01.rows": "73851", "data.green.2021-02.rows": "61920"}
    assert lineage_data(month_run)["data"]["val"]["end"] == "2021-03-01T00:00:00"  # February's end
    mixed = {"data.train.window": "2021-01-15T00:00:00/2021-02-01T00:00:00", "data.green.2021-02.rows": "9"}
    assert lineage_data(mixed)["data"]["val"]["end"] == "2021-03-01T00:00:00"
    assert lineage_data({"candidate": "ridge"}) == {}


@pytest.fixture(scope="module")
def aged(tmp_path_factory: pytest.TempPathFactory) -> Registered:
    """A champion whose run says it saw data up to 2021-02-08 (the lineage params train writes)."""
    champion = registered_ridge(tmp_path_factory.mktemp("aged"), model_name="taxi-aged")
    client = MlflowClient(tracking_uri=champion.tracking_uri, registry_uri=champion.tracking_uri)
    run_id = client.get_model_version(champion.model_name, champion.version).run_id
    client.log_param(run_id, "data.train.window", "2021-01-01T00:00:00/2021-02-01T00:00:00")
    client.log_param(run_id, "data.val.window", "2021-02-01T00:00:00/2021-02-08T00:00:00")
    return champion


def test_an_old_champion_with_new_labels_retrains_on_age(aged: Registered, tmp_path: Path):
    where = _world(aged, tmp_path)
    starved = _decide(aged, where, policy_overrides=json.dumps({"min_new_labelled": LOG_TRIPS + 1}))
    assert starved.kind == "no_retrain"
    assert starved.record["signals"]["champion_trained_until"] == "2021-02-08T00:00:00"
    assert f"only {LOG_TRIPS} labelled trips are new (needs {LOG_TRIPS + 1})" in starved.record["reason"]
    fed = _decide(aged, where, policy_overrides=json.dumps({"min_new_labelled": 1000}))
    assert fed.kind == "retrain" and fed.record["trigger"] == "age"
    assert "the champion's training data ended 41.8 days ago (max 35)" in fed.record["reason"]


def test_an_empty_log_decides_not_to_retrain(registered: Registered, tmp_path: Path):
    where = {key: str(tmp_path / key) for key in ("prediction_log", "labels", "monitor")}
    (tmp_path / "prediction_log").mkdir()
    outcome = _decide(registered, where, requested="please")
    assert outcome.kind == "no_retrain"
    assert "prediction log is empty" in outcome.record["reason"]
    assert len(_decisions(where)) == 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ("{nope", "retraining_policy: not JSON"),
        ("[1, 2]", "retraining_policy: a JSON object of policy fields"),
        ('{"cooldown": 1}', "'cooldown' is not a retraining policy field"),
        ('{"degraded_windows": "two"}', "degraded_windows: 'two' is not an int"),
    ],
)
def test_a_bad_policy_is_refused_before_anything_is_read(overrides: str, message: str, tmp_path: Path):
    with pytest.raises(RetrainingPolicyError, match=re.escape(message)):
        parse_policy(overrides)
    where = {key: str(tmp_path / key) for key in ("prediction_log", "labels", "monitor")}
    with pytest.raises(RetrainingPolicyError):
        retrain_decision_step(
            DecisionRequest("sqlite:///nowhere.db", "m", **where, policy_overrides=overrides)
        )
    assert not (tmp_path / "monitor").exists()


def test_without_a_champion_the_step_says_what_to_do(registered: Registered, tmp_path: Path):
    where = _world(registered, tmp_path)
    with pytest.raises(
        RetrainDecisionError, match=r"no version holds the alias 'nobody'.*submit --pipeline training"
    ):
        _decide(registered, where, model_alias="nobody")
    assert _decisions(where) == []


def test_on_s3_the_decision_log_is_read_appended_and_uploaded(
    registered: Registered, s3_conn, tmp_path: Path
):
    """moto's S3 as MinIO: log, labels and verdicts in the monitoring bucket, the decision log beside them."""
    from components.names import LABELS_URI, MONITOR_URI, PREDICTION_LOG_URI
    from components.storage.object_transfer import download_file, upload_file

    local = _world(registered, tmp_path / "local")
    _history(local, *_two_degraded_days(registered))
    if not s3_conn.client().bucket_exists("monitoring"):
        s3_conn.client().make_bucket("monitoring")
    for folder, prefix in ((local["prediction_log"], PREDICTION_LOG_URI), (local["labels"], LABELS_URI)):
        for path in sorted(Path(folder).iterdir()):
            upload_file(s3_conn, path, f"{prefix}/{path.name}")
    upload_file(s3_conn, Path(local["monitor"]) / "history.jsonl", f"{MONITOR_URI}/history.jsonl")
    where = {"prediction_log": PREDICTION_LOG_URI, "labels": LABELS_URI, "monitor": MONITOR_URI}
    request = DecisionRequest(registered.tracking_uri, registered.model_name, **where)

    first = retrain_decision_step(request, s3=s3_conn)
    second = retrain_decision_step(request, s3=s3_conn)
    assert (first.kind, second.kind) == ("retrain", "no_retrain")
    assert first.log_location == f"{MONITOR_URI}/{DECISION_DIR}/{DECISION_FILE}"
    fetched = tmp_path / "fetched" / DECISION_FILE
    download_file(s3_conn, first.log_location, fetched)
    stored = read_records(fetched, lambda text, _: json.loads(text))
    assert stored == [first.record, second.record]
    assert "was already decided at event time" in second.record["reason"]


def test_a_live_canary_on_the_inference_service_counts_as_a_retraining_running(
    registered: Registered,
    fake_kube,  # noqa: F811 - the fixture imported above
    target,  # noqa: F811
    tmp_path: Path,
):
    """Its only request is one GET of the InferenceService: the Role's get is all the decision needs."""
    from serving.cluster_rollout import deploy_version, rollback_canary

    fake, _ = fake_kube
    deploy_version(target, "1", 20)
    deploy_version(target, "2", 20)  # what a passing retraining's deploy leaves: a canary at 20%
    where = _world(registered, tmp_path)  # its log was answered by version 1, the cluster's champion
    request = DecisionRequest(
        target.tracking_uri,
        MODEL_NAME,
        **where,
        requested="the on-call asked",
        inference_service="taxi-duration",
    )
    fake.requests.clear()
    held = retrain_decision_step(request, api=target.api)
    assert held.kind == "no_retrain"
    assert held.record["reason"] == (
        "not retraining: a retraining is already running (canary version 2 is being judged); one at a time"
    )
    assert fake.calls() == [("GET", ISVC)]

    rollback_canary(target)  # the judge has finished with it
    fake.requests.clear()
    assert retrain_decision_step(request, api=target.api).kind == "retrain"
    assert fake.calls() == [("GET", ISVC)]


def test_a_live_canary_in_the_local_deployment_state_counts_too(registered: Registered, tmp_path: Path):
    from serving.deployment_state import DeploymentState, deploy, save_state

    state = deploy(deploy(DeploymentState(), _revision("1"), 20).state, _revision("2"), 20).state
    save_state(tmp_path / "state.json", state)
    where = _world(registered, tmp_path)
    state_path = str(tmp_path / "state.json")
    outcome = _decide(registered, where, requested="please", deployment_state_path=state_path)
    assert outcome.kind == "no_retrain"
    assert outcome.record["signals"]["retrain_running"] == "canary version 2 is being judged"


# --------------------------------------------------------------------------- the graph


def _compiled(pipeline: Any, path: Path) -> tuple[dict, dict]:
    from kfp import compiler

    compiler.Compiler().compile(pipeline, package_path=str(path))
    documents = list(yaml.safe_load_all(path.read_text()))
    return documents[0], (documents[1] if len(documents) > 1 else {})


def _training_task(ir: dict) -> dict:
    (condition,) = [t for t in ir["root"]["dag"]["tasks"].values() if "triggerPolicy" in t]
    (training,) = ir["components"][condition["componentRef"]["name"]]["dag"]["tasks"].values()
    return training


def test_the_graph_monitor_then_decision_then_the_training_pipeline_on_its_windows(tmp_path: Path):
    from pipelines.autopilot_pipeline import PIPELINE_NAME, autopilot_pipeline
    from pipelines.training_pipeline import training_pipeline

    ir, _ = _compiled(autopilot_pipeline, tmp_path / "autopilot.yaml")
    assert ir["pipelineInfo"]["name"] == PIPELINE_NAME
    tasks = ir["root"]["dag"]["tasks"]
    assert set(tasks) == {"monitor", "retrain-decision", "condition-1"}
    assert tasks["retrain-decision"]["dependentTasks"] == ["monitor"]  # it reads the verdict just stored
    assert tasks["condition-1"]["dependentTasks"] == ["retrain-decision"]
    assert tasks["condition-1"]["triggerPolicy"]["condition"] == (
        "inputs.parameter_values['pipelinechannel--retrain-decision-Output'] == 'retrain'"
    )
    for name in ("monitor", "retrain-decision"):
        assert tasks[name]["cachingOptions"] == {}  # never a cached verdict or decision

    training = _training_task(ir)
    assert training["taskInfo"]["name"] == "retrain-on-newest-data"
    wired = {k: v["componentInputParameter"] for k, v in training["inputs"]["parameters"].items()}
    assert {k: wired[k] for k in ("train_start", "train_end", "val_start", "val_end")} == {
        "train_start": "pipelinechannel--retrain-decision-train_start",
        "train_end": "pipelinechannel--retrain-decision-train_end",
        "val_start": "pipelinechannel--retrain-decision-holdout_start",
        "val_end": "pipelinechannel--retrain-decision-holdout_end",
    }
    assert "train_month" not in wired and "val_month" not in wired  # the windows replace them
    assert wired["allow_missing_months"] == "pipelinechannel--allow_missing_months"
    # The sub-pipeline is the training pipeline itself: the same tasks.
    alone, _ = _compiled(training_pipeline, tmp_path / "training.yaml")
    nested = ir["components"][training["componentRef"]["name"]]["dag"]["tasks"]
    assert set(nested) == set(alone["root"]["dag"]["tasks"])
    outputs = ir["components"]["comp-retrain-decision"]["outputDefinitions"]
    assert set(outputs["parameters"]) == {
        "Output",
        "train_start",
        "train_end",
        "holdout_start",
        "holdout_end",
    }
    assert set(outputs["artifacts"]) == {"decision"}
    assert ir["root"]["outputDefinitions"]["parameters"]["Output"]["parameterType"] == "STRING"


def test_the_cluster_build_has_the_cluster_defaults_and_settings_on_every_task(tmp_path: Path):
    from pipelines.autopilot_pipeline import PIPELINE_NAME
    from pipelines.cluster_pipeline import PIPELINES, compile_cluster_pipeline

    path = Path(compile_cluster_pipeline(str(tmp_path / "autopilot.cluster.yaml"), "autopilot"))
    ir, platform = list(yaml.safe_load_all(path.read_text()))
    assert PIPELINES["autopilot"]().name == PIPELINE_NAME
    _check_cluster_spec({"pipeline_spec": {"pipeline_spec": ir, "platform_spec": platform}}, PIPELINE_NAME)
    defaults = {k: v.get("defaultValue") for k, v in ir["root"]["inputDefinitions"]["parameters"].items()}
    assert defaults["monitor_uri"] == "s3://monitoring/monitor"
    assert defaults["prediction_log_uri"] == "s3://monitoring/prediction-log"
    assert defaults["labels_uri"] == "s3://monitoring/labels"
    assert defaults["tracking_uri"] == "http://mlflow.taxi-mlops.svc.cluster.local:5000"
    assert defaults["inference_service"] == "taxi-duration"
    assert defaults["model_store_uri"] == "s3://models/taxi-trip-duration"
    assert defaults["retraining_policy"] == "" and defaults["requested"] == ""
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for settings in executors.values():
        assert settings["imagePullPolicy"] == "IfNotPresent"


# --------------------------------------------------------------------------- what the pods may do

KUBERNETES_CLIENTS = ("kubernetes", "serving.cluster_rollout", "serving.cluster_canary", "kfp")


def _steps_of(ir: dict) -> set[str]:
    """The step modules the compiled executors call (their bodies import ``pipelines.steps.<step>``)."""
    found: set[str] = set()
    for executor in ir["deploymentSpec"]["executors"].values():
        text = " ".join(executor["container"].get("command", []) + executor["container"].get("args", []))
        found.update(re.findall(r"from pipelines\.steps\.(\w+) import", text))
    return found


def _imports(module: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_autopilot_needs_no_grant_beyond_training_and_monitoring(tmp_path: Path):
    """The pods run as kubeflow/pipeline-runner, bound to the deployer Role only (manifests/base/rbac).

    The autopilot adds one step, the decision: MLflow, S3 and one GET of the InferenceService; the
    retraining runs inside the run, so nothing calls the KFP API; the other step that talks to
    Kubernetes is the training pipeline's deploy, whose get/create/patch the Role already grants.
    """
    from pipelines.cluster_pipeline import PIPELINES

    ir = {
        name: _compiled(PIPELINES[name](), tmp_path / f"{name}.yaml")[0]
        for name in ("autopilot", "training", "monitoring")
    }
    assert _steps_of(ir["autopilot"]) == _steps_of(ir["training"]) | _steps_of(ir["monitoring"]) | {
        "retrain_decision"
    }
    talks_to_kubernetes = {
        step
        for step in _steps_of(ir["autopilot"])
        if any(
            n.startswith(KUBERNETES_CLIENTS) for n in _imports(REPO / "pipelines" / "steps" / f"{step}.py")
        )
    }
    # deploy creates and patches; the decision only reads (its requests: the fake-API test above).
    assert talks_to_kubernetes == {"deploy", "retrain_decision"}
    decision_imports = _imports(REPO / "pipelines" / "steps" / "retrain_decision.py")
    assert "kfp" not in {name.split(".")[0] for name in decision_imports}

    role = yaml.safe_load((REPO / "manifests" / "base" / "rbac" / "role.yaml").read_text())
    assert role["rules"] == [
        {
            "apiGroups": ["serving.kserve.io"],
            "resources": ["inferenceservices"],
            "verbs": ["get", "create", "patch"],
        }
    ]
    binding = yaml.safe_load((REPO / "manifests" / "base" / "rbac" / "rolebinding.yaml").read_text())
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "pipeline-runner", "namespace": "kubeflow"}
    ]
    rbac = (REPO / "manifests" / "base" / "rbac" / "kustomization.yaml").read_text()
    assert yaml.safe_load(rbac)["resources"] == ["role.yaml", "rolebinding.yaml"]  # no Role of its own


# --------------------------------------------------------------------------- submit


def test_submit_autopilot_with_a_schedule_creates_the_hourly_recurring_run(fake_kfp):  # noqa: F811
    from pipelines.autopilot_pipeline import PIPELINE_NAME

    fake, host = fake_kfp
    args = ["submit", "--host", host, "--pipeline", "autopilot", "--schedule", "0 0 * * * *"]
    result = CliRunner().invoke(
        main_cli(), args, env={"TAXI_MLOPS_EXPERIMENT": "", "TAXI_MLOPS_MODEL_NAME": ""}
    )
    assert result.exit_code == 0, result.output
    assert f"started recurring run rr-1: {host}/#/recurringrun/details/rr-1" in result.output
    assert _routes(fake) == [
        ("GET", "/apis/v2beta1/healthz"),
        ("GET", "/apis/v2beta1/healthz"),
        ("GET", "/apis/v2beta1/experiments"),
        ("POST", "/apis/v2beta1/experiments"),
        ("POST", "/apis/v2beta1/recurringruns"),
    ]
    recurring = fake.requests[4][3]
    assert recurring["display_name"] == f"{PIPELINE_NAME} (0 0 * * * *)"
    assert recurring["trigger"] == {"cron_schedule": {"cron": "0 0 * * * *"}}
    assert recurring["mode"] == "ENABLE"
    assert recurring["max_concurrency"] == 1  # one run, and so one retraining, at a time
    assert recurring["no_catchup"] is True
    assert recurring["runtime_config"]["parameters"] == {
        "experiment": "taxi-trip-duration",
        "model_name": "taxi-trip-duration",
    }
    _check_cluster_spec(recurring, PIPELINE_NAME)


def test_submit_autopilot_refuses_the_training_pipelines_own_options(fake_kfp):  # noqa: F811
    fake, host = fake_kfp
    args = ["submit", "--host", host, "--pipeline", "autopilot", "--train-month", "2021-03"]
    result = CliRunner().invoke(main_cli(), args)
    assert result.exit_code == 2
    assert "--train-month is not an option of the autopilot pipeline" in result.output
    assert fake.requests == []


def test_compile_autopilot_writes_the_local_build(tmp_path: Path):
    output = tmp_path / "autopilot.yaml"
    result = CliRunner().invoke(main_cli(), ["compile", "--pipeline", "autopilot", "-o", str(output)])
    assert result.exit_code == 0, result.output
    ir = yaml.safe_load(output.read_text())
    assert ir["pipelineInfo"]["name"] == "taxi-trip-duration-autopilot"
    assert ir["root"]["inputDefinitions"]["parameters"]["monitor_uri"]["defaultValue"] == ""


def main_cli() -> Any:
    from pipelines.cli import main

    return main


# --------------------------------------------------------------------------- kfp.local


@pytest.fixture
def kfp_local(tmp_path: Path) -> Path:
    from kfp import local

    root = tmp_path / "kfp"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    return root


def _training_runs(registered: Registered, experiment: str) -> list:
    client = MlflowClient(tracking_uri=registered.tracking_uri, registry_uri=registered.tracking_uri)
    found = client.get_experiment_by_name(experiment)
    runs = [] if found is None else client.search_runs([found.experiment_id])
    return [run for run in runs if PIPELINE_RUN_TAG in run.data.tags]  # parents, not the candidates' runs


def _local_world(registered: Registered, root: Path, *, congested: bool) -> dict[str, str]:
    """Four weeks of March trips from the TLC files in ``root/tlc`` answered by the champion and
    labelled with their real durations. ``congested``: the trips start from ten pickup zones, and
    in three of them the answers are 40% short (those zones slowed down, the others did not) --
    a decay by zone, which the monitor calls degraded and a retrained model could learn."""
    import numpy as np
    from support.tlc_fixtures import write_tlc_dir

    from components.data.ingest import load_month

    data_dir = write_tlc_dir(root / "tlc", months=("2021-02", "2021-03"), rows=2000)
    march, _ = load_month("green", "2021-03", data_dir=data_dir)
    zones = np.array([74, 75, 41, 42, 166, 7, 82, 95, 129, 260])
    served = march.assign(PULocationID=zones[np.arange(len(march)) % len(zones)]) if congested else march
    frame = log_frame(registered, served, datetime(2021, 3, 1), timedelta(days=27) / len(march))
    if congested:
        slowed = frame["PULocationID"].isin(zones[:3]).to_numpy()
        frame.loc[slowed, "minutes"] = frame.loc[slowed, "minutes"] * 0.6
    write_segment(root / "log", frame, "1")
    write_labels(
        frame[["request_id"]].assign(**{TARGET_COLUMN: march[TARGET_COLUMN].to_numpy()}),
        root / "labels" / "green-2021-03.parquet",
    )
    return {
        "tracking_uri": registered.tracking_uri,
        "model_name": registered.model_name,
        "prediction_log_uri": str(root / "log"),
        "labels_uri": str(root / "labels"),
        "monitor_uri": str(root / "monitor"),
        "data_dir": str(data_dir),
        "tlc_base_url": "http://127.0.0.1:9/trip-data",  # nothing may be downloaded
    }


def test_a_calm_log_decides_no_retrain_and_the_training_branch_is_skipped(
    registered: Registered, kfp_local: Path, tmp_path: Path
):
    from pipelines.autopilot_pipeline import autopilot_pipeline

    arguments = _local_world(registered, tmp_path, congested=False)
    run = autopilot_pipeline(**arguments, experiment="autopilot-calm", last_hours=24.0 * 14)
    assert run.output == "no_retrain"
    (record,) = read_records(tmp_path / "monitor" / DECISION_DIR / DECISION_FILE, lambda t, _: json.loads(t))
    assert record["kind"] == "no_retrain" and record["reason"].startswith("not retraining: newest verdict ")
    assert [v["verdict"] for v in record["signals"]["verdicts"]] in (["ok"], ["drift"])
    assert _training_runs(registered, "autopilot-calm") == []  # the training pipeline never opened a run
    assert not list(kfp_local.rglob("vectorizer"))  # nor wrote any of its artifacts
    (artifact,) = [p for p in kfp_local.rglob("decision") if p.is_file()]
    assert json.loads(artifact.read_text()) == record


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_a_decayed_log_is_judged_degraded_and_retrains_on_the_decisions_windows(
    registered: Registered, kfp_local: Path, tmp_path: Path
):
    from pipelines.autopilot_pipeline import autopilot_pipeline

    arguments = _local_world(registered, tmp_path, congested=True)
    policy = {"degraded_windows": 1, "train_days": 21, "holdout_days": 6, "min_post_change_days": 6}
    run = autopilot_pipeline(
        **arguments,
        experiment="autopilot-decay",
        last_hours=24.0 * 14,
        retraining_policy=json.dumps(policy),
        candidates=[{"name": "linear_regression", "params": {}}, {"name": "ridge", "params": {}}],
        min_rows=200,
        min_improvement=0.0,
    )
    assert run.output == "retrain"
    (record,) = read_records(tmp_path / "monitor" / DECISION_DIR / DECISION_FILE, lambda t, _: json.loads(t))
    assert record["trigger"] == "degraded" and record["signals"]["verdicts"][-1]["verdict"] == "degraded"
    train, holdout = record["train_window"], record["holdout_window"]
    labelled_until = datetime.fromisoformat(record["signals"]["labelled_until"])
    assert labelled_until - timedelta(hours=1) < datetime.fromisoformat(holdout[1]) <= labelled_until

    (parent,) = _training_runs(registered, "autopilot-decay")
    assert parent.info.status == "FINISHED"
    # The training pipeline read exactly the decision's windows (open_tracking_run's params).
    assert parent.data.params["train_window"] == f"{train[0]}/{train[1]}"
    assert parent.data.params["val_window"] == f"{holdout[0]}/{holdout[1]}"
    # The gate judged challenger and champion on those held-out trips; register followed its verdict.
    client = MlflowClient(tracking_uri=registered.tracking_uri, registry_uri=registered.tracking_uri)
    summary = json.loads(Path(client.download_artifacts(parent.info.run_id, SUMMARY_ARTIFACT)).read_text())
    gate = summary["gate"]
    assert gate["champion_version"] == registered.version and gate["champion_rmse"] is not None
    assert (parent.data.tags["registered_version"] != "none") is gate["passed"]
    champion = client.get_model_version_by_alias(registered.model_name, "champion")
    assert str(champion.version) == registered.version  # a challenger waits for the canary judge
    assert pd.Timestamp(train[1]) == pd.Timestamp(holdout[0])
