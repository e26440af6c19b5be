"""The test-only fault switch: a real predictor answers 503 on a share of requests and/or slowly
when TAXI_MLOPS_TEST_FAULTS names its version -- and nothing the product ships ever sets it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests
from support.model_fixtures import client_records, fit_fixture_model
from support.predictor_process import (
    REPO_ROOT,
    Server,
    free_port,
    launch_predictor,
    stop_processes,
    wait_ready,
)

from components.models.duration_model import MODEL_FILE_NAME
from serving.fault_injection import TEST_FAULTS_ENV, FaultConfigError, faults_for

pytestmark = pytest.mark.timeout(180)
V1 = "/v1/models/duration:predict"


def test_only_a_named_version_gets_faults_and_bad_json_is_refused() -> None:
    env = {TEST_FAULTS_ENV: json.dumps({"4": {"error_rate": 0.25, "delay_ms": 10}})}
    assert faults_for("3", env) is None and faults_for("4", {}) is None
    assert faults_for("4", env).error_rate == 0.25
    with pytest.raises(FaultConfigError, match=TEST_FAULTS_ENV):
        faults_for("4", {TEST_FAULTS_ENV: "{error_rate: 1}"})
    with pytest.raises(FaultConfigError, match="error_rate must be in"):
        faults_for("4", {TEST_FAULTS_ENV: json.dumps({"4": {"error_rate": 2}})})


def test_the_product_never_sets_the_switch() -> None:
    shipped = [REPO_ROOT / "Dockerfile", REPO_ROOT / "serving" / "Dockerfile", REPO_ROOT / "Makefile"]
    shipped += [REPO_ROOT / ".ci" / "run", REPO_ROOT / "kind-config.yaml"]
    for folder in ("manifests", "scripts", "pipelines", "components"):
        shipped += [p for p in (REPO_ROOT / folder).rglob("*") if p.is_file()]
    shipped += [p for p in (REPO_ROOT / "serving").glob("*.py") if p.name != "fault_injection.py"]
    offenders = [
        str(p.relative_to(REPO_ROOT)) for p in shipped if TEST_FAULTS_ENV in p.read_text(errors="ignore")
    ]
    assert offenders == []


def test_a_faulty_predictor_fails_a_share_of_requests_slowly(tmp_path: Path) -> None:
    model, _, validation = fit_fixture_model(tmp_path / "tlc")
    folder = tmp_path / "model"
    sha256 = model.save(folder / MODEL_FILE_NAME)
    port = free_port()
    args = [
        *("--model_name", "duration", "--model-uri", str(folder), "--model-sha256", sha256),
        *("--model-version", "4", "--http_port", str(port), "--bind-host", "127.0.0.1"),
    ]
    faults = {TEST_FAULTS_ENV: json.dumps({"4": {"error_rate": 0.3, "delay_ms": 40, "seed": 1}})}
    process, stdout, stderr = launch_predictor(args, tmp_path / "logs", env=faults)
    server = Server(f"http://127.0.0.1:{port}", process, stdout, stderr)
    try:
        wait_ready(server)
        body = {"instances": client_records(validation, 1)}
        codes, seconds = [], []
        with requests.Session() as session:
            for _ in range(200):
                started = time.perf_counter()
                codes.append(session.post(server.url + V1, json=body, timeout=10).status_code)
                seconds.append(time.perf_counter() - started)
        share = codes.count(503) / len(codes)
        assert set(codes) == {200, 503} and 0.18 < share < 0.42  # 30% of 200, well inside 5 sigma
        assert min(seconds) >= 0.040
        # Probes and scrapes are not inference: untouched by the faults.
        assert requests.get(server.url + "/v2/health/ready", timeout=5).status_code == 200
        metrics = requests.get(server.url + "/metrics", timeout=5).text
        assert 'status_class="5xx"' in metrics  # the request metrics see the injected errors
        assert "TEST FAULTS injected" in stderr.read_text() + stdout.read_text()
    finally:
        stop_processes(process)
