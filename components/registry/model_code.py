"""The code a registered model ships: exactly the modules that load and run a ``TripDurationModel``.

MLflow copies ``code_paths`` into the model and puts them first on ``sys.path``
when it loads the pyfunc. Shipping all of ``components/`` would pull the data,
registry and storage rooms along (and, once, the KFP glue); shipping too little
breaks loading far from here. So the set is computed, not listed: every project
module reachable by imports (lazy ones inside functions included) from the
pyfunc entry point, plus the ``__init__.py`` of each package on the way.
tests/test_model_code.py loads a registered version in a process that cannot
import kfp, serving or pipelines.
"""

from __future__ import annotations

import ast
import shutil
from collections.abc import Iterator
from pathlib import Path

import components

PACKAGE = "components"
PACKAGE_DIR = Path(components.__file__).resolve().parent
#: The pyfunc entry point MLflow runs on load ("model from code"); not itself in code_paths.
PYFUNC_ENTRY = PACKAGE_DIR / "registry" / "pyfunc_model.py"


def module_path(module: str) -> Path | None:
    """The file of a ``components.*`` module or package, or None if it is not one."""
    if module != PACKAGE and not module.startswith(PACKAGE + "."):
        return None
    relative = Path(*module.split(".")[1:])
    for candidate in (PACKAGE_DIR / relative / "__init__.py", (PACKAGE_DIR / relative).with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def imports_in(path: Path) -> Iterator[tuple[str, int]]:
    """(absolute module name, line) for every import in a file, at any depth, lazy ones included.

    ``from a.b import c`` gives a.b and a.b.c: c may be a module or a name in a.b.
    """
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module, node.lineno
            for alias in node.names:
                yield f"{node.module}.{alias.name}", node.lineno


def imported_modules(path: Path) -> set[str]:
    """Every absolute module name a file imports (see :func:`imports_in`)."""
    return {name for name, _ in imports_in(path)}


def model_code_files(entry: Path = PYFUNC_ENTRY) -> list[Path]:
    """The project files ``entry`` needs, transitively, with their packages' ``__init__.py``."""
    needed: set[Path] = set()
    pending = [entry]
    while pending:
        for module in imported_modules(pending.pop()):
            path = module_path(module)
            if path is None or path in needed:
                continue
            needed.add(path)
            pending.append(path)
            # Importing a.b.c runs a/__init__.py and a/b/__init__.py first.
            parts = module.split(".")
            for depth in range(1, len(parts)):
                init = module_path(".".join(parts[:depth]))
                if init is not None and init not in needed:
                    needed.add(init)
                    pending.append(init)
    needed.discard(entry)
    return sorted(needed)


def stage_model_code(dest: Path, entry: Path = PYFUNC_ENTRY) -> Path:
    """Copy the model's code into ``dest/components`` (the package layout kept); returns that folder."""
    package = dest / PACKAGE
    for source in model_code_files(entry):
        target = package / source.relative_to(PACKAGE_DIR)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return package
