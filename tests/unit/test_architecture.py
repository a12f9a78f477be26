"""The dependency rules of docs/architecture.md and docs/architecture.md "Modules and the
contracts", enforced rather than reviewed.

1. Pure modules (layer 0 in docs/architecture.md's table) import, in a fresh interpreter, none
   of gevent, loguru, yaml, jsonschema, cffi or socket (gunicorn's import-order test idea).
2. No file in ``spop/`` imports anything outside the standard library and ``coraza_spoa_py.spop``.
3. Imports point down: a module of the table never imports one of a higher layer.
4. ``application`` and ``agent`` load neither the binding nor gevent; ``import coraza_spoa_py``
   loads nothing that ``cli`` must monkey-patch first.

The table is read from docs/architecture.md, so a module added there is checked at once.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "coraza_spoa_py"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
# what a pure module must not pull in (docs/architecture.md "Modules and the contracts"); socket is
# listed so that the codec can never grow I/O, and because gevent must patch it before anyone
# imports it
FORBIDDEN_IN_PURE = ("gevent", "loguru", "yaml", "jsonschema", "cffi", "_cffi_backend", "socket")
_TABLE_ROW = re.compile(r"^\|\s*(\d)\s+[\w/ ]+\|\s*([^|]+)\|", re.MULTILINE)
_NAME = re.compile(r"`([\w.]+?)(?:\.py|/)`")


def _layers() -> dict[str, int]:
    """Module name (``spop``, ``models``, ``__main__``...) -> layer, from the doc's table."""
    layers: dict[str, int] = {}
    for layer, cell in _TABLE_ROW.findall(ARCHITECTURE.read_text(encoding="utf-8")):
        for name in _NAME.findall(cell):
            layers[name] = int(layer)
    return layers


LAYERS = _layers()
PURE_MODULES = sorted(name for name, layer in LAYERS.items() if layer == 0)


def _existing(name: str) -> bool:
    return (PACKAGE / f"{name}.py").is_file() or (PACKAGE / name / "__init__.py").is_file()


def _loaded_after_import(module: str, candidates: tuple[str, ...]) -> list[str]:
    """Import ``module`` in a fresh interpreter; which of ``candidates`` got loaded."""
    code = (
        "import importlib, json, sys\n"
        f"importlib.import_module({module!r})\n"
        f"print(json.dumps([n for n in {list(candidates)!r} if n in sys.modules]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    loaded: list[str] = json.loads(result.stdout)
    return loaded


def _imports_of_source(source: str, package: str) -> list[str]:
    """Absolute module names imported by ``source`` living in ``package`` (relative imports
    are resolved as Python does)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                assert node.module is not None
                module = node.module
            names.append(module)
            # ``from coraza_spoa_py import engine`` imports the subpackage coraza_spoa_py.engine
            names += [f"{module}.{alias.name}" for alias in node.names]
    return names


def _imports(path: Path) -> list[str]:
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    return _imports_of_source(path.read_text(encoding="utf-8"), package)


def _layer_of(module: str) -> int | None:
    """The layer of a ``coraza_spoa_py.X[.Y]`` name, None when the table does not list X."""
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def test_architecture_table_lists_the_pure_modules() -> None:
    assert {"spop", "models", "settings"} <= set(PURE_MODULES)


@pytest.mark.parametrize("name", PURE_MODULES)
def test_pure_module_imports_no_framework(name: str) -> None:
    """1. Import the module alone in a new interpreter. 2. None of the forbidden modules is in
    sys.modules."""
    assert _existing(name), f"docs/architecture.md lists {name}, which does not exist"
    assert _loaded_after_import(f"coraza_spoa_py.{name}", FORBIDDEN_IN_PURE) == []


def test_spop_imports_only_stdlib_and_itself() -> None:
    offenders = []
    for path in sorted((PACKAGE / "spop").glob("*.py")):
        for module in _imports(path):
            top = module.split(".")[0]
            if module.startswith("coraza_spoa_py.spop") or top in sys.stdlib_module_names:
                continue
            offenders.append(f"{path.name}: {module}")
    assert offenders == []


def test_spop_file_list_is_what_the_import_check_sees() -> None:
    """The static check above must see the real files (guards against a moved package)."""
    names = {path.name for path in (PACKAGE / "spop").glob("*.py")}
    assert {"__init__.py", "connection.py", "frames.py", "wire.py", "events.py"} <= names
    assert "coraza_spoa_py.spop.events" in _imports(PACKAGE / "spop" / "connection.py")


def _upward_imports(module: str, imported: list[str]) -> list[str]:
    """The imports of ``module`` that point to a higher layer of the table."""
    own = _layer_of(module)
    if own is None:
        return []
    offenders = []
    for target_module in imported:
        target = _layer_of(target_module) if target_module.startswith("coraza_spoa_py.") else None
        if target is not None and target > own:
            offenders.append(f"{module}: {target_module} (layer {own} -> {target})")
    return offenders


def test_imports_point_down() -> None:
    """A module listed in the table imports only modules of its own layer or below
    (docs/architecture.md "Modules and the contracts"). Modules the table does not list are not
    judged here."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        offenders += _upward_imports(module, _imports(path))
    assert offenders == []


def test_upward_import_is_reported() -> None:
    """The judge itself: models (layer 0) importing engine (layer 1) or, through ``from
    coraza_spoa_py import server``, server (layer 4) is reported; the reverse is not."""
    imported = _imports_of_source(
        "from coraza_spoa_py import engine\nimport coraza_spoa_py.server\n", "coraza_spoa_py"
    )
    assert _upward_imports("coraza_spoa_py.models", imported) == [
        "coraza_spoa_py.models: coraza_spoa_py.engine (layer 0 -> 1)",
        "coraza_spoa_py.models: coraza_spoa_py.server (layer 0 -> 4)",
    ]
    assert _upward_imports("coraza_spoa_py.server", ["coraza_spoa_py.models"]) == []
    assert _upward_imports("coraza_spoa_py.unlisted", ["coraza_spoa_py.server"]) == []


def test_relative_import_resolution() -> None:
    """The import scan resolves ``from . import x`` and ``from ..y import z`` like Python."""
    source = "from . import wire\nfrom .frames import X\nfrom ..models import Y\nimport a.b\n"
    assert _imports_of_source(source, "coraza_spoa_py.spop") == [
        "coraza_spoa_py.spop",
        "coraza_spoa_py.spop.wire",
        "coraza_spoa_py.spop.frames",
        "coraza_spoa_py.spop.frames.X",
        "coraza_spoa_py.models",
        "coraza_spoa_py.models.Y",
        "a.b",
    ]


@pytest.mark.parametrize("name", ["application", "agent"])
def test_domain_modules_load_neither_binding_nor_gevent(name: str) -> None:
    """docs/architecture.md "Modules and the contracts": the engine is injected by cli, so unit
    tests run without the binding."""
    assert _existing(name)
    loaded = _loaded_after_import(
        f"coraza_spoa_py.{name}", ("gevent", "cffi", "_cffi_backend", "coraza_spoa_py.engine")
    )
    assert loaded == []


def test_package_root_imports_nothing_to_patch() -> None:
    """cli must monkey-patch before socket/ssl/threading are imported (docs/development.md
    "Monkey-patch first")."""
    assert _loaded_after_import("coraza_spoa_py", ("gevent", "socket", "ssl", "threading")) == []


def test_the_import_linter_layers_are_the_docs_table() -> None:
    """``make lint`` runs import-linter on the layers in pyproject.toml: they must be the
    table of docs/architecture.md, module for module, so the two checks can never disagree."""
    import tomllib

    settings = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    (contract,) = [c for c in settings["tool"]["importlinter"]["contracts"] if c["id"] == "layers"]
    highest_first = [sorted(n.strip() for n in layer.split(":")) for layer in contract["layers"]]
    from_docs = [
        sorted(name for name, layer in LAYERS.items() if layer == number)
        for number in sorted(set(LAYERS.values()), reverse=True)
    ]
    assert highest_first == from_docs
    (pure,) = [c for c in settings["tool"]["importlinter"]["contracts"] if c["id"] == "pure"]
    assert sorted(pure["source_modules"]) == [f"coraza_spoa_py.{n}" for n in PURE_MODULES]


def test_the_engine_contract_is_the_docs_engine_table() -> None:
    """Inside ``engine/``, the import-linter layers are the rows of docs/architecture.md's
    "engine" table, highest first, and name every module of the package."""
    import tomllib

    settings = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    (contract,) = [c for c in settings["tool"]["importlinter"]["contracts"] if c["id"] == "engine"]
    layers = [sorted(n.strip() for n in layer.split(":")) for layer in contract["layers"]]
    text = ARCHITECTURE.read_text(encoding="utf-8")
    section = text[text.index("\n### engine\n") :]
    section = section[: section.index("\n### ", 1)]
    rows = re.findall(r"^\|\s*(`[\w.]+\.py`(?:,\s*`[\w.]+\.py`)*)\s*\|", section, re.MULTILINE)
    from_docs = [sorted(re.findall(r"`(\w+)\.py`", row)) for row in rows]
    assert layers == from_docs
    modules = {p.stem for p in (PACKAGE / "engine").glob("*.py")} - {"__init__"}
    assert modules == {name for layer in layers for name in layer}
