"""The import graph points down: ``apps`` may import ``editkit`` / ``splat``, never the other way (issue 9)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LIBRARIES = ("editkit", "splat", "safeio")
APPS = "apps"


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


def test_no_library_module_imports_the_apps():
    assert upward_imports() == []


def test_the_checker_sees_every_form_of_import(tmp_path, monkeypatch):
    # the test above could pass by seeing nothing: plant each form of an upward import and expect all of them
    fake = tmp_path / "editkit" / "sub"
    fake.mkdir(parents=True)
    (fake / "m.py").write_text(
        "import apps.ui\n"
        "from apps import editing\n"
        "def f():\n    from apps.editing import X\n"
        "import importlib\nimportlib.import_module('apps.ui')\n"
    )
    monkeypatch.setattr(__import__(__name__, fromlist=["REPO"]), "REPO", tmp_path)
    lines = sorted(int(b.split(":")[1].split()[0]) for b in upward_imports())
    assert lines == [1, 2, 2, 4, 4, 6]
