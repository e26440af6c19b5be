"""The registered model ships only model code, and loads where kfp, serving and pipelines cannot be imported.

A real registration into MLflow on sqlite, then a fresh interpreter, started
outside the repository with an import blocker for those three packages, loads
the version through ``mlflow.pyfunc`` and predicts: what a consumer of the
registry (``mlflow models serve``, a notebook) gets.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow.artifacts
import pandas as pd
import pytest
from support.model_fixtures import fit_fixture_model

from components.evaluation.gate import gate_against_champion
from components.features.trip_features import FEATURE_FIELDS
from components.registry import tracking
from components.registry.model_code import PACKAGE_DIR, model_code_files
from components.registry.registration import Registration, register_winner

pytestmark = pytest.mark.timeout(300)

MODEL_NAME = "taxi-model-code"
BLOCKED = ("kfp", "serving", "pipelines")
# Runs in the fresh interpreter: refuse the blocked packages, then load and predict.
LOADER = """
import importlib.abc, json, sys

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"{name} is blocked in this process", name=name)
        return None

sys.meta_path.insert(0, Refuse())
try:
    import kfp  # noqa: F401
    blocker_works = False
except ModuleNotFoundError:
    blocker_works = True

import mlflow.pyfunc
import pandas as pd

model = mlflow.pyfunc.load_model(MODEL_URI)
import components  # already imported by the model's loader: from where?

minutes = model.predict(pd.DataFrame(TRIPS)).tolist()
loaded = sorted(name for name in sys.modules if name.split(".")[0] in ("components",) + BLOCKED)
print(json.dumps({"blocker_works": blocker_works, "components_file": components.__file__,
                  "minutes": minutes, "loaded": loaded}))
"""


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Registration, pd.DataFrame, list]:
    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root}/mlflow.db"
    experiment_id = tracking.ensure_experiment(uri, "model-code", artifact_location=(root / "art").as_uri())
    # The target-encoding booster: its codec is imported lazily, the case a hand-made list would miss.
    model, result, validation = fit_fixture_model(
        tmp_path_factory.mktemp("tlc"), "target_encoded_xgboost", {"n_estimators": 30, "n_folds": 3}
    )
    model_file = root / "winner.zip"
    model.save(model_file)
    run_id = tracking.client_for(uri).create_run(experiment_id).info.run_id
    gate = gate_against_champion(model.candidate, result.rmse, None, None, 0.01)
    registration = register_winner(
        tracking_uri=uri,
        model_name=MODEL_NAME,
        model_file=model_file,
        gate=gate.__dict__,
        input_example=validation,
        run_id=run_id,
        version_tags={},
    )
    trips = (
        validation.loc[:, list(FEATURE_FIELDS)]
        .head(25)
        .astype({"PULocationID": "int64", "DOLocationID": "int64"})
    )
    expected = model.predict(trips).tolist()
    return uri, registration, trips, expected


def test_the_model_ships_exactly_the_code_it_loads(registered, tmp_path: Path) -> None:
    uri, registration, _, _ = registered
    local = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{MODEL_NAME}/{registration.model_version}",
            dst_path=str(tmp_path),
            tracking_uri=uri,
        )
    )
    shipped = sorted(
        path.relative_to(local / "code" / "components").as_posix() for path in (local / "code").rglob("*.py")
    )
    expected = sorted(path.relative_to(PACKAGE_DIR).as_posix() for path in model_code_files())
    assert shipped == expected
    assert "models/duration_model.py" in shipped and "models/target_encoded_xgboost.py" in shipped
    # No data, registry, storage-transfer or evaluation room, and no KFP glue at all.
    assert not [name for name in shipped if name.split("/")[0] in {"data", "registry", "evaluation"}]
    assert sorted(p.name for p in (local / "code").iterdir()) == ["components"]


def test_a_registered_version_loads_without_kfp_serving_or_pipelines(registered, tmp_path: Path) -> None:
    uri, registration, trips, expected = registered
    script = (
        f"BLOCKED = {BLOCKED!r}\n"
        f"MODEL_URI = {f'models:/{MODEL_NAME}/{registration.model_version}'!r}\n"
        f"TRIPS = {trips.to_dict(orient='list')!r}\n" + LOADER
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,  # not the repository: nothing importable from the working directory
        env={"MLFLOW_TRACKING_URI": uri, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["blocker_works"] is True
    # The project code came from the model's own copy, not from this checkout.
    assert "/code/components/" in report["components_file"]
    assert not Path(report["components_file"]).is_relative_to(PACKAGE_DIR.parent)
    assert not [name for name in report["loaded"] if name.split(".")[0] in BLOCKED]
    assert report["minutes"] == expected
