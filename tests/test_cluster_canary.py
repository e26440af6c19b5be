"""The canary judge on a cluster: the InferenceService steps 10 -> 25 -> 50 -> promoted, or is rolled back.

Real: the MLflow registry (sqlite, three registered versions with their files in a model
store), S3 (moto's server: the model store, the prediction log, the labels and the judge's
files in the ``monitoring`` bucket, exactly where the cluster keeps them), the judge, the
registry scorer and ``PrometheusOps`` over HTTP.

Faked, because no cluster exists here:

- the Kubernetes API: ``FakeKube`` of tests/test_cluster_rollout.py (a real HTTP server the
  real ``kubernetes`` client talks to, merge patches applied, KServe's traffic split played,
  every request recorded), so the tests assert the exact InferenceService patches;
- the cluster Prometheus: :class:`FakePrometheus`, a real HTTP server answering
  ``/api/v1/query`` in Prometheus' JSON. It keeps what each predictor revision served and
  when (the test's traffic) and answers ``increase(...[R])`` with the requests or 5xx in the
  R seconds up to the query time, and ``histogram_quantile`` with the revision's p99 when it
  served any. The real Prometheus is exercised in tests/test_prometheus_ops.py.

The traffic is what the inference-log sink would write: one prediction-log segment per
round, each trip answered by the revision the canary percent sends it to, with that model's
own minutes; labels for every trip land in the same round.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pandas as pd
import pytest
import yaml
from support.fake_json_api import serve_json
from support.monitoring_state import write_segment
from support.s3_server import moto_s3
from support.tlc_fixtures import write_tlc_dir
from test_cluster_rollout import ISVC, FakeKube, _api

from components import names
from components.canary.policy import CanaryPolicy, Step
from components.data.ingest import load_month
from components.data.trip_ids import trip_ids
from components.evaluation.gate import gate_against_champion
from components.features.design_matrix import vectorize_trips
from components.models.duration_model import MODEL_FILE_NAME, TripDurationModel, load_duration_model
from components.models.train import fit_candidate
from components.monitoring.labels import month_labels, write_labels
from components.registry import tracking
from components.registry.registration import register_winner
from components.registry.versions import SHA256_TAG, STORAGE_URI_TAG, version_for_alias
from components.storage.object_transfer import list_prefix, upload_file
from components.storage.s3 import S3Connection
from serving import kserve_deploy as kd
from serving.canary_judge import CanaryJudgeError
from serving.cluster_canary import (
    ClusterRolloutActions,
    JudgeLocations,
    judge_cluster_once,
    registry_scorer,
)
from serving.cluster_rollout import ClusterTarget, deploy_version
from serving.deployment_state import Revision

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
MODEL_NAME = "taxi-trip-duration"
REPO_ROOT = Path(__file__).resolve().parent.parent
POLICY = CanaryPolicy(
    steps=(
        Step(10, min_requests=50, min_labelled=0),
        Step(25, min_requests=50, min_labelled=200),
        Step(50, min_requests=50, min_labelled=300),
    ),
    promote_min_labelled=400,
    min_pairs=150,
    max_error_rate=0.05,
    resamples=400,
)
START = datetime(2021, 2, 1, tzinfo=UTC)  # event time of the replayed trips
WALL = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)  # the analyses' wall clock, pinned
INTERVAL = timedelta(minutes=5)  # between analyses: the recurring run's schedule
PER_ROUND = 800  # trips served between two analyses


# --------------------------------------------------------------------------- the cluster Prometheus


@dataclass
class FakePrometheus:
    """Stands in for the cluster Prometheus: what each model version served and when, queried over HTTP."""

    served: list[tuple[datetime, str, int, int]] = field(default_factory=list)  # (time, version, n, 5xx)
    p99_seconds: dict[str, float] = field(default_factory=dict)
    queries: list[str] = field(default_factory=list)
    down: bool = False
    now: datetime = WALL  # the query time when a query names none (PrometheusOps asks "now")

    def handle(self, method: str, path: str, headers: Any, raw: str) -> tuple[int, Any]:
        parts = urlsplit(path)
        if (method, parts.path) != ("GET", "/api/v1/query") or self.down:
            return 503, {"status": "error", "errorType": "unavailable", "error": "not now"}
        args = parse_qs(parts.query)
        query = args["query"][0]
        at = datetime.fromtimestamp(float(args["time"][0]), UTC) if "time" in args else None
        self.queries.append(query)
        version = re.search(r'model_version="([^"]+)"', query).group(1)
        seconds = int(re.search(r"\[(\d+)s\]", query).group(1))
        now = at or self.now
        inside = [
            s for s in self.served if s[1] == version and now - timedelta(seconds=seconds) < s[0] <= now
        ]
        if query.startswith("histogram_quantile"):
            value = self.p99_seconds.get(version, 0.004) if inside else None  # NaN without traffic
        elif 'status_class="5xx"' in query:
            value = sum(s[3] for s in inside) if inside else None
        else:
            value = sum(s[2] for s in inside) if inside else None
        result = [] if value is None else [{"metric": {}, "value": [now.timestamp(), str(value)]}]
        return 200, {"status": "success", "data": {"resultType": "vector", "result": result}}


@pytest.fixture
def prometheus() -> Iterator[tuple[FakePrometheus, str]]:
    fake = FakePrometheus()
    with serve_json(fake.handle) as url:
        yield fake, url


# --------------------------------------------------------------------------- registry, S3, Kubernetes


@dataclass(frozen=True)
class World:
    tracking_uri: str
    s3: S3Connection
    revisions: dict[str, Revision]  # as the InferenceService names them (storage_uri, sha256)
    models: dict[str, TripDurationModel]
    trips: pd.DataFrame
    ids: np.ndarray


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Versions 1 (ridge), 2 (the same file again: an equal challenger) and 3 (ridge x1.15: 15% too
    high), registered with a model store in S3 as the training pipeline's register step leaves them."""
    root = tmp_path_factory.mktemp("cluster-canary")
    data_dir = write_tlc_dir(root / "tlc", rows=6000)
    train_trips, _ = load_month("green", "2021-01", data_dir=data_dir)
    val_trips, _ = load_month("green", "2021-02", data_dir=data_dir)
    vectorizer, train, validation = vectorize_trips(train_trips, val_trips)
    ridge, result = fit_candidate("ridge", None, vectorizer, train, validation)
    files = {"1": root / "v1" / MODEL_FILE_NAME, "3": root / "v3" / MODEL_FILE_NAME}
    ridge.save(files["1"])
    files["2"] = files["1"]
    high = load_duration_model(files["1"], None)
    high.estimator.coef_ = high.estimator.coef_ * 1.15
    high.estimator.intercept_ = high.estimator.intercept_ * 1.15
    high.save(files["3"])
    uri = f"sqlite:///{root / 'mlflow.db'}"
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    with moto_s3() as s3:
        client = s3.client()
        for bucket in ("models", names.MONITORING_BUCKET):
            client.make_bucket(bucket)
        try:
            experiment = tracking.ensure_experiment(uri, "registration", (root / "mlartifacts").as_uri())
            gate = asdict(gate_against_champion("ridge", result.rmse, None, None, 0.0))
            for version in ("1", "2", "3"):
                run_id = tracking.client_for(uri).create_run(experiment).info.run_id
                registration = register_winner(
                    tracking_uri=uri,
                    model_name=MODEL_NAME,
                    model_file=files[version],
                    gate=gate,
                    input_example=val_trips.head(5),
                    run_id=run_id,
                    version_tags={},
                    model_store_uri=names.MODEL_STORE_URI,
                    s3=s3,
                )
                assert registration.model_version == version
        finally:
            import mlflow

            mlflow.set_tracking_uri(previous)  # type: ignore[arg-type]
        registry = tracking.client_for(uri)
        revisions = {}
        for version in ("1", "2", "3"):
            tags = registry.get_model_version(MODEL_NAME, version).tags
            revisions[version] = Revision(version, tags[STORAGE_URI_TAG], tags[SHA256_TAG])
        models = {v: load_duration_model(files[v], revisions[v].sha256) for v in files}
        val_trips = val_trips.reset_index(drop=True)
        yield World(uri, s3, revisions, models, val_trips, trip_ids(val_trips, "green"))


@pytest.fixture
def cluster(world: World) -> Iterator[tuple[FakeKube, ClusterTarget]]:
    """A fresh fake InferenceService API, an empty monitoring bucket and no aliases."""
    client = tracking.client_for(world.tracking_uri)
    for alias in ("champion", "challenger", "previous"):
        client.delete_registered_model_alias(MODEL_NAME, alias)
    store = world.s3.client()
    for listed in store.list_objects(names.MONITORING_BUCKET, recursive=True):
        store.remove_object(names.MONITORING_BUCKET, listed.object_name)
    fake = FakeKube(settle_after_gets=0)
    with serve_json(fake.handle) as url:
        target = ClusterTarget(
            _api(url), world.tracking_uri, MODEL_NAME, timeout_seconds=5, poll_seconds=0.01
        )
        yield fake, target


def _alias(world: World, alias: str) -> str | None:
    version = version_for_alias(world.tracking_uri, MODEL_NAME, alias)
    return None if version is None else str(version.version)


# --------------------------------------------------------------------------- traffic


@dataclass
class Traffic:
    """What the predictors serve between analyses: log segments and labels into S3, counts into Prometheus."""

    world: World
    prometheus: FakePrometheus
    scratch: Path
    rounds: int = 0
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(11))

    def serve(self, until: datetime, champion: str, canary: str | None = None, percent: int = 0) -> None:
        """``PER_ROUND`` trips in the interval ending at ``until`` (wall clock), ``percent`` of them to
        the canary; each answer is its model's own, as the predictors give it."""
        number = self.rounds
        self.rounds += 1
        trips, world = self.world.trips, self.world
        start = (number * PER_ROUND) % len(trips)
        chunk = trips.iloc[start : start + PER_ROUND].reset_index(drop=True)
        to_canary = self.rng.random(len(chunk)) < percent / 100 if canary else np.zeros(len(chunk), bool)
        versions = np.where(to_canary, canary or champion, champion)
        minutes = np.where(
            to_canary, world.models[canary or champion].predict(chunk), world.models[champion].predict(chunk)
        )
        ids = np.array([f"{trip_id}-r{number}" for trip_id in world.ids[start : start + len(chunk)]])
        first_event = pd.Timestamp(START) + pd.Timedelta(minutes=number * PER_ROUND)
        records = pd.DataFrame(
            {
                "request_id": ids,
                "event_time": first_event + pd.to_timedelta(np.arange(len(chunk)), unit="min"),
                "model_name": "duration",
                "model_version": versions,
                "revision": np.where(to_canary, "canary", "champion"),
                "PULocationID": chunk["PULocationID"].astype("int64"),
                "DOLocationID": chunk["DOLocationID"].astype("int64"),
                "trip_distance": chunk["trip_distance"].astype("float64"),
                "minutes": minutes,
                "logged_at": pd.Timestamp(until),
            }
        )
        segment = write_segment(self.scratch / "log", records, f"{number:04d}")
        upload_file(world.s3, segment, f"{names.PREDICTION_LOG_URI}/{segment.name}")
        labels = self.scratch / "labels" / f"round-{number:04d}.parquet"
        write_labels(month_labels(chunk, ids), labels)
        upload_file(world.s3, labels, f"{names.LABELS_URI}/{labels.name}")
        # Prometheus saw the same requests, spread over the interval up to ``until``.
        step = INTERVAL / len(chunk)
        for i, version in enumerate(versions):
            self.prometheus.served.append((until - INTERVAL + step * (i + 1), str(version), 1, 0))


def _judge(world: World, target: ClusterTarget, prometheus: tuple[FakePrometheus, str], at: datetime) -> Any:
    fake, url = prometheus
    fake.now = at
    return judge_cluster_once(target, url, JudgeLocations(), POLICY, s3=world.s3, now=at)


def _bucket_files(world: World) -> dict[str, bytes]:
    """The judge's files in s3://monitoring/canary, by name."""
    found = {}
    for listed in list_prefix(world.s3, names.CANARY_URI):
        response = world.s3.client().get_object(
            names.MONITORING_BUCKET, f"{names.CANARY_DIR_NAME}/{listed.name}"
        )
        try:
            found[listed.name] = response.read()
        finally:
            response.close()
            response.release_conn()
    return found


def _patches(fake: FakeKube) -> list[Any]:
    """The bodies the judge wrote: only merge patches of the one InferenceService, nothing created."""
    writes = fake.writes()
    assert {(method, path, kind) for method, path, kind, _ in writes} <= {("PATCH", ISVC, kd.MERGE_PATCH)}
    return [body for *_, body in writes]


def _resource_version(fake: FakeKube) -> str:
    return fake.objects["taxi-duration"]["metadata"]["resourceVersion"]


def _queries(version: str, window: str) -> list[str]:
    selector = f'model_version="{version}"'
    return [
        f"sum(increase(trip_duration_http_requests_total{{{selector}}}[{window}]))",
        f'sum(increase(trip_duration_http_requests_total{{{selector},status_class="5xx"}}[{window}]))',
        "histogram_quantile(0.99, sum by (le) "
        f"(rate(trip_duration_http_request_seconds_bucket{{{selector}}}[{window}])))",
    ]


# --------------------------------------------------------------------------- the canary's life


def test_an_equal_canary_steps_10_25_50_and_is_promoted_with_the_exact_patches(
    world, cluster, prometheus, tmp_path
):
    fake, target = cluster
    traffic = Traffic(world, prometheus[0], tmp_path)
    one, two = world.revisions["1"], world.revisions["2"]
    deploy_version(target, "1", 10)
    traffic.serve(WALL, "1")  # the champion alone, before the canary
    deploy_version(target, "2", 10)  # what the training pipeline's deploy step does
    fake.requests.clear()

    # The first analysis sees the canary arrive: nothing served by it yet, so it holds, and the
    # step's start is kept in the bucket for the next run.
    at = WALL
    first = _judge(world, target, prometheus, at)
    decisions = [first.decision]
    assert (first.decision["verdict"], first.decision["action"]) == ("inconclusive", "hold")
    assert first.decision["operations"]["canary"]["requests"] == 0
    assert first.state.canary == two and first.state.champion == one
    files = _bucket_files(world)
    assert set(files) == {"judge.json", "history.jsonl", "latest.json", "report.html", "report-v2.html"}
    memory = json.loads(files["judge.json"])
    assert (memory["canary_version"], memory["percent"], memory["step_started_at"]) == (
        "2",
        10,
        WALL.isoformat(),
    )
    assert first.report_html == files["report.html"].decode()

    expected: list[Any] = []
    for _ in range(12):
        state = ClusterRolloutActions(target).state()
        if state.canary is None:
            break
        rv = _resource_version(fake)
        prometheus[0].queries.clear()
        at += INTERVAL
        traffic.serve(at, "1", "2", state.canary_percent)
        decision = _judge(world, target, prometheus, at).decision
        decisions.append(decision)
        if len(decisions) == 2:
            # One analysis' queries, exactly: each revision over the step so far (the 5 minutes
            # since the first analysis, which the next run read back from judge.json).
            assert prometheus[0].queries == _queries("1", "300s") + _queries("2", "300s")
        if decision["action"] == "set_percent":
            expected.append(kd.canary_patch(two, one, decision["next_percent"], resource_version=rv))
        elif decision["action"] == "promote":
            expected.append(kd.promote_patch(resource_version=rv))
        else:
            assert decision["action"] == "hold", decision

    acting = [(d["action"], d["next_percent"]) for d in decisions if d["action"] != "hold"]
    assert acting == [("set_percent", 25), ("set_percent", 50), ("promote", 100)]
    assert _patches(fake) == expected
    # On the wire: canaryTrafficPercent 25, then 50, then the promotion's explicit null.
    assert [body["spec"]["predictor"]["canaryTrafficPercent"] for body in _patches(fake)] == [25, 50, None]
    assert '"canaryTrafficPercent": null' in [r.raw for r in fake.requests if r.method == "PATCH"][-1]
    predictor = fake.objects["taxi-duration"]["spec"]["predictor"]
    assert "canaryTrafficPercent" not in predictor
    assert {"name": kd.VERSION_ENV, "value": "2"} in predictor["model"]["env"]
    # The registry follows: version 2 is champion, version 1 keeps the one-step undo.
    assert (_alias(world, "champion"), _alias(world, "previous"), _alias(world, "challenger")) == (
        "2",
        "1",
        None,
    )

    final = decisions[-1]
    assert final["verdict"] == "pass" and final["labelled_pairs"] >= POLICY.promote_min_labelled
    assert final["offline_mismatches"] == 0  # the registry's files give the answers the log holds
    assert final["accuracy"]["mae_ratio"] == pytest.approx(1.0)
    # The bucket: every analysis in order, the last one as latest.json, the page, no step left.
    files = _bucket_files(world)
    assert set(files) == {"history.jsonl", "latest.json", "report.html", "report-v2.html"}
    assert [json.loads(line) for line in files["history.jsonl"].decode().splitlines()] == decisions
    assert json.loads(files["latest.json"]) == final
    page = files["report.html"].decode()
    assert "Canary: version 2" in page and "<svg" in page and files["report-v2.html"] == files["report.html"]

    # Nothing left to judge: no patch, no record, and the log is not downloaded.
    fake.requests.clear()
    prometheus[0].queries.clear()
    idle = _judge(world, target, prometheus, at + INTERVAL)
    assert idle.decision is None and idle.report_html is None
    assert idle.state.canary is None and idle.state.champion == two
    assert fake.writes() == [] and prometheus[0].queries == []
    assert _bucket_files(world) == files


def test_a_canary_15_percent_too_high_is_rolled_back_on_accuracy(world, cluster, prometheus, tmp_path):
    fake, target = cluster
    traffic = Traffic(world, prometheus[0], tmp_path)
    deploy_version(target, "1", 10)
    traffic.serve(WALL, "1")
    deploy_version(target, "3", 10)
    assert (_alias(world, "champion"), _alias(world, "challenger")) == ("1", "3")
    fake.requests.clear()
    assert _judge(world, target, prometheus, WALL).decision["action"] == "hold"
    rv = _resource_version(fake)
    traffic.serve(WALL + INTERVAL, "1", "3", 10)
    decision = _judge(world, target, prometheus, WALL + INTERVAL).decision
    assert (decision["verdict"], decision["action"], decision["percent"]) == ("fail", "rollback", 10)
    assert "accuracy" in decision["reason"]
    assert decision["accuracy"]["ratio_ci"][0] > 1 + POLICY.mae_margin
    assert _patches(fake) == [
        {"metadata": {"resourceVersion": rv}, "spec": {"predictor": {"canaryTrafficPercent": 0}}}
    ]
    assert _patches(fake) == [kd.rollback_patch(resource_version=rv)]
    assert (_alias(world, "champion"), _alias(world, "challenger")) == ("1", None)
    files = _bucket_files(world)
    assert "judge.json" not in files  # a decided canary leaves no step behind
    assert json.loads(files["latest.json"]) == decision
    history = [json.loads(line)["action"] for line in files["history.jsonl"].decode().splitlines()]
    assert history == ["hold", "rollback"]


def test_a_canary_answering_5xx_is_rolled_back_on_errors_before_any_label(world, cluster, prometheus):
    fake, target = cluster
    deploy_version(target, "1", 10)
    deploy_version(target, "2", 10)
    fake.requests.clear()
    rv = _resource_version(fake)
    # Only Prometheus knows yet: 200 canary requests in the last minute, 60 of them 5xx.
    prometheus[0].served += [(WALL, "2", 200, 60), (WALL, "1", 1800, 0)]
    decision = _judge(world, target, prometheus, WALL).decision
    assert (decision["verdict"], decision["action"]) == ("fail", "rollback")
    assert decision["operations"]["canary"] == {"requests": 200, "errors": 60, "p99_ms": 4.0}
    assert decision["labelled_pairs"] == 0
    assert _patches(fake) == [kd.rollback_patch(resource_version=rv)]


# --------------------------------------------------------------------------- refusals


def test_a_canary_changed_during_the_analysis_is_not_acted_on(world, cluster):
    fake, target = cluster
    deploy_version(target, "1", 10)
    deploy_version(target, "2", 10)
    actions = ClusterRolloutActions(target)
    assert actions.state().canary == world.revisions["2"]
    deploy_version(target, "3", 20)  # someone deploys another canary meanwhile
    fake.requests.clear()
    for act in (lambda: actions.set_percent(25), actions.promote, actions.rollback):
        with pytest.raises(CanaryJudgeError, match=r"changed during the analysis \(judged: .*version 2"):
            act()
    assert fake.writes() == []
    assert {method for method, _ in fake.calls()} == {"GET"}


def test_the_scorer_refuses_a_registered_file_other_than_the_served_one(world, tmp_path):
    score = registry_scorer(world.tracking_uri, MODEL_NAME, tmp_path)
    served = world.revisions["2"]
    assert (
        score(served).predict(world.trips.head(3)).tolist()
        == world.models["2"].predict(world.trips.head(3)).tolist()
    )
    other = Revision("2", served.model_uri, "f" * 64)
    with pytest.raises(
        CanaryJudgeError, match=r"the registry records sha256 .* but the InferenceService serves f{64}"
    ):
        score(other)
    with pytest.raises(CanaryJudgeError, match="version 9: not in the registry"):
        score(Revision("9", served.model_uri, served.sha256))


def test_without_prometheus_nothing_is_decided_acted_on_or_recorded(world, cluster, prometheus, tmp_path):
    fake, target = cluster
    deploy_version(target, "1", 10)
    deploy_version(target, "2", 10)
    Traffic(world, prometheus[0], tmp_path).serve(WALL, "1", "2", 10)
    fake.requests.clear()
    prometheus[0].down = True
    with pytest.raises(CanaryJudgeError, match=r"Prometheus at http://127\.0\.0\.1:\d+ refused .*HTTP 503"):
        _judge(world, target, prometheus, WALL)
    assert fake.writes() == []
    assert _bucket_files(world) == {}


def test_empty_locations_are_refused():
    with pytest.raises(CanaryJudgeError, match="judge locations: canary is empty"):
        JudgeLocations(canary=" ")


# --------------------------------------------------------------------------- what the cluster grants


def _documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def test_the_pipeline_runner_may_get_and_patch_the_inferenceservice_and_nothing_the_judge_lacks():
    """The judge's verbs (GET and PATCH above) are granted to the pipeline pods' ServiceAccount in
    taxi-mlops, on inferenceservices only; the Role grants create too, for the deploy step."""
    rbac = REPO_ROOT / "manifests" / "base" / "rbac"
    (role,) = _documents(rbac / "role.yaml")
    (binding,) = _documents(rbac / "rolebinding.yaml")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "pipeline-runner", "namespace": "kubeflow"}
    ]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    kustomization = yaml.safe_load((rbac / "kustomization.yaml").read_text(encoding="utf-8"))
    assert kustomization["namespace"] == names.NAMESPACE
    (rule,) = role["rules"]
    assert rule["apiGroups"] == [kd.GROUP] and rule["resources"] == [kd.PLURAL]
    assert {"get", "patch"} <= set(rule["verbs"]) <= {"get", "create", "patch"}


def test_the_default_prometheus_url_is_the_monitoring_components_service():
    monitoring = REPO_ROOT / "manifests" / "components" / "monitoring" / "prometheus.yaml"
    (service,) = [d for d in _documents(monitoring) if d["kind"] == "Service"]
    assert service["metadata"]["name"] == names.PROMETHEUS_SERVICE
    assert service["metadata"]["namespace"] == names.NAMESPACE
    assert [port["port"] for port in service["spec"]["ports"]] == [names.PROMETHEUS_SERVICE_PORT]
    assert names.PROMETHEUS_URL == "http://prometheus.taxi-mlops.svc.cluster.local:9090"


# --------------------------------------------------------------------------- the pipeline's step


def _request(world: World, url: str, tmp_path: Path) -> Any:
    from pipelines.steps.canary import CanaryRequest

    overrides = {
        "steps": [vars(step) for step in POLICY.steps],
        **{name: getattr(POLICY, name) for name in ("promote_min_labelled", "min_pairs", "max_error_rate")},
        "resamples": POLICY.resamples,
    }
    return CanaryRequest(
        tracking_uri=world.tracking_uri,
        model_name=MODEL_NAME,
        prometheus_url=url,
        policy_overrides=json.dumps(overrides),
        experiment="taxi-test",
        artifact_location=(tmp_path / "mlartifacts").as_uri(),
        report_path=str(tmp_path / "out" / "report.html"),
        decision_path=str(tmp_path / "out" / "decision.json"),
    )


def test_the_pipeline_step_acts_stores_and_logs_an_mlflow_run_for_the_decision(
    world, cluster, prometheus, tmp_path
):
    from mlflow.tracking import MlflowClient

    from pipelines.steps.canary import canary_step

    _, target = cluster
    deploy_version(target, "1", 10)
    request = _request(world, prometheus[1], tmp_path)
    idle = canary_step(request, api=target.api, s3=world.s3, now=WALL)
    assert idle.action == "none" and idle.mlflow_run_id == ""
    assert idle.document["reason"].startswith("no canary to judge: champion version 1")
    assert "no canary to judge" in (tmp_path / "out" / "report.html").read_text()

    deploy_version(target, "2", 10)
    prometheus[0].served += [(WALL, "2", 200, 60), (WALL, "1", 1800, 0)]
    outcome = canary_step(request, api=target.api, s3=world.s3, now=WALL)
    assert outcome.action == "rollback" and outcome.document["verdict"] == "fail"
    assert json.loads((tmp_path / "out" / "decision.json").read_text()) == outcome.document
    assert (tmp_path / "out" / "report.html").read_text() == outcome.report_html
    assert json.loads(_bucket_files(world)["latest.json"]) == outcome.document
    client = MlflowClient(tracking_uri=world.tracking_uri, registry_uri=world.tracking_uri)
    run = client.get_run(outcome.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert {k: run.data.tags[k] for k in ("champion_version", "canary_version", "verdict", "action")} == {
        "champion_version": "1",
        "canary_version": "2",
        "verdict": "fail",
        "action": "rollback",
    }


def test_a_bad_policy_override_stops_the_step_before_any_request(world, cluster, prometheus, tmp_path):
    from dataclasses import replace

    from components.canary.policy import CanaryPolicyError
    from pipelines.steps.canary import canary_step

    fake, target = cluster
    request = _request(world, prometheus[1], tmp_path)
    for overrides, problem in (
        ("[1, 2]", "a JSON object of policy fields"),
        ("{steps: 10}", "not JSON"),
        ('{"mae_margin": 2}', "mae_margin must be in"),
    ):
        with pytest.raises(CanaryPolicyError, match=problem):
            canary_step(replace(request, policy_overrides=overrides), api=target.api, s3=world.s3)
    assert fake.requests == [] and prometheus[0].queries == []
