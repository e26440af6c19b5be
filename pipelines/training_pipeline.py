"""The training pipeline: ingest -> vectorize -> train x N -> evaluate -> register -> deploy.

Wiring only; every step's logic lives in ``components``. Compile it with
``taxi-mlops compile -o pipeline.yaml`` or ``python -m pipelines.training_pipeline``.

One pipeline definition serves two builds: ``build_pipeline`` takes the
parameter defaults, a pipeline root and a function applied to every task, so
the cluster build (``pipelines.cluster_pipeline``: MinIO pipeline root, S3
secret as env, pull policy) is this very graph with other settings, not a copy.
"""

# No "from __future__ import annotations" here: KFP reads the real annotation objects.
from dataclasses import dataclass
from typing import List  # noqa: UP035 - KFP's signature parser wants typing.List

from kfp import compiler, dsl
from kfp.dsl.base_component import BaseComponent

from components.data.cleaning_rules import DEFAULT_MIN_ROWS
from components.models.candidates import CANDIDATES
from components.names import (
    EXPERIMENT_NAME,
    MLFLOW_TRACKING_URI,
    NAMESPACE,
    REGISTERED_MODEL_NAME,
    TLC_BASE_URL,
)
from pipelines.kfp_components import (
    close_tracking_run,
    deploy,
    evaluate,
    ingest,
    open_tracking_run,
    register,
    train,
    vectorize,
)
from pipelines.task_settings import TaskSettings, as_is

PIPELINE_NAME = f"{REGISTERED_MODEL_NAME}-training"
DEFAULT_CANDIDATES: list[dict] = [{"name": name, "params": {}} for name in CANDIDATES]


@dataclass(frozen=True)
class PipelineDefaults:
    """Defaults of the parameters that differ between a local and a cluster build."""

    tracking_uri: str = MLFLOW_TRACKING_URI
    model_store_uri: str = ""  # empty: local mode, nothing uploaded
    inference_service: str = ""  # empty: deploy to the local deployment state (if given)
    inference_namespace: str = NAMESPACE


def build_pipeline(
    defaults: PipelineDefaults = PipelineDefaults(),
    configure_task: TaskSettings = as_is,
    pipeline_root: str | None = None,
) -> BaseComponent:
    """The pipeline with these defaults; ``configure_task`` is applied to every task."""

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description=(
            "Train trip-duration candidates on a TLC month or a window of event time, gate the best "
            "against the champion on the newer validation data, register it and deploy it as a canary."
        ),
        pipeline_root=pipeline_root,
    )
    def training_pipeline(
        color: str = "green",
        train_month: str = "2021-01",
        val_month: str = "2021-02",
        train_start: str = "",
        train_end: str = "",
        val_start: str = "",
        val_end: str = "",
        allow_missing_months: bool = False,
        candidates: List[dict] = DEFAULT_CANDIDATES,  # noqa: UP006 - KFP reads the default as data
        min_improvement: float = 0.01,
        tracking_uri: str = defaults.tracking_uri,
        experiment: str = EXPERIMENT_NAME,
        artifact_location: str = "",
        model_name: str = REGISTERED_MODEL_NAME,
        run_name: str = "",
        data_dir: str = "",
        s3_uri: str = "",
        cache_dir: str = "",
        tlc_base_url: str = TLC_BASE_URL,
        min_rows: int = DEFAULT_MIN_ROWS,
        model_store_uri: str = defaults.model_store_uri,
        deployment_state_path: str = "",
        inference_service: str = defaults.inference_service,
        inference_namespace: str = defaults.inference_namespace,
        canary_percent: int = 20,
    ) -> None:
        """Hyperparameters travel inside ``candidates``.

        For example ``[{"name": "ridge", "params": {"alpha": 0.5}}, {"name": "xgboost", "params": {}}]``.

        ``train_start``/``train_end`` (ISO 8601 dates or date-times of pickup time, start
        inclusive, end exclusive; empty: not used) replace ``train_month`` with that window
        of event time, read from every month file it spans; ``val_start``/``val_end`` do the
        same for ``val_month``. With a window, validation must start at or after the end of
        training. A month the window spans that has no file fails ingest, unless
        ``allow_missing_months`` (see ``components.data.window_ingest``).
        """
        # What each side reads: its month, or the window that replaces it.
        data = {
            "color": color,
            "train_month": train_month,
            "val_month": val_month,
            "train_start": train_start,
            "train_end": train_end,
            "val_start": val_start,
            "val_end": val_end,
        }
        closer = close_tracking_run(
            tracking_uri=tracking_uri, experiment=experiment, kfp_job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER
        ).set_display_name("close-mlflow-run")
        with dsl.ExitHandler(closer, name="tracked-run"):
            opened = open_tracking_run(
                tracking_uri=tracking_uri,
                experiment=experiment,
                run_name=run_name,
                kfp_job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                **data,
                artifact_location=artifact_location,
            ).set_display_name("open-mlflow-run")

            source = {
                **data,
                "allow_missing_months": allow_missing_months,
                "data_dir": data_dir,
                "s3_uri": s3_uri,
                "cache_dir": cache_dir,
                "tlc_base_url": tlc_base_url,
                "min_rows": min_rows,
            }
            # The training side first: local_run names the tasks ingest/ingest-2 by this order.
            train_trips = ingest(side="train", **source).set_display_name("ingest-train-data")
            val_trips = ingest(side="val", **source).set_display_name("ingest-validation-data")

            features = vectorize(
                train_trips=train_trips.outputs["trips"], val_trips=val_trips.outputs["trips"]
            ).set_display_name("vectorize")

            with dsl.ParallelFor(candidates, name="candidates") as candidate:
                fitted = train(
                    candidate=candidate,
                    train_matrix=features.outputs["train_matrix"],
                    val_matrix=features.outputs["val_matrix"],
                    vectorizer=features.outputs["vectorizer"],
                    mlflow_run=opened.outputs["mlflow_run"],
                ).set_display_name("train-candidate")

            evaluated = evaluate(
                models=dsl.Collected(fitted.outputs["model"]),
                val_trips=val_trips.outputs["trips"],
                mlflow_run=opened.outputs["mlflow_run"],
                model_name=model_name,
                min_improvement=min_improvement,
                **data,
            ).set_display_name("evaluate-and-gate")

            registered = register(
                winner=evaluated.outputs["winner"],
                evaluation=evaluated.outputs["evaluation"],
                val_trips=val_trips.outputs["trips"],
                train_trips=train_trips.outputs["trips"],
                mlflow_run=opened.outputs["mlflow_run"],
                model_name=model_name,
                model_store_uri=model_store_uri,
            ).set_display_name("register")

            deployed = deploy(
                summary=registered.outputs["summary"],
                mlflow_run=opened.outputs["mlflow_run"],
                model_name=model_name,
                deployment_state_path=deployment_state_path,
                inference_service=inference_service,
                inference_namespace=inference_namespace,
                canary_percent=canary_percent,
            ).set_display_name("deploy-canary")

        # Tasks that talk to MLflow must run every time: a cached result would point
        # at another run's MLflow entries.
        for task in (closer, opened, fitted, evaluated, registered, deployed):
            task.set_caching_options(False)
        tasks = (closer, opened, train_trips, val_trips, features, fitted, evaluated, registered, deployed)
        for task in tasks:
            configure_task(task)

    return training_pipeline


training_pipeline = build_pipeline()


def compile_pipeline(path: str) -> str:
    compiler.Compiler().compile(training_pipeline, package_path=path)
    return path


if __name__ == "__main__":
    print(compile_pipeline("training_pipeline.yaml"))
