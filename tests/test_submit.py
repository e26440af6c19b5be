"""`taxi-mlops submit`: the cluster pipeline reaches Kubeflow Pipelines as a run or a recurring run.

The KFP API is faked (no cluster here): a real HTTP server on 127.0.0.1 that
the real ``kfp.Client`` talks to, answering the few v2beta1 endpoints it uses
and recording every request, which the tests assert.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from click.testing import CliRunner
from support.fake_json_api import serve_json

from pipelines.cli import main
from pipelines.kfp_components import PIPELINE_IMAGE
from pipelines.training_pipeline import PIPELINE_NAME

pytestmark = pytest.mark.timeout(120)


@dataclass
class FakeKfp:
    requests: list[tuple[str, str, dict[str, list[str]], Any]] = field(default_factory=list)
    experiments: list[dict] = field(default_factory=list)

    def handle(self, method: str, url: str, body: Any) -> tuple[int, dict]:
        parts = urlsplit(url)
        self.requests.append((method, parts.path, parse_qs(parts.query), body))
        route = (method, parts.path)
        if route == ("GET", "/apis/v2beta1/healthz"):
            return 200, {"multi_user": False}
        if route == ("GET", "/apis/v2beta1/experiments"):
            wanted = json.loads(parse_qs(parts.query)["filter"][0])["predicates"][0]["stringValue"]
            found = [e for e in self.experiments if e["display_name"] == wanted]
            return 200, {"experiments": found, "total_size": len(found)} if found else {}
        if route == ("POST", "/apis/v2beta1/experiments"):
            experiment = {"experiment_id": f"exp-{len(self.experiments) + 1}", **body}
            self.experiments.append(experiment)
            return 200, experiment
        if route == ("POST", "/apis/v2beta1/runs"):
            return 200, {"run_id": "run-1", "display_name": body["display_name"], "state": "PENDING"}
        if route == ("POST", "/apis/v2beta1/recurringruns"):
            return 200, {
                "recurring_run_id": "rr-1",
                "display_name": body["display_name"],
                "status": "ENABLED",
            }
        return 404, {"error": f"no route {method} {parts.path}", "code": 5}


@pytest.fixture
def fake_kfp(tmp_path, monkeypatch) -> Iterator[tuple[FakeKfp, str]]:
    # kfp.Client keeps a context file under ~/.config/kfp; keep it out of the real home.
    from kfp.client import client as kfp_client

    monkeypatch.setattr(kfp_client.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp" / "context.json"))
    fake = FakeKfp()

    def handle(method: str, path: str, headers: Any, raw: str) -> tuple[int, Any]:
        return fake.handle(method, path, json.loads(raw) if raw else None)

    with serve_json(handle) as url:
        yield fake, url


def _routes(fake: FakeKfp) -> list[tuple[str, str]]:
    return [(method, path) for method, path, _, _ in fake.requests]


def _check_cluster_spec(body: dict, name: str = PIPELINE_NAME) -> None:
    """The run carries the cluster build inline: MinIO root, project image, S3 secret on every task."""
    spec = body["pipeline_spec"]
    ir = spec["pipeline_spec"]
    assert ir["pipelineInfo"]["name"] == name
    assert ir["defaultPipelineRoot"] == "s3://kfp-artifacts/pipeline-root"
    assert {e["container"]["image"] for e in ir["deploymentSpec"]["executors"].values()} == {PIPELINE_IMAGE}
    platform = spec["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(platform) == set(ir["deploymentSpec"]["executors"])
    assert {p["secretAsEnv"][0]["secretName"] for p in platform.values()} == {"taxi-mlops-s3"}


def test_submit_starts_one_run_with_the_pipeline_parameters(fake_kfp):
    fake, host = fake_kfp
    args = ["submit", "--host", host + "/", "--experiment", "nightly", "--run-name", "try-1"]
    args += [
        "--candidates",
        "ridge,xgboost",
        "--param",
        "xgboost.n_estimators=50",
        "--train-month",
        "2021-03",
    ]
    args += [
        "--val-month",
        "2021-04",
        "--color",
        "yellow",
        "--canary-percent",
        "10",
        "--s3-uri",
        "s3://tlc-data",
    ]
    result = CliRunner().invoke(main, args, env={"TAXI_MLOPS_EXPERIMENT": "", "TAXI_MLOPS_MODEL_NAME": ""})
    assert result.exit_code == 0, result.output
    assert f"started run run-1: {host}/#/runs/details/run-1" in result.output
    assert _routes(fake) == [
        ("GET", "/apis/v2beta1/healthz"),  # our fast reachability check
        ("GET", "/apis/v2beta1/healthz"),  # kfp.Client: single- or multi-user?
        ("GET", "/apis/v2beta1/experiments"),  # the experiment by name: absent
        ("POST", "/apis/v2beta1/experiments"),
        ("POST", "/apis/v2beta1/runs"),
    ]
    assert fake.requests[3][3] == {"display_name": "nightly", "namespace": ""}  # single-user KFP
    run = fake.requests[4][3]
    assert run["display_name"] == "try-1"
    assert run["experiment_id"] == "exp-1"
    assert run["runtime_config"]["parameters"] == {
        "color": "yellow",
        "train_month": "2021-03",
        "val_month": "2021-04",
        "candidates": [{"name": "ridge", "params": {}}, {"name": "xgboost", "params": {"n_estimators": 50}}],
        "min_improvement": 0.01,
        "canary_percent": 10,
        "experiment": "taxi-trip-duration",
        "model_name": "taxi-trip-duration",
        "s3_uri": "s3://tlc-data",
    }
    _check_cluster_spec(run)


def test_submit_with_a_schedule_creates_a_recurring_run(fake_kfp):
    fake, host = fake_kfp
    fake.experiments.append({"experiment_id": "exp-7", "display_name": "taxi-trip-duration"})
    args = ["submit", "--host", host, "--schedule", "0 0 3 * * *", "--candidates", "ridge", "--no-deploy"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert f"started recurring run rr-1: {host}/#/recurringrun/details/rr-1" in result.output
    assert _routes(fake) == [
        ("GET", "/apis/v2beta1/healthz"),
        ("GET", "/apis/v2beta1/healthz"),
        ("GET", "/apis/v2beta1/experiments"),  # found: not created again
        ("POST", "/apis/v2beta1/recurringruns"),
    ]
    recurring = fake.requests[3][3]
    assert recurring["experiment_id"] == "exp-7"
    assert recurring["display_name"] == f"{PIPELINE_NAME} (0 0 3 * * *)"
    assert recurring["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * *"}}
    assert recurring["mode"] == "ENABLE"
    assert recurring["max_concurrency"] == 1  # never two runs at once: they share the champion
    assert recurring["no_catchup"] is True
    assert recurring["runtime_config"]["parameters"]["inference_service"] == ""  # --no-deploy
    _check_cluster_spec(recurring)


def test_a_five_field_cron_is_refused_before_any_request(fake_kfp):
    fake, host = fake_kfp
    result = CliRunner().invoke(main, ["submit", "--host", host, "--schedule", "0 3 * * *"])
    assert result.exit_code == 1
    assert "KFP cron has 6 fields, seconds first" in result.output
    assert fake.requests == []


def test_an_unreachable_kfp_is_one_clear_line():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = CliRunner().invoke(main, ["submit", "--host", f"http://127.0.0.1:{port}"])
    assert result.exit_code == 1
    assert result.output.startswith(f"error: cannot reach the KFP API at http://127.0.0.1:{port} (")
    assert "http://localhost:8880" in result.output


# --------------------------------------------------------------------------- the monitoring pipeline


def test_submit_monitoring_with_a_schedule_creates_the_hourly_recurring_run(fake_kfp):
    from pipelines.monitoring_pipeline import PIPELINE_NAME as MONITORING_NAME

    fake, host = fake_kfp
    args = ["submit", "--host", host, "--pipeline", "monitoring", "--schedule", "0 0 * * * *"]
    result = CliRunner().invoke(main, [*args, "--last-hours", "6"], env={"TAXI_MLOPS_EXPERIMENT": ""})
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
    assert recurring["display_name"] == f"{MONITORING_NAME} (0 0 * * * *)"
    assert recurring["trigger"] == {"cron_schedule": {"cron": "0 0 * * * *"}}
    assert recurring["max_concurrency"] == 1  # each run appends to the verdict history it downloaded
    assert recurring["no_catchup"] is True
    # Only what the monitoring pipeline takes; the rest are the cluster build's defaults.
    assert recurring["runtime_config"]["parameters"] == {
        "experiment": "taxi-trip-duration",
        "model_name": "taxi-trip-duration",
        "last_hours": 6.0,
    }
    _check_cluster_spec(recurring, MONITORING_NAME)
    ir = recurring["pipeline_spec"]["pipeline_spec"]
    defaults = {
        name: spec.get("defaultValue") for name, spec in ir["root"]["inputDefinitions"]["parameters"].items()
    }
    assert defaults["prediction_log_uri"] == "s3://monitoring/prediction-log"
    assert defaults["labels_uri"] == "s3://monitoring/labels"
    assert defaults["monitor_uri"] == "s3://monitoring/monitor"
    assert defaults["model_alias"] == "champion" and defaults["model_version"] == ""
    assert defaults["tracking_uri"] == "http://mlflow.taxi-mlops.svc.cluster.local:5000"


def test_submit_monitoring_once_for_one_version(fake_kfp):
    fake, host = fake_kfp
    fake.experiments.append({"experiment_id": "exp-3", "display_name": "taxi-trip-duration"})
    args = ["submit", "--host", host, "--pipeline", "monitoring", "--version", "3", "--run-name", "v3-now"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "started run run-1" in result.output
    run = fake.requests[-1][3]
    assert fake.requests[-1][1] == "/apis/v2beta1/runs"
    assert run["display_name"] == "v3-now"
    assert run["runtime_config"]["parameters"]["model_version"] == "3"
    assert "last_hours" not in run["runtime_config"]["parameters"]  # the pipeline's default window


@pytest.mark.parametrize(
    ("args", "refused"),
    [
        (["--pipeline", "monitoring", "--candidates", "ridge"], "--candidates"),
        (["--pipeline", "monitoring", "--no-deploy"], "--no-deploy"),
        (["--last-hours", "6"], "--last-hours"),  # training is the default pipeline
        (["--pipeline", "training", "--version", "2"], "--version"),
    ],
)
def test_an_option_of_the_other_pipeline_is_refused_before_any_request(fake_kfp, args, refused):
    fake, host = fake_kfp
    result = CliRunner().invoke(main, ["submit", "--host", host, *args])
    assert result.exit_code == 2
    assert f"{refused} is not an option of the" in result.output
    assert fake.requests == []


# --------------------------------------------------------------------------- the canary analysis pipeline


def test_submit_canary_with_a_schedule_creates_the_five_minute_recurring_run(fake_kfp):
    from pipelines.canary_pipeline import PIPELINE_NAME as CANARY_NAME

    fake, host = fake_kfp
    args = ["submit", "--host", host, "--pipeline", "canary", "--schedule", "0 */5 * * * *"]
    args += ["--canary-policy", "steps=10,50", "--canary-policy", "mae_margin=0.03"]
    result = CliRunner().invoke(main, args, env={"TAXI_MLOPS_EXPERIMENT": "", "TAXI_MLOPS_MODEL_NAME": ""})
    assert result.exit_code == 0, result.output
    assert f"started recurring run rr-1: {host}/#/recurringrun/details/rr-1" in result.output
    assert _routes(fake)[-1] == ("POST", "/apis/v2beta1/recurringruns")
    recurring = fake.requests[-1][3]
    assert recurring["display_name"] == f"{CANARY_NAME} (0 */5 * * * *)"
    assert recurring["trigger"] == {"cron_schedule": {"cron": "0 */5 * * * *"}}
    assert recurring["max_concurrency"] == 1  # one analysis at a time: they share the judge's files
    assert recurring["no_catchup"] is True
    assert recurring["runtime_config"]["parameters"] == {
        "experiment": "taxi-trip-duration",
        "model_name": "taxi-trip-duration",
        "policy_overrides": '{"steps": "10,50", "mae_margin": "0.03"}',
    }
    _check_cluster_spec(recurring, CANARY_NAME)
    # What the task will make of the parameter: the overridden policy.
    from pipelines.steps.canary import parse_policy

    policy = parse_policy(recurring["runtime_config"]["parameters"]["policy_overrides"])
    assert [step.percent for step in policy.steps] == [10, 50] and policy.mae_margin == 0.03


def test_submit_canary_once_without_overrides_passes_only_the_names(fake_kfp):
    fake, host = fake_kfp
    result = CliRunner().invoke(main, ["submit", "--host", host, "--pipeline", "canary"])
    assert result.exit_code == 0, result.output
    assert "started run run-1" in result.output
    assert fake.requests[-1][3]["runtime_config"]["parameters"] == {
        "experiment": "taxi-trip-duration",
        "model_name": "taxi-trip-duration",
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pipeline", "canary", "--canary-policy", "steps=10,oops"], "is not a list of percents"),
        (
            ["--pipeline", "canary", "--canary-policy", "nonsense=1"],
            "'nonsense' is not a canary policy field",
        ),
        (
            ["--pipeline", "canary", "--last-hours", "6"],
            "--last-hours is not an option of the canary pipeline",
        ),
        (["--pipeline", "canary", "--candidates", "ridge"], "--candidates is not an option of the canary"),
        (["--pipeline", "monitoring", "--canary-policy", "steps=10"], "--canary-policy is not an option of"),
        (["--canary-policy", "steps=10"], "--canary-policy is not an option of the training pipeline"),
    ],
)
def test_a_bad_canary_submission_is_refused_before_any_request(fake_kfp, args, message):
    fake, host = fake_kfp
    result = CliRunner().invoke(main, ["submit", "--host", host, *args])
    assert result.exit_code == 2
    assert message in result.output
    assert fake.requests == []
