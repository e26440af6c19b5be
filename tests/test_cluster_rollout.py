"""Deploy, promote and roll back on a cluster: the InferenceService and the MLflow aliases move together.

The Kubernetes API is the one thing faked, because no cluster exists here: a
real HTTP server on 127.0.0.1 that the real ``kubernetes`` client talks to. It
serves the InferenceService resource path for GET/POST/PATCH, applies merge
patches per RFC 7386 (refusing any other patch type, and honouring
resourceVersion preconditions), and plays KServe's controller: a new revision
when the predictor template changes, traffic split by canaryTrafficPercent
around the last rolled-out revision, "latest" resolving to the latest *ready*
revision, and a Ready condition. It records every request (method, path,
content type, body), and the tests assert the exact requests. MLflow is real
(sqlite in a temp dir).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from kubernetes import client as k8s
from support.fake_json_api import serve_json
from support.merge_patch import merge_patch

from components.registry.tracking import client_for
from components.registry.versions import version_for_alias
from pipelines.cli import main
from serving import kserve_deploy as kd
from serving.cluster_rollout import (
    ClusterRolloutError,
    ClusterTarget,
    deploy_version,
    promote_canary,
    rollback_canary,
    status,
)
from serving.deployment_state import DeploymentStateError, Revision

pytestmark = pytest.mark.timeout(120)
MODEL_NAME = "taxi-trip-duration"
COLLECTION = "/apis/serving.kserve.io/v1beta1/namespaces/taxi-mlops/inferenceservices"
ISVC = f"{COLLECTION}/taxi-duration"
SHAS = {"1": "a" * 64, "2": "b" * 64, "3": "c" * 64}


def _revision(version: str) -> Revision:
    return Revision(version, f"s3://models/{MODEL_NAME}/{SHAS[version]}/", SHAS[version])


# --------------------------------------------------------------------------- the fake Kubernetes API


@dataclass
class Recorded:
    method: str
    path: str
    content_type: str | None
    body: Any
    raw: str
    authorization: str | None


@dataclass
class FakeKube:
    """InferenceServices in memory plus a stand-in for the KServe controller."""

    settle_after_gets: int = 1  # reads that still see the old status after each write
    broken_versions: set[str] = field(default_factory=set)  # revisions of these never get ready
    forbidden: set[str] = field(default_factory=set)  # HTTP methods answered 403 (RBAC)
    requests: list[Recorded] = field(default_factory=list)
    objects: dict[str, dict] = field(default_factory=dict)
    _pending: dict[str, int] = field(default_factory=dict)
    _ctl: dict[str, dict] = field(default_factory=dict)
    _version: int = 100
    lock: threading.Lock = field(default_factory=threading.Lock)

    def writes(self) -> list[tuple[str, str, str | None, Any]]:
        return [(r.method, r.path, r.content_type, r.body) for r in self.requests if r.method != "GET"]

    def calls(self) -> list[tuple[str, str]]:
        return [(r.method, r.path) for r in self.requests]

    # ---- HTTP
    def handle(self, method: str, path: str, headers: Any, raw: str) -> tuple[int, dict]:
        content_type = headers.get("Content-Type")
        body = json.loads(raw) if raw else None
        with self.lock:
            self.requests.append(
                Recorded(method, path, content_type, body, raw, headers.get("Authorization"))
            )
            if method in self.forbidden:
                return 403, _status(403, "Forbidden", f"{method} is not allowed by the Role")
            if method == "POST" and path == COLLECTION:
                return self._create(body)
            if path.startswith(COLLECTION + "/"):
                name = path[len(COLLECTION) + 1 :]
                if method == "GET":
                    return self._get(name)
                if method == "PATCH":
                    return self._patch(name, content_type, body)
            return 404, _status(404, "NotFound", "the server could not find the requested resource")

    def _get(self, name: str) -> tuple[int, dict]:
        if name not in self.objects:
            return 404, _status(
                404, "NotFound", f'inferenceservices.serving.kserve.io "{name}" not found', name
            )
        if self._pending.get(name, 0) > 0:
            self._pending[name] -= 1
        else:
            self._reconcile(name)
        return 200, self.objects[name]

    def _create(self, body: dict) -> tuple[int, dict]:
        name = body["metadata"]["name"]
        if name in self.objects:
            return 409, _status(409, "AlreadyExists", f'"{name}" already exists', name)
        obj = json.loads(json.dumps(body))
        obj["metadata"].update(generation=1, resourceVersion=self._next_version(), uid="uid-1")
        self.objects[name] = obj
        self._pending[name] = self.settle_after_gets
        return 201, obj

    def _patch(self, name: str, content_type: str | None, patch: dict) -> tuple[int, dict]:
        if content_type != kd.MERGE_PATCH:
            return 415, _status(415, "UnsupportedMediaType", f"patch type {content_type} not expected here")
        if name not in self.objects:
            return 404, _status(404, "NotFound", f'"{name}" not found', name)
        current = self.objects[name]
        wanted = (patch.get("metadata") or {}).get("resourceVersion")
        if wanted is not None and wanted != current["metadata"]["resourceVersion"]:
            return 409, _status(409, "Conflict", "the object has been modified", name)
        merged = merge_patch(current, patch)
        if merged["spec"] != current["spec"]:
            merged["metadata"]["generation"] = current["metadata"]["generation"] + 1
        merged["metadata"]["resourceVersion"] = self._next_version()
        self.objects[name] = merged
        self._pending[name] = self.settle_after_gets
        return 200, merged

    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)

    # ---- what KServe + Knative would make of the spec
    def _reconcile(self, name: str) -> None:
        obj = self.objects[name]
        ctl = self._ctl.setdefault(name, {"n": 0, "template": None, "ready": None, "out": None, "prev": None})
        predictor = obj["spec"]["predictor"]
        # KServe copies annotations into the revision template: they start revisions too.
        template = json.dumps(
            [
                {k: v for k, v in predictor.items() if k != "canaryTrafficPercent"},
                obj["metadata"].get("annotations"),
            ],
            sort_keys=True,
        )
        if template != ctl["template"]:
            ctl["n"] += 1
            ctl["template"] = template
            ctl["latest"] = f"{name}-predictor-{ctl['n']:05d}"
            ctl["latest_version"] = kd.state_from_isvc(obj)
        latest_env = {e["name"]: e["value"] for e in predictor["model"]["env"]}
        healthy = latest_env[kd.VERSION_ENV] not in self.broken_versions
        if healthy:
            ctl["ready"] = ctl["latest"]
        percent = predictor.get("canaryTrafficPercent")
        if percent is None or ctl["out"] is None:
            traffic = [{"revisionName": ctl["ready"], "percent": 100, "latestRevision": True}]
            if healthy and ctl["out"] != ctl["latest"]:
                ctl["prev"], ctl["out"] = ctl["out"], ctl["latest"]
        else:
            traffic = [{"revisionName": ctl["ready"], "percent": percent, "latestRevision": True}]
            if percent < 100:
                traffic.append(
                    {
                        "tag": "prev",
                        "revisionName": ctl["out"],
                        "percent": 100 - percent,
                        "latestRevision": False,
                    }
                )
        failed = f'Revision "{ctl["latest"]}" failed with message: Back-off pulling image'
        ready = (
            {"type": "Ready", "status": "True"}
            if healthy
            else {
                "type": "Ready",
                "status": "False",
                "reason": "RevisionFailed",
                "message": failed,
            }
        )
        # KServe v0.19.0 with disableIstioVirtualHost (up.sh, for Kourier): status.url is the
        # predictor's Knative URL, <isvc>-predictor.<namespace>.<config-domain domain>
        # (tests/test_cluster_upstream_rules.py).
        predictor_url = f"http://{name}-predictor.taxi-mlops.example.com"
        obj["status"] = {
            "observedGeneration": obj["metadata"]["generation"],
            "url": predictor_url,
            "conditions": [ready],
            "components": {
                "predictor": {
                    "url": predictor_url,
                    "latestCreatedRevision": ctl["latest"],
                    "latestReadyRevision": ctl["ready"],
                    "latestRolledoutRevision": ctl["out"],
                    "previousRolledoutRevision": ctl["prev"],
                    "traffic": traffic,
                }
            },
        }


def _status(code: int, reason: str, message: str, name: str | None = None) -> dict:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if name:
        body["details"] = {"name": name, "group": "serving.kserve.io", "kind": "inferenceservices"}
    return body


@pytest.fixture
def fake_kube() -> Iterator[tuple[FakeKube, str]]:
    fake = FakeKube()
    with serve_json(fake.handle) as url:
        yield fake, url


def _api(host: str) -> k8s.CustomObjectsApi:
    configuration = k8s.Configuration(host=host)
    return k8s.CustomObjectsApi(k8s.ApiClient(configuration))


# --------------------------------------------------------------------------- MLflow (real)


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Versions 1..3 with the tags registration leaves: storage_uri and model_sha256."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    client = client_for(uri)
    client.create_registered_model(MODEL_NAME)
    for version in ("1", "2", "3"):
        revision = _revision(version)
        client.create_model_version(
            MODEL_NAME,
            source=revision.model_uri,
            tags={"storage_uri": revision.model_uri, "model_sha256": revision.sha256},
        )
    client.create_model_version(MODEL_NAME, source="file:///nowhere", tags={"model_sha256": "d" * 64})  # v4
    return uri


@pytest.fixture
def target(fake_kube, tracking_uri) -> ClusterTarget:
    client = client_for(tracking_uri)
    for alias in ("champion", "challenger"):
        client.delete_registered_model_alias(MODEL_NAME, alias)
    return ClusterTarget(_api(fake_kube[1]), tracking_uri, MODEL_NAME, timeout_seconds=5, poll_seconds=0.01)


def _alias(tracking_uri: str, alias: str) -> str | None:
    version = version_for_alias(tracking_uri, MODEL_NAME, alias)
    return None if version is None else str(version.version)


# --------------------------------------------------------------------------- the canary's life


def test_first_deployment_creates_the_isvc_and_waits_for_ready(fake_kube, target, tracking_uri):
    fake, _ = fake_kube
    transition = deploy_version(target, "1", 20)
    assert transition.changed
    assert transition.message == (
        "first deployment: version 1 is champion with 100% of traffic "
        "(InferenceService taxi-mlops/taxi-duration: Ready=True)"
    )
    # Read (absent), create, then poll: one read still sees no status, the next one is settled.
    assert fake.calls() == [("GET", ISVC), ("POST", COLLECTION), ("GET", ISVC), ("GET", ISVC)]
    assert fake.writes() == [("POST", COLLECTION, "application/json", kd.first_deployment(_revision("1")))]
    # Every revision is logged to the inference-log sink and says which version it runs.
    created = fake.writes()[0][3]["spec"]["predictor"]
    assert created["logger"]["url"] == "http://inference-log-sink.taxi-mlops.svc.cluster.local:8080"
    assert created["annotations"]["taxi-mlops/model-version"] == "1"
    assert transition.state.champion == _revision("1")
    assert transition.state.canary is None
    assert (_alias(tracking_uri, "champion"), _alias(tracking_uri, "challenger")) == ("1", None)

    again = deploy_version(target, "1", 20)
    assert not again.changed
    assert again.message == (
        "version 1 is already champion; nothing changed (InferenceService taxi-mlops/taxi-duration settled)"
    )
    assert fake.calls()[4:] == [("GET", ISVC)]  # one read, no write


def test_canary_promote_rollback_move_the_isvc_and_aliases_together(fake_kube, target, tracking_uri):
    fake, _ = fake_kube
    deploy_version(target, "1", 20)
    created_version = fake.objects["taxi-duration"]["metadata"]["resourceVersion"]
    fake.requests.clear()

    canary = deploy_version(target, "2", 20)
    assert canary.message.startswith("version 2 is canary with 20% of traffic; champion version 1 keeps 80% ")
    assert fake.calls() == [("GET", ISVC), ("PATCH", ISVC), ("GET", ISVC), ("GET", ISVC)]
    assert fake.writes() == [
        (
            "PATCH",
            ISVC,
            "application/merge-patch+json",
            kd.canary_patch(_revision("2"), _revision("1"), 20, resource_version=created_version),
        )
    ]
    assert (canary.state.champion, canary.state.canary, canary.state.canary_percent) == (
        _revision("1"),
        _revision("2"),
        20,
    )
    traffic = fake.objects["taxi-duration"]["status"]["components"]["predictor"]["traffic"]
    assert traffic == [
        {"revisionName": "taxi-duration-predictor-00002", "percent": 20, "latestRevision": True},
        {
            "tag": "prev",
            "revisionName": "taxi-duration-predictor-00001",
            "percent": 80,
            "latestRevision": False,
        },
    ]
    assert (_alias(tracking_uri, "champion"), _alias(tracking_uri, "challenger")) == ("1", "2")

    fake.requests.clear()
    same = deploy_version(target, "2", 20)
    assert not same.changed and "already canary at 20%; nothing changed" in same.message
    assert fake.writes() == []

    fake.requests.clear()
    before_promote = fake.objects["taxi-duration"]["metadata"]["resourceVersion"]
    promoted = promote_canary(target)
    assert promoted.message.startswith(
        "promoted version 2 to champion with 100% of traffic (was 20%); version 1 retired"
    )
    (write,) = fake.requests[1:2]
    assert (write.method, write.path, write.content_type) == ("PATCH", ISVC, "application/merge-patch+json")
    assert json.loads(write.raw) == {
        "metadata": {"resourceVersion": before_promote},
        "spec": {"predictor": {"canaryTrafficPercent": None}},
    }
    assert '"canaryTrafficPercent": null' in write.raw  # an explicit null on the wire
    assert "canaryTrafficPercent" not in fake.objects["taxi-duration"]["spec"]["predictor"]
    # No new revision: version 2's revision now takes all the traffic.
    predictor_status = fake.objects["taxi-duration"]["status"]["components"]["predictor"]
    assert predictor_status["traffic"] == [
        {"revisionName": "taxi-duration-predictor-00002", "percent": 100, "latestRevision": True}
    ]
    assert predictor_status["latestRolledoutRevision"] == "taxi-duration-predictor-00002"
    assert (promoted.state.champion, promoted.state.canary) == (_revision("2"), None)
    assert (_alias(tracking_uri, "champion"), _alias(tracking_uri, "challenger")) == ("2", None)

    fake.requests.clear()
    again = promote_canary(target)
    assert not again.changed and again.message.startswith("no canary to promote")
    assert fake.writes() == []

    deploy_version(target, "3", 30)
    assert (_alias(tracking_uri, "champion"), _alias(tracking_uri, "challenger")) == ("2", "3")
    fake.requests.clear()
    before_rollback = fake.objects["taxi-duration"]["metadata"]["resourceVersion"]
    rolled_back = rollback_canary(target)
    assert rolled_back.message.startswith(
        "rolled back canary version 3 (had 30%); champion version 2 has 100% of traffic"
    )
    assert fake.writes() == [
        (
            "PATCH",
            ISVC,
            "application/merge-patch+json",
            {
                "metadata": {"resourceVersion": before_rollback},
                "spec": {"predictor": {"canaryTrafficPercent": 0}},
            },
        )
    ]
    traffic = fake.objects["taxi-duration"]["status"]["components"]["predictor"]["traffic"]
    assert traffic == [
        {"revisionName": "taxi-duration-predictor-00003", "percent": 0, "latestRevision": True},
        {
            "tag": "prev",
            "revisionName": "taxi-duration-predictor-00002",
            "percent": 100,
            "latestRevision": False,
        },
    ]
    assert (rolled_back.state.champion, rolled_back.state.canary) == (_revision("2"), None)
    # Promote and rollback never touched the logger or the revisions' annotations.
    predictor = fake.objects["taxi-duration"]["spec"]["predictor"]
    assert predictor["logger"] == kd.first_deployment(_revision("1"))["spec"]["predictor"]["logger"]
    assert predictor["annotations"]["taxi-mlops/model-version"] == "3"
    assert (_alias(tracking_uri, "champion"), _alias(tracking_uri, "challenger")) == ("2", None)

    fake.requests.clear()
    again = rollback_canary(target)
    assert not again.changed and again.message.startswith("no canary to roll back")
    assert fake.writes() == []

    report = status(target)
    assert report.state.describe().startswith("champion version 2 (100%)")
    assert report.lines(target.ref) == [
        f"desired: {report.state.describe()}",
        "InferenceService taxi-mlops/taxi-duration: Ready=True; http://taxi-duration-predictor.taxi-mlops.example.com",
        "  taxi-duration-predictor-00003: 0% (latest)",
        "  taxi-duration-predictor-00002: 100% (rolled out tag prev)",
    ]


def test_a_canary_that_never_gets_ready_times_out_and_can_be_rolled_back(fake_kube, target, tracking_uri):
    fake, _ = fake_kube
    deploy_version(target, "1", 20)
    fake.broken_versions.add("2")
    slow = ClusterTarget(target.api, tracking_uri, MODEL_NAME, timeout_seconds=0.3, poll_seconds=0.05)
    with pytest.raises(ClusterRolloutError) as failure:
        deploy_version(slow, "2", 20)
    assert str(failure.value) == (
        "InferenceService taxi-mlops/taxi-duration did not become ready within 0.3s: Ready=False "
        '(RevisionFailed): Revision "taxi-duration-predictor-00002" failed with message: '
        "Back-off pulling image"
    )
    # The aliases did not move: the registry names only what serves.
    assert (_alias(tracking_uri, "champion"), _alias(tracking_uri, "challenger")) == ("1", None)

    # A rollback does not need Ready (the broken revision keeps the ISVC not ready): traffic is enough.
    rolled_back = rollback_canary(slow)
    assert rolled_back.changed
    assert rolled_back.message.endswith(
        "(InferenceService taxi-mlops/taxi-duration: "
        + (
            'Ready=False (RevisionFailed): Revision "taxi-duration-predictor-00002" failed with message: '
            "Back-off pulling image)"
        )
    )
    assert rolled_back.state.champion == _revision("1")
    assert (_alias(tracking_uri, "champion"), _alias(tracking_uri, "challenger")) == ("1", None)
    again = rollback_canary(slow)  # the idle broken revision does not make it "still rolling out"
    assert not again.changed
    assert again.message.endswith("(InferenceService taxi-mlops/taxi-duration settled)")


def test_a_version_without_a_model_store_copy_is_refused_before_any_request(fake_kube, target):
    fake, _ = fake_kube
    with pytest.raises(ClusterRolloutError, match="version 4 has no 'storage_uri'/'model_sha256' tag"):
        deploy_version(target, "4", 20)
    with pytest.raises(ClusterRolloutError, match="has no version 9"):
        deploy_version(target, "9", 20)
    assert fake.requests == []


def test_a_zero_percent_canary_is_refused_before_any_write(fake_kube, target):
    fake, _ = fake_kube
    deploy_version(target, "1", 20)
    fake.requests.clear()
    with pytest.raises(DeploymentStateError, match="canaryTrafficPercent 0 means rolled back"):
        deploy_version(target, "2", 0)
    assert fake.writes() == []


def test_promote_before_anything_is_deployed(fake_kube, target):
    with pytest.raises(ClusterRolloutError, match="taxi-duration does not exist: nothing is deployed yet"):
        promote_canary(target)


def test_rbac_refusal_and_concurrent_change_are_named(fake_kube, target):
    fake, _ = fake_kube
    fake.forbidden.add("POST")
    with pytest.raises(
        ClusterRolloutError, match=r"create InferenceService taxi-mlops/taxi-duration: forbidden"
    ):
        deploy_version(target, "1", 20)
    fake.forbidden.clear()
    deploy_version(target, "1", 20)
    # Someone else changes the ISVC between our read and our patch: the precondition fails.
    original = fake._get

    def read_then_race(name: str) -> tuple[int, dict]:
        code, body = original(name)
        snapshot = json.loads(json.dumps(body))
        fake.objects[name]["metadata"]["resourceVersion"] = fake._next_version()
        return code, snapshot

    fake._get = read_then_race  # type: ignore[method-assign]
    with pytest.raises(ClusterRolloutError, match="changed while this command ran"):
        deploy_version(target, "2", 20)


def test_an_unreachable_api_is_one_clear_error(tracking_uri):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    configuration = k8s.Configuration(host=f"http://127.0.0.1:{port}")
    configuration.retries = 0
    api = k8s.CustomObjectsApi(k8s.ApiClient(configuration))
    target = ClusterTarget(api, tracking_uri, MODEL_NAME)
    with pytest.raises(
        ClusterRolloutError, match=rf"cannot reach the Kubernetes API at http://127.0.0.1:{port}"
    ):
        status(target)


# --------------------------------------------------------------------------- the CLI


def _kubeconfig(path: Path, host: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A kubeconfig for the fake API, where `kubectl` would look for it.

    The kubernetes package reads $KUBECONFIG once, at import; a fresh `taxi-mlops`
    process sees it, this test process has imported it already.
    """
    from kubernetes.config import kube_config

    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": host}}],
                "users": [{"name": "fake", "user": {"token": "fake-token"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
                "current-context": "fake",
            }
        )
    )
    return path


def test_cli_cluster_commands_use_the_kubeconfig(fake_kube, target, tracking_uri, tmp_path, monkeypatch):
    fake, host = fake_kube
    fake.settle_after_gets = 0
    _kubeconfig(tmp_path / "kubeconfig", host, monkeypatch)
    env = {
        "MLFLOW_TRACKING_URI": tracking_uri,
        "TAXI_MLOPS_STATE_DIR": str(tmp_path / "state"),
    }
    runner = CliRunner()
    result = runner.invoke(main, ["deploy", "--cluster", "--version", "1", "--kube-context", "fake"], env=env)
    assert result.exit_code == 0, result.output
    assert "first deployment: version 1 is champion with 100% of traffic" in result.output
    result = runner.invoke(main, ["deploy", "--cluster", "--version", "2", "--canary-percent", "10"], env=env)
    assert result.exit_code == 0, result.output
    assert "now: champion version 1 (90%), canary version 2 (10%)" in result.output
    result = runner.invoke(main, ["status", "--cluster"], env=env)
    assert result.exit_code == 0, result.output
    assert "taxi-duration-predictor-00002: 10% (latest)" in result.output
    result = runner.invoke(main, ["promote", "--cluster", "--timeout", "5"], env=env)
    assert result.exit_code == 0, result.output
    assert "promoted version 2 to champion" in result.output
    result = runner.invoke(main, ["rollback", "--cluster"], env=env)
    assert result.exit_code == 0, result.output
    assert "no canary to roll back" in result.output
    assert {r.authorization for r in fake.requests} == {"Bearer fake-token"}
    assert (_alias(tracking_uri, "champion"), _alias(tracking_uri, "challenger")) == ("2", None)
    # Nothing touched the local deployment.
    assert not (tmp_path / "state" / "deployment").exists()


def test_cli_cluster_needs_the_cluster_mlflow(fake_kube, tmp_path, monkeypatch):
    fake, host = fake_kube
    _kubeconfig(tmp_path / "kubeconfig", host, monkeypatch)
    result = CliRunner().invoke(main, ["promote", "--cluster"], env={"MLFLOW_TRACKING_URI": ""})
    assert result.exit_code == 2
    assert "--cluster needs MLFLOW_TRACKING_URI pointing at the cluster's MLflow" in result.output
    assert fake.requests == []


def test_cli_cluster_with_an_unknown_context_is_one_line(fake_kube, tmp_path, tracking_uri, monkeypatch):
    _kubeconfig(tmp_path / "kubeconfig", fake_kube[1], monkeypatch)
    env = {"MLFLOW_TRACKING_URI": tracking_uri}
    result = CliRunner().invoke(main, ["rollback", "--cluster", "--kube-context", "nope"], env=env)
    assert result.exit_code == 1
    assert result.output.startswith("error: cannot load the kubeconfig (context nope)")
