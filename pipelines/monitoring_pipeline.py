"""The monitoring pipeline: one ``monitor`` task judging a window of the prediction log.

The same step as ``taxi-mlops monitor`` (``pipelines/steps/monitor.py``): the
window's drift and live accuracy against the served version's reference profile,
the verdict saved in the monitor location (``latest.json`` + ``history.jsonl``,
which the Prometheus gauges read), the HTML report, an MLflow run. The task's
verdict output parameter (``kfp_components.VERDICT_OUTPUT``; also the pipeline's
output) is what a later task branches on (``dsl.If``).

Like the training pipeline, ``build_monitoring_pipeline`` takes the parameter
defaults, a pipeline root and a function applied to every task, so the cluster
build (``pipelines.cluster_pipeline``) is this graph with the cluster's settings.
A recurring run (``taxi-mlops submit --pipeline monitoring --schedule ...``) keeps
the default window: the ``last_hours`` up to the newest logged event.
"""

# No "from __future__ import annotations" here: KFP reads the real annotation objects.
from dataclasses import dataclass

from kfp import compiler, dsl
from kfp.dsl.base_component import BaseComponent

from components.names import EXPERIMENT_NAME, MLFLOW_TRACKING_URI, REGISTERED_MODEL_NAME
from components.registry.versions import CHAMPION
from pipelines.kfp_components import VERDICT_OUTPUT, monitor
from pipelines.task_settings import TaskSettings, as_is

PIPELINE_NAME = f"{REGISTERED_MODEL_NAME}-monitoring"
#: The default window of a recurring run: an hourly schedule judges the day up to the newest event.
DEFAULT_LAST_HOURS = 24.0


@dataclass(frozen=True)
class MonitoringDefaults:
    """Defaults of the parameters that differ between a local and a cluster build."""

    tracking_uri: str = MLFLOW_TRACKING_URI
    prediction_log_uri: str = ""  # empty in the local build: the caller names its folders
    labels_uri: str = ""
    monitor_uri: str = ""


def build_monitoring_pipeline(
    defaults: MonitoringDefaults = MonitoringDefaults(),
    configure_task: TaskSettings = as_is,
    pipeline_root: str | None = None,
) -> BaseComponent:
    """The pipeline with these defaults; ``configure_task`` is applied to its task."""

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description=(
            "Judge a window of served predictions against the served version's reference profile "
            "(drift, live accuracy) and store the verdict, its HTML report and an MLflow run."
        ),
        pipeline_root=pipeline_root,
    )
    def monitoring_pipeline(
        tracking_uri: str = defaults.tracking_uri,
        experiment: str = EXPERIMENT_NAME,
        artifact_location: str = "",
        model_name: str = REGISTERED_MODEL_NAME,
        model_alias: str = CHAMPION,
        model_version: str = "",
        last_hours: float = DEFAULT_LAST_HOURS,
        since: str = "",
        until: str = "",
        prediction_log_uri: str = defaults.prediction_log_uri,
        labels_uri: str = defaults.labels_uri,
        monitor_uri: str = defaults.monitor_uri,
    ) -> str:
        """``model_version`` empty: the version holding ``model_alias``. ``since``/``until`` (ISO 8601),
        when given, replace the ``last_hours`` window. Locations: folders or s3:// prefixes.
        """
        judged = monitor(
            tracking_uri=tracking_uri,
            experiment=experiment,
            artifact_location=artifact_location,
            model_name=model_name,
            model_alias=model_alias,
            model_version=model_version,
            last_hours=last_hours,
            since=since,
            until=until,
            prediction_log_uri=prediction_log_uri,
            labels_uri=labels_uri,
            monitor_uri=monitor_uri,
        ).set_display_name("monitor-window")
        # Every run judges a log that has grown since the last one, and writes an MLflow run.
        judged.set_caching_options(False)
        configure_task(judged)
        # The verdict is the pipeline's output too: a caller (or a pipeline using this one as a
        # sub-pipeline) can branch on it as on the task's own output parameter.
        return judged.outputs[VERDICT_OUTPUT]

    return monitoring_pipeline


monitoring_pipeline = build_monitoring_pipeline()


def compile_monitoring_pipeline(path: str) -> str:
    compiler.Compiler().compile(monitoring_pipeline, package_path=path)
    return path


if __name__ == "__main__":
    print(compile_monitoring_pipeline("monitoring_pipeline.yaml"))
