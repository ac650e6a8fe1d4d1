"""Nothing outside ``safeio`` renames a file or folder into place: every atomic write goes through ``safeio`` (a
temp file or folder beside the target, fsync, the umask's permissions, then the rename), so no module can skip a
step of it."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("splat", "editkit", "apps")


def renames(path: Path) -> list[int]:
    """Lines of ``os.replace`` / ``os.rename`` / ``shutil.move`` calls and of ``X.replace(target)`` /
    ``X.rename(target)`` with one argument (``Path.replace`` / ``Path.rename``; ``str.replace`` takes two)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
        attr = node.func.attr
        if (owner, attr) in (("os", "replace"), ("os", "rename"), ("shutil", "move")):
            lines.append(node.lineno)
        elif attr in ("replace", "rename") and len(node.args) == 1 and not node.keywords and owner != "dataclasses":
            lines.append(node.lineno)
    return lines


def found() -> dict[str, list[int]]:
    out = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            hits = renames(path)
            if hits:
                out[path.relative_to(REPO).as_posix()] = hits
    return out


def test_only_safeio_renames_files_into_place():
    hits = found()
    assert hits == {}, f"rename through safeio (atomic_path / atomic_write_bytes / replace_dir) instead: {hits}"


def test_the_checker_sees_each_form(tmp_path, monkeypatch):
    pkg = tmp_path / "splat"
    pkg.mkdir()
    (pkg / "m.py").write_text(
        "import os, shutil\nfrom pathlib import Path\n"
        "os.replace('a', 'b')\n"
        "os.rename('a', 'b')\n"
        "shutil.move('a', 'b')\n"
        "Path('a').replace(Path('b'))\n"
        "tmp.rename(target)\n"
        "'abc'.replace('a', 'b')\n"  # str.replace: not a rename
        "import dataclasses\ndataclasses.replace(cfg)\n"
    )
    monkeypatch.setattr(__import__(__name__, fromlist=["REPO"]), "REPO", tmp_path)
    for p in ("editkit", "apps"):
        (tmp_path / p).mkdir()
    assert found() == {"splat/m.py": [3, 4, 5, 6, 7]}
