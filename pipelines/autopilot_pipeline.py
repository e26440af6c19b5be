"""The autopilot pipeline: monitor -> retraining decision -> ``dsl.If(retrain)`` -> the training pipeline.

The cluster's closed loop (issue #12), as one recurring run: the ``monitor`` task judges the
newest window of the prediction log and stores the verdict; ``retrain_decision``
(``pipelines/steps/retrain_decision.py``) runs the retraining policy on the champion's verdicts,
labels and age and records its decision with the reason; only when it says ``retrain`` does the
training pipeline run, as a sub-pipeline of this one, on the decision's event-time windows
(train on the newest labelled weeks, hold out the newest days). Its gate compares challenger and
champion on those held-out trips, register records a passing challenger, and deploy makes it the
InferenceService's canary, which the recurring canary analysis (``pipelines.canary_pipeline``)
then steps up, promotes or rolls back. The training graph is the training pipeline itself,
called like a component (KFP's pipelines-as-components), not a copy of its tasks.

A recurring autopilot run: ``taxi-mlops submit --pipeline autopilot --schedule '0 0 * * * *'``
(hourly; KFP cron has seconds first). Its ``max_concurrency=1`` (``pipelines.submit``) is the
deduplication "one retraining at a time": a run, and so its retraining, never overlaps the next
run, and an alert firing every minute cannot start anything here. The cooldown and "the same log
decided once" live in the decision log (``<monitor>/autopilot/decisions.jsonl``).

Nothing here talks to the KFP API: the retraining runs inside this run. The decision reads the
InferenceService once (a live canary counts as a retraining still running), a ``get`` that the
deploy step's Role already grants, so the pipeline's ServiceAccount needs no more than training
and monitoring already have (manifests/base/rbac).
"""

# No "from __future__ import annotations" here: KFP reads the real annotation objects.
from dataclasses import dataclass, field
from typing import List  # noqa: UP035 - KFP's signature parser wants typing.List

from kfp import compiler, dsl
from kfp.dsl.base_component import BaseComponent

from components.data.cleaning_rules import DEFAULT_MIN_ROWS
from components.names import EXPERIMENT_NAME, NAMESPACE, REGISTERED_MODEL_NAME, TLC_BASE_URL
from components.registry.versions import CHAMPION
from pipelines.kfp_components import VERDICT_OUTPUT, monitor, retrain_decision
from pipelines.monitoring_pipeline import DEFAULT_LAST_HOURS, MonitoringDefaults
from pipelines.task_settings import TaskSettings, as_is
from pipelines.training_pipeline import DEFAULT_CANDIDATES, PipelineDefaults, build_pipeline

PIPELINE_NAME = f"{REGISTERED_MODEL_NAME}-autopilot"
#: The decision kind that starts the training graph (``RetrainDecision.kind``).
RETRAIN = "retrain"
#: The recurring run the docs suggest: every hour, on the hour (KFP cron, seconds first).
SUGGESTED_SCHEDULE = "0 0 * * * *"


@dataclass(frozen=True)
class AutopilotDefaults:
    """The monitoring side's defaults and the training side's, as their own pipelines take them."""

    monitoring: MonitoringDefaults = field(default_factory=MonitoringDefaults)
    training: PipelineDefaults = field(default_factory=PipelineDefaults)


def build_autopilot_pipeline(
    defaults: AutopilotDefaults = AutopilotDefaults(),
    configure_task: TaskSettings = as_is,
    pipeline_root: str | None = None,
) -> BaseComponent:
    """The pipeline with these defaults; ``configure_task`` is applied to every task, the training
    graph's included (it is built with the same function)."""
    watched, trained = defaults.monitoring, defaults.training
    training_graph = build_pipeline(trained, configure_task)

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description=(
            "Monitor the newest window of served predictions, let the retraining policy decide (with its "
            "reason, recorded), and on 'retrain' run the training pipeline on the decision's event-time "
            "windows: gate against the champion on the newest held-out trips, register, deploy a canary."
        ),
        pipeline_root=pipeline_root,
    )
    def autopilot_pipeline(
        tracking_uri: str = watched.tracking_uri,
        experiment: str = EXPERIMENT_NAME,
        artifact_location: str = "",
        model_name: str = REGISTERED_MODEL_NAME,
        last_hours: float = DEFAULT_LAST_HOURS,
        prediction_log_uri: str = watched.prediction_log_uri,
        labels_uri: str = watched.labels_uri,
        monitor_uri: str = watched.monitor_uri,
        retraining_policy: str = "",
        requested: str = "",
        color: str = "green",
        allow_missing_months: bool = True,
        candidates: List[dict] = DEFAULT_CANDIDATES,  # noqa: UP006 - KFP reads the default as data
        min_improvement: float = 0.01,
        data_dir: str = "",
        s3_uri: str = "",
        cache_dir: str = "",
        tlc_base_url: str = TLC_BASE_URL,
        min_rows: int = DEFAULT_MIN_ROWS,
        model_store_uri: str = trained.model_store_uri,
        deployment_state_path: str = "",
        inference_service: str = trained.inference_service,
        inference_namespace: str = trained.inference_namespace or NAMESPACE,
        canary_percent: int = 20,
    ) -> str:
        """Returns the decision (retrain | no_retrain).

        ``retraining_policy``: a JSON object of retraining policy fields
        (components/retraining/policy.py), e.g. ``{"degraded_windows": 3, "cooldown_days": 1}``;
        empty: the defaults. ``requested``: a reason to retrain now (empty: the policy's triggers
        only). ``allow_missing_months``: a window may span a month the data source does not hold
        (on by default: the newest labelled weeks need not be whole months). The rest are the
        training pipeline's parameters; the windows come from the decision.
        """
        judged = monitor(
            tracking_uri=tracking_uri,
            experiment=experiment,
            artifact_location=artifact_location,
            model_name=model_name,
            model_alias=CHAMPION,
            model_version="",
            last_hours=last_hours,
            since="",
            until="",
            prediction_log_uri=prediction_log_uri,
            labels_uri=labels_uri,
            monitor_uri=monitor_uri,
        ).set_display_name("monitor-window")
        decided = retrain_decision(
            tracking_uri=tracking_uri,
            model_name=model_name,
            model_alias=CHAMPION,
            prediction_log_uri=prediction_log_uri,
            labels_uri=labels_uri,
            monitor_uri=monitor_uri,
            retraining_policy=retraining_policy,
            requested=requested,
            inference_service=inference_service,
            inference_namespace=inference_namespace,
            deployment_state_path=deployment_state_path,
        ).set_display_name("retrain-decision")
        # It reads the verdict the monitor task has just stored: after it, not beside it.
        decided.after(judged)
        # Both read evidence that grows between runs, and write a record: never a cached answer.
        for task in (judged, decided):
            task.set_caching_options(False)
            configure_task(task)

        with dsl.If(decided.outputs[VERDICT_OUTPUT] == RETRAIN, name="retrain"):
            training_graph(
                train_start=decided.outputs["train_start"],
                train_end=decided.outputs["train_end"],
                val_start=decided.outputs["holdout_start"],
                val_end=decided.outputs["holdout_end"],
                allow_missing_months=allow_missing_months,
                color=color,
                candidates=candidates,
                min_improvement=min_improvement,
                tracking_uri=tracking_uri,
                experiment=experiment,
                artifact_location=artifact_location,
                model_name=model_name,
                data_dir=data_dir,
                s3_uri=s3_uri,
                cache_dir=cache_dir,
                tlc_base_url=tlc_base_url,
                min_rows=min_rows,
                model_store_uri=model_store_uri,
                deployment_state_path=deployment_state_path,
                inference_service=inference_service,
                inference_namespace=inference_namespace,
                canary_percent=canary_percent,
            ).set_display_name("retrain-on-newest-data").set_caching_options(False)
        return decided.outputs[VERDICT_OUTPUT]

    return autopilot_pipeline


autopilot_pipeline = build_autopilot_pipeline()


def compile_autopilot_pipeline(path: str) -> str:
    compiler.Compiler().compile(autopilot_pipeline, package_path=path)
    return path


if __name__ == "__main__":
    print(compile_autopilot_pipeline("autopilot_pipeline.yaml"))
