"""The compiled pipeline IR: what a KFP backend will actually run."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from components.data.cleaning_rules import DEFAULT_MIN_ROWS
from components.models.candidates import CANDIDATES
from pipelines.cli import main
from pipelines.kfp_components import PIPELINE_IMAGE
from pipelines.training_pipeline import PIPELINE_NAME

# Each component body imports its step from the step's own module in pipelines/steps/.
STEP_HOMES = {
    "exec-open-tracking-run": ("pipelines.steps.tracking_run", "open_run_step"),
    "exec-close-tracking-run": ("pipelines.steps.tracking_run", "close_run_step"),
    "exec-ingest": ("pipelines.steps.ingest", "ingest_step"),
    "exec-ingest-2": ("pipelines.steps.ingest", "ingest_step"),
    "exec-vectorize": ("pipelines.steps.vectorize", "vectorize_step"),
    "exec-train": ("pipelines.steps.train", "train_step"),
    "exec-evaluate": ("pipelines.steps.evaluate", "evaluate_step"),
    "exec-register": ("pipelines.steps.register", "register_step"),
    "exec-deploy": ("pipelines.steps.deploy", "deploy_step"),
}
EXPECTED_EXECUTORS = set(STEP_HOMES)


@pytest.fixture(scope="module")
def pipeline_ir(tmp_path_factory: pytest.TempPathFactory) -> dict:
    output = tmp_path_factory.mktemp("ir") / "training_pipeline.yaml"
    result = CliRunner().invoke(main, ["compile", "-o", str(output)])
    assert result.exit_code == 0, result.output
    return yaml.safe_load(output.read_text())


def _dag_tasks(ir: dict, component: str) -> dict:
    return ir["components"][component]["dag"]["tasks"]


def test_pipeline_parameters_and_defaults(pipeline_ir):
    assert pipeline_ir["pipelineInfo"]["name"] == PIPELINE_NAME
    params = pipeline_ir["root"]["inputDefinitions"]["parameters"]
    expected = {
        "color": "STRING",
        "train_month": "STRING",
        "val_month": "STRING",
        "train_start": "STRING",
        "train_end": "STRING",
        "val_start": "STRING",
        "val_end": "STRING",
        "allow_missing_months": "BOOLEAN",
        "candidates": "LIST",
        "min_improvement": "NUMBER_DOUBLE",
        "tracking_uri": "STRING",
        "experiment": "STRING",
        "artifact_location": "STRING",
        "model_name": "STRING",
        "data_dir": "STRING",
        "s3_uri": "STRING",
        "cache_dir": "STRING",
        "tlc_base_url": "STRING",
        "min_rows": "NUMBER_INTEGER",
        "run_name": "STRING",
        "deployment_state_path": "STRING",
        "canary_percent": "NUMBER_INTEGER",
        "model_store_uri": "STRING",
        "inference_service": "STRING",
        "inference_namespace": "STRING",
    }
    assert {name: spec["parameterType"] for name, spec in params.items()} == expected
    assert params["color"]["defaultValue"] == "green"
    # No window by default: the months are what a run reads, as before windows existed.
    for bound in ("train_start", "train_end", "val_start", "val_end"):
        assert params[bound]["defaultValue"] == "", bound
    assert params["allow_missing_months"]["defaultValue"] is False
    assert params["min_improvement"]["defaultValue"] == pytest.approx(0.01)
    assert params["min_rows"]["defaultValue"] == DEFAULT_MIN_ROWS == 1000
    # The local build uploads nothing and deploys to no InferenceService unless told to.
    assert params["model_store_uri"]["defaultValue"] == ""
    assert params["inference_service"]["defaultValue"] == ""
    assert params["inference_namespace"]["defaultValue"] == "taxi-mlops"
    default_candidates = params["candidates"]["defaultValue"]
    assert [item["name"] for item in default_candidates] == list(CANDIDATES)
    assert {"linear_regression", "lasso", "ridge", "xgboost"} <= set(CANDIDATES)


def test_task_graph(pipeline_ir):
    root_tasks = pipeline_ir["root"]["dag"]["tasks"]
    assert set(root_tasks) == {"exit-handler-1", "close-tracking-run"}
    # The exit handler closes the MLflow run whatever happens inside.
    assert root_tasks["close-tracking-run"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    body = _dag_tasks(pipeline_ir, "comp-exit-handler-1")
    assert set(body) == {
        "open-tracking-run",
        "ingest",
        "ingest-2",
        "vectorize",
        "for-loop-2",
        "evaluate",
        "register",
        "deploy",
    }
    assert set(body["deploy"]["dependentTasks"]) >= {"register"}
    assert set(body["vectorize"]["dependentTasks"]) == {"ingest", "ingest-2"}
    assert set(body["evaluate"]["dependentTasks"]) >= {"for-loop-2", "ingest-2", "open-tracking-run"}
    assert set(body["register"]["dependentTasks"]) >= {"evaluate"}
    # register builds the reference profile from both months: training features, validation answers.
    months = body["register"]["inputs"]["artifacts"]
    assert months["train_trips"]["taskOutputArtifact"]["producerTask"] == "ingest"
    assert months["val_trips"]["taskOutputArtifact"]["producerTask"] == "ingest-2"


def test_both_ingest_tasks_get_the_min_rows_parameter(pipeline_ir):
    body = _dag_tasks(pipeline_ir, "comp-exit-handler-1")
    for task in ("ingest", "ingest-2"):
        given = body[task]["inputs"]["parameters"]["min_rows"]
        assert given == {"componentInputParameter": "pipelinechannel--min_rows"}, task
    ingest_inputs = pipeline_ir["components"]["comp-ingest"]["inputDefinitions"]["parameters"]
    assert ingest_inputs["min_rows"]["parameterType"] == "NUMBER_INTEGER"


_DATA_PARAMETERS = ("color", "train_month", "val_month", "train_start", "train_end", "val_start", "val_end")


def test_each_ingest_task_reads_its_side_and_gets_both_sides_windows(pipeline_ir):
    """Each ingest checks the whole plan (validation newer than training) before reading its own side."""
    body = _dag_tasks(pipeline_ir, "comp-exit-handler-1")
    for task, side in (("ingest", "train"), ("ingest-2", "val")):
        given = body[task]["inputs"]["parameters"]
        assert given["side"] == {"runtimeValue": {"constant": side}}, task
        for name in (*_DATA_PARAMETERS, "allow_missing_months"):
            assert given[name] == {"componentInputParameter": f"pipelinechannel--{name}"}, (task, name)
    ingest_inputs = pipeline_ir["components"]["comp-ingest"]["inputDefinitions"]["parameters"]
    assert ingest_inputs["allow_missing_months"]["parameterType"] == "BOOLEAN"
    assert "month" not in ingest_inputs  # the side's month is one of train_month/val_month


def test_the_mlflow_run_and_the_evaluation_report_get_the_windows(pipeline_ir):
    body = _dag_tasks(pipeline_ir, "comp-exit-handler-1")
    for task in ("open-tracking-run", "evaluate"):
        given = body[task]["inputs"]["parameters"]
        for name in _DATA_PARAMETERS:
            assert given[name] == {"componentInputParameter": f"pipelinechannel--{name}"}, (task, name)


def test_candidates_fan_out_with_parallel_for_and_are_collected(pipeline_ir):
    loop = _dag_tasks(pipeline_ir, "comp-exit-handler-1")["for-loop-2"]
    assert loop["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--candidates"
    loop_tasks = _dag_tasks(pipeline_ir, "comp-for-loop-2")
    assert set(loop_tasks) == {"train"}
    # dsl.Collected: the loop's model outputs reach evaluate as one list artifact.
    loop_outputs = pipeline_ir["components"]["comp-for-loop-2"]["outputDefinitions"]["artifacts"]
    assert loop_outputs["pipelinechannel--train-model"]["isArtifactList"] is True
    models_input = _dag_tasks(pipeline_ir, "comp-exit-handler-1")["evaluate"]["inputs"]["artifacts"]["models"]
    assert models_input["taskOutputArtifact"]["producerTask"] == "for-loop-2"
    evaluate_inputs = pipeline_ir["components"]["comp-evaluate"]["inputDefinitions"]["artifacts"]
    assert evaluate_inputs["models"]["isArtifactList"] is True


def test_every_step_runs_in_the_project_image_without_pip(pipeline_ir):
    executors = pipeline_ir["deploymentSpec"]["executors"]
    assert set(executors) == EXPECTED_EXECUTORS
    for name, executor in executors.items():
        container = executor["container"]
        assert container["image"] == PIPELINE_IMAGE, name
        script = "\n".join(container["command"] + container.get("args", []))
        assert "pip install" not in script, f"{name} would pip install at start-up"
        project_imports = [
            found
            for found in re.findall(r"^\s*from (\S+) import (\w+)$", script, flags=re.MULTILINE)
            if found[0].split(".")[0] in {"components", "serving", "pipelines"}
        ]
        assert project_imports == [STEP_HOMES[name]], name
        module, function = STEP_HOMES[name]
        assert callable(getattr(importlib.import_module(module), function)), name


def test_outputs_for_the_kfp_ui(pipeline_ir):
    evaluate_outputs = pipeline_ir["components"]["comp-evaluate"]["outputDefinitions"]["artifacts"]
    assert evaluate_outputs["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
    assert evaluate_outputs["report"]["artifactType"]["schemaTitle"] == "system.HTML"
    assert evaluate_outputs["winner"]["artifactType"]["schemaTitle"] == "system.Model"


def test_mlflow_tasks_are_never_cached(pipeline_ir):
    body = _dag_tasks(pipeline_ir, "comp-exit-handler-1")
    for task in ("open-tracking-run", "evaluate", "register", "deploy"):
        assert body[task].get("cachingOptions", {}).get("enableCache") is not True, task
    loop_tasks = _dag_tasks(pipeline_ir, "comp-for-loop-2")
    assert loop_tasks["train"].get("cachingOptions", {}).get("enableCache") is not True


def test_python_module_compiles_too(tmp_path: Path, monkeypatch):
    from pipelines.training_pipeline import compile_pipeline

    target = tmp_path / "p.yaml"
    compile_pipeline(str(target))
    assert yaml.safe_load(target.read_text())["pipelineInfo"]["name"] == PIPELINE_NAME


# --------------------------------------------------------------------------- the cluster build


@pytest.fixture(scope="module")
def cluster_docs(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """The cluster build as `taxi-mlops compile --cluster` writes it: the IR and its platform spec."""
    output = tmp_path_factory.mktemp("ir") / "cluster.yaml"
    result = CliRunner().invoke(main, ["compile", "--cluster", "-o", str(output)])
    assert result.exit_code == 0, result.output
    return list(yaml.safe_load_all(output.read_text()))


def test_cluster_build_is_the_same_graph_with_cluster_defaults(cluster_docs, pipeline_ir):
    ir = cluster_docs[0]
    assert ir["pipelineInfo"]["name"] == PIPELINE_NAME
    assert ir["root"]["dag"] == pipeline_ir["root"]["dag"]
    assert ir["components"].keys() == pipeline_ir["components"].keys()
    assert ir["defaultPipelineRoot"] == "s3://kfp-artifacts/pipeline-root"
    params = ir["root"]["inputDefinitions"]["parameters"]
    assert params.keys() == pipeline_ir["root"]["inputDefinitions"]["parameters"].keys()
    assert params["tracking_uri"]["defaultValue"] == "http://mlflow.taxi-mlops.svc.cluster.local:5000"
    assert params["model_store_uri"]["defaultValue"] == "s3://models/taxi-trip-duration"
    assert params["inference_service"]["defaultValue"] == "taxi-duration"
    assert params["inference_namespace"]["defaultValue"] == "taxi-mlops"
    assert params["deployment_state_path"]["defaultValue"] == ""
    for bound in ("train_start", "train_end", "val_start", "val_end"):  # windows: the local build's
        assert params[bound] == {"defaultValue": "", "isOptional": True, "parameterType": "STRING"}, bound


def test_cluster_build_runs_every_task_in_the_project_image_with_minio_env(cluster_docs):
    executors = cluster_docs[0]["deploymentSpec"]["executors"]
    assert set(executors) == EXPECTED_EXECUTORS
    for name, executor in executors.items():
        container = executor["container"]
        assert container["image"] == PIPELINE_IMAGE == "docker.io/taxi-mlops/pipeline:0.1.0", name
        assert container["env"] == [
            {"name": "S3_ENDPOINT_URL", "value": "http://minio.taxi-mlops.svc.cluster.local:9000"}
        ], name


def test_cluster_build_gives_every_task_the_s3_secret_and_pull_policy(cluster_docs):
    assert len(cluster_docs) == 2
    platform = cluster_docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(platform) == EXPECTED_EXECUTORS
    for name, config in platform.items():
        assert config["imagePullPolicy"] == "IfNotPresent", name
        assert len(config["secretAsEnv"]) == 1, name
        secret = config["secretAsEnv"][0]
        assert secret["secretNameParameter"] == {"runtimeValue": {"constant": "taxi-mlops-s3"}}, name
        assert secret["optional"] is False, name
        assert secret["keyToEnv"] == [
            {"secretKey": "AWS_ACCESS_KEY_ID", "envVar": "AWS_ACCESS_KEY_ID"},
            {"secretKey": "AWS_SECRET_ACCESS_KEY", "envVar": "AWS_SECRET_ACCESS_KEY"},
        ], name


def test_local_build_has_no_cluster_settings(tmp_path: Path):
    from pipelines.training_pipeline import compile_pipeline

    docs = list(yaml.safe_load_all(Path(compile_pipeline(str(tmp_path / "p.yaml"))).read_text()))
    assert len(docs) == 1  # no platform spec
    assert "defaultPipelineRoot" not in docs[0]
    for executor in docs[0]["deploymentSpec"]["executors"].values():
        assert "env" not in executor["container"]


def test_deploy_and_register_receive_the_cluster_parameters(cluster_docs):
    body = _dag_tasks(cluster_docs[0], "comp-exit-handler-1")
    deploy_inputs = body["deploy"]["inputs"]["parameters"]
    assert (
        deploy_inputs["inference_service"]["componentInputParameter"] == "pipelinechannel--inference_service"
    )
    assert (
        deploy_inputs["inference_namespace"]["componentInputParameter"]
        == "pipelinechannel--inference_namespace"
    )
    register_inputs = body["register"]["inputs"]["parameters"]
    assert register_inputs["model_store_uri"]["componentInputParameter"] == "pipelinechannel--model_store_uri"


# --------------------------------------------------------------------------- the monitoring pipeline


@pytest.fixture(scope="module")
def monitoring_ir(tmp_path_factory: pytest.TempPathFactory) -> dict:
    output = tmp_path_factory.mktemp("ir") / "monitoring.yaml"
    result = CliRunner().invoke(main, ["compile", "--pipeline", "monitoring", "-o", str(output)])
    assert result.exit_code == 0, result.output
    return yaml.safe_load(output.read_text())


def test_monitoring_pipeline_parameters_and_defaults(monitoring_ir):
    from pipelines.monitoring_pipeline import DEFAULT_LAST_HOURS
    from pipelines.monitoring_pipeline import PIPELINE_NAME as MONITORING_NAME

    assert monitoring_ir["pipelineInfo"]["name"] == MONITORING_NAME == "taxi-trip-duration-monitoring"
    params = monitoring_ir["root"]["inputDefinitions"]["parameters"]
    strings = {
        "tracking_uri", "experiment", "artifact_location", "model_name", "model_alias", "model_version",
        "since", "until", "prediction_log_uri", "labels_uri", "monitor_uri",
    }  # fmt: skip
    assert {name: spec["parameterType"] for name, spec in params.items()} == {
        **dict.fromkeys(strings, "STRING"),
        "last_hours": "NUMBER_DOUBLE",
    }
    assert params["last_hours"]["defaultValue"] == DEFAULT_LAST_HOURS == 24.0
    assert params["model_alias"]["defaultValue"] == "champion"
    # The local build names no location: the caller gives its folders.
    for name in ("prediction_log_uri", "labels_uri", "monitor_uri", "model_version", "since", "until"):
        assert params[name]["defaultValue"] == "", name
    # The pipeline's output is the verdict, for a caller that branches on it.
    assert monitoring_ir["root"]["outputDefinitions"]["parameters"]["Output"]["parameterType"] == "STRING"


def test_monitoring_pipeline_is_one_uncached_monitor_task_in_the_project_image(monitoring_ir):
    tasks = monitoring_ir["root"]["dag"]["tasks"]
    assert set(tasks) == {"monitor"}
    assert tasks["monitor"].get("cachingOptions", {}).get("enableCache") is not True
    given = tasks["monitor"]["inputs"]["parameters"]
    assert {name: ref["componentInputParameter"] for name, ref in given.items()} == {
        name: name for name in monitoring_ir["root"]["inputDefinitions"]["parameters"]
    }
    (executor,) = monitoring_ir["deploymentSpec"]["executors"].values()
    container = executor["container"]
    assert container["image"] == PIPELINE_IMAGE
    script = "\n".join(container["command"] + container.get("args", []))
    assert "pip install" not in script
    assert re.findall(r"^\s*from ((?:components|serving|pipelines)\S*) import", script, flags=re.M) == [
        "pipelines.steps.monitor"
    ]


def test_monitor_outputs_for_the_kfp_ui_and_for_later_tasks(monitoring_ir):
    outputs = monitoring_ir["components"]["comp-monitor"]["outputDefinitions"]
    schema = {name: spec["artifactType"]["schemaTitle"] for name, spec in outputs["artifacts"].items()}
    assert schema == {"verdict_json": "system.Artifact", "metrics": "system.Metrics", "report": "system.HTML"}
    assert outputs["parameters"] == {"Output": {"parameterType": "STRING"}}  # the verdict, for dsl.If


def test_monitoring_cluster_build_reads_and_writes_the_monitoring_bucket(monitoring_ir, tmp_path: Path):
    output = tmp_path / "monitoring.cluster.yaml"
    result = CliRunner().invoke(main, ["compile", "--pipeline", "monitoring", "--cluster", "-o", str(output)])
    assert result.exit_code == 0, result.output
    ir, platform = yaml.safe_load_all(output.read_text())
    assert ir["root"]["dag"] == monitoring_ir["root"]["dag"]
    assert ir["defaultPipelineRoot"] == "s3://kfp-artifacts/pipeline-root"
    params = ir["root"]["inputDefinitions"]["parameters"]
    assert params["prediction_log_uri"]["defaultValue"] == "s3://monitoring/prediction-log"
    assert params["labels_uri"]["defaultValue"] == "s3://monitoring/labels"
    assert params["monitor_uri"]["defaultValue"] == "s3://monitoring/monitor"
    assert params["tracking_uri"]["defaultValue"] == "http://mlflow.taxi-mlops.svc.cluster.local:5000"
    (executor,) = ir["deploymentSpec"]["executors"].values()
    assert executor["container"]["env"] == [
        {"name": "S3_ENDPOINT_URL", "value": "http://minio.taxi-mlops.svc.cluster.local:9000"}
    ]
    (config,) = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values()
    assert config["imagePullPolicy"] == "IfNotPresent"
    assert config["secretAsEnv"][0]["secretNameParameter"] == {"runtimeValue": {"constant": "taxi-mlops-s3"}}


def test_compile_names_the_file_after_the_pipeline_by_default(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["compile", "--pipeline", "monitoring"])
    assert result.exit_code == 0, result.output
    assert "wrote monitoring_pipeline.yaml" in result.output
    result = CliRunner().invoke(main, ["compile"])
    assert "wrote training_pipeline.yaml" in result.output
    names = {name: yaml.safe_load((tmp_path / name).read_text())["pipelineInfo"]["name"] for name in
             ("monitoring_pipeline.yaml", "training_pipeline.yaml")}  # fmt: skip
    assert names == {
        "monitoring_pipeline.yaml": "taxi-trip-duration-monitoring",
        "training_pipeline.yaml": PIPELINE_NAME,
    }


# --------------------------------------------------------------------------- the canary analysis pipeline


@pytest.fixture(scope="module")
def canary_ir(tmp_path_factory: pytest.TempPathFactory) -> dict:
    output = tmp_path_factory.mktemp("ir") / "canary.yaml"
    result = CliRunner().invoke(main, ["compile", "--pipeline", "canary", "-o", str(output)])
    assert result.exit_code == 0, result.output
    return yaml.safe_load(output.read_text())


def test_canary_pipeline_parameters_default_to_the_clusters_names(canary_ir):
    assert canary_ir["pipelineInfo"]["name"] == "taxi-trip-duration-canary"
    params = canary_ir["root"]["inputDefinitions"]["parameters"]
    assert {name: spec["parameterType"] for name, spec in params.items()} == dict.fromkeys(
        [
            "tracking_uri", "experiment", "artifact_location", "model_name", "namespace",
            "inference_service", "prometheus_url", "policy_overrides", "prediction_log_uri",
            "labels_uri", "canary_uri",
        ],
        "STRING",
    )  # fmt: skip
    defaults = {name: spec["defaultValue"] for name, spec in params.items()}
    assert defaults == {
        "tracking_uri": "http://mlflow.taxi-mlops.svc.cluster.local:5000",
        "experiment": "taxi-trip-duration",
        "artifact_location": "",
        "model_name": "taxi-trip-duration",
        "namespace": "taxi-mlops",
        "inference_service": "taxi-duration",
        "prometheus_url": "http://prometheus.taxi-mlops.svc.cluster.local:9090",
        "policy_overrides": "",
        "prediction_log_uri": "s3://monitoring/prediction-log",
        "labels_uri": "s3://monitoring/labels",
        "canary_uri": "s3://monitoring/canary",
    }
    # The pipeline's output is the action, for a caller that branches on it.
    assert canary_ir["root"]["outputDefinitions"]["parameters"]["Output"]["parameterType"] == "STRING"


def test_canary_pipeline_is_one_uncached_analysis_task_in_the_project_image(canary_ir):
    tasks = canary_ir["root"]["dag"]["tasks"]
    assert set(tasks) == {"canary-analysis"}
    assert tasks["canary-analysis"].get("cachingOptions", {}).get("enableCache") is not True
    given = tasks["canary-analysis"]["inputs"]["parameters"]
    assert {name: ref["componentInputParameter"] for name, ref in given.items()} == {
        name: name for name in canary_ir["root"]["inputDefinitions"]["parameters"]
    }
    (executor,) = canary_ir["deploymentSpec"]["executors"].values()
    container = executor["container"]
    assert container["image"] == PIPELINE_IMAGE
    script = "\n".join(container["command"] + container.get("args", []))
    assert "pip install" not in script
    assert re.findall(r"^\s*from ((?:components|serving|pipelines)\S*) import", script, flags=re.M) == [
        "pipelines.steps.canary"
    ]
    outputs = canary_ir["components"]["comp-canary-analysis"]["outputDefinitions"]
    schema = {name: spec["artifactType"]["schemaTitle"] for name, spec in outputs["artifacts"].items()}
    assert schema == {"decision": "system.Artifact", "report": "system.HTML"}
    assert outputs["parameters"] == {"Output": {"parameterType": "STRING"}}  # the action


def test_canary_cluster_build_gets_the_minio_env_and_secret(canary_ir, tmp_path: Path):
    output = tmp_path / "canary.cluster.yaml"
    result = CliRunner().invoke(main, ["compile", "--pipeline", "canary", "--cluster", "-o", str(output)])
    assert result.exit_code == 0, result.output
    ir, platform = yaml.safe_load_all(output.read_text())
    assert ir["root"] == canary_ir["root"]  # same graph, same defaults
    assert ir["defaultPipelineRoot"] == "s3://kfp-artifacts/pipeline-root"
    (executor,) = ir["deploymentSpec"]["executors"].values()
    assert executor["container"]["env"] == [
        {"name": "S3_ENDPOINT_URL", "value": "http://minio.taxi-mlops.svc.cluster.local:9000"}
    ]
    (config,) = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values()
    assert config["imagePullPolicy"] == "IfNotPresent"
    assert config["secretAsEnv"][0]["secretNameParameter"] == {"runtimeValue": {"constant": "taxi-mlops-s3"}}


def test_compile_names_the_canary_file_after_the_pipeline(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["compile", "--pipeline", "canary"])
    assert result.exit_code == 0, result.output
    assert "wrote canary_pipeline.yaml" in result.output
    assert yaml.safe_load((tmp_path / "canary_pipeline.yaml").read_text())["pipelineInfo"]["name"] == (
        "taxi-trip-duration-canary"
    )
