#!/usr/bin/env bash
# Create (or bring up to date) the local kind cluster for taxi-mlops:
#   kind cluster (kind-config.yaml) -> cert-manager -> Knative Serving + Kourier -> KServe (Knative
#   mode) -> Kubeflow Pipelines (platform-agnostic) -> our images -> our manifests (kind overlay).
# Idempotent: every step applies declaratively or checks before creating, so re-running it after a
# failure (or after changing manifests) picks up where things stand.
#
# Usage: scripts/cluster/up.sh          (or: make cluster-up)
# Environment: CLUSTER_NAME (default taxi-mlops), SKIP_IMAGES=1 to skip docker build + kind load,
#              WAIT_TIMEOUT (default 600s) for each rollout wait.
set -euo pipefail

# ---- Pinned versions: the one place to change them ------------------------------------------------
KIND_VERSION_TESTED="v0.33.0"                 # kind CLI the node image below was built for
CERT_MANAGER_VERSION="v1.17.0"                # KServe's tested dependency set (kserve-deps.env)
KNATIVE_SERVING_VERSION="knative-v1.21.1"
KNATIVE_KOURIER_VERSION="knative-v1.21.1"
KSERVE_VERSION="v0.19.0"
KFP_VERSION="2.17.1"                          # git tag of github.com/kubeflow/pipelines
# The node image is pinned (with digest) in kind-config.yaml.

CLUSTER_NAME="${CLUSTER_NAME:-taxi-mlops}"
WAIT_TIMEOUT="${WAIT_TIMEOUT:-600s}"
SKIP_IMAGES="${SKIP_IMAGES:-0}"

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
KIND_CONFIG="${REPO_ROOT}/kind-config.yaml"
OVERLAY="${REPO_ROOT}/manifests/overlays/kind"
SECRET_ENV="${REPO_ROOT}/manifests/base/credentials/taxi-mlops-s3.secret.env"

PIPELINE_IMAGE="docker.io/taxi-mlops/pipeline:0.1.0"
PREDICTOR_IMAGE="docker.io/taxi-mlops/predictor:0.1.0"
# Knative does not resolve tags for kind.local, so the image `kind load` put on the node is used.
PREDICTOR_KIND_IMAGE="kind.local/taxi-mlops/predictor:0.1.0"

CERT_MANAGER_URL="https://github.com/cert-manager/cert-manager/releases/download/${CERT_MANAGER_VERSION}/cert-manager.yaml"
KNATIVE_URL="https://github.com/knative/serving/releases/download/${KNATIVE_SERVING_VERSION}"
KOURIER_URL="https://github.com/knative-extensions/net-kourier/releases/download/${KNATIVE_KOURIER_VERSION}/kourier.yaml"
KSERVE_URL="https://github.com/kserve/kserve/releases/download/${KSERVE_VERSION}"
KFP_KUSTOMIZE="github.com/kubeflow/pipelines/manifests/kustomize"

step() { printf '\n==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

# Webhooks (cert-manager's, Knative's, KServe's) accept connections a little after their pods are
# Ready, so the first apply that goes through one can fail with "connection refused" or
# "no endpoints available". Retry instead of failing the whole script.
retry() {
  local attempts="$1" delay="$2"
  shift 2
  local n=1
  until "$@"; do
    if ((n >= attempts)); then
      printf 'error: gave up after %d attempts: %s\n' "${attempts}" "$*" >&2
      return 1
    fi
    info "not accepted yet (attempt ${n}/${attempts}, webhook probably still starting); retrying in ${delay}s"
    sleep "${delay}"
    n=$((n + 1))
  done
}

wait_deployments() {
  local namespace="$1"
  info "waiting for every Deployment in ${namespace} to be Available (timeout ${WAIT_TIMEOUT})"
  if ! kubectl wait deployment --all -n "${namespace}" --for=condition=Available --timeout="${WAIT_TIMEOUT}"; then
    kubectl get pods -n "${namespace}" >&2 || true
    die "Deployments in ${namespace} did not become Available; see the pods above (kubectl describe pod -n ${namespace} <pod>)"
  fi
}

check_prerequisites() {
  step "Checking prerequisites"
  local tool
  for tool in docker kind kubectl git make python3; do
    command -v "${tool}" >/dev/null 2>&1 || die "${tool} not found on PATH (see README 'Run on kind')"
  done
  docker info >/dev/null 2>&1 || die "docker is installed but the daemon is not reachable"
  info "kind $(kind version | awk '{print $2}') (node image built for kind ${KIND_VERSION_TESTED})"
  # Many pods watching files (Knative, KFP, Argo) exhaust the default inotify limits on Linux
  # hosts: pods then crash with "too many open files".
  if [[ -r /proc/sys/fs/inotify/max_user_watches ]]; then
    local watches instances
    watches="$(cat /proc/sys/fs/inotify/max_user_watches)"
    instances="$(cat /proc/sys/fs/inotify/max_user_instances)"
    if ((watches < 524288 || instances < 512)); then
      info "WARNING: inotify limits are low (max_user_watches=${watches}, max_user_instances=${instances})."
      info "         Raise them if pods fail with 'too many open files':"
      info "         sudo sysctl fs.inotify.max_user_watches=524288 fs.inotify.max_user_instances=512"
    fi
  fi
}

create_cluster() {
  step "kind cluster '${CLUSTER_NAME}'"
  if kind get clusters 2>/dev/null | grep -qx "${CLUSTER_NAME}"; then
    info "exists; reusing it"
  else
    kind create cluster --name "${CLUSTER_NAME}" --config "${KIND_CONFIG}" --wait 120s
  fi
  kubectl config use-context "kind-${CLUSTER_NAME}" >/dev/null
  kubectl wait node --all --for=condition=Ready --timeout="${WAIT_TIMEOUT}"
}

install_cert_manager() {
  step "cert-manager ${CERT_MANAGER_VERSION}"
  kubectl apply -f "${CERT_MANAGER_URL}"
  wait_deployments cert-manager
}

install_knative() {
  step "Knative Serving ${KNATIVE_SERVING_VERSION} + Kourier ${KNATIVE_KOURIER_VERSION}"
  kubectl apply -f "${KNATIVE_URL}/serving-crds.yaml"
  kubectl wait crd --for=condition=Established --timeout=120s \
    services.serving.knative.dev configurations.serving.knative.dev revisions.serving.knative.dev
  retry 10 10 kubectl apply -f "${KNATIVE_URL}/serving-core.yaml"
  retry 10 10 kubectl apply -f "${KOURIER_URL}"
  # Knative's config webhook (failurePolicy Fail) validates these ConfigMaps and starts with
  # serving-core, so the first patches can meet "connection refused": retry them like the applies.
  retry 10 10 kubectl patch configmap/config-network -n knative-serving --type merge \
    -p '{"data":{"ingress-class":"kourier.ingress.networking.knative.dev"}}'
  # Knative resolves image tags to digests by asking the registry; kind.local images exist only on
  # the node, so they must stay on the skip list (the default list has them; make sure it still does).
  retry 10 10 kubectl patch configmap/config-deployment -n knative-serving --type merge \
    -p '{"data":{"registries-skipping-tag-resolving":"kind.local,ko.local,dev.local"}}'
  # A default route domain. With none, Knative gives every route the domain svc.cluster.local,
  # which makes it cluster-local (pkg/reconciler/route/config/domain.go, visibility.go), and
  # Kourier serves cluster-local routes only on its internal listener, not on the external one our
  # kind NodePort targets: curl through localhost:8180 would answer 404. KServe's own installer
  # sets the same entry. Hosts become <ksvc>.<namespace>.example.com, e.g.
  # taxi-duration-predictor.taxi-mlops.example.com (README "Run on kind"); a merge patch, so
  # re-running changes nothing. Set before KServe and our manifests, which create the routes.
  retry 10 10 kubectl patch configmap/config-domain -n knative-serving --type merge \
    -p '{"data":{"example.com":""}}'
  wait_deployments knative-serving
  wait_deployments kourier-system
}

install_kserve() {
  step "KServe ${KSERVE_VERSION} (Knative mode)"
  kubectl create namespace kserve --dry-run=client -o yaml | kubectl apply -f -
  # Server-side apply: the InferenceService CRD is too large for the last-applied annotation.
  retry 10 15 kubectl apply --server-side --force-conflicts -f "${KSERVE_URL}/kserve.yaml"
  wait_deployments kserve
  kubectl wait crd --for=condition=Established --timeout=120s \
    inferenceservices.serving.kserve.io servingruntimes.serving.kserve.io
  # ClusterServingRuntimes and the default ClusterStorageContainer (storage initializer).
  retry 10 15 kubectl apply --server-side --force-conflicts -f "${KSERVE_URL}/kserve-cluster-resources.yaml"
  # With Kourier instead of Istio, KServe must not create an Istio VirtualService for the
  # top-level host; requests go to the predictor's Knative host through Kourier. The setting is a
  # JSON document inside the ConfigMap, so edit it with python3 rather than with sed.
  local patch
  patch="$(kubectl get configmap inferenceservice-config -n kserve -o jsonpath='{.data.ingress}' | python3 -c '
import json, sys
ingress = json.load(sys.stdin)
if ingress.get("disableIstioVirtualHost") is not True:
    ingress["disableIstioVirtualHost"] = True
    print(json.dumps({"data": {"ingress": json.dumps(ingress, indent=2)}}))
')"
  if [[ -n "${patch}" ]]; then
    kubectl patch configmap inferenceservice-config -n kserve --type merge -p "${patch}"
    kubectl rollout restart deployment/kserve-controller-manager -n kserve
    wait_deployments kserve
  else
    info "inferenceservice-config already has disableIstioVirtualHost: true"
  fi
}

install_kfp() {
  step "Kubeflow Pipelines ${KFP_VERSION} (platform-agnostic)"
  kubectl apply -k "${KFP_KUSTOMIZE}/cluster-scoped-resources?ref=${KFP_VERSION}"
  kubectl wait crd --for=condition=Established --timeout=120s applications.app.k8s.io
  retry 5 15 kubectl apply -k "${KFP_KUSTOMIZE}/env/platform-agnostic?ref=${KFP_VERSION}"
  info "KFP pulls a dozen images on first start; this wait is the longest one"
  WAIT_TIMEOUT="${KFP_WAIT_TIMEOUT:-1200s}" wait_deployments kubeflow
}

build_and_load_images() {
  if [[ "${SKIP_IMAGES}" == "1" ]]; then
    step "Images: skipped (SKIP_IMAGES=1)"
    return
  fi
  step "Images: build ${PIPELINE_IMAGE} + ${PREDICTOR_IMAGE}, load into kind"
  make -C "${REPO_ROOT}" image IMAGE="${PIPELINE_IMAGE}" PREDICTOR_IMAGE="${PREDICTOR_IMAGE}"
  docker tag "${PREDICTOR_IMAGE}" "${PREDICTOR_KIND_IMAGE}"
  kind load docker-image --name "${CLUSTER_NAME}" "${PIPELINE_IMAGE}" "${PREDICTOR_KIND_IMAGE}"
}

ensure_secret_env() {
  step "S3 credentials"
  if [[ -s "${SECRET_ENV}" ]]; then
    info "using ${SECRET_ENV#"${REPO_ROOT}"/} (git-ignored)"
    return
  fi
  local password
  # 48 hex characters: URL-safe, because the bucket Job puts it into an mc alias URL.
  password="$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
  (
    umask 077
    printf 'AWS_ACCESS_KEY_ID=taxi-mlops\nAWS_SECRET_ACCESS_KEY=%s\n' "${password}" >"${SECRET_ENV}"
  )
  info "wrote ${SECRET_ENV#"${REPO_ROOT}"/} with a random password (git-ignored; keep it)"
}

apply_manifests() {
  step "taxi-mlops manifests (manifests/overlays/kind)"
  # A Job's pod template is immutable; the bucket Job is idempotent, so replace it on every run.
  kubectl delete job minio-buckets -n taxi-mlops --ignore-not-found
  retry 5 10 kubectl apply -k "${OVERLAY}"
  wait_deployments taxi-mlops
  info "waiting for the bucket Job"
  if ! kubectl wait job/minio-buckets -n taxi-mlops --for=condition=Complete --timeout="${WAIT_TIMEOUT}"; then
    kubectl logs -n taxi-mlops job/minio-buckets --all-containers >&2 || true
    die "the bucket Job did not complete; its logs are above"
  fi
}

summary() {
  step "Ready"
  cat <<EOF
    KFP UI          http://localhost:8880
    MinIO console   http://localhost:9001   (user/password: ${SECRET_ENV#"${REPO_ROOT}"/})
    Inference       http://localhost:8180   (Kourier; Host: taxi-duration-predictor.taxi-mlops.example.com)
    MLflow + S3 API make port-forward       (http://localhost:5000, http://localhost:9000)
    Next            make submit SUBMIT_ARGS="--experiment taxi-trip-duration"
EOF
}

main() {
  check_prerequisites
  create_cluster
  install_cert_manager
  install_knative
  install_kserve
  install_kfp
  build_and_load_images
  ensure_secret_env
  apply_manifests
  summary
}

main "$@"
