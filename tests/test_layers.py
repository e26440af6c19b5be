"""The architecture, enforced: packages and rooms import only downward, and nothing imports in a circle.

components (the library) <- serving <- pipelines; inside components the rooms
form layers (support/import_graph.py, ROOM_LAYERS). The checks read the source
with ast, so a lazy import inside a function counts like any other.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from support.import_graph import (
    FORBIDDEN_THIRD_PARTY,
    PACKAGES,
    ROOM_LAYERS,
    import_cycles,
    import_edges,
    layer_violations,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the project's packages to add deliberate mistakes to."""
    for package in PACKAGES:
        shutil.copytree(REPO_ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_every_import_goes_downward() -> None:
    assert layer_violations(REPO_ROOT) == []


def test_no_import_cycle() -> None:
    assert import_cycles(REPO_ROOT) == []


def test_every_room_has_a_layer() -> None:
    rooms = {path.name for path in (REPO_ROOT / "components").iterdir() if (path / "__init__.py").is_file()}
    assert rooms == set(ROOM_LAYERS) - {""}


def test_the_graph_is_not_empty() -> None:
    # A checker that finds no edges would pass everything: make sure it sees the real ones.
    edges = {(edge.importer, edge.imported) for edge in import_edges(REPO_ROOT)}
    assert ("pipelines.steps.train", "components.models.train") in edges
    assert ("serving.predictor", "serving.pair_lookup") in edges
    assert ("components.registry.registration", "components.models.duration_model") in edges
    assert ("pipelines.kfp_components", "kfp") in edges


def test_an_upward_import_between_packages_fails(tree: Path) -> None:
    bad = tree / "components" / "models" / "peek.py"
    bad.write_text("def f():\n    from serving.predictor import TripDurationPredictor\n", encoding="utf-8")
    assert layer_violations(tree) == [
        "components.models.peek imports serving.predictor (line 2): components is below serving"
    ]


def test_an_upward_import_between_rooms_fails(tree: Path) -> None:
    bad = tree / "components" / "storage" / "peek.py"
    bad.write_text("from components.registry.tracking import client_for\n", encoding="utf-8")
    problems = layer_violations(tree)
    assert problems[0].startswith("components.storage.peek imports components.registry.tracking (line 1)")
    assert "room storage (layer 1) may not import room registry (layer 5)" in problems[0]


def test_a_sideways_import_between_rooms_of_one_layer_fails(tree: Path) -> None:
    bad = tree / "components" / "data" / "peek.py"
    bad.write_text("import components.evaluation.gate\n", encoding="utf-8")
    assert any(
        "room data (layer 4) may not import room evaluation (layer 4)" in p for p in layer_violations(tree)
    )


def test_kfp_in_the_library_fails(tree: Path) -> None:
    assert FORBIDDEN_THIRD_PARTY["components"] == ("kfp",)
    (tree / "components" / "features" / "peek.py").write_text("from kfp import dsl\n", encoding="utf-8")
    assert layer_violations(tree) == [
        "components.features.peek imports kfp (line 1): components must not import kfp"
    ]


def test_a_room_without_a_layer_fails(tree: Path) -> None:
    (tree / "components" / "attic").mkdir()
    (tree / "components" / "attic" / "__init__.py").write_text("", encoding="utf-8")
    (tree / "components" / "attic" / "old.py").write_text("from components.errors import TaxiMlopsError\n")
    assert any("room 'attic' has no layer" in p for p in layer_violations(tree))


def test_a_cycle_fails(tree: Path) -> None:
    (tree / "serving" / "ping.py").write_text("from serving.pong import b\na = 1\n", encoding="utf-8")
    (tree / "serving" / "pong.py").write_text("def b():\n    from serving.ping import a\n", encoding="utf-8")
    assert import_cycles(tree) == [["serving.ping", "serving.pong"]]
