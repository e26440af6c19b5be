"""Register the gate's winner as an MLflow model version and give it its alias.

All or nothing: if anything fails after the version was created (tagging,
aliasing), the version is deleted again, so a failed run never leaves a
half-registered model that a deployment could pick up.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from components.checksums import file_sha256
from components.duration_model import MODEL_FILE_NAME, load_duration_model
from components.features import FEATURE_FIELDS
from components.registry import CHALLENGER, CHAMPION, PYFUNC_ARTIFACT_KEY, SHA256_TAG
from components.tracking import client_for

MODEL_CODE_PATH = Path(__file__).with_name("mlflow_model_code.py")
PACKAGE_DIR = Path(__file__).parent
# What loading the pyfunc needs; pinned to what trained it. Listing them avoids
# MLflow's requirement inference, which imports the model in a subprocess.
PYFUNC_PACKAGES = ("mlflow", "numpy", "pandas", "scipy", "scikit-learn", "skops", "xgboost")


def pyfunc_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{package}=={version(package)}" for package in PYFUNC_PACKAGES]


@dataclass(frozen=True)
class Registration:
    model_name: str
    model_version: str | None
    alias: str | None
    sha256: str | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def register_winner(
    *,
    tracking_uri: str,
    model_name: str,
    model_file: Path,
    gate: Mapping[str, Any],
    input_example: pd.DataFrame,
    run_id: str,
    version_tags: Mapping[str, str],
) -> Registration:
    """Log the winner as a pyfunc model under ``run_id`` and register it, when the gate passed.

    The alias is ``champion`` when there was no champion before, else ``challenger``
    (the canary decides later whether the challenger is promoted).
    """
    if not gate["passed"]:
        return Registration(
            model_name, None, None, None, f"gate failed, nothing registered: {gate['reason']}"
        )

    import mlflow
    from mlflow.models import infer_signature

    sha256 = file_sha256(model_file)
    model = load_duration_model(model_file, sha256)
    # The example shows the serving contract: integer zone ids, as clients send them.
    example = (
        input_example.loc[:, list(FEATURE_FIELDS)]
        .head(5)
        .astype({"PULocationID": "int64", "DOLocationID": "int64", "trip_distance": "float64"})
        .reset_index(drop=True)
    )
    signature = infer_signature(example, model.predict(example))
    alias = CHAMPION if gate.get("champion_rmse") is None else CHALLENGER

    client = client_for(tracking_uri)
    with (
        tempfile.TemporaryDirectory(prefix="taxi-mlops-register-") as staging,
        mlflow.start_run(run_id=run_id),
    ):
        # KFP names the artifact file after the output ("winner"); the registry gets the canonical name.
        staged_file = Path(staging) / MODEL_FILE_NAME
        shutil.copyfile(model_file, staged_file)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(MODEL_CODE_PATH),
            artifacts={PYFUNC_ARTIFACT_KEY: str(staged_file)},
            model_config={"sha256": sha256},
            # The model loads anywhere with these packages: the project's code travels with it.
            code_paths=[str(PACKAGE_DIR)],
            pip_requirements=pyfunc_requirements(),
            signature=signature,
            input_example=example,
        )
    # register_model creates the registered model on first use and links the logged model.
    version = mlflow.register_model(info.model_uri, model_name, tags={SHA256_TAG: sha256, **version_tags})
    try:
        client.set_registered_model_alias(model_name, alias, version.version)
    except BaseException:
        client.delete_model_version(model_name, version.version)
        raise
    return Registration(model_name, str(version.version), alias, sha256, gate["reason"])
