"""The names that several modules, the manifests and the docs agree on, each defined once here.

Change one here and the manifest tests (tests/test_manifests.py) say which
YAML must follow; docs/cluster-contract.md explains each of them.
"""

from __future__ import annotations

from typing import Final

# --- the model
#: The registered model in MLflow (and the default experiment): one name for one model.
REGISTERED_MODEL_NAME: Final = "taxi-trip-duration"
EXPERIMENT_NAME: Final = "taxi-trip-duration"
#: The model's name on the inference API: /v1/models/duration:predict, /v2/models/duration/infer.
SERVED_MODEL_NAME: Final = "duration"

# --- the data
#: Where the TLC publishes its monthly trip files ({color}_tripdata_{YYYY-MM}.parquet).
TLC_BASE_URL: Final = "https://d37ci6vzurychx.cloudfront.net/trip-data"

# --- the cluster (docs/cluster-contract.md)
NAMESPACE: Final = "taxi-mlops"
INFERENCE_SERVICE: Final = "taxi-duration"
SERVING_RUNTIME: Final = "taxi-duration-runtime"
RUNTIME_MODEL_FORMAT: Final = "taxi-duration"
PREDICTOR_SERVICE_ACCOUNT: Final = "taxi-duration-predictor"
S3_SECRET: Final = "taxi-mlops-s3"
S3_ENDPOINT_URL: Final = f"http://minio.{NAMESPACE}.svc.cluster.local:9000"
MLFLOW_TRACKING_URI: Final = f"http://mlflow.{NAMESPACE}.svc.cluster.local:5000"
PIPELINE_ROOT: Final = "s3://kfp-artifacts/pipeline-root"
MODEL_STORE_URI: Final = f"s3://models/{REGISTERED_MODEL_NAME}"
# Local state, beside the deployment state file (<state_dir>/deployment/): the predictors'
# prediction log (serving/local_stack.py) and the labels joined to it (taxi-mlops labels).
PREDICTION_LOG_DIR_NAME: Final = "prediction-log"
LABELS_DIR_NAME: Final = "labels"
#: The canary judge's memory and decisions (serving/canary_judge.py), beside the deployment state.
CANARY_DIR_NAME: Final = "canary"
#: The monitor's verdicts (latest.json + history.jsonl, components/monitoring/verdict_store.py).
MONITOR_DIR_NAME: Final = "monitor"
#: The local retraining loop's memory (state.json + timeline.jsonl, components/retraining/loop_state.py),
#: in the state dir itself (<state_dir>/autopilot, beside deployment/); the splitter's gauges read it.
AUTOPILOT_DIR_NAME: Final = "autopilot"
# On a cluster the same three live in MinIO, in a bucket of their own (manifests/base/minio).
MONITORING_BUCKET: Final = "monitoring"
PREDICTION_LOG_URI: Final = f"s3://{MONITORING_BUCKET}/{PREDICTION_LOG_DIR_NAME}"
LABELS_URI: Final = f"s3://{MONITORING_BUCKET}/{LABELS_DIR_NAME}"
MONITOR_URI: Final = f"s3://{MONITORING_BUCKET}/{MONITOR_DIR_NAME}"
#: The cluster canary judge's memory and decisions (serving/cluster_canary.py): judge.json,
#: history.jsonl, latest.json, report.html, as in the local ``canary`` folder.
CANARY_URI: Final = f"s3://{MONITORING_BUCKET}/{CANARY_DIR_NAME}"
# HTTP headers of the serving contract: the client, the traffic splitter and the predictor speak them.
MODEL_VERSION_HEADER: Final = "x-model-version"  # on every answer: the version that answered
REVISION_HEADER: Final = "x-taxi-revision"  # champion or canary, stamped by the splitter
#: The two revision roles: in that header, the prediction log's ``revision`` and the splitter's /status.
CHAMPION_REVISION: Final = "champion"
CANARY_REVISION: Final = "canary"
REQUEST_ID_HEADER: Final = "x-request-id"  # the client's id for the request (echoed, logged)
CLOUDEVENT_ID_HEADER: Final = "ce-id"  # CloudEvents binary mode: the event id names the request too
EVENT_TIME_HEADER: Final = "x-event-time"  # ISO 8601 event time (a replay's pickup time)
# --- the cluster's inference-log sink (serving/inference_log_sink.py, manifests/base/inference-log-sink)
# KServe's payload logger posts every request/response of the predictor pods to it as CloudEvents;
# it writes the prediction-log segments to PREDICTION_LOG_URI.
INFERENCE_LOG_SINK: Final = "inference-log-sink"  # Deployment, Service and ServiceAccount name
INFERENCE_LOG_SINK_PORT: Final = 8080
INFERENCE_LOG_SINK_URL: Final = (
    f"http://{INFERENCE_LOG_SINK}.{NAMESPACE}.svc.cluster.local:{INFERENCE_LOG_SINK_PORT}"
)
#: On each predictor revision's pods: the version it serves. KServe's logger forwards the pod
#: annotations its `metadataAnnotations` names, so every logged event says which version answered.
MODEL_VERSION_ANNOTATION: Final = "taxi-mlops/model-version"
#: The model server's HTTP port in the ServingRuntime (--http_port): its /metrics too.
PREDICTOR_HTTP_PORT: Final = 8080
# How the cluster Prometheus finds what to scrape: these pod annotations (the common convention).
PROMETHEUS_SCRAPE_ANNOTATION: Final = "prometheus.io/scrape"
PROMETHEUS_PORT_ANNOTATION: Final = "prometheus.io/port"
PROMETHEUS_PATH_ANNOTATION: Final = "prometheus.io/path"
METRICS_PATH: Final = "/metrics"
# --- the cluster Prometheus (manifests/components/monitoring/prometheus.yaml): the canary analysis
# pipeline reads the predictors' request, error and latency series from it (serving/prometheus_ops.py).
PROMETHEUS_SERVICE: Final = "prometheus"
PROMETHEUS_SERVICE_PORT: Final = 9090
#: Fully qualified: the pipeline's pods run in the kubeflow namespace.
PROMETHEUS_URL: Final = f"http://{PROMETHEUS_SERVICE}.{NAMESPACE}.svc.cluster.local:{PROMETHEUS_SERVICE_PORT}"
