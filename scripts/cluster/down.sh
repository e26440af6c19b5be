#!/usr/bin/env bash
# Delete the kind cluster made by up.sh, with everything in it (MinIO data, MLflow db, KFP runs).
# The generated credentials file stays (manifests/base/credentials/taxi-mlops-s3.secret.env), so a
# new cluster gets the same password; pass --purge to delete it too.
#
# Usage: scripts/cluster/down.sh [--purge]     (or: make cluster-down)
set -euo pipefail

CLUSTER_NAME="${CLUSTER_NAME:-taxi-mlops}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SECRET_ENV="${REPO_ROOT}/manifests/base/credentials/taxi-mlops-s3.secret.env"

purge=0
for arg in "$@"; do
  case "${arg}" in
    --purge) purge=1 ;;
    -h | --help)
      sed -n '2,7p' "${BASH_SOURCE[0]}"
      exit 0
      ;;
    *)
      printf 'error: unknown argument %s (expected --purge)\n' "${arg}" >&2
      exit 2
      ;;
  esac
done

command -v kind >/dev/null 2>&1 || {
  printf 'error: kind not found on PATH\n' >&2
  exit 1
}

if kind get clusters 2>/dev/null | grep -qx "${CLUSTER_NAME}"; then
  kind delete cluster --name "${CLUSTER_NAME}"
else
  printf 'kind cluster %s does not exist; nothing to delete\n' "${CLUSTER_NAME}"
fi

if ((purge)) && [[ -e "${SECRET_ENV}" ]]; then
  rm -f "${SECRET_ENV}"
  printf 'removed %s\n' "${SECRET_ENV#"${REPO_ROOT}"/}"
fi
