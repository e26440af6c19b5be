"""MLflow tracking: one parent run per pipeline run, one nested run per candidate.

Every step receives the tracking URI and the parent run id as parameters (never
from a global), so the same code logs to sqlite on a laptop and to the MLflow
server on a cluster.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import mlflow
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from components.registry.process_owner import OWNER_TAG

PIPELINE_RUN_TAG = "taxi_mlops.pipeline_run"
KFP_JOB_TAG = "taxi_mlops.kfp_job_id"
CANDIDATE_TAG = "taxi_mlops.candidate"
# Where the register step leaves the whole run's summary, in the parent MLflow run.
SUMMARY_ARTIFACT = "pipeline/summary.json"
# What the deploy step did, as a tag on the parent MLflow run.
DEPLOYMENT_TAG = "deployment"


def client_for(tracking_uri: str) -> MlflowClient:
    mlflow.set_tracking_uri(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def ensure_experiment(tracking_uri: str, name: str, artifact_location: str | None = None) -> str:
    """Experiment id for ``name``, creating it (with ``artifact_location``) if absent."""
    client = client_for(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location)


def open_pipeline_run(
    tracking_uri: str,
    experiment: str,
    run_name: str,
    kfp_job_id: str,
    params: Mapping[str, Any],
    artifact_location: str = "",
    owner: str = "",
) -> str:
    """Start the parent run for one pipeline run and return its id (left RUNNING).

    ``owner`` (``ProcessOwner.text()``) names the process whose death ends the run:
    a RUNNING run whose owner is gone is closed FAILED by the next command
    (``components.registry.recovery``). Empty: nobody can judge it, it is left alone.

    A missing experiment is created here, with ``artifact_location`` (empty: the
    tracking server's default), so the first task to touch a fresh tracking
    store is this one and the parallel training tasks find it ready.

    The run is tagged with the KFP job id so the exit handler, which may not
    depend on other tasks, can find it again, and with ``run_name`` so the
    CLI can read the run's summary back.
    """
    client = client_for(tracking_uri)
    experiment_id = ensure_experiment(tracking_uri, experiment, artifact_location or None)
    tags = {PIPELINE_RUN_TAG: run_name or kfp_job_id, KFP_JOB_TAG: kfp_job_id}
    if owner:
        tags[OWNER_TAG] = owner
    run = client.create_run(experiment_id, run_name=run_name or None, tags=tags)
    for key, value in params.items():
        client.log_param(run.info.run_id, key, value)
    return run.info.run_id


def find_pipeline_run(tracking_uri: str, experiment: str, tag: str, value: str) -> str | None:
    """The parent run id whose ``tag`` equals ``value`` (newest first), or None."""
    client = client_for(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs(
        [found.experiment_id],
        filter_string=f"tags.`{tag}` = '{value}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def close_pipeline_run(tracking_uri: str, run_id: str, succeeded: bool, error: str = "") -> None:
    client = client_for(tracking_uri)
    if error:
        client.set_tag(run_id, "pipeline_error", error[:5000])
    status = RunStatus.to_string(RunStatus.FINISHED if succeeded else RunStatus.FAILED)
    client.set_terminated(run_id, status=status)


@contextmanager
def candidate_run(tracking_uri: str, parent_run_id: str, candidate: str) -> Iterator[str]:
    """A nested run under the pipeline's parent run; yields its id, FAILED if the body raises."""
    client = client_for(tracking_uri)
    parent = client.get_run(parent_run_id)
    run = client.create_run(
        parent.info.experiment_id,
        run_name=candidate,
        tags={"mlflow.parentRunId": parent_run_id, CANDIDATE_TAG: candidate},
    )
    try:
        yield run.info.run_id
    except BaseException:
        client.set_terminated(run.info.run_id, status="FAILED")
        raise
    client.set_terminated(run.info.run_id, status="FINISHED")


def log_run_values(
    tracking_uri: str,
    run_id: str,
    *,
    params: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
    tags: Mapping[str, str] | None = None,
) -> None:
    """Log params, metrics and tags in one batch (one round trip to the store)."""
    from mlflow.entities import Metric, Param, RunTag

    client = client_for(tracking_uri)
    now_ms = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(key, float(value), now_ms, 0) for key, value in (metrics or {}).items()],
        params=[Param(key, _param_text(value)) for key, value in (params or {}).items()],
        tags=[RunTag(key, str(value)) for key, value in (tags or {}).items()],
    )


def _param_text(value: Any) -> str:
    # MLflow caps a param value at 6000 characters; ours are short, but never fail a run on it.
    return str(value)[:6000]


MONITORING_EXPERIMENT_SUFFIX = "-monitoring"
# Where a monitoring run keeps its two documents.
MONITOR_VERDICT_ARTIFACT = "monitor.json"
MONITOR_REPORT_ARTIFACT = "report.html"
# Version tags: the newest verdict on a registered version, readable in the registry UI and by
# the canary judge without searching runs.
VERSION_VERDICT_TAG = "monitor_verdict"
VERSION_WINDOW_TAG = "monitor_window"
VERSION_RUN_TAG = "monitor_run_id"


def log_monitor_verdict(
    tracking_uri: str,
    experiment: str,
    verdict: Mapping[str, Any],
    artifact_location: str | None = None,
    *,
    model_name: str = "",
    report_html: str = "",
) -> str:
    """One finished run in ``<experiment>-monitoring`` per monitored window; returns its id.

    Tagged with the model version and the verdict (so the MLflow UI lists a version's
    windows); the effects, RMSE and coverage as metrics; the verdict JSON and, when given,
    the HTML report as artifacts. With ``model_name`` the registered version itself is
    tagged with this verdict, its window and this run (the newest verdict wins).
    """
    import json

    client = client_for(tracking_uri)
    experiment_id = ensure_experiment(
        tracking_uri, experiment + MONITORING_EXPERIMENT_SUFFIX, artifact_location
    )
    window, accuracy = verdict["window"], verdict["accuracy"]
    run = client.create_run(
        experiment_id,
        run_name=f"v{verdict['model_version']} {window['start']}..{window['end']}",
        tags={
            "model_version": str(verdict["model_version"]),
            "verdict": str(verdict["verdict"]),
            "window_start": str(window["start"]),
            "window_end": str(window["end"]),
        },
    )
    run_id = run.info.run_id
    with _finished_run(client, run_id):
        metrics = {"predictions": window["predictions"], "labelled": window["labelled"]}
        metrics.update(
            {f"{name}_effect": f["effect"] for name, f in verdict["drift"].get("features", {}).items()}
        )
        if accuracy.get("rmse") is not None:
            metrics.update({"rmse": accuracy["rmse"], "baseline_rmse": accuracy["baseline_rmse"]})
        metrics["label_coverage"] = accuracy["label_coverage"]
        log_run_values(tracking_uri, run_id, metrics=metrics)
        client.log_text(run_id, json.dumps(verdict, indent=2), MONITOR_VERDICT_ARTIFACT)
        if report_html:
            client.log_text(run_id, report_html, MONITOR_REPORT_ARTIFACT)
        if model_name:
            version = str(verdict["model_version"])
            for key, value in (
                (VERSION_VERDICT_TAG, str(verdict["verdict"])),
                (VERSION_WINDOW_TAG, f"{window['start']}..{window['end']}"),
                (VERSION_RUN_TAG, run_id),
            ):
                client.set_model_version_tag(model_name, version, key, value)
    return run_id


@contextmanager
def _finished_run(client: Any, run_id: str) -> Iterator[None]:
    """FINISHED when the block completes, FAILED if it raises: a run left RUNNING would look like
    a monitor or a judge still at work."""
    try:
        yield
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")


CANARY_EXPERIMENT_SUFFIX = "-canary"
CANARY_DECISION_ARTIFACT = "canary_decision.json"
CANARY_REPORT_ARTIFACT = "canary_report.html"


def log_canary_decision(
    tracking_uri: str,
    experiment: str,
    decision: Mapping[str, Any],
    artifact_location: str | None = None,
    *,
    model_name: str = "",
    report_html: str = "",
) -> str:
    """One finished run in ``<experiment>-canary`` per canary decision that acted; returns its id.

    Tagged with both versions, the verdict and the action (the MLflow UI lists a canary's
    steps); its figures as metrics; the decision JSON and the canary's page as artifacts. With
    ``model_name`` the canary's registered version is tagged with its newest verdict.
    """
    import json

    client = client_for(tracking_uri)
    experiment_id = ensure_experiment(tracking_uri, experiment + CANARY_EXPERIMENT_SUFFIX, artifact_location)
    run = client.create_run(
        experiment_id,
        run_name=f"v{decision['canary']} vs v{decision['champion']}: {decision['action']}",
        tags={
            "champion_version": str(decision["champion"]),
            "canary_version": str(decision["canary"]),
            "verdict": str(decision["verdict"]),
            "action": str(decision["action"]),
            "percent": str(decision["percent"]),
            "reason": str(decision.get("reason", ""))[:5000],
        },
    )
    run_id = run.info.run_id
    with _finished_run(client, run_id):
        metrics: dict[str, float] = {"labelled_pairs": float(decision.get("labelled_pairs") or 0)}
        accuracy = decision.get("accuracy") or {}
        if accuracy.get("mae_ratio") is not None:
            metrics["mae_ratio"] = float(accuracy["mae_ratio"])
            metrics["mae_ratio_low"], metrics["mae_ratio_high"] = map(float, accuracy["ratio_ci"])
        for role, figures in (decision.get("operations") or {}).items():
            metrics[f"{role}_requests"] = float(figures.get("requests") or 0)
            metrics[f"{role}_errors"] = float(figures.get("errors") or 0)
            if figures.get("p99_ms") is not None:
                metrics[f"{role}_p99_ms"] = float(figures["p99_ms"])
        log_run_values(tracking_uri, run_id, metrics=metrics)
        client.log_text(run_id, json.dumps(decision, indent=2), CANARY_DECISION_ARTIFACT)
        if report_html:
            client.log_text(run_id, report_html, CANARY_REPORT_ARTIFACT)
        if model_name:
            client.set_model_version_tag(
                model_name, str(decision["canary"]), "canary_verdict", str(decision["action"])
            )
    return run_id
