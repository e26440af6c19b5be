"""Deploy, promote and roll back on a cluster: the InferenceService and the MLflow aliases move together.

The same verbs as ``serving.rollout`` (the local deployment), through the
Kubernetes API instead of a state file: read the InferenceService, decide with
the shared transition rules (``serving.deployment_state``), write one body from
``serving.kserve_deploy``, wait until KServe has carried it out, then move the
MLflow aliases (``champion`` serves production, ``challenger`` is the canary).
Only the verbs get, create and patch are used: the deployer Role allows
nothing else (docs/cluster-contract.md). Every verb is idempotent: when the
InferenceService already is what was asked, nothing is written and the
message says so.

Loading a kube config is the caller's business (``connect`` for the CLI and
the pipeline step); everything here takes a ready ``CustomObjectsApi``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from components.errors import TaxiMlopsError
from components.registry.tracking import client_for
from components.registry.versions import SHA256_TAG, STORAGE_URI_TAG
from serving import kserve_deploy as isvc_body
from serving.deployment_state import DeploymentState, Revision, Transition, promote, rollback
from serving.deployment_state import deploy as deploy_transition
from serving.kserve_deploy import IsvcRef
from serving.registry_aliases import aliases_after_deploy, aliases_follow_champion

if TYPE_CHECKING:
    from kubernetes.client import CustomObjectsApi

REQUEST_TIMEOUT_SECONDS = 30


class ClusterRolloutError(TaxiMlopsError):
    """The cluster refused, could not be reached, or did not carry out a change in time."""


@dataclass(frozen=True)
class ClusterTarget:
    """Where the InferenceService lives, how to reach it, and which registry it follows."""

    api: CustomObjectsApi
    tracking_uri: str
    model_name: str
    ref: IsvcRef = IsvcRef()  # noqa: RUF009 - frozen, shared safely
    timeout_seconds: float = 600.0
    poll_seconds: float = 2.0


def connect(*, in_cluster: bool = False, context: str | None = None) -> CustomObjectsApi:
    """A CustomObjectsApi from the pod's service account (``in_cluster``) or the kubeconfig."""
    from kubernetes import client, config

    try:
        if in_cluster:
            config.load_incluster_config()
            return client.CustomObjectsApi()
        api_client = config.new_client_from_config(context=context)
    except config.ConfigException as exc:
        where = "in-cluster service account" if in_cluster else f"kubeconfig (context {context or 'current'})"
        raise ClusterRolloutError(f"cannot load the {where}: {exc}") from exc
    return client.CustomObjectsApi(api_client)


# --------------------------------------------------------------------------- verbs


def deploy_version(target: ClusterTarget, version: str, canary_percent: int) -> Transition:
    """Deploy registered ``version``: first deployment -> 100%; later -> canary at ``canary_percent``%."""
    revision = _registered_revision(target, str(version))
    isvc = _get(target)
    current = _state(isvc)
    transition = deploy_transition(current, revision, canary_percent)
    if not transition.changed:
        transition = _unchanged(target, isvc, transition)
    elif isvc is None:
        body = isvc_body.first_deployment(revision, target.ref)
        transition = _settle(
            target, _call(target, "create", lambda: _create(target, body)), transition.message
        )
    else:
        patch = isvc_body.canary_patch(
            revision, _champion(current), canary_percent, resource_version=_resource_version(isvc)
        )
        transition = _settle(
            target, _call(target, "patch", lambda: _patch(target, patch)), transition.message
        )
    aliases_after_deploy(target.tracking_uri, target.model_name, transition.state, revision.model_version)
    return transition


def promote_canary(target: ClusterTarget) -> Transition:
    """The canary takes all traffic and the ``champion`` alias; ``challenger`` is cleared and the
    replaced champion keeps ``previous``."""
    replaced: list[str] = []

    def decide(state: DeploymentState) -> Transition:
        transition = promote(state)
        if transition.changed and state.champion is not None:
            # The state read back from the cluster no longer names it: remember it here.
            replaced.append(state.champion.model_version)
        return transition

    transition = _change(target, decide, lambda rv: isvc_body.promote_patch(resource_version=rv))
    previous = replaced[0] if replaced else None
    aliases_follow_champion(target.tracking_uri, target.model_name, transition.state, previous=previous)
    return transition


def rollback_canary(target: ClusterTarget) -> Transition:
    """The canary gets no traffic; ``champion`` stays where it is and ``challenger`` is cleared."""
    transition = _change(
        target, rollback, lambda rv: isvc_body.rollback_patch(resource_version=rv), require_ready=False
    )
    aliases_follow_champion(target.tracking_uri, target.model_name, transition.state)
    return transition


@dataclass(frozen=True)
class ClusterStatus:
    state: DeploymentState
    isvc: Mapping[str, Any] | None

    def lines(self, ref: IsvcRef) -> list[str]:
        """What ``taxi-mlops status --cluster`` prints."""
        if self.isvc is None:
            return [f"{ref.describe()}: not created yet (deploy a version first)"]
        ready = isvc_body.ready_condition(self.isvc)[1]
        url = (self.isvc.get("status") or {}).get("url") or "no URL yet"
        lines = [f"desired: {self.state.describe()}", f"{ref.describe()}: {ready}; {url}"]
        traffic = isvc_body.describe_traffic(self.isvc)
        lines.extend(f"  {line}" for line in traffic or ["no traffic reported yet"])
        return lines


def status(target: ClusterTarget) -> ClusterStatus:
    isvc = _get(target)
    return ClusterStatus(_state(isvc), isvc)


# --------------------------------------------------------------------------- steps of a verb


def _change(
    target: ClusterTarget,
    decide: Callable[[DeploymentState], Transition],
    patch_for: Callable[[str | None], dict[str, Any]],
    *,
    require_ready: bool = True,
) -> Transition:
    isvc = _get(target)
    if isvc is None:
        raise ClusterRolloutError(f"{target.ref.describe()} does not exist: nothing is deployed yet")
    transition = decide(_state(isvc))
    if not transition.changed:
        return _unchanged(target, isvc, transition)
    patch = patch_for(_resource_version(isvc))
    written = _call(target, "patch", lambda: _patch(target, patch))
    return _settle(target, written, transition.message, require_ready=require_ready)


def _settle(
    target: ClusterTarget, written: Mapping[str, Any], message: str, *, require_ready: bool = True
) -> Transition:
    """Wait until KServe has carried out what was written; the state is read back from the cluster."""
    isvc = _wait(target, int((written.get("metadata") or {}).get("generation") or 0), require_ready)
    ready = isvc_body.ready_condition(isvc)[1]
    return Transition(_state(isvc), f"{message} ({target.ref.describe()}: {ready})", True)


def _unchanged(target: ClusterTarget, isvc: Mapping[str, Any] | None, transition: Transition) -> Transition:
    # Nothing written, so nothing to wait for; say whether KServe is done with the last change.
    # A latest revision with 0% (rolled back) may well be broken: its readiness does not matter.
    if isvc is None:
        return transition
    progress = isvc_body.rollout_progress(isvc, require_ready=isvc_body.latest_percent(isvc) > 0)
    note = "settled" if progress.settled else f"still rolling out: {progress.detail}"
    return Transition(transition.state, f"{transition.message} ({target.ref.describe()} {note})", False)


def _wait(target: ClusterTarget, generation: int, require_ready: bool) -> Mapping[str, Any]:
    deadline = time.monotonic() + target.timeout_seconds
    while True:
        isvc = _get(target)
        if isvc is None:
            raise ClusterRolloutError(f"{target.ref.describe()} disappeared while waiting for it")
        if int((isvc.get("metadata") or {}).get("generation") or 0) < generation:
            detail = f"read an older generation than {generation}"
        else:
            progress = isvc_body.rollout_progress(isvc, require_ready=require_ready)
            if progress.settled:
                return isvc
            detail = progress.detail
        if time.monotonic() >= deadline:
            raise ClusterRolloutError(
                f"{target.ref.describe()} did not become ready within {target.timeout_seconds:g}s: {detail}"
            )
        time.sleep(target.poll_seconds)


def _registered_revision(target: ClusterTarget, version: str) -> Revision:
    """The version's storageUri and sha256, as recorded on its MLflow model version."""
    from mlflow.exceptions import MlflowException

    try:
        model_version = client_for(target.tracking_uri).get_model_version(target.model_name, version)
    except MlflowException as exc:
        raise ClusterRolloutError(f"model {target.model_name!r} has no version {version}") from exc
    tags = model_version.tags or {}
    storage_uri, sha256 = tags.get(STORAGE_URI_TAG), tags.get(SHA256_TAG)
    if not storage_uri or not sha256:
        raise ClusterRolloutError(
            f"model {target.model_name!r} version {version} has no {STORAGE_URI_TAG!r}/{SHA256_TAG!r} tag: "
            "it was registered without a model store (pipeline parameter model_store_uri), "
            "so the cluster has no copy of its file to serve"
        )
    return Revision(model_version=version, model_uri=storage_uri, sha256=sha256)


def _state(isvc: Mapping[str, Any] | None) -> DeploymentState:
    try:
        return isvc_body.state_from_isvc(isvc)
    except (TypeError, ValueError) as exc:  # a hand-edited spec (DeploymentStateError passes through)
        raise ClusterRolloutError(f"cannot read the deployment from the InferenceService: {exc}") from exc


def _champion(state: DeploymentState) -> Revision:
    if state.champion is None:  # cannot happen: an existing InferenceService always has a champion
        raise ClusterRolloutError("the InferenceService exists but names no champion")
    return state.champion


def _resource_version(isvc: Mapping[str, Any]) -> str | None:
    return (isvc.get("metadata") or {}).get("resourceVersion")


# --------------------------------------------------------------------------- the Kubernetes API


def _get(target: ClusterTarget) -> dict[str, Any] | None:
    from kubernetes.client.exceptions import ApiException

    ref = target.ref
    try:
        with _api_errors(target, "get"):
            return target.api.get_namespaced_custom_object(
                isvc_body.GROUP,
                isvc_body.VERSION,
                ref.namespace,
                isvc_body.PLURAL,
                ref.name,
                _request_timeout=REQUEST_TIMEOUT_SECONDS,
            )
    except _NotFound as missing:
        exc: ApiException = missing.exc
        if _is_missing_kind(exc):
            raise ClusterRolloutError(
                f"the cluster has no {isvc_body.KIND} resource type ({isvc_body.API_VERSION}): "
                "is KServe installed?"
            ) from exc
        return None


def _create(target: ClusterTarget, body: dict[str, Any]) -> dict[str, Any]:
    ref = target.ref
    return target.api.create_namespaced_custom_object(
        isvc_body.GROUP,
        isvc_body.VERSION,
        ref.namespace,
        isvc_body.PLURAL,
        body,
        _request_timeout=REQUEST_TIMEOUT_SECONDS,
    )


def _patch(target: ClusterTarget, body: dict[str, Any]) -> dict[str, Any]:
    ref = target.ref
    # The generated client (kubernetes 30) sends every custom-object patch as
    # application/merge-patch+json: that method offers no other content type.
    # The fake API in the tests rejects anything else, so a client that changed
    # this default (older ones sent json-patch) fails loudly there.
    return target.api.patch_namespaced_custom_object(
        isvc_body.GROUP,
        isvc_body.VERSION,
        ref.namespace,
        isvc_body.PLURAL,
        ref.name,
        body,
        _request_timeout=REQUEST_TIMEOUT_SECONDS,
    )


def _call(target: ClusterTarget, verb: str, request: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        with _api_errors(target, verb):
            return request()
    except _NotFound as missing:
        raise ClusterRolloutError(
            f"{verb} {target.ref.describe()}: not found ({_reason(missing.exc)}); "
            f"does namespace {target.ref.namespace} exist and is KServe installed?"
        ) from missing.exc


class _NotFound(Exception):
    def __init__(self, exc: Any) -> None:
        super().__init__(str(exc))
        self.exc = exc


@contextlib.contextmanager
def _api_errors(target: ClusterTarget, verb: str) -> Iterator[None]:
    """Kubernetes client errors -> one sentence naming the InferenceService, the verb and the cause."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    what = f"{verb} {target.ref.describe()}"
    try:
        yield
    except ApiException as exc:
        if exc.status == 404:
            raise _NotFound(exc) from exc
        if exc.status == 403:
            raise ClusterRolloutError(
                f"{what}: forbidden ({_reason(exc)}); the deployer Role grants get/create/patch on "
                f"inferenceservices in {target.ref.namespace} (Role taxi-mlops-deployer)"
            ) from exc
        if exc.status == 409:
            raise ClusterRolloutError(
                f"{what}: it changed while this command ran ({_reason(exc)}); run the command again"
            ) from exc
        raise ClusterRolloutError(f"{what}: HTTP {exc.status} ({_reason(exc)})") from exc
    except HTTPError as exc:
        host = getattr(getattr(target.api, "api_client", None), "configuration", None)
        where = getattr(host, "host", "?")
        raise ClusterRolloutError(f"{what}: cannot reach the Kubernetes API at {where} ({exc})") from exc


def _reason(exc: Any) -> str:
    import json

    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        body = {}
    return str(body.get("message") or exc.reason or exc.status)


def _is_missing_kind(exc: Any) -> bool:
    """A 404 for the resource type (no CRD) rather than for this object."""
    import json

    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        return False
    details = body.get("details") or {}
    return body.get("reason") == "NotFound" and not details.get("name")
