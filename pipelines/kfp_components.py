"""The KFP components: thin lightweight wrappers around the steps in ``pipelines/steps/``.

Each body only imports the project and makes one call, so the code compiled
into the pipeline YAML stays tiny and the real logic lives in tested modules.
``install_kfp_package=False`` and ``base_image=PIPELINE_IMAGE``: the project's
own image already has kfp and this package, so a pod starts without pip, and
``kfp.local.SubprocessRunner(use_venv=False)`` runs the very same code in this
interpreter.
"""

# No "from __future__ import annotations" here: KFP reads the real annotation objects.
from typing import List  # noqa: UP035 - KFP's type parser needs typing.List in signatures

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from components import __version__

PIPELINE_IMAGE = f"docker.io/taxi-mlops/pipeline:{__version__}"
#: The monitor task's verdict output parameter (a component's returned str is named "Output"):
#: ``dsl.If(judged.outputs[VERDICT_OUTPUT] == "drift")``. A NamedTuple could name it "verdict",
#: but kfp.local (2.17) resolves a dsl.If on a task's output only by this name.
VERDICT_OUTPUT = "Output"


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def open_tracking_run(
    tracking_uri: str,
    experiment: str,
    run_name: str,
    kfp_job_id: str,
    color: str,
    train_month: str,
    val_month: str,
    train_start: str,
    train_end: str,
    val_start: str,
    val_end: str,
    artifact_location: str,
    mlflow_run: Output[Artifact],
) -> None:
    """Start the MLflow parent run for this pipeline run (creating the experiment if it is new).

    Its params say what each side read: ``train_month`` or ``train_window``
    (``start/end``, ISO 8601's interval), the same for ``val``.
    The run id travels as an artifact (metadata ``run_id``), not as an output
    parameter: kfp.local (2.17) replaces every task-output parameter fed into
    a ParallelFor with the loop item, while artifacts pass through intact.
    """
    import json

    from pipelines.steps.tracking_run import open_run_step

    params = {"color": color}
    for side, month, start, end in (
        ("train", train_month, train_start, train_end),
        ("val", val_month, val_start, val_end),
    ):
        params.update({f"{side}_window": f"{start}/{end}"} if start or end else {f"{side}_month": month})
    run_id = open_run_step(tracking_uri, experiment, run_name, kfp_job_id, params, artifact_location)
    mlflow_run.metadata.update({"run_id": run_id, "tracking_uri": tracking_uri, "experiment": experiment})
    with open(mlflow_run.path, "w", encoding="utf-8") as handle:
        json.dump({"run_id": run_id, "tracking_uri": tracking_uri}, handle)


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def close_tracking_run(
    tracking_uri: str, experiment: str, kfp_job_id: str, status: dsl.PipelineTaskFinalStatus
) -> None:
    """Exit handler: mark the MLflow parent run FINISHED or FAILED, whatever happened."""
    from pipelines.steps.tracking_run import close_run_step

    close_run_step(tracking_uri, experiment, kfp_job_id, status.state, status.error_message or "")


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def ingest(
    color: str,
    side: str,
    train_month: str,
    val_month: str,
    train_start: str,
    train_end: str,
    val_start: str,
    val_end: str,
    allow_missing_months: bool,
    data_dir: str,
    s3_uri: str,
    cache_dir: str,
    tlc_base_url: str,
    min_rows: int,
    trips: Output[Dataset],
) -> dict:
    """Read and clean one side's trips (``side`` train or val: its month, or its event-time window
    when ``<side>_start``/``<side>_end`` are given), keeping at least ``min_rows``; returns the report.

    Each ingest gets both sides' parameters to refuse a validation window that is not newer
    than training before it reads anything.
    """
    from pipelines.steps.ingest import ingest_step

    report = ingest_step(
        color=color,
        side=side,
        train_month=train_month,
        val_month=val_month,
        train_start=train_start,
        train_end=train_end,
        val_start=val_start,
        val_end=val_end,
        allow_missing_months=allow_missing_months,
        data_dir=data_dir,
        s3_uri=s3_uri,
        cache_dir=cache_dir,
        tlc_base_url=tlc_base_url,
        min_rows=min_rows,
        trips_path=trips.path,
    )
    trips.metadata.update(report)
    return report


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def vectorize(
    train_trips: Input[Dataset],
    val_trips: Input[Dataset],
    train_matrix: Output[Dataset],
    val_matrix: Output[Dataset],
    vectorizer: Output[Model],
) -> None:
    """Fit the PU_DO + trip_distance vectorizer on the training month; transform both months."""
    from pipelines.steps.vectorize import vectorize_step

    # The matrices carry their data lineage (file, sha256, row counts) on to training.
    lineage = {"data": [dict(train_trips.metadata), dict(val_trips.metadata)]}
    train_matrix.metadata.update(lineage)
    val_matrix.metadata.update(lineage)
    shape = vectorize_step(
        train_trips_path=train_trips.path,
        val_trips_path=val_trips.path,
        train_matrix_path=train_matrix.path,
        val_matrix_path=val_matrix.path,
        vectorizer_path=vectorizer.path,
    )
    vectorizer.metadata.update(shape)


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def train(
    candidate: dict,
    train_matrix: Input[Dataset],
    val_matrix: Input[Dataset],
    vectorizer: Input[Model],
    mlflow_run: Input[Artifact],
    model: Output[Model],
) -> None:
    """Fit one candidate (a ParallelFor iteration)."""
    from pipelines.steps.train import train_step

    result = train_step(
        candidate=candidate,
        train_matrix_path=train_matrix.path,
        val_matrix_path=val_matrix.path,
        vectorizer_path=vectorizer.path,
        data_reports=train_matrix.metadata.get("data", []),
        tracking_uri=mlflow_run.metadata["tracking_uri"],
        parent_run_id=mlflow_run.metadata["run_id"],
        model_path=model.path,
    )
    model.metadata.update(
        {
            "candidate": result["name"],
            "rmse": result["rmse"],
            "mae": result["mae"],
            "train_seconds": result["train_seconds"],
            "mlflow_run_id": result["mlflow_run_id"],
        }
    )


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def evaluate(
    models: Input[List[Model]],  # noqa: UP006
    val_trips: Input[Dataset],
    mlflow_run: Input[Artifact],
    model_name: str,
    min_improvement: float,
    color: str,
    train_month: str,
    val_month: str,
    train_start: str,
    train_end: str,
    val_start: str,
    val_end: str,
    metrics: Output[Metrics],
    report: Output[HTML],
    winner: Output[Model],
    evaluation: Output[Artifact],
) -> None:
    """Score candidates and the champion on the validation trips (month or window), gate the winner.

    The evaluation travels as a JSON artifact: it holds nulls (no champion
    yet), which KFP parameters cannot carry.
    """
    import json

    from pipelines.steps.evaluate import evaluate_step

    # The report names the data each side read: its month, or its window (start/end).
    context = {"color": color}
    for side, month, start, end in (
        ("train", train_month, train_start, train_end),
        ("val", val_month, val_start, val_end),
    ):
        context.update({f"{side}_window": f"{start}/{end}"} if start or end else {f"{side}_month": month})
    context["mlflow_run"] = mlflow_run.metadata["run_id"]
    summary = evaluate_step(
        model_paths=[candidate_model.path for candidate_model in models],
        val_trips_path=val_trips.path,
        tracking_uri=mlflow_run.metadata["tracking_uri"],
        parent_run_id=mlflow_run.metadata["run_id"],
        model_name=model_name,
        min_improvement=min_improvement,
        report_path=report.path,
        winner_path=winner.path,
        context=context,
    )
    for row in summary["candidates"]:
        metrics.log_metric(f"{row['name']}_rmse", round(row["rmse"], 4))
        metrics.log_metric(f"{row['name']}_mae", round(row["mae"], 4))
    gate = summary["gate"]
    metrics.log_metric("winner_rmse", round(gate["challenger_rmse"], 4))
    if gate["champion_rmse"] is not None:
        metrics.log_metric("champion_rmse", round(gate["champion_rmse"], 4))
    metrics.log_metric("gate_passed", 1.0 if gate["passed"] else 0.0)
    winner.metadata.update({"candidate": summary["winner"], "rmse": gate["challenger_rmse"]})
    evaluation.metadata.update({"winner": summary["winner"], "gate_passed": gate["passed"]})
    with open(evaluation.path, "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2)


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def register(
    winner: Input[Model],
    evaluation: Input[Artifact],
    val_trips: Input[Dataset],
    train_trips: Input[Dataset],
    mlflow_run: Input[Artifact],
    model_name: str,
    model_store_uri: str,
    summary: Output[Artifact],
) -> None:
    """Register the winner in MLflow when the gate passed, with its reference profile; writes the summary.

    With a ``model_store_uri`` (s3://models/<model_name>) the model file is
    uploaded there first, for the cluster's predictor to load.
    """
    import json

    from pipelines.steps.register import register_step

    with open(evaluation.path, encoding="utf-8") as handle:
        evaluated = json.load(handle)
    result = register_step(
        winner_path=winner.path,
        evaluation=evaluated,
        val_trips_path=val_trips.path,
        train_trips_path=train_trips.path,
        tracking_uri=mlflow_run.metadata["tracking_uri"],
        parent_run_id=mlflow_run.metadata["run_id"],
        model_name=model_name,
        model_store_uri=model_store_uri,
    )
    registration = result["registration"]
    summary.metadata.update(
        {"model_version": registration["model_version"] or "", "alias": registration["alias"] or ""}
    )
    with open(summary.path, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2)


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def deploy(
    summary: Input[Artifact],
    mlflow_run: Input[Artifact],
    model_name: str,
    deployment_state_path: str,
    inference_service: str,
    inference_namespace: str,
    canary_percent: int,
) -> str:
    """Roll the newly registered version out as a canary (the first one ever as champion).

    On a cluster (``inference_service`` names the InferenceService) through the
    Kubernetes API; local runs pass the deployment state file that
    ``taxi-mlops serve`` follows. With neither, nothing is deployed here.
    """
    import json

    from pipelines.steps.deploy import deploy_step

    with open(summary.path, encoding="utf-8") as handle:
        registration = json.load(handle)["registration"]
    return deploy_step(
        registration=registration,
        tracking_uri=mlflow_run.metadata["tracking_uri"],
        parent_run_id=mlflow_run.metadata["run_id"],
        model_name=model_name,
        deployment_state_path=deployment_state_path,
        inference_service=inference_service,
        inference_namespace=inference_namespace,
        canary_percent=canary_percent,
    )


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def monitor(
    tracking_uri: str,
    experiment: str,
    artifact_location: str,
    model_name: str,
    model_alias: str,
    model_version: str,
    last_hours: float,
    since: str,
    until: str,
    prediction_log_uri: str,
    labels_uri: str,
    monitor_uri: str,
    verdict_json: Output[Artifact],
    metrics: Output[Metrics],
    report: Output[HTML],
) -> str:
    """Judge a window of the prediction log against the version's reference profile; store the verdict.

    Returns the verdict (ok | drift | degraded | insufficient_data), the output
    parameter later tasks branch on (``VERDICT_OUTPUT``); the whole document
    travels as a JSON artifact (it holds nulls, which parameters cannot carry).
    """
    import json

    from pipelines.steps.monitor import MonitorRequest, WindowChoice, monitor_step

    outcome = monitor_step(
        MonitorRequest(
            tracking_uri=tracking_uri,
            experiment=experiment,
            model_name=model_name,
            prediction_log=prediction_log_uri,
            labels=labels_uri,
            monitor=monitor_uri,
            window=WindowChoice.from_text(since, until, last_hours),
            model_version=model_version,
            model_alias=model_alias,
            artifact_location=artifact_location,
            report_path=report.path,
        )
    )
    document = outcome.verdict
    with open(verdict_json.path, "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=2)
    verdict_json.metadata.update(
        {"verdict": document["verdict"], "model_version": document["model_version"], **document["window"]}
    )
    metrics.log_metric("predictions", document["window"]["predictions"])
    metrics.log_metric("labelled", document["window"]["labelled"])
    metrics.log_metric("drift_detected", 1.0 if document["drift"]["detected"] else 0.0)
    for name, feature in document["drift"].get("features", {}).items():
        metrics.log_metric(f"{name}_effect", round(feature["effect"], 4))
    accuracy = document["accuracy"]
    if accuracy["rmse"] is not None:
        metrics.log_metric("rmse", round(accuracy["rmse"], 4))
        metrics.log_metric("baseline_rmse", round(accuracy["baseline_rmse"], 4))
    metrics.log_metric("accuracy_degraded", 1.0 if accuracy["degraded"] else 0.0)
    return str(document["verdict"])


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def canary_analysis(
    tracking_uri: str,
    experiment: str,
    artifact_location: str,
    model_name: str,
    namespace: str,
    inference_service: str,
    prometheus_url: str,
    policy_overrides: str,
    prediction_log_uri: str,
    labels_uri: str,
    canary_uri: str,
    decision: Output[Artifact],
    report: Output[HTML],
) -> str:
    """One analysis of the InferenceService's canary and its action (next step, promote, rollback).

    Returns the action (set_percent | promote | rollback | hold, or none without a canary),
    the output parameter a later task branches on (``VERDICT_OUTPUT``); the decision travels
    as a JSON artifact (it holds nulls), its page as HTML. ``policy_overrides``: a JSON object
    of canary policy fields, e.g. ``{"steps": "10,25,50", "mae_margin": 0.03}``.
    """
    from pipelines.steps.canary import CanaryRequest, canary_step

    outcome = canary_step(
        CanaryRequest(
            tracking_uri=tracking_uri,
            model_name=model_name,
            namespace=namespace,
            inference_service=inference_service,
            prometheus_url=prometheus_url,
            policy_overrides=policy_overrides,
            prediction_log=prediction_log_uri,
            labels=labels_uri,
            canary=canary_uri,
            experiment=experiment,
            artifact_location=artifact_location,
            report_path=report.path,
            decision_path=decision.path,
        )
    )
    document = outcome.document
    decision.metadata.update(
        {
            key: "" if document.get(key) is None else document[key]
            for key in ("verdict", "action", "champion", "canary", "percent")
        }
    )
    if outcome.mlflow_run_id:
        decision.metadata["mlflow_run_id"] = outcome.mlflow_run_id
    return outcome.action


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def retrain_decision(
    tracking_uri: str,
    model_name: str,
    model_alias: str,
    prediction_log_uri: str,
    labels_uri: str,
    monitor_uri: str,
    retraining_policy: str,
    requested: str,
    inference_service: str,
    inference_namespace: str,
    deployment_state_path: str,
    decision: Output[Artifact],
    train_start: dsl.OutputPath(str),
    train_end: dsl.OutputPath(str),
    holdout_start: dsl.OutputPath(str),
    holdout_end: dsl.OutputPath(str),
) -> str:
    """The retraining policy's decision on the champion's verdicts, labels and age; recorded before acting.

    Returns the kind (retrain | no_retrain), the output parameter the autopilot's ``dsl.If``
    tests (``VERDICT_OUTPUT``: kfp.local resolves a condition only on "Output"). The windows a
    retraining trains and validates on are four more output parameters (ISO 8601, empty for a
    no_retrain), fed straight into the training graph's ``train_start`` .. ``val_end``; the whole
    record travels as a JSON artifact (it holds nulls). ``retraining_policy``: a JSON object of
    policy fields, e.g. ``{"degraded_windows": 3}``; ``requested``: why someone asked (empty: nobody).
    A canary live on ``inference_service`` (else in ``deployment_state_path``) counts as a
    retraining still running: nothing new starts while the judge has one to finish.
    """
    from pipelines.steps.retrain_decision import DecisionRequest, retrain_decision_step

    outcome = retrain_decision_step(
        DecisionRequest(
            tracking_uri=tracking_uri,
            model_name=model_name,
            model_alias=model_alias,
            prediction_log=prediction_log_uri,
            labels=labels_uri,
            monitor=monitor_uri,
            policy_overrides=retraining_policy,
            requested=requested,
            inference_service=inference_service,
            inference_namespace=inference_namespace,
            deployment_state_path=deployment_state_path,
            decision_path=decision.path,
        )
    )
    for path, key in (
        (train_start, "train_start"),
        (train_end, "train_end"),
        (holdout_start, "holdout_start"),
        (holdout_end, "holdout_end"),
    ):
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(outcome.windows[key])
    decision.metadata.update(
        {"kind": outcome.kind, "model_version": outcome.record["model_version"], **outcome.windows}
    )
    return outcome.kind
