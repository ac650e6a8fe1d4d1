"""The import graph points down.

* ``apps`` may import ``editkit`` / ``splat``, never the other way.
* Inside ``splat``, each folder may import only the folders its ``__init__`` names (see ``splat/__init__.py``):
  ``render`` and ``scene`` only the base (``splat.config``, ``splat.outputs``, ``splat.device``, ``safeio``),
  ``gaussians`` those two, ``training`` and ``view`` the three, ``edit`` also ``training`` (and ``editkit``), and
  ``commands`` everything. The base imports no folder. Every folder opens with a docstring saying what lives
  there and what it may import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LIBRARIES = ("editkit", "splat", "safeio")
APPS = "apps"

BASE = ("splat.config", "splat.outputs", "splat.device")
RENDER, SCENE, GAUSSIANS = "splat.render", "splat.scene", "splat.gaussians"
TRAIN, VIEW, EDIT, COMMANDS = "splat.training", "splat.view", "splat.edit", "splat.commands"
# folder -> the splat folders (and other packages of this repository) it may import, besides itself and the base
MAY_IMPORT: dict[str, tuple[str, ...]] = {
    RENDER: (),
    SCENE: (),
    GAUSSIANS: (RENDER, SCENE),
    TRAIN: (RENDER, SCENE, GAUSSIANS),
    VIEW: (RENDER, SCENE, GAUSSIANS),
    EDIT: (RENDER, SCENE, GAUSSIANS, TRAIN, "editkit"),
    COMMANDS: (RENDER, SCENE, GAUSSIANS, TRAIN, VIEW, EDIT, "editkit"),
}
OURS = ("splat", "editkit", "safeio", "apps")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every module a file imports (absolute names; relative imports resolved against its package)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(tree):  # function-level imports too: a lazy import is still an arrow
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]  # from . import apps
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module", "__import__"
        ):
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def upward_imports() -> list[str]:
    bad = []
    for lib in LIBRARIES:
        for path in sorted((REPO / lib).rglob("*.py")):
            for line, module in imported_modules(path):
                if module == APPS or module.startswith(APPS + "."):
                    bad.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    return bad


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _folder_of(path: Path) -> str | None:
    """``splat.X`` for a file in the folder ``splat/X/``; None for a module at the top of ``splat``."""
    parts = path.relative_to(REPO).parts
    return f"splat.{parts[1]}" if len(parts) > 2 else None


def _allowed(module: str, rule: str) -> bool:
    return _within(module, rule)


def layering_violations() -> list[str]:
    bad = []
    for path in sorted((REPO / "splat").rglob("*.py")):
        rel = path.relative_to(REPO)
        folder = _folder_of(path)
        name = ".".join(rel.with_suffix("").parts)
        if folder is None and name in ("splat.__init__", "splat.cli"):
            continue  # the package's lazy API and the command dispatcher sit above every folder
        if folder is not None and folder not in MAY_IMPORT:
            bad.append(f"{rel}: the folder {folder} has no rule in MAY_IMPORT")
            continue
        rules = BASE + ("safeio",) + ((folder,) + MAY_IMPORT[folder] if folder is not None else ())
        for line, module in imported_modules(path):
            if not module.startswith(OURS) or module in ("splat", "safeio") or module.split(".")[0] not in OURS:
                continue  # third-party, or the top package itself (`from splat import x` is seen as splat.x)
            if not any(_allowed(module, rule) for rule in rules):
                bad.append(f"{rel}:{line} imports {module}")
    return bad


def loose_top_modules() -> list[str]:
    """Modules at the top of ``splat`` that are neither the base nor the package's API / dispatcher: a concept
    put there escapes the folder rules (every folder may import the base, so anything there is importable
    from everywhere)."""
    allowed = {m.split(".")[1] for m in BASE} | {"__init__", "cli"}
    return sorted(p.name for p in (REPO / "splat").glob("*.py") if p.stem not in allowed)


def test_the_top_of_splat_holds_only_the_base():
    assert loose_top_modules() == [], "put the module in the folder of its concept (see splat/__init__.py)"


def test_no_library_module_imports_the_apps():
    assert upward_imports() == []


def test_each_splat_folder_imports_only_what_its_rule_allows():
    assert layering_violations() == []


@pytest.mark.parametrize("folder", sorted(p.name for p in (REPO / "splat").iterdir() if (p / "__init__.py").is_file()))
def test_each_splat_folder_says_what_lives_there_and_what_it_may_import(folder):
    doc = ast.get_docstring(ast.parse((REPO / "splat" / folder / "__init__.py").read_text(encoding="utf-8")))
    assert doc and "May import" in doc, f"splat/{folder}/__init__.py needs a docstring with a 'May import' line"
    assert f"splat.{folder}" in MAY_IMPORT


def test_the_checker_sees_every_form_of_import(tmp_path, monkeypatch):
    # the tests above could pass by seeing nothing: plant each form of an upward import and expect all of them
    fake = tmp_path / "editkit" / "sub"
    fake.mkdir(parents=True)
    (fake / "m.py").write_text(
        "import apps.ui\n"
        "from apps import editing\n"
        "def f():\n    from apps.editing import X\n"
        "import importlib\nimportlib.import_module('apps.ui')\n"
    )
    render = tmp_path / "splat" / "render"
    render.mkdir(parents=True)
    (render / "x.py").write_text(
        "from splat.config import ConfigError\n"  # the base: allowed
        "from splat.render import rasterization\n"  # its own folder: allowed
        "def f():\n    from splat.training.trainer import Trainer\n"  # up: refused, even lazily
        "from ..gaussians import model\n"  # up, relative: refused
    )
    scene = tmp_path / "splat" / "scene"
    scene.mkdir()
    (scene / "y.py").write_text("import numpy\nfrom splat.gaussians import model\n")
    (tmp_path / "splat" / "newfolder").mkdir()
    (tmp_path / "splat" / "newfolder" / "z.py").write_text("import numpy\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["REPO"]), "REPO", tmp_path)
    lines = sorted(int(b.split(":")[1].split()[0]) for b in upward_imports())
    assert lines == [1, 2, 2, 4, 4, 6]
    found = sorted(layering_violations())
    assert found == [
        "splat/newfolder/z.py: the folder splat.newfolder has no rule in MAY_IMPORT",
        "splat/render/x.py:4 imports splat.training.trainer",
        "splat/render/x.py:4 imports splat.training.trainer.Trainer",
        "splat/render/x.py:5 imports splat.gaussians",
        "splat/render/x.py:5 imports splat.gaussians.model",
        "splat/scene/y.py:2 imports splat.gaussians",
        "splat/scene/y.py:2 imports splat.gaussians.model",
    ], found
