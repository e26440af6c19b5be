"""The deployable model file: fit every candidate, round-trip it, refuse anything tampered or foreign."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from sklearn.linear_model import LinearRegression
from sklearn.pipeline import make_pipeline
from support.tlc_fixtures import write_tlc_dir
from xgboost import XGBRegressor

from components.data.ingest import load_month
from components.errors import ModelIntegrityError
from components.features.design_matrix import DesignMatrix, vectorize_trips
from components.features.trip_features import FEATURE_FIELDS
from components.models.candidates import CANDIDATES, build_estimator
from components.models.duration_model import (
    MODEL_FORMAT,
    MODEL_FORMAT_VERSION,
    TripDurationModel,
    load_duration_model,
    verify_model_file,
)
from components.models.estimator_codecs import CODECS, qualified_type_name
from components.models.train import CandidateResult, fit_candidate
from components.storage.checksums import file_sha256

NAMES = sorted(CANDIDATES)
# Small trees keep boosted fits well under a second; n_jobs=1 because OpenMP
# threads spin for seconds when the test machine's cores are already busy.
SMALL_BOOSTING = {"n_estimators": 20, "max_depth": 6, "n_jobs": 1}
PICKLE_PROTO = b"\x80"  # every pickle of protocol >= 2 starts with the PROTO opcode


class _Untrusted(LinearRegression):
    """A type skops does not know: loading must refuse it before constructing it."""

    constructed: list[str] = []  # noqa: RUF012 - a class-level probe is the point

    def __setstate__(self, state: dict[str, Any]) -> None:
        type(self).constructed.append("setstate")
        super().__setstate__(state)


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory):
    data_dir = write_tlc_dir(tmp_path_factory.mktemp("tlc"))
    train_trips, _ = load_month("green", "2021-01", data_dir=data_dir)
    val_trips, _ = load_month("green", "2021-02", data_dir=data_dir)
    vectorizer, train, validation = vectorize_trips(train_trips, val_trips)
    return vectorizer, train, validation, val_trips


@pytest.fixture(scope="module")
def fitted(split) -> dict[str, tuple[TripDurationModel, CandidateResult]]:
    vectorizer, train, validation, _ = split
    out = {}
    for name in NAMES:
        overrides = small_overrides(name)
        model, result = fit_candidate(name, overrides, vectorizer, train, validation)
        model.metadata.update({"train_seconds": result.train_seconds, "note": f"fit of {name}"})
        out[name] = (model, result)
    return out


@pytest.fixture(scope="module")
def saved(fitted, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    folder = tmp_path_factory.mktemp("models")
    out = {}
    for name, (model, _) in fitted.items():
        path = folder / f"{name}.zip"
        out[name] = (path, model.save(path))
    return out


def small_overrides(name: str) -> dict[str, Any]:
    """The small-boosting overrides that candidate ``name`` has hyperparameters for."""
    return {key: value for key, value in SMALL_BOOSTING.items() if key in CANDIDATES[name].defaults}


def rewrite_model(
    source: Path,
    target: Path,
    manifest_update: Mapping[str, Any] | None = None,
    members: Mapping[str, bytes] | None = None,
    drop: tuple[str, ...] = (),
) -> Path:
    """Copy a model zip, editing its manifest and replacing/adding/dropping members."""
    with zipfile.ZipFile(source) as archive:
        content = {name: archive.read(name) for name in archive.namelist() if name not in drop}
    if manifest_update:
        manifest = json.loads(content["manifest.json"])
        manifest.update(manifest_update)
        content["manifest.json"] = json.dumps(manifest).encode()
    content.update(members or {})
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in content.items():
            archive.writestr(name, data)
    return target


def raw_field_variants(trips: pd.DataFrame) -> dict[str, pd.DataFrame | list[dict[str, Any]]]:
    """The same trips as a serving client might send them."""
    fields = trips.loc[:, list(FEATURE_FIELDS)].reset_index(drop=True)
    ints = fields.astype({"PULocationID": "int64", "DOLocationID": "int64"})
    return {
        "frame_str_ids": fields,
        "frame_int_ids": ints,
        "records_int_ids": [
            {"PULocationID": int(pu), "DOLocationID": int(do), "trip_distance": float(d)}
            for pu, do, d in ints.itertuples(index=False)
        ],
        "records_str_ids": fields.to_dict(orient="records"),
    }


# ------------------------------------------------------------------ fitting


@pytest.mark.parametrize("name", NAMES)
def test_each_candidate_fits_and_beats_predicting_the_mean(name: str, fitted, split):
    _, train, validation, val_trips = split
    model, result = fitted[name]
    assert model.candidate == name
    assert model.codec == CANDIDATES[name].codec
    assert isinstance(validation, DesignMatrix)
    baseline = float(np.sqrt(np.mean((validation.y - train.y.mean()) ** 2)))
    assert result.rmse < 0.8 * baseline, f"{name}: RMSE {result.rmse:.3f} vs mean baseline {baseline:.3f}"
    assert 0.0 < result.mae <= result.rmse
    # Raw fields and the pre-vectorized matrix are the same model.
    np.testing.assert_allclose(model.predict(val_trips), model.predict_matrix(validation.X), rtol=1e-12)


# --------------------------------------------------------------- round trip


@pytest.mark.parametrize("name", NAMES)
def test_save_load_round_trip_gives_identical_predictions(name: str, fitted, saved, split):
    model, _ = fitted[name]
    path, sha256 = saved[name]
    val_trips = split[3]
    expected = model.predict(val_trips)
    loaded = load_duration_model(path, sha256)
    assert type(loaded.estimator) is type(model.estimator)
    assert (loaded.candidate, loaded.codec) == (name, model.codec)
    assert loaded.params == model.params
    assert loaded.metadata == json.loads(json.dumps(model.metadata))
    assert list(loaded.vectorizer.get_feature_names_out()) == list(model.vectorizer.get_feature_names_out())
    for label, trips in raw_field_variants(val_trips).items():
        predictions = loaded.predict(trips)
        assert predictions.dtype == np.float64, label
        np.testing.assert_array_equal(predictions, expected, err_msg=label)


def test_save_returns_the_sha256_of_the_written_bytes(saved):
    for path, sha256 in saved.values():
        assert sha256 == hashlib.sha256(path.read_bytes()).hexdigest() == file_sha256(path)
    assert len({sha for _, sha in saved.values()}) == len(saved)


def test_recorded_sha256_is_compared_case_insensitively(saved):
    path, sha256 = saved["ridge"]
    assert load_duration_model(path, sha256.upper()).candidate == "ridge"


# ------------------------------------------------------------ data only


def _assert_data_only(name: str, data: bytes) -> None:
    assert not name.endswith((".pkl", ".pickle", ".joblib")), name
    assert not data.startswith(PICKLE_PROTO), f"{name} starts with a pickle PROTO opcode"


@pytest.mark.parametrize("name", NAMES)
def test_model_file_is_a_zip_of_data_only(name: str, fitted, saved):
    model, _ = fitted[name]
    path, _ = saved[name]
    member = CODECS[model.codec].member_name
    with zipfile.ZipFile(path) as archive:
        assert sorted(archive.namelist()) == sorted(["manifest.json", "vectorizer.json", member])
        content = {n: archive.read(n) for n in archive.namelist()}
    for member_name, data in content.items():
        _assert_data_only(member_name, data)

    manifest = json.loads(content["manifest.json"])
    assert manifest["format"] == MODEL_FORMAT
    assert manifest["format_version"] == MODEL_FORMAT_VERSION
    assert manifest["candidate"] == name
    assert manifest["codec"] == model.codec
    assert manifest["estimator_type"] == qualified_type_name(model.estimator)
    assert manifest["inputs"] == list(FEATURE_FIELDS)
    assert json.loads(content["vectorizer.json"]) == model.vectorizer.to_dict()

    payload = content[member]
    if member.endswith(".npz"):
        with np.load(io.BytesIO(payload), allow_pickle=False) as arrays:
            for key in arrays.files:
                assert arrays[key].dtype != object, key
        with zipfile.ZipFile(io.BytesIO(payload)) as inner:
            for inner_name in inner.namelist():
                assert inner_name.endswith(".npy"), inner_name
                _assert_data_only(inner_name, inner.read(inner_name))
    elif member.endswith(".skops"):
        # skops is itself a zip: a JSON schema plus numpy arrays that load without pickle.
        with zipfile.ZipFile(io.BytesIO(payload)) as inner:
            inner_names = inner.namelist()
            assert "schema.json" in inner_names
            assert {n.rsplit(".", 1)[-1] for n in inner_names} <= {"json", "npy"}
            json.loads(inner.read("schema.json"))
            for inner_name in inner_names:
                data = inner.read(inner_name)
                _assert_data_only(inner_name, data)
                if inner_name.endswith(".npy"):
                    np.load(io.BytesIO(data), allow_pickle=False)
    elif member.endswith(".ubj"):
        assert payload.startswith(b"{"), "UBJSON object expected"
        XGBRegressor().load_model(bytearray(payload))
    else:
        pytest.fail(f"{name}: no data-only check for payload {member}; extend this test")


# ----------------------------------------------------------- refusals


def test_sha256_mismatch_is_refused_before_parsing(saved, tmp_path):
    path, sha256 = saved["linear_regression"]
    wrong = hashlib.sha256(b"some other model").hexdigest()
    with pytest.raises(ModelIntegrityError, match="sha256") as info:
        load_duration_model(path, wrong)
    assert wrong in str(info.value) and sha256 in str(info.value)
    # Even a file that is not a zip at all gets the checksum error, not a parse error.
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"definitely not a zip")
    with pytest.raises(ModelIntegrityError, match="sha256"):
        load_duration_model(junk, sha256)


@pytest.mark.parametrize("name", ["ridge", "xgboost"])
@pytest.mark.parametrize("where", [0.1, 0.5, 0.9])
def test_one_flipped_byte_is_refused(name: str, where: float, saved, tmp_path):
    path, sha256 = saved[name]
    data = bytearray(path.read_bytes())
    data[int(len(data) * where)] ^= 0x01
    tampered = tmp_path / "tampered.zip"
    tampered.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="sha256"):
        load_duration_model(tampered, sha256)
    # Deploy stages files with the check alone (no parsing): it refuses the same bytes.
    with pytest.raises(ModelIntegrityError, match="sha256"):
        verify_model_file(tampered, sha256)
    verify_model_file(path, sha256.upper())  # the untouched file passes, whatever the hex case


def _corrupt_deflate_stream(path: Path, member: str, target: Path) -> Path:
    """Set the first deflate block of ``member`` to the reserved block type 11 (one byte changed)."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
    assert info.compress_type == zipfile.ZIP_DEFLATED
    offset = info.header_offset
    name_len = int.from_bytes(data[offset + 26 : offset + 28], "little")
    extra_len = int.from_bytes(data[offset + 28 : offset + 30], "little")
    data[offset + 30 + name_len + extra_len] |= 0b110
    target.write_bytes(bytes(data))
    return target


def test_corrupt_archive_without_recorded_sha256_is_a_model_integrity_error(saved, tmp_path):
    path, _ = saved["ridge"]
    corrupt = _corrupt_deflate_stream(path, CODECS["linear-npz"].member_name, tmp_path / "corrupt.zip")
    with pytest.raises(ModelIntegrityError, match="not a trip duration model file"):
        load_duration_model(corrupt, None)


def test_truncated_file_is_refused_with_a_clear_error(saved, tmp_path):
    path, _ = saved["ridge"]
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelIntegrityError, match="not a trip duration model file"):
        load_duration_model(truncated, None)


def test_skops_payload_with_an_untrusted_type_is_refused_without_constructing_it(saved, tmp_path):
    path, _ = saved["linear_regression"]
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 3))
    foreign = _Untrusted().fit(X, X.sum(axis=1))
    forged = rewrite_model(
        path,
        tmp_path / "forged.zip",
        manifest_update={"estimator_type": qualified_type_name(LinearRegression()), "codec": "skops"},
        members={"estimator.skops": sio.dumps(foreign)},
        drop=("estimator.npz",),
    )
    _Untrusted.constructed.clear()
    # The attacker can also record the forged file's checksum: the check must hold regardless.
    with pytest.raises(ModelIntegrityError, match="not trusted") as info:
        load_duration_model(forged, file_sha256(forged))
    assert "_Untrusted" in str(info.value)
    assert _Untrusted.constructed == []


@pytest.mark.parametrize(
    "payload_factory",
    [
        pytest.param(lambda X, y: make_pipeline(LinearRegression()).fit(X, y), id="pipeline"),
        pytest.param(lambda X, y: build_estimator("ridge").fit(X, y), id="ridge"),
    ],
)
def test_skops_payload_of_another_type_than_the_manifest_names_is_refused(
    payload_factory: Callable[[np.ndarray, np.ndarray], Any], saved, tmp_path
):
    path, _ = saved["linear_regression"]
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 3))
    forged = rewrite_model(
        path,
        tmp_path / "forged.zip",
        manifest_update={"estimator_type": qualified_type_name(LinearRegression()), "codec": "skops"},
        members={"estimator.skops": sio.dumps(payload_factory(X, X.sum(axis=1)))},
        drop=("estimator.npz",),
    )
    with pytest.raises(ModelIntegrityError):
        load_duration_model(forged, file_sha256(forged))


def test_a_linear_model_stored_with_skops_before_linear_npz_still_loads(fitted, split, tmp_path):
    model, _ = fitted["ridge"]
    old = TripDurationModel("ridge", model.vectorizer, model.estimator, "skops", params=model.params)
    path = tmp_path / "ridge-0.1.0.zip"
    sha256 = old.save(path)
    loaded = load_duration_model(path, sha256)
    assert loaded.codec == "skops"
    np.testing.assert_array_equal(loaded.predict(split[3]), model.predict(split[3]))


def _linear_payload(coef: Any, intercept: Any, params: str) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, coef=np.asarray(coef), intercept=np.asarray(intercept), params=np.array(params))
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("manifest_update", "payload", "message"),
    [
        pytest.param(
            {"estimator_type": "xgboost.sklearn.XGBRegressor"}, None, "cannot restore", id="another-type"
        ),
        pytest.param(
            {"estimator_type": "sklearn.pipeline.Pipeline"}, None, "cannot restore", id="not-linear"
        ),
        pytest.param({}, _linear_payload([[1.0, 2.0]], 0.5, "{}"), "expected one float64 row", id="2d-coef"),
        pytest.param({}, _linear_payload([1, 2], 0.5, "{}"), "expected one float64 row", id="int-coef"),
        pytest.param({}, _linear_payload([1.0], [0.5, 1.0], "{}"), "one scalar", id="vector-intercept"),
        pytest.param({}, _linear_payload([1.0], 0.5, '{"steps": 1}'), "do not fit", id="foreign-parameter"),
        pytest.param({}, _linear_payload([1.0], 0.5, "not json"), "not a trip duration", id="bad-json"),
        pytest.param({}, b"PK\x03\x04 nothing", "not a trip duration", id="not-npz"),
    ],
)
def test_linear_npz_refuses_what_is_not_one_of_its_linear_models(
    manifest_update: dict[str, Any], payload: bytes | None, message: str, saved, tmp_path
):
    path, _ = saved["ridge"]
    forged = rewrite_model(
        path,
        tmp_path / "forged.zip",
        manifest_update=manifest_update,
        members={"estimator.npz": payload} if payload is not None else None,
    )
    with pytest.raises(ModelIntegrityError, match=message):
        load_duration_model(forged, file_sha256(forged))


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ({"format": "someone-else/model"}, "not a trip duration model file"),
        ({"format": None}, "not a trip duration model file"),
        (
            {"format_version": MODEL_FORMAT_VERSION + 1},
            f"version {MODEL_FORMAT_VERSION + 1} is not supported",
        ),
        ({"format_version": str(MODEL_FORMAT_VERSION)}, "is not supported"),
        ({"codec": "pickle"}, "unknown estimator codec 'pickle'"),
    ],
)
def test_manifest_that_is_not_ours_is_refused(update: dict[str, Any], message: str, saved, tmp_path):
    path, _ = saved["ridge"]
    forged = rewrite_model(path, tmp_path / "forged.zip", manifest_update=update)
    with pytest.raises(ModelIntegrityError, match=message) as info:
        load_duration_model(forged, file_sha256(forged))
    if "codec" not in update:
        assert str(forged) in str(info.value)


def test_xgboost_codec_refuses_a_manifest_naming_another_estimator(saved, tmp_path):
    path, _ = saved["xgboost"]
    forged = rewrite_model(
        path,
        tmp_path / "forged.zip",
        manifest_update={"estimator_type": qualified_type_name(LinearRegression())},
    )
    with pytest.raises(ModelIntegrityError, match="cannot restore"):
        load_duration_model(forged, None)


@pytest.mark.parametrize("missing", ["manifest.json", "vectorizer.json", "estimator.npz"])
def test_archive_missing_a_member_is_refused(missing: str, saved, tmp_path):
    path, _ = saved["ridge"]
    forged = rewrite_model(path, tmp_path / "forged.zip", drop=(missing,))
    with pytest.raises(ModelIntegrityError, match="not a trip duration model file") as info:
        load_duration_model(forged, None)
    assert missing in str(info.value)


@pytest.mark.parametrize(
    "content",
    [b"", b"PULocationID,DOLocationID\n1,2\n", b"PK\x03\x04 but not really a zip", b"\x80\x04\x95pickle"],
)
def test_non_zip_file_is_refused_with_a_clear_error(content: bytes, tmp_path):
    path = tmp_path / "model.zip"
    path.write_bytes(content)
    with pytest.raises(ModelIntegrityError, match="not a trip duration model file") as info:
        load_duration_model(path, hashlib.sha256(content).hexdigest())
    assert str(path) in str(info.value)


def test_missing_file_is_refused_with_its_path(tmp_path):
    path = tmp_path / "absent.zip"
    with pytest.raises(ModelIntegrityError, match="cannot read model file") as info:
        load_duration_model(path, None)
    assert str(path) in str(info.value)


# ---------------------------------------------------------------- saving


def test_save_is_atomic_and_leaves_no_partial_file(fitted, tmp_path):
    model, _ = fitted["ridge"]
    target = tmp_path / "nested" / "dir" / "model.zip"
    model.save(target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.zip"]
    # Overwriting replaces the file in one step and still leaves nothing behind.
    second = model.save(target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.zip"]
    assert load_duration_model(target, second).candidate == "ridge"


def test_failed_save_keeps_the_previous_file_intact(fitted, tmp_path):
    model, _ = fitted["ridge"]
    target = tmp_path / "model.zip"
    sha256 = model.save(target)
    unfitted = TripDurationModel("xgboost", model.vectorizer, build_estimator("xgboost"), "xgboost-ubj")
    with pytest.raises(Exception, match=r"(?i)fit"):
        unfitted.save(target)
    assert file_sha256(target) == sha256
    assert [p.name for p in tmp_path.iterdir()] == ["model.zip"]
    assert load_duration_model(target, sha256).candidate == "ridge"
