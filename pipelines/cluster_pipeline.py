"""The pipelines built for the cluster (docs/cluster-contract.md): same graphs, cluster settings.

- pipeline root in MinIO: ``s3://kfp-artifacts/pipeline-root``;
- every task gets ``S3_ENDPOINT_URL`` and the two keys of Secret ``taxi-mlops-s3``
  as env (``S3Connection.from_env()`` reads them: TLC files from ``s3://tlc-data``,
  model files to ``s3://models``);
- images are pulled only if absent: ``kind load`` puts them on the node, and the
  tag is pinned, so ``Always`` would only fail against a registry that does not
  have them;
- parameter defaults point at the in-cluster MLflow, the model store and the
  InferenceService ``taxi-duration``; the monitoring pipeline's at the prediction
  log, the labels and the verdicts in MinIO's ``monitoring`` bucket; the canary analysis
  pipeline's defaults are the cluster's names already (``pipelines.canary_pipeline``); the
  autopilot's are the monitoring build's and the training build's together.

The training build takes every parameter of the local one, the event-time windows
(``train_start`` .. ``val_end``, ``allow_missing_months``) included: a recurring or
policy-started run on the cluster trains on "the last N days" the same way.

``PIPELINES`` names each build, for ``taxi-mlops compile`` and ``submit``.
"""

from __future__ import annotations

from collections.abc import Callable

from kfp import compiler, dsl
from kfp.dsl.base_component import BaseComponent

from components.names import (
    INFERENCE_SERVICE,
    LABELS_URI,
    MLFLOW_TRACKING_URI,
    MODEL_STORE_URI,
    MONITOR_URI,
    NAMESPACE,
    PIPELINE_ROOT,
    PREDICTION_LOG_URI,
    S3_ENDPOINT_URL,
    S3_SECRET,
)
from pipelines.autopilot_pipeline import AutopilotDefaults, build_autopilot_pipeline
from pipelines.canary_pipeline import build_canary_pipeline
from pipelines.monitoring_pipeline import MonitoringDefaults, build_monitoring_pipeline
from pipelines.training_pipeline import PipelineDefaults, build_pipeline

S3_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
IMAGE_PULL_POLICY = "IfNotPresent"
CLUSTER_DEFAULTS = PipelineDefaults(
    tracking_uri=MLFLOW_TRACKING_URI,
    model_store_uri=MODEL_STORE_URI,
    inference_service=INFERENCE_SERVICE,
    inference_namespace=NAMESPACE,
)
CLUSTER_MONITORING_DEFAULTS = MonitoringDefaults(
    tracking_uri=MLFLOW_TRACKING_URI,
    prediction_log_uri=PREDICTION_LOG_URI,
    labels_uri=LABELS_URI,
    monitor_uri=MONITOR_URI,
)


def configure_for_cluster(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """MinIO endpoint and credentials as env, image pull policy IfNotPresent."""
    from kfp import kubernetes

    task.set_env_variable("S3_ENDPOINT_URL", S3_ENDPOINT_URL)
    kubernetes.use_secret_as_env(
        task, secret_name=S3_SECRET, secret_key_to_env={k: k for k in S3_SECRET_KEYS}
    )
    kubernetes.set_image_pull_policy(task, IMAGE_PULL_POLICY)
    return task


def cluster_pipeline() -> BaseComponent:
    return build_pipeline(CLUSTER_DEFAULTS, configure_for_cluster, PIPELINE_ROOT)


def cluster_monitoring_pipeline() -> BaseComponent:
    return build_monitoring_pipeline(CLUSTER_MONITORING_DEFAULTS, configure_for_cluster, PIPELINE_ROOT)


def cluster_canary_pipeline() -> BaseComponent:
    return build_canary_pipeline(configure_for_cluster, PIPELINE_ROOT)


def cluster_autopilot_pipeline() -> BaseComponent:
    defaults = AutopilotDefaults(CLUSTER_MONITORING_DEFAULTS, CLUSTER_DEFAULTS)
    return build_autopilot_pipeline(defaults, configure_for_cluster, PIPELINE_ROOT)


#: The cluster builds by the name `--pipeline` takes.
PIPELINES: dict[str, Callable[[], BaseComponent]] = {
    "training": cluster_pipeline,
    "monitoring": cluster_monitoring_pipeline,
    "canary": cluster_canary_pipeline,
    "autopilot": cluster_autopilot_pipeline,
}


def compile_cluster_pipeline(path: str, pipeline: str = "training") -> str:
    compiler.Compiler().compile(PIPELINES[pipeline](), package_path=path)
    return path


if __name__ == "__main__":
    print(compile_cluster_pipeline("training_pipeline.cluster.yaml"))
