"""``taxi-mlops``: the command line of the project.

This is the one place that reads the environment (through ``Settings``) and
turns it into pipeline parameters.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from components.data.cleaning_rules import DEFAULT_MIN_ROWS
from components.errors import TaxiMlopsError
from components.models.candidates import CANDIDATES
from components.names import (
    EXPERIMENT_NAME,
    INFERENCE_SERVICE,
    LABELS_URI,
    MONITOR_URI,
    NAMESPACE,
    PREDICTION_LOG_URI,
    SERVED_MODEL_NAME,
)
from components.storage.atomic_write import write_atomically
from pipelines.cli_autopilot import autopilot
from pipelines.cli_canary import canary, canary_policy_option, decision_lines, local_judge, parse_policy
from pipelines.cli_options import parse_candidates
from pipelines.cli_options import state_dir_option as _state_dir_option
from pipelines.settings import Settings

MONTH = click.STRING


def _window(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """``--train-window 2021-02-01:2021-03-03`` -> an ``EventWindow`` (None when not given)."""
    if value is None:
        return None
    from components.data.event_window import EventWindow

    try:
        return EventWindow.parse(value, param.opts[0])
    except TaxiMlopsError as exc:
        raise click.BadParameter(str(exc)) from None


def _training_options(command: Any) -> Any:
    """What to train on and how to judge it: the options ``run`` and ``submit`` share."""
    window_help = (
        "Train on this window of event time (pickup time as the TLC writes it, New York wall clock; "
        "start inclusive, end exclusive: ISO dates or date-times, e.g. 2021-02-01:2021-03-03), read "
        "from every month file it spans, instead of --train-month."
    )
    options = [
        click.option("--color", type=click.Choice(["green", "yellow"]), default="green", show_default=True),
        click.option("--train-month", default="2021-01", show_default=True, metavar="YYYY-MM"),
        click.option("--val-month", default="2021-02", show_default=True, metavar="YYYY-MM"),
        click.option("--train-window", metavar="START:END", callback=_window, help=window_help),
        click.option(
            "--val-window",
            metavar="START:END",
            callback=_window,
            help="Validate (and gate against the champion) on this window instead of --val-month; it must "
            "start at or after the end of the training data, e.g. 2021-03-03:2021-03-10.",
        ),
        click.option(
            "--allow-missing-months",
            is_flag=True,
            help="A month a window spans with no file is skipped (and reported) instead of failing ingest.",
        ),
        click.option(
            "--candidates",
            "candidate_names",
            default=",".join(CANDIDATES),
            show_default=True,
            help="Comma-separated candidate models to train in parallel.",
        ),
        click.option(
            "--param",
            "param_overrides",
            multiple=True,
            metavar="MODEL.NAME=VALUE",
            help="Hyperparameter override, e.g. --param xgboost.n_estimators=300 (VALUE is JSON). "
            "Repeatable.",
        ),
        click.option(
            "--min-improvement",
            type=click.FloatRange(0.0, 1.0, max_open=True),
            default=0.01,
            show_default=True,
            help="Gate margin: relative RMSE improvement the winner needs over the champion.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _training_data(ctx: click.Context, train_window: Any, val_window: Any) -> None:
    """A month and a window for the same side contradict each other: refuse it, do not pick one."""
    from click.core import ParameterSource

    for side, window in (("train", train_window), ("val", val_window)):
        if window is not None and ctx.get_parameter_source(f"{side}_month") == ParameterSource.COMMANDLINE:
            raise click.UsageError(f"give --{side}-month or --{side}-window, not both")


class ErrorBoundary(click.Group):
    """The CLI's one error boundary: a problem the user can fix (any ``TaxiMlopsError``, whichever
    command and layer raised it) becomes one red ``error:`` line and exit code 1, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TaxiMlopsError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            ctx.exit(1)


@click.group(cls=ErrorBoundary, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="taxi-mlops")
def main() -> None:
    """NYC taxi trip duration: train, register and deploy with Kubeflow Pipelines, MLflow and KServe."""


@main.command()
@click.option(
    "--data-dir",
    type=click.Path(file_okay=True, dir_okay=True, path_type=Path),
    help="Folder (or file) with TLC parquet files; without it, files are downloaded from the TLC site "
    "and cached.",
)
@click.option("--s3-uri", help="Read TLC files from s3://bucket/prefix (MinIO) instead.")
@_training_options
@click.option(
    "--summary-out", type=click.Path(dir_okay=False, path_type=Path), help="Write the run summary JSON."
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where local runs keep MLflow, KFP outputs and logs "
    "[env TAXI_MLOPS_STATE_DIR; default ./.taxi-mlops].",
)
@click.option(
    "--canary-percent",
    type=click.IntRange(0, 100),
    default=20,
    show_default=True,
    help="Traffic share for a newly registered challenger in the local deployment.",
)
@click.option(
    "--min-rows",
    type=click.IntRange(min=1),
    default=DEFAULT_MIN_ROWS,
    show_default=True,
    help="Rows each month must keep after cleaning; fewer fails ingest (too_few_rows) and nothing trains.",
)
@click.option("--no-deploy", is_flag=True, help="Register only; leave the local deployment as it is.")
@click.option("--verbose", is_flag=True, help="Stream KFP's own task logs too.")
@click.pass_context
def run(
    ctx: click.Context,
    data_dir: Path | None,
    s3_uri: str | None,
    color: str,
    train_month: str,
    val_month: str,
    train_window: Any,
    val_window: Any,
    allow_missing_months: bool,
    candidate_names: str,
    param_overrides: tuple[str, ...],
    min_improvement: float,
    summary_out: Path | None,
    state_dir: Path | None,
    canary_percent: int,
    min_rows: int,
    no_deploy: bool,
    verbose: bool,
) -> None:
    """Run the training pipeline locally: ingest -> vectorize -> train -> evaluate -> register -> deploy."""
    import atexit
    import gc

    from pipelines.local_run import RunRequest, run_pipeline_locally

    # This process exits when the run is done: with kfp and MLflow loaded, the garbage
    # collections of the interpreter's shutdown cost ~0.5 s; frozen objects are skipped.
    atexit.register(gc.freeze)

    _training_data(ctx, train_window, val_window)
    settings = Settings.from_env(state_dir=state_dir)
    request = RunRequest(
        color=color,
        train_month=train_month,
        val_month=val_month,
        train_window=train_window,
        val_window=val_window,
        allow_missing_months=allow_missing_months,
        data_dir=str(data_dir) if data_dir else None,
        s3_uri=s3_uri,
        candidates=parse_candidates(candidate_names, param_overrides),
        min_improvement=min_improvement,
        min_rows=min_rows,
        canary_percent=canary_percent,
        deploy=not no_deploy,
    )
    click.echo(f"MLflow: {settings.tracking_uri}  (experiment {settings.experiment!r})")
    summary = run_pipeline_locally(settings, request, progress=click.echo, verbose=verbose)
    click.echo(render_summary(summary))
    if summary_out:
        write_atomically(summary_out, json.dumps(summary, indent=2) + "\n")
        click.echo(f"summary written to {summary_out}")


def _pipeline_option(command: Any) -> Any:
    return click.option(
        "--pipeline",
        type=click.Choice(["training", "monitoring", "canary", "autopilot"]),
        default="training",
        show_default=True,
        help="training: ingest -> train -> gate -> register -> deploy; monitoring: judge a window "
        "of the prediction log and store the verdict; canary: one analysis of the InferenceService's "
        "canary, which steps it up, promotes or rolls it back (run it on a --schedule); autopilot: "
        "monitor, let the retraining policy decide, and on 'retrain' run training on its windows.",
    )(command)


@main.command(name="compile")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write it [default: <pipeline>_pipeline.yaml].",
)
@_pipeline_option
@click.option(
    "--cluster",
    is_flag=True,
    help="The cluster build: MinIO pipeline root, S3 secret as env, in-cluster MLflow/model store/"
    "InferenceService/monitoring bucket defaults.",
)
def compile_command(output: Path | None, pipeline: str, cluster: bool) -> None:
    """Compile a pipeline to KFP IR YAML (upload it in the KFP UI or with `kfp`)."""
    output = output or Path(f"{pipeline}_pipeline.yaml")
    output.parent.mkdir(parents=True, exist_ok=True)
    if cluster:
        from pipelines.cluster_pipeline import compile_cluster_pipeline

        compile_cluster_pipeline(str(output), pipeline)
    elif pipeline == "monitoring":
        from pipelines.monitoring_pipeline import compile_monitoring_pipeline

        compile_monitoring_pipeline(str(output))
    elif pipeline == "canary":
        from pipelines.canary_pipeline import compile_canary_pipeline

        compile_canary_pipeline(str(output))
    elif pipeline == "autopilot":
        from pipelines.autopilot_pipeline import compile_autopilot_pipeline

        compile_autopilot_pipeline(str(output))
    else:
        from pipelines.training_pipeline import compile_pipeline

        compile_pipeline(str(output))
    click.echo(f"wrote {output}")


# Options only one pipeline takes: refused with another --pipeline when given.
_TRAINING_ONLY = (
    "color",
    "train_month",
    "val_month",
    "train_window",
    "val_window",
    "allow_missing_months",
    "candidate_names",
    "param_overrides",
    "min_improvement",
    "canary_percent",
    "s3_uri",
    "no_deploy",
)
_MONITORING_ONLY = ("last_hours", "model_version")
_CANARY_ONLY = ("policy_overrides",)
_OPTIONS_OF = {"training": _TRAINING_ONLY, "monitoring": _MONITORING_ONLY, "canary": _CANARY_ONLY}


@main.command()
@click.option(
    "--host",
    default="http://localhost:8880",
    show_default=True,
    help="KFP UI or API address (the kind cluster maps the KFP UI, which proxies the API, to 8880).",
)
@click.option("--experiment", default=EXPERIMENT_NAME, show_default=True, help="KFP experiment.")
@click.option("--run-name", default="", help="Run (or recurring run) name; KFP picks one by default.")
@click.option(
    "--schedule",
    default="",
    metavar="CRON",
    help="Start a recurring run instead: KFP cron, 6 fields with seconds first, e.g. '0 0 3 * * *' "
    "(training every day at 03:00), '0 0 * * * *' (monitoring every hour) or '0 */5 * * * *' "
    "(a canary analysis every 5 minutes).",
)
@_pipeline_option
@_training_options
@click.option(
    "--canary-percent",
    type=click.IntRange(1, 100),
    default=20,
    show_default=True,
    help="Traffic share for a newly registered challenger on the InferenceService.",
)
@click.option("--s3-uri", default="", help="Read TLC files from s3://bucket/prefix (e.g. s3://tlc-data).")
@click.option("--no-deploy", is_flag=True, help="Register only; leave the InferenceService as it is.")
@click.option(
    "--last-hours",
    type=click.FloatRange(min=0, min_open=True),
    help="Monitoring: the window, in hours up to the newest logged event [default: the pipeline's, 24].",
)
@click.option(
    "--version",
    "model_version",
    default="",
    help="Monitoring: the model version to judge [default: the one with the alias champion].",
)
@canary_policy_option
@click.pass_context
def submit(
    ctx: click.Context,
    host: str,
    experiment: str,
    run_name: str,
    schedule: str,
    pipeline: str,
    color: str,
    train_month: str,
    val_month: str,
    train_window: Any,
    val_window: Any,
    allow_missing_months: bool,
    candidate_names: str,
    param_overrides: tuple[str, ...],
    min_improvement: float,
    canary_percent: int,
    s3_uri: str,
    no_deploy: bool,
    last_hours: float | None,
    model_version: str,
    policy_overrides: tuple[str, ...],
) -> None:
    """Compile a cluster pipeline and start it on Kubeflow Pipelines (now, or on a --schedule)."""
    from pipelines.submit import Submission
    from pipelines.submit import submit as submit_to_kfp

    _refuse_options_of_the_other_pipeline(ctx, pipeline)
    settings = Settings.from_env()
    arguments: dict[str, Any] = {"experiment": settings.experiment, "model_name": settings.model_name}
    if pipeline == "monitoring":
        if last_hours is not None:
            arguments["last_hours"] = last_hours
        if model_version:
            arguments["model_version"] = model_version
    elif pipeline == "canary":
        if policy_overrides:
            parse_policy(policy_overrides)  # a bad field or value is refused here, not in the cluster
            fields = dict(override.split("=", 1) for override in policy_overrides)
            arguments["policy_overrides"] = json.dumps({k.strip(): v.strip() for k, v in fields.items()})
    elif pipeline == "autopilot":
        pass  # its cluster defaults; policy and data source are run parameters (docs/autopilot-cluster.md)
    else:
        from components.data.event_window import plan_training_data
        from pipelines.local_run import window_arguments

        _training_data(ctx, train_window, val_window)
        # Refused here, in one line, rather than by both ingest tasks in the cluster.
        data = plan_training_data(train_month, val_month, train_window, val_window)
        windows = {key: value for key, value in window_arguments(data).items() if value}
        arguments = {
            "color": color,
            "train_month": train_month,
            "val_month": val_month,
            **windows,
            "candidates": parse_candidates(candidate_names, param_overrides),
            "min_improvement": min_improvement,
            "canary_percent": canary_percent,
            **arguments,
        }
        if allow_missing_months:
            arguments["allow_missing_months"] = True
        if s3_uri:
            arguments["s3_uri"] = s3_uri
        if no_deploy:
            arguments["inference_service"] = ""
    submitted = submit_to_kfp(Submission(host, experiment, arguments, run_name, schedule, pipeline))
    click.echo(f"started {submitted.kind} {submitted.id}: {submitted.url}")


def _refuse_options_of_the_other_pipeline(ctx: click.Context, pipeline: str) -> None:
    """An option the chosen pipeline does not take would be silently ignored: refuse it instead."""
    from click.core import ParameterSource

    foreign = [name for other, options in _OPTIONS_OF.items() if other != pipeline for name in options]
    for name in foreign:
        if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE:
            flag = next(p.opts[0] for p in ctx.command.params if p.name == name)
            raise click.UsageError(f"{flag} is not an option of the {pipeline} pipeline")


def _rollout_target(settings: Settings) -> Any:
    from serving.rollout import RolloutTarget

    return RolloutTarget(
        state_path=settings.deployment_state_path,
        models_dir=settings.deployed_models_dir,
        tracking_uri=settings.tracking_uri,
        model_name=settings.model_name,
    )


def _cluster_options(command: Any) -> Any:
    """--cluster and how to reach it, shared by deploy/promote/rollback/status."""
    options = [
        click.option(
            "--cluster",
            is_flag=True,
            help="Act on the InferenceService through the Kubernetes API (kubeconfig) instead of the "
            "local deployment; MLFLOW_TRACKING_URI must point at the cluster's MLflow.",
        ),
        click.option("--namespace", default=NAMESPACE, show_default=True, help="With --cluster."),
        click.option("--kube-context", default=None, help="kubeconfig context (default: the current one)."),
        click.option(
            "--timeout",
            type=click.FloatRange(min=1),
            default=600,
            show_default=True,
            help="With --cluster: seconds to wait for the InferenceService to be ready.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _cluster_target(settings: Settings, namespace: str, kube_context: str | None, timeout: float) -> Any:
    from serving.cluster_rollout import ClusterTarget, connect
    from serving.kserve_deploy import IsvcRef

    if not settings.tracking_uri_from_env:
        raise click.UsageError(
            "--cluster needs MLFLOW_TRACKING_URI pointing at the cluster's MLflow, e.g. "
            "`kubectl -n taxi-mlops port-forward svc/mlflow 5000:5000` and "
            "MLFLOW_TRACKING_URI=http://127.0.0.1:5000 (the local sqlite registry is not the cluster's)"
        )
    return ClusterTarget(
        api=connect(context=kube_context),
        tracking_uri=settings.tracking_uri,
        model_name=settings.model_name,
        ref=IsvcRef(INFERENCE_SERVICE, namespace),
        timeout_seconds=timeout,
    )


def _run_rollout(action: Any) -> None:
    """Run one deployment action and say what changed."""
    transition = action()
    click.echo(transition.message)
    click.echo(f"now: {transition.state.describe()}")


@main.command()
@click.option("--version", "model_version", required=True, help="Registered model version to deploy.")
@click.option(
    "--canary-percent",
    type=click.IntRange(0, 100),
    default=20,
    show_default=True,
    help="Share of traffic for the new version while it is a canary (the first deployment takes 100%).",
)
@_state_dir_option
@_cluster_options
def deploy(
    model_version: str,
    canary_percent: int,
    state_dir: Path | None,
    cluster: bool,
    namespace: str,
    kube_context: str | None,
    timeout: float,
) -> None:
    """Deploy a registered version: first ever -> champion at 100%, later -> canary."""
    _rollout_verb(
        "deploy_version", state_dir, cluster, namespace, kube_context, timeout, model_version, canary_percent
    )


@main.command()
@_state_dir_option
@_cluster_options
def promote(
    state_dir: Path | None, cluster: bool, namespace: str, kube_context: str | None, timeout: float
) -> None:
    """The canary becomes champion (all traffic; the MLflow alias champion moves to it)."""
    _rollout_verb("promote_canary", state_dir, cluster, namespace, kube_context, timeout)


@main.command()
@_state_dir_option
@_cluster_options
def rollback(
    state_dir: Path | None, cluster: bool, namespace: str, kube_context: str | None, timeout: float
) -> None:
    """The canary gets no traffic; the champion and its alias stay."""
    _rollout_verb("rollback_canary", state_dir, cluster, namespace, kube_context, timeout)


def _rollout_verb(
    verb: str,
    state_dir: Path | None,
    cluster: bool,
    namespace: str,
    kube_context: str | None,
    timeout: float,
    *verb_args: Any,
) -> None:
    """One rollout verb (``deploy_version``, ``promote_canary``, ``rollback_canary``), on the cluster
    (``serving.cluster_rollout``) or on the local deployment (``serving.rollout``): same names, same
    arguments after the target."""
    settings = Settings.from_env(state_dir=state_dir)
    if cluster:
        from serving import cluster_rollout

        cluster_action = getattr(cluster_rollout, verb)
        # Connecting happens inside the action, so an unreachable API is reported like any rollout error.
        _run_rollout(
            lambda: cluster_action(_cluster_target(settings, namespace, kube_context, timeout), *verb_args)
        )
        return
    from serving import rollout

    if verb == "deploy_version":
        _recover_killed_runs(settings)  # a version a killed run left pending is removed first
    local_action = getattr(rollout, verb)
    _run_rollout(lambda: local_action(_rollout_target(settings), *verb_args))


def _recover_killed_runs(settings: Settings) -> None:
    """What a SIGKILLed run left (pending version, RUNNING run): repaired, one line each."""
    from pipelines.local_run import recover_killed_runs

    recover_killed_runs(settings, progress=click.echo)


def _reconcile_aliases(settings: Settings) -> None:
    """Aliases back in step with the state file (a rollout killed between its two writes).

    The state file decides what is served; the aliases only mirror it. A registry that
    lacks the model or a deployed version (another tracking URI, a deleted version)
    is reported in one line and does not stop `status` or `serve`.
    """
    from mlflow.exceptions import MlflowException

    from components.registry.leftovers import registry_exists
    from serving.rollout import reconcile_aliases

    if not registry_exists(settings.tracking_uri):
        return
    try:
        moved = reconcile_aliases(_rollout_target(settings))
    except MlflowException as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        click.echo(f"aliases not reconciled with the deployment state: {first_line}")
        return
    for line in moved:
        click.echo(f"reconciled: {line} (as the deployment state says)")


@main.command()
@click.option("--url", default="http://127.0.0.1:8080", show_default=True, help="Where `serve` listens.")
@_state_dir_option
@_cluster_options
def status(
    url: str,
    state_dir: Path | None,
    cluster: bool,
    namespace: str,
    kube_context: str | None,
    timeout: float,
) -> None:
    """Show the deployed revisions, their traffic share and, if `serve` runs, live per-revision figures."""
    from serving.deployment_state import load_state

    settings = Settings.from_env(state_dir=state_dir)
    if cluster:
        from serving import cluster_rollout

        target = _cluster_target(settings, namespace, kube_context, timeout)
        for line in cluster_rollout.status(target).lines(target.ref):
            click.echo(line)
        return
    from serving.deployment_state import DeploymentStateError

    _recover_killed_runs(settings)
    try:
        state = load_state(settings.deployment_state_path)
    except DeploymentStateError as problem:
        # What the running stack still serves is worth showing; the problem is the one error line.
        click.echo("desired: unknown, the deployment state file cannot be read (see the error below)")
        _show_live(url)
        raise problem from None
    _reconcile_aliases(settings)
    click.echo(f"desired: {state.describe()}")
    _show_live(url)
    _show_canary_analysis(settings, live_canary=state.canary is not None)


def _show_canary_analysis(settings: Settings, live_canary: bool) -> None:
    """The judge's newest decision: the current analysis of a live canary, else the last verdict."""
    from components.canary.decision_store import DecisionStoreError, last_decision

    try:
        decision = last_decision(settings.canary_dir)
    except DecisionStoreError as problem:
        click.echo(f"canary judge: {problem}")
        return
    if decision is None:
        return
    click.echo("canary judge, current analysis:" if live_canary else "canary judge, last verdict:")
    for line in decision_lines(decision):
        click.echo("  " + line)


def _show_live(url: str) -> None:
    """The running stack's own view: revisions and counters, and what its supervisor could not do."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/status", timeout=2) as response:
            live = json.load(response)
    except (urllib.error.URLError, OSError, ValueError):
        click.echo(f"live: the local stack is not answering at {url} (start it with `taxi-mlops serve`)")
        return
    click.echo(f"live ({url}): routing generation {live.get('generation')}")
    for revision in live.get("revisions", []):
        click.echo("  " + json.dumps(revision, sort_keys=True))
    supervisor = live.get("supervisor") or {}
    if supervisor.get("state_error"):
        click.echo(
            f"  supervisor: keeps the last good routing (generation {supervisor.get('routed_generation')}); "
            f"it cannot read the deployment state: {supervisor['state_error']}"
        )
    elif supervisor and not supervisor.get("ok", True):
        click.echo(f"  supervisor: NOT applied: {supervisor.get('message')}")


def _month_options(command: Any) -> Any:
    """Which TLC month to read, and from where: the options ``replay`` and ``labels`` share."""
    options = [
        click.option("--month", required=True, metavar="YYYY-MM", help="The TLC month to read."),
        click.option("--color", type=click.Choice(["green", "yellow"]), default="green", show_default=True),
        click.option(
            "--data-dir",
            type=click.Path(file_okay=True, dir_okay=True, path_type=Path),
            help="Folder (or file) with TLC parquet files; without it, the TLC site (cached).",
        ),
        click.option("--s3-uri", help="Read TLC files from s3://bucket/prefix (MinIO) instead."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _month_trips(
    settings: Settings, color: str, month: str, data_dir: Path | None, s3_uri: str | None
) -> tuple[Any, Any, Any]:
    """A month's cleaned trips (the same rules as training), its ingest report and its trip ids."""
    from components.data.ingest import load_month
    from components.data.trip_ids import trip_ids
    from components.storage.s3 import S3Connection

    trips, report = load_month(
        color,
        month,
        data_dir=data_dir,
        s3_uri=s3_uri,
        s3=S3Connection.from_env() if s3_uri else None,
        cache_dir=settings.cache_dir,
        base_url=settings.tlc_base_url,
    )
    return trips, report, trip_ids(trips, color)


@main.command()
@_month_options
@click.option("--url", default="http://127.0.0.1:8080", show_default=True, help="Where the model is served.")
@click.option("--rate", type=click.FloatRange(min=0.1), default=200.0, show_default=True, help="Requests/s.")
@click.option("--limit", type=click.IntRange(min=1), help="Replay at most this many trips (default: all).")
def replay(
    month: str,
    color: str,
    data_dir: Path | None,
    s3_uri: str | None,
    url: str,
    rate: float,
    limit: int | None,
) -> None:
    """Send a month's real trips through the served model, each with its trip id and pickup time."""
    from serving.replay import replay_trips

    trips, report, ids = _month_trips(Settings.from_env(), color, month, data_dir, s3_uri)
    total = min(len(trips), limit) if limit else len(trips)
    click.echo(f"replaying {total} of {report.rows_kept} trips of {color} {month} to {url} at {rate:g}/s")

    def show(summary: Any, of: int) -> None:
        click.echo(f"  {summary.sent}/{of} sent, {summary.ok} ok, {summary.failed} failed")

    summary = replay_trips(url, trips, ids, rate=rate, limit=limit, progress=show)
    click.echo(f"replayed: {summary.line()}")
    if summary.failed:
        raise TaxiMlopsError(f"{summary.failed} of {summary.sent} requests got no answer or a 5xx from {url}")


@main.command()
@_month_options
@click.option(
    "--cluster",
    is_flag=True,
    help=f"Join the cluster's prediction log ({PREDICTION_LOG_URI}) and write the labels to {LABELS_URI} "
    "(S3_ENDPOINT_URL and the keys from the environment).",
)
@_state_dir_option
def labels(
    month: str, color: str, data_dir: Path | None, s3_uri: str | None, cluster: bool, state_dir: Path | None
) -> None:
    """Join a month's actual durations (its TLC file) to the logged predictions, by trip id."""
    import tempfile

    from components.monitoring.labels import label_month, write_labels
    from components.monitoring.locations import SEGMENT_PATTERN, local_folder
    from components.monitoring.prediction_log import read_prediction_log

    settings = Settings.from_env(state_dir=state_dir)
    name = f"{color}-{month}.parquet"
    trips, _, ids = _month_trips(settings, color, month, data_dir, s3_uri)
    with tempfile.TemporaryDirectory(prefix="taxi-mlops-labels-") as scratch:
        source = PREDICTION_LOG_URI if cluster else str(settings.prediction_log_dir)
        with local_folder(source, Path(scratch) / "log", SEGMENT_PATTERN, None, click.echo) as folder:
            log = read_prediction_log(folder)
        found, coverage = label_month(log, trips, ids)
        path = Path(scratch) / name if cluster else settings.labels_dir / name
        write_labels(found, path)
        written = str(path)
        if cluster:
            from components.storage.object_transfer import connection_for, upload_file

            written = f"{LABELS_URI}/{name}"
            upload_file(connection_for(written, None), path, written)
    click.echo(f"{color} {month}: {coverage.line()}")
    click.echo(f"labels: {written}")


@main.command()
@click.option("--month", metavar="YYYY-MM", help="Judge the predictions whose event time is in this month.")
@click.option("--since", type=click.DateTime(), help="Event-time window start (UTC), instead of --month.")
@click.option("--until", type=click.DateTime(), help="Event-time window end (UTC, exclusive).")
@click.option(
    "--last-hours",
    type=click.FloatRange(min=0, min_open=True),
    help="The N hours up to the newest event time in the log (what a recurring run judges; "
    "it follows the log's clock, so an accelerated replay is judged the same way).",
)
@click.option(
    "--version",
    "model_version",
    help="Model version to judge (default: the deployed champion; with --cluster the alias champion).",
)
@click.option("--json-out", type=click.Path(dir_okay=False, path_type=Path), help="Write the verdict JSON.")
@click.option(
    "--html-out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the HTML report here too (it is always written beside the verdicts, as report.html).",
)
@click.option(
    "--cluster",
    is_flag=True,
    help="Judge the cluster's log: prediction log, labels and verdicts in MinIO "
    f"({PREDICTION_LOG_URI}, ...; S3_ENDPOINT_URL and the keys from the environment), the registry "
    "at MLFLOW_TRACKING_URI.",
)
@_state_dir_option
def monitor(
    month: str | None,
    since: Any,
    until: Any,
    last_hours: float | None,
    model_version: str | None,
    json_out: Path | None,
    html_out: Path | None,
    cluster: bool,
    state_dir: Path | None,
) -> None:
    """Drift and live accuracy of the logged predictions of one window, against the version's profile.

    The verdict is saved beside the earlier ones (latest.json, history.jsonl: the gauges on
    /metrics read them), with its HTML report, and recorded as an MLflow run.
    """
    from pipelines.steps.monitor import MonitorRequest, WindowChoice, monitor_step, verdict_lines

    settings = Settings.from_env(state_dir=state_dir)
    chosen = [name for name, given in (("--month", month), ("--last-hours", last_hours)) if given is not None]
    if since is not None or until is not None:
        chosen.append("--since/--until")
    if len(chosen) > 1:
        raise click.BadParameter(f"give one of {' or '.join(chosen)}", param_hint=chosen[0])
    if month is not None:
        window = WindowChoice.month(month)
    else:
        window = WindowChoice(since=since, until=until, last_hours=last_hours)
    if cluster:
        if not settings.tracking_uri_from_env:
            raise click.UsageError(
                "--cluster needs MLFLOW_TRACKING_URI pointing at the cluster's MLflow (e.g. "
                "kubectl -n taxi-mlops port-forward svc/mlflow 5000:5000)"
            )
        locations = (PREDICTION_LOG_URI, LABELS_URI, MONITOR_URI)
    else:
        locations = (str(settings.prediction_log_dir), str(settings.labels_dir), str(settings.monitor_dir))
        if model_version is None:
            model_version = _deployed_champion(settings)
    request = MonitorRequest(
        tracking_uri=settings.tracking_uri,
        experiment=settings.experiment,
        model_name=settings.model_name,
        prediction_log=locations[0],
        labels=locations[1],
        monitor=locations[2],
        window=window,
        model_version=model_version or "",
        artifact_location="" if cluster else settings.artifact_location,
        report_path=str(html_out) if html_out else "",
    )
    import logging

    from pipelines.steps.notes import log as step_notes

    # The step notes its verdict for a KFP task's log; here the lines below say it once.
    previous = step_notes.level
    step_notes.setLevel(logging.WARNING)
    try:
        outcome = monitor_step(request)
    finally:
        step_notes.setLevel(previous)
    for line in verdict_lines(outcome.verdict):
        click.echo(line)
    click.echo(f"verdict saved in {request.monitor} ({outcome.verdict['evaluated_at']})")
    click.echo(f"HTML report: {outcome.report_location}")
    if html_out is not None:
        click.echo(f"HTML report: {html_out}")
    click.echo(f"MLflow run {outcome.mlflow_run_id} in experiment '{settings.experiment}-monitoring'")
    if json_out is not None:
        write_atomically(json_out, json.dumps(outcome.verdict, indent=2) + "\n")
        click.echo(f"verdict JSON: {json_out}")


def _deployed_champion(settings: Settings) -> str:
    from serving.deployment_state import load_state

    champion = load_state(settings.deployment_state_path).champion
    if champion is None:
        raise TaxiMlopsError("nothing is deployed: give --version")
    return champion.model_version


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8080, show_default=True)
@click.option(
    "--canary-judge/--no-canary-judge",
    default=True,
    show_default=True,
    help="Judge a live canary on its evidence and promote or roll it back by itself.",
)
@canary_policy_option
@_state_dir_option
def serve(
    host: str, port: int, canary_judge: bool, policy_overrides: tuple[str, ...], state_dir: Path | None
) -> None:
    """Run the local serving stack in the foreground: traffic splitter + one predictor per revision,
    and the canary judge."""
    from components.registry.versions import CHAMPION, version_for_alias
    from serving.deployment_state import load_state
    from serving.local_stack import run_local_stack
    from serving.rollout import deploy_version

    settings = Settings.from_env(state_dir=state_dir)
    # A state file it cannot read stops `serve` here with one error line (a running one keeps
    # its last good routing instead and reports the problem in /status).
    if load_state(settings.deployment_state_path).champion is None:
        champion = version_for_alias(settings.tracking_uri, settings.model_name, CHAMPION)
        if champion is None:
            raise TaxiMlopsError("nothing to serve yet: run `taxi-mlops run` first")
        click.echo(deploy_version(_rollout_target(settings), str(champion.version), 0).message)
    else:
        _reconcile_aliases(settings)
    base = f"http://{host}:{port}"
    policy = parse_policy(policy_overrides)  # a bad override stops `serve` before it starts anything
    click.echo(
        "try:\n"
        f"  curl -s {base}/v1/models/{SERVED_MODEL_NAME}:predict -H 'Content-Type: application/json' \\\n"
        """    -d '{"instances": [{"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66}]}'"""
    )
    judge = local_judge(settings, base, policy) if canary_judge else None
    if judge is not None:
        click.echo(
            f"canary judge: on, an analysis every {policy.interval_seconds:g} s "
            f"(decisions in {settings.canary_dir}; --no-canary-judge turns it off)"
        )
        judge.start()
    try:
        run_local_stack(
            settings.deployment_state_path,
            host=host,
            port=port,
            log_dir=settings.state_dir / "deployment" / "logs",
            progress=click.echo,
        )
    finally:
        if judge is not None:
            judge.stop()


def render_summary(summary: dict[str, Any]) -> str:
    """The final table: candidates by RMSE, the gate's verdict, what was registered."""
    lines = ["", f"{'candidate':<24}{'RMSE':>9}{'MAE':>9}{'train s':>10}"]
    for row in summary["candidates"]:
        marker = "  <- winner" if row["name"] == summary["winner"] else ""
        lines.append(
            f"{row['name']:<24}{row['rmse']:>9.4f}{row['mae']:>9.4f}{row['train_seconds']:>10.1f}{marker}"
        )
    gate = summary["gate"]
    lines.append("")
    lines.append(f"gate: {'PASSED' if gate['passed'] else 'NOT PASSED'} - {gate['reason']}")
    if summary["model_version"]:
        lines.append(
            f"registered: {summary['model_name']} version {summary['model_version']} "
            f"with alias {summary['alias']!r}"
        )
    else:
        lines.append("registered: nothing (the champion stays in place)")
    if summary.get("deployment"):
        lines.append(f"deployed: {summary['deployment']} (serve it: taxi-mlops serve)")
    total = sum(summary["step_seconds"].values())
    lines.append(f"steps: {total:.1f}s of task time; MLflow run {summary['mlflow_run_id']}")
    return "\n".join(lines)


def _seconds(value: str) -> float:
    """A duration flag: "15s", "500ms", "1m" or a plain number of seconds."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    text = value.strip().lower()
    for unit in ("ms", "s", "m", "h"):  # "ms" before "s" and "m"
        if text.endswith(unit):
            number, scale = text[: -len(unit)], units[unit]
            break
    else:
        number, scale = text, 1.0
    try:
        seconds = float(number) * scale
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a duration such as 15s, 500ms or 1m") from None
    if not seconds > 0:
        raise click.BadParameter(f"{value!r} must be longer than zero")
    return seconds


def _port(name: str, default: int, what: str) -> Any:
    return click.option(name, type=click.IntRange(1, 65535), default=default, show_default=True, help=what)


@main.command()
@_port("--prometheus-port", 9090, "Prometheus UI and API on 127.0.0.1.")
@_port("--alertmanager-port", 9093, "Alertmanager UI and API on 127.0.0.1.")
@_port("--receiver-port", 9095, "Our alert receiver (Alertmanager's webhook) on 127.0.0.1.")
@click.option("--scrape-interval", default="15s", show_default=True, help="How often the stack is scraped.")
@click.option("--evaluation-interval", default="15s", show_default=True, help="How often rules run.")
@click.option(
    "--group-wait",
    default="30s",
    show_default=True,
    help="Alertmanager: wait before a group's first notification.",
)
@click.option(
    "--group-interval",
    default="5m",
    show_default=True,
    help="Alertmanager: wait before notifying a changed group.",
)
@_state_dir_option
def observe(
    prometheus_port: int,
    alertmanager_port: int,
    receiver_port: int,
    scrape_interval: str,
    evaluation_interval: str,
    group_wait: str,
    group_interval: str,
    state_dir: Path | None,
) -> None:
    """Watch the local stack in the foreground: Prometheus + Alertmanager + our alert receiver.

    Prometheus scrapes what `taxi-mlops serve` runs (the splitter, with the monitor's verdict as
    gauges, and every predictor), evaluates manifests/components/monitoring/rules/, and
    Alertmanager posts the alerts to our receiver, which appends them to <state>/alerts/alerts.jsonl.
    Needs Debian's prometheus and prometheus-alertmanager. Ctrl-C stops all three.
    """
    from serving.observability import ObserveConfig, run_observability

    settings = Settings.from_env(state_dir=state_dir)
    config = ObserveConfig(
        state_dir=settings.state_dir,
        deployment_dir=settings.deployment_state_path.parent,
        prometheus_port=prometheus_port,
        alertmanager_port=alertmanager_port,
        receiver_port=receiver_port,
        scrape_interval=_seconds(scrape_interval),
        evaluation_interval=_seconds(evaluation_interval),
        group_wait=_seconds(group_wait),
        group_interval=_seconds(group_interval),
    )
    run_observability(config, progress=click.echo)


main.add_command(canary)
main.add_command(autopilot)

if __name__ == "__main__":
    main()
