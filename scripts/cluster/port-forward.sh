#!/usr/bin/env bash
# Reach the cluster's web endpoints from this machine, in the foreground; Ctrl-C stops them all.
#   MLflow          http://localhost:5000   (port-forward svc/mlflow)
#   MinIO S3 API    http://localhost:9000   (port-forward svc/minio; for `aws s3`, `mc`, boto3)
#   KFP UI          http://localhost:8880   (kind NodePort; port-forwarded if that is not answering)
#   MinIO console   http://localhost:9001   (kind NodePort; port-forwarded if that is not answering)
#   Prometheus      http://localhost:9190   (kind NodePort; port-forwarded if that is not answering)
#   Alertmanager    http://localhost:9193   (kind NodePort; port-forwarded if that is not answering)
#   Alert receiver  http://localhost:9195/alerts   (port-forward svc/alert-receiver)
# The NodePort mappings exist only for clusters created with kind-config.yaml; for any other
# cluster the same local ports are served by port-forwards instead.
#
# Usage: scripts/cluster/port-forward.sh      (or: make port-forward)
set -euo pipefail

CLUSTER_NAME="${CLUSTER_NAME:-taxi-mlops}"
CONTEXT="${KUBE_CONTEXT:-kind-${CLUSTER_NAME}}"

command -v kubectl >/dev/null 2>&1 || {
  printf 'error: kubectl not found on PATH\n' >&2
  exit 1
}
kubectl --context "${CONTEXT}" get namespace taxi-mlops >/dev/null 2>&1 || {
  printf 'error: no namespace taxi-mlops in context %s; run make cluster-up first\n' "${CONTEXT}" >&2
  exit 1
}

pids=()
# shellcheck disable=SC2329  # called by the EXIT trap
cleanup() {
  local pid
  # ${pids[@]+...}: bash 3.2 (macOS) treats an empty array as unset under `set -u`.
  for pid in ${pids[@]+"${pids[@]}"}; do
    kill "${pid}" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# True when something already answers on 127.0.0.1:PORT (bash's /dev/tcp, no extra tools).
listening() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

forward() {
  local namespace="$1" target="$2" ports="$3" url="$4"
  kubectl --context "${CONTEXT}" port-forward -n "${namespace}" "${target}" "${ports}" >/dev/null &
  pids+=("$!")
  printf '  %-14s %s  (port-forward %s/%s)\n' "$5" "${url}" "${namespace}" "${target}"
}

printf 'Forwarding (Ctrl-C to stop):\n'
forward taxi-mlops svc/mlflow 5000:5000 http://localhost:5000 MLflow
forward taxi-mlops svc/minio 9000:9000 http://localhost:9000 "MinIO S3 API"
if listening 8880; then
  printf '  %-14s %s  (kind NodePort)\n' "KFP UI" http://localhost:8880
else
  forward kubeflow svc/ml-pipeline-ui 8880:80 http://localhost:8880 "KFP UI"
fi
if listening 9001; then
  printf '  %-14s %s  (kind NodePort)\n' "MinIO console" http://localhost:9001
else
  forward taxi-mlops svc/minio 9001:9001 http://localhost:9001 "MinIO console"
fi
# The monitoring component (kind overlay): Prometheus and Alertmanager UIs, the alert receiver.
if listening 9190; then
  printf '  %-14s %s  (kind NodePort)\n' "Prometheus" http://localhost:9190
else
  forward taxi-mlops svc/prometheus 9190:9090 http://localhost:9190 "Prometheus"
fi
if listening 9193; then
  printf '  %-14s %s  (kind NodePort)\n' "Alertmanager" http://localhost:9193
else
  forward taxi-mlops svc/alertmanager 9193:9093 http://localhost:9193 "Alertmanager"
fi
forward taxi-mlops svc/alert-receiver 9195:9095 http://localhost:9195/alerts "Alert receiver"

# Any forward exiting (pod restarted, cluster gone) ends the script, so it never half-works.
# (A polling loop rather than `wait -n PID...`, which needs bash 5.1; macOS ships bash 3.2.)
while true; do
  for pid in "${pids[@]}"; do
    kill -0 "${pid}" 2>/dev/null || break 2
  done
  sleep 2
done
printf 'a port-forward stopped; exiting (run it again once the pods are back)\n' >&2
exit 1
