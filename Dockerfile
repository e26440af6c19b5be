# The project's own image: every KFP component runs in it (base_image in
# pipelines/kfp_components.py), so pods start without pip installs. The cluster's
# MLflow server and inference-log sink (`python -m serving.inference_log_sink`,
# manifests/base/inference-log-sink) run from it too: plain Deployments, so unlike
# the predictor image (a Knative revision) the kind overlay needs no rename for it.
#   docker build -t docker.io/taxi-mlops/pipeline:0.1.0 .
FROM python:3.11-slim AS base

# OMP_WAIT_POLICY=PASSIVE: OpenMP threads sleep at barriers instead of spinning, so
# training pods that share a node's cores do not spin against each other (see
# pipelines/local_run.py for what spinning cost when two candidates shared two cores).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OMP_WAIT_POLICY=PASSIVE

# libgomp: OpenMP runtime that xgboost's wheels need.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/taxi-mlops
# Dependencies first, so code changes rebuild only the last layer.
COPY pyproject.toml README.md ./
RUN mkdir -p components pipelines serving \
    && touch components/__init__.py pipelines/__init__.py serving/__init__.py \
    && pip install . \
    && pip uninstall -y taxi-mlops
COPY components ./components
COPY pipelines ./pipelines
COPY serving ./serving
RUN pip install --no-deps .

# KFP runs components as an arbitrary user; give it a writable home and cache.
RUN useradd --create-home --uid 1000 pipeline
USER 1000
ENV HOME=/home/pipeline XDG_CACHE_HOME=/tmp/cache
