"""Packaging: no optional extra may make pip replace the installed torch (or pull CUDA wheels)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def test_no_extra_names_lpips_or_torchvision():
    # lpips -> torchvision -> an exact torch: on a CPU machine pip swapped torch 2.13+cpu for a CUDA build
    for extra, reqs in _project()["optional-dependencies"].items():
        names = {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in reqs}
        assert not names & {"lpips", "torchvision", "torch"}, (extra, names)


def _would_install(reqs: list[str], report: Path) -> list[str]:
    """What ``pip install --dry-run`` of ``reqs`` against this environment would install (lower-case names)."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(report), *reqs],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [i["metadata"]["name"].lower() for i in json.loads(report.read_text())["install"]]


@pytest.fixture(scope="module")
def installs_for_every_extra(tmp_path_factory) -> list[str]:
    """One resolve of the dependencies plus every extra together."""
    project = _project()
    union = sorted({r for reqs in project["optional-dependencies"].values() for r in reqs})
    return _would_install(project["dependencies"] + union, tmp_path_factory.mktemp("pip") / "report.json")


@pytest.mark.slow
@pytest.mark.parametrize("extra", sorted(_project()["optional-dependencies"]))
def test_extra_resolves_without_replacing_torch(extra, installs_for_every_extra, tmp_path):
    """Resolve the dependencies plus the extra against this environment (pip --dry-run): nothing torch-like
    may be in what pip would install. Needs the package index (as any install does).

    One resolve serves every extra when pip would install nothing for all the extras together: pip keeps an
    installed distribution that satisfies a requirement, so then the installed set satisfies the requirements
    of any one extra (a subset, with a subset of their dependencies) and pip would install nothing for it
    either. Otherwise the extra is resolved on its own."""
    installs = installs_for_every_extra
    if installs:
        project = _project()
        installs = _would_install(project["dependencies"] + project["optional-dependencies"][extra],
                                  tmp_path / "report.json")  # fmt: skip
    assert not [n for n in installs if FORBIDDEN.match(n)], (extra, installs)
