"""Start a cluster pipeline on Kubeflow Pipelines: one run now, or a recurring run on a cron schedule.

Compiles the cluster build (``pipelines.cluster_pipeline``: training, monitoring or canary) to a temporary
file and hands it to ``kfp.Client``; the pipeline spec travels inline with the
run, so nothing is uploaded to the KFP pipeline list first.
"""

from __future__ import annotations

import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.errors import TaxiMlopsError

HEALTHZ_PATH = "/apis/v2beta1/healthz"


class SubmitError(TaxiMlopsError):
    """The KFP API could not be reached, or refused the run."""


@dataclass(frozen=True)
class Submission:
    host: str
    experiment: str
    arguments: Mapping[str, Any]
    run_name: str = ""
    schedule: str = ""  # KFP cron, six fields (seconds first); empty: one run now
    pipeline: str = "training"  # a name in cluster_pipeline.PIPELINES


@dataclass(frozen=True)
class Submitted:
    kind: str  # "run" or "recurring run"
    id: str
    url: str


def check_cron(expression: str) -> str:
    """KFP's scheduler uses six-field cron (seconds first); a five-field one would be misread."""
    fields = expression.split()
    if len(fields) != 6:
        raise SubmitError(
            f"--schedule {expression!r}: KFP cron has 6 fields, seconds first "
            "(e.g. '0 0 3 * * *' is every day at 03:00)"
        )
    return " ".join(fields)


def submit(submission: Submission) -> Submitted:
    """Compile the chosen cluster pipeline and start it; raises ``SubmitError`` with the cause."""
    from pipelines.cluster_pipeline import PIPELINES, compile_cluster_pipeline

    if submission.pipeline not in PIPELINES:
        raise SubmitError(f"pipeline {submission.pipeline!r} is not one of {', '.join(PIPELINES)}")
    host = submission.host.rstrip("/")
    schedule = check_cron(submission.schedule) if submission.schedule else ""
    _check_reachable(host)
    client = _client(host)
    with tempfile.TemporaryDirectory(prefix="taxi-mlops-submit-") as folder:
        package = compile_cluster_pipeline(str(Path(folder) / "pipeline.yaml"), submission.pipeline)
        pipeline_name = PIPELINES[submission.pipeline]().name
        try:
            if schedule:
                experiment = client.create_experiment(name=submission.experiment)
                recurring = client.create_recurring_run(
                    experiment_id=experiment.experiment_id,
                    job_name=submission.run_name or f"{pipeline_name} ({schedule})",
                    cron_expression=schedule,
                    # Never two at once: training runs share the champion, monitoring runs the
                    # verdict history each one reads, appends to and uploads again, canary
                    # analyses the judge's files and the InferenceService they act on.
                    max_concurrency=1,
                    no_catchup=True,  # after a pause, run once rather than once per missed slot
                    params=dict(submission.arguments),
                    pipeline_package_path=package,
                )
                rid = recurring.recurring_run_id
                return Submitted("recurring run", rid, f"{host}/#/recurringrun/details/{rid}")
            result = client.create_run_from_pipeline_package(
                package,
                arguments=dict(submission.arguments),
                run_name=submission.run_name or None,
                experiment_name=submission.experiment,
            )
        except Exception as exc:  # kfp_server_api.ApiException and urllib3 errors alike
            raise SubmitError(f"KFP at {host} refused the submission: {_describe(exc)}") from exc
    return Submitted("run", result.run_id, f"{host}/#/runs/details/{result.run_id}")


def _check_reachable(host: str) -> None:
    """Fail in seconds with a clear message; kfp.Client itself retries healthz for ~25 s first."""
    url = host + HEALTHZ_PATH
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        raise SubmitError(
            f"{url} answered HTTP {exc.code}: is {host} the KFP UI or API (not the Kubeflow dashboard)?"
        ) from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SubmitError(
            f"cannot reach the KFP API at {host} ({reason}); on kind the UI (which proxies the API) "
            "is http://localhost:8880, elsewhere: kubectl -n kubeflow port-forward svc/ml-pipeline-ui 8880:80"
        ) from exc


def _client(host: str) -> Any:
    import warnings

    import kfp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "only works with KFP 2.0.0-beta.2 and later"
        return kfp.Client(host=host)


def _describe(exc: Exception) -> str:
    status = getattr(exc, "status", None)
    body = getattr(exc, "body", None)
    if status is not None:
        return f"HTTP {status} {getattr(exc, 'reason', '')}: {body or ''}".strip()
    return f"{type(exc).__name__}: {exc}"
