"""The canary analysis pipeline: one ``canary-analysis`` task, one analysis of the InferenceService's canary.

The same judge as ``taxi-mlops serve``'s (``serving.canary_judge``) with the cluster's parts
(``pipelines/steps/canary.py``, ``serving/cluster_canary.py``): it reads the canary's
operations from the cluster Prometheus and its accuracy from the prediction log and labels
in MinIO, then takes the next step, promotes or rolls back through the Kubernetes API, and
records the decision beside the log (``s3://monitoring/canary``). The task's output
parameter (``kfp_components.VERDICT_OUTPUT``; also the pipeline's output) is the action.

It is meant to run as a recurring run, which is what carries a canary through its steps:
``taxi-mlops submit --pipeline canary --schedule '0 */5 * * * *'`` (every five minutes; KFP
cron has seconds first). The recurring run has ``max_concurrency=1``: the analyses must not
overlap, since each one reads the judge's files from the bucket, acts and writes them back.

There is no local variant: the judge of the local stack runs inside ``taxi-mlops serve``.
So the parameter defaults are the cluster's names in both builds; the cluster build
(``pipelines.cluster_pipeline``) adds what every cluster task gets (MinIO env and secret,
pipeline root in MinIO, pull policy).
"""

# No "from __future__ import annotations" here: KFP reads the real annotation objects.

from kfp import compiler, dsl
from kfp.dsl.base_component import BaseComponent

from components.names import (
    CANARY_URI,
    EXPERIMENT_NAME,
    INFERENCE_SERVICE,
    LABELS_URI,
    MLFLOW_TRACKING_URI,
    NAMESPACE,
    PREDICTION_LOG_URI,
    PROMETHEUS_URL,
    REGISTERED_MODEL_NAME,
)
from pipelines.kfp_components import VERDICT_OUTPUT, canary_analysis
from pipelines.task_settings import TaskSettings, as_is

PIPELINE_NAME = f"{REGISTERED_MODEL_NAME}-canary"
#: The recurring run's schedule the docs suggest: every five minutes (KFP cron, seconds first).
SUGGESTED_SCHEDULE = "0 */5 * * * *"


def build_canary_pipeline(
    configure_task: TaskSettings = as_is, pipeline_root: str | None = None
) -> BaseComponent:
    """The pipeline; ``configure_task`` is applied to its task."""

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description=(
            "Judge the InferenceService's canary against its champion on live operations (Prometheus) "
            "and paired accuracy (prediction log + labels), then step it up, promote or roll it back."
        ),
        pipeline_root=pipeline_root,
    )
    def canary_pipeline(
        tracking_uri: str = MLFLOW_TRACKING_URI,
        experiment: str = EXPERIMENT_NAME,
        artifact_location: str = "",
        model_name: str = REGISTERED_MODEL_NAME,
        namespace: str = NAMESPACE,
        inference_service: str = INFERENCE_SERVICE,
        prometheus_url: str = PROMETHEUS_URL,
        policy_overrides: str = "",
        prediction_log_uri: str = PREDICTION_LOG_URI,
        labels_uri: str = LABELS_URI,
        canary_uri: str = CANARY_URI,
    ) -> str:
        """``policy_overrides``: a JSON object of canary policy fields (components/canary/policy.py),
        e.g. ``{"steps": "10,25,50", "mae_margin": 0.03}``; empty: the defaults. Locations: s3://
        prefixes (or folders)."""
        judged = canary_analysis(
            tracking_uri=tracking_uri,
            experiment=experiment,
            artifact_location=artifact_location,
            model_name=model_name,
            namespace=namespace,
            inference_service=inference_service,
            prometheus_url=prometheus_url,
            policy_overrides=policy_overrides,
            prediction_log_uri=prediction_log_uri,
            labels_uri=labels_uri,
            canary_uri=canary_uri,
        ).set_display_name("canary-analysis")
        # Every run judges new evidence and may act: never a cached answer.
        judged.set_caching_options(False)
        configure_task(judged)
        return judged.outputs[VERDICT_OUTPUT]

    return canary_pipeline


canary_pipeline = build_canary_pipeline()


def compile_canary_pipeline(path: str) -> str:
    compiler.Compiler().compile(canary_pipeline, package_path=path)
    return path


if __name__ == "__main__":
    print(compile_canary_pipeline("canary_pipeline.yaml"))
