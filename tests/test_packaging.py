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


@pytest.mark.slow
@pytest.mark.parametrize("extra", sorted(_project()["optional-dependencies"]))
def test_extra_resolves_without_replacing_torch(extra, tmp_path):
    """Resolve the dependencies plus the extra against this environment (pip --dry-run): nothing torch-like
    may be in what pip would install. Needs the package index (as any install does)."""
    project = _project()
    reqs = project["dependencies"] + project["optional-dependencies"][extra]
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(report), *reqs],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    installs = [i["metadata"]["name"].lower() for i in json.loads(report.read_text())["install"]]
    assert not [n for n in installs if FORBIDDEN.match(n)], (extra, installs)
