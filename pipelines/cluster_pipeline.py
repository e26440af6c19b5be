"""The training pipeline built for the cluster (docs/cluster-contract.md): same graph, cluster settings.

- pipeline root in MinIO: ``s3://kfp-artifacts/pipeline-root``;
- every task gets ``S3_ENDPOINT_URL`` and the two keys of Secret ``taxi-mlops-s3``
  as env (``S3Connection.from_env()`` reads them: TLC files from ``s3://tlc-data``,
  model files to ``s3://models``);
- images are pulled only if absent: ``kind load`` puts them on the node, and the
  tag is pinned, so ``Always`` would only fail against a registry that does not
  have them;
- parameter defaults point at the in-cluster MLflow, the model store and the
  InferenceService ``taxi-duration``.
"""

from __future__ import annotations

from kfp import compiler, dsl
from kfp.dsl.base_component import BaseComponent

from components.names import (
    INFERENCE_SERVICE,
    MLFLOW_TRACKING_URI,
    MODEL_STORE_URI,
    NAMESPACE,
    PIPELINE_ROOT,
    S3_ENDPOINT_URL,
    S3_SECRET,
)
from pipelines.training_pipeline import PipelineDefaults, build_pipeline

S3_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
IMAGE_PULL_POLICY = "IfNotPresent"
CLUSTER_DEFAULTS = PipelineDefaults(
    tracking_uri=MLFLOW_TRACKING_URI,
    model_store_uri=MODEL_STORE_URI,
    inference_service=INFERENCE_SERVICE,
    inference_namespace=NAMESPACE,
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


def compile_cluster_pipeline(path: str) -> str:
    compiler.Compiler().compile(cluster_pipeline(), package_path=path)
    return path


if __name__ == "__main__":
    print(compile_cluster_pipeline("training_pipeline.cluster.yaml"))
