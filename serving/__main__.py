"""Start the trip duration predictor: ``python -m serving``.

Minimal command (what the local canary stack launches; gRPC is off unless asked for,
so one HTTP port per predictor is all it needs)::

    python -m serving --model_name duration --model-uri <dir> --model-sha256 <hex> \\
        --model-version <N> --http_port <port>

KServe's own flags keep their names and meaning (``--http_port``, ``--workers``,
``--log_config_file``, ...) because the parser is built on
``kserve.model_server.parser``, like kserve's sklearnserver. Three defaults differ
from KServe's, on purpose:

* ``--model_name`` is ``duration``;
* ``--enable_grpc`` is false: two predictors on one host (champion + canary) would
  otherwise fight over gRPC port 8081. ``--enable_grpc true --grpc_port N`` turns it on;
* ``--enable_latency_logging`` is false, and KServe's per-request timing lines and
  tracebacks for refused (HTTP 400) requests are dropped, so each request logs exactly
  one line: uvicorn's access line with method, path and status (with ``--workers 1``;
  extra workers are processes KServe configures itself).

``--model-uri`` takes a directory holding ``trip_duration_model.zip`` (or the file),
``s3://bucket/prefix`` or ``models:/<name>@<alias>`` / ``models:/<name>/<version>``
(with ``--tracking-uri`` or MLFLOW_TRACKING_URI); see ``serving.model_source``.

Endpoints (KServe's): ``POST /v1/models/duration:predict``,
``POST /v2/models/duration/infer``, ``GET /v2/health/live``, ``GET /v2/health/ready``,
``GET /v2/models/duration/ready``, ``GET /v1/models/duration``, ``GET /metrics``.

``--prediction-log-dir PATH`` (off by default) records every answered trip as
Parquet segments in PATH (``components.monitoring.prediction_log``; the local
stack passes ``<state_dir>/deployment/prediction-log``).

A model that cannot be fetched or does not match its recorded sha256 stops the
process before it listens: exit status 1 and the reason on stderr.
"""

from __future__ import annotations

import os

# One predictor process = one core. XGBoost's OpenMP pool otherwise spans every core,
# and each single-trip predict then waits at a barrier for the others: with a second
# revision or any other busy process on the machine that costs 10-50x. Set before
# xgboost (libgomp) loads; an operator's own OMP_NUM_THREADS wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import gc
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import kserve
import kserve.model_server
from kserve.errors import InvalidInput
from kserve.logging import KSERVE_LOGGER_NAME, KSERVE_TRACE_LOGGER_NAME, configure_logging

from components.errors import TaxiMlopsError
from components.names import SERVED_MODEL_NAME
from serving import error_responses
from serving.fault_injection import install_test_faults
from serving.model_source import normalize_sha256
from serving.predictor import ModelSpec, TripDurationPredictor, install_request_metrics
from serving.trip_request import DEFAULT_MAX_BATCH_ROWS, RequestLimits, TripDataPlane

EXIT_LOAD_FAILED = 1


def _sha256_arg(value: str) -> str:
    try:
        return normalize_sha256(value)
    except TaxiMlopsError as exc:
        raise argparse.ArgumentTypeError(f"{value[:80]!r} is not a sha256 hex digest") from exc


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serving",
        description="KServe predictor for the NYC taxi trip duration model.",
        parents=[kserve.model_server.parser],
    )
    parser.add_argument(
        "--model-uri",
        required=True,
        help="directory or file, s3://bucket/prefix, or models:/<name>@<alias> | models:/<name>/<version>",
    )
    parser.add_argument(
        "--model-sha256",
        type=_sha256_arg,
        default=None,
        help="recorded sha256 of trip_duration_model.zip (else its .sha256 sidecar; models:/ uses the tag)",
    )
    parser.add_argument(
        "--model-version",
        default=None,
        help="version label for responses and metrics (models:/ URIs take it from the registry)",
    )
    parser.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI"),
        help="MLflow tracking/registry URI for models:/ URIs (default: $MLFLOW_TRACKING_URI)",
    )
    parser.add_argument(
        "--bind-host",
        default="0.0.0.0",
        help="address to listen on (default 0.0.0.0, as in the container; the local stack uses 127.0.0.1 "
        "so that only its traffic splitter is reachable)",
    )
    parser.add_argument(
        "--max-batch-rows",
        type=_positive_int,
        default=DEFAULT_MAX_BATCH_ROWS,
        help="largest number of trips one request may carry",
    )
    parser.add_argument(
        "--prediction-log-dir",
        type=Path,
        default=None,
        help="log every answered trip as Parquet segments in this directory (default: no log)",
    )
    parser.set_defaults(
        model_name=SERVED_MODEL_NAME,
        enable_grpc=False,
        enable_latency_logging=False,
    )
    return parser


class _DropRecords(logging.Filter):
    """Drops KServe's per-request noise so a request logs one line (uvicorn's access line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        # PrintTimings (KServe's timing middleware) logs cpu and wall time of every request.
        if record.name == KSERVE_TRACE_LOGGER_NAME and record.funcName == "timing":
            return False
        # A refused request (HTTP 400) is the client's error: the status is in the access
        # line and the reason in the response; a traceback in the server log helps nobody.
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, InvalidInput)


def configure_request_logging(args: argparse.Namespace) -> None:
    """KServe's logging setup, minus the per-request lines listed in the module docstring."""
    # kserve 0.21 still answers with ORJSONResponse, which FastAPI now flags on the first
    # requests; nothing an operator can act on.
    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")
    if not args.configure_logging:
        return
    configure_logging(args.log_config_file)
    drop = _DropRecords()
    for name in (KSERVE_LOGGER_NAME, KSERVE_TRACE_LOGGER_NAME):
        logging.getLogger(name).addFilter(drop)


class _ModelServer(kserve.ModelServer):
    """KServe's model server, listening on ``bind_host``.

    KServe 0.21 hard-codes ``host="0.0.0.0"`` in ``RESTServer`` (both the one-process
    and the multi-process server keep one, whose uvicorn config binds the socket).
    ``ModelServer.start()`` builds it and then calls ``setup_event_loop()`` before it
    serves: the last moment its config can still be told where to listen.
    """

    def __init__(self, bind_host: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._bind_host = bind_host

    def setup_event_loop(self) -> None:
        for server in (self._rest_server, getattr(self._rest_multiprocess_server, "_rest_server", None)):
            if server is not None:
                server.config.host = self._bind_host
        super().setup_event_loop()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_request_logging(args)
    model = TripDurationPredictor(
        ModelSpec(
            uri=args.model_uri,
            sha256=args.model_sha256,
            model_version=args.model_version,
            tracking_uri=args.tracking_uri,
        ),
        name=args.model_name,
        limits=RequestLimits(max_batch_rows=args.max_batch_rows),
        prediction_log_dir=args.prediction_log_dir,
    )
    try:
        model.load()
    except TaxiMlopsError as exc:
        print(f"serving: not starting, the model cannot be served: {exc}", file=sys.stderr)
        return EXIT_LOAD_FAILED
    assert model.record is not None
    # Everything loaded so far (kserve, FastAPI, pandas, the model: ~200k objects) lives as
    # long as the process. Freezing it keeps full collections from rescanning it on the
    # request path, where they showed up as 150-200 ms pauses in the serving bench.
    gc.collect()
    gc.freeze()
    kserve.logging.logger.info(
        "serving %s version %s (sha256 %s) from %s",
        model.name,
        model.record.version_label,
        model.record.sha256,
        model.record.uri,
    )
    server = _ModelServer(
        args.bind_host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        workers=args.workers,
        max_threads=args.max_threads,
        max_asyncio_workers=args.max_asyncio_workers,
        enable_grpc=args.enable_grpc,
        enable_docs_url=args.enable_docs_url,
        enable_latency_logging=args.enable_latency_logging,
        access_log_format=args.access_log_format,
        event_loop=args.event_loop,
        timeout_keep_alive=args.timeout_keep_alive,
    )
    # Before start(): the REST (and gRPC) server take the data plane from here.
    server.dataplane = TripDataPlane(model_registry=server.registered_models)
    error_responses.install(kserve.model_server.app)
    try:
        faults = install_test_faults(kserve.model_server.app, model.record.version_label)
    except TaxiMlopsError as exc:
        print(f"serving: not starting: {exc}", file=sys.stderr)
        return EXIT_LOAD_FAILED
    if faults is not None:
        kserve.logging.logger.warning("TEST FAULTS injected into this predictor: %s", faults)
    install_request_metrics(kserve.model_server.app, model)  # outermost of ours: it sees every status
    try:
        server.start([model])
    finally:
        model.stop()  # KServe unloads (and so stops) models on a signal; this covers any other exit
    return 0


if __name__ == "__main__":
    sys.exit(main())
