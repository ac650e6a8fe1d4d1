"""scripts/gpu_check.sh: the parts that run on a CPU machine (help, argument checks, refusal without CUDA)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.sh"


def _run(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_OUT": str(tmp_path / "results"),
           "GPU_SITE": str(tmp_path / "site")}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=120)


def test_help_lists_every_stage(tmp_path):
    proc = _run("--help", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for stage in ("quick", "install", "tests", "render", "ranks", "editkit", "flow-quick", "flow", "splat-cup-7k", "splat-cup", "splat-beercan",
                  "splat-quality", "real-edit", "scene-edit", "all"):
        assert f"  {stage} " in proc.stdout, stage
    assert "no CUDA device" in proc.stdout  # the refusal is documented


def test_unknown_stage_and_no_stage_are_refused(tmp_path):
    proc = _run("splat-everything", tmp_path=tmp_path)
    assert proc.returncode == 2 and "unknown stage 'splat-everything'" in proc.stderr
    proc = _run(tmp_path=tmp_path)
    assert proc.returncode == 2 and "usage:" in proc.stderr
    proc = _run("quick", "tests", tmp_path=tmp_path)
    assert proc.returncode == 2 and "run it alone" in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize("stage", ["install", "quick", "all"])
def test_refuses_without_cuda_before_doing_anything(stage, tmp_path):
    proc = _run(stage, tmp_path=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "no CUDA device" in proc.stderr or "torch has no CUDA" in proc.stderr, proc.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "site").exists()  # nothing installed or written


@pytest.mark.parametrize("build_cuda", [None, "'12.8'"])
def test_refusal_imports_torch_only_for_a_cuda_build(build_cuda, tmp_path):
    # a stand-in torch whose device is always there: a CPU build (version.py: cuda = None) is refused without
    # importing it; a CUDA build is imported and asked, and the script goes on (to the missing bundle)
    torch_dir = tmp_path / "fake" / "torch"
    torch_dir.mkdir(parents=True)
    (torch_dir / "version.py").write_text(f"__version__ = '2.13.0'\ncuda = {build_cuda}\nhip = None\n")
    (torch_dir / "__init__.py").write_text(
        f"open({str(tmp_path / 'imported')!r}, 'w').close()\n"
        "class cuda:\n    is_available = staticmethod(lambda: True)\n"
    )
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(tmp_path / "fake"),
           "GPU_BUNDLE": str(tmp_path / "no-bundle"), "GPU_CHECK_OUT": str(tmp_path / "results"),
           "GPU_SITE": str(tmp_path / "site")}  # fmt: skip
    proc = subprocess.run(["bash", str(SCRIPT), "install"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    if build_cuda is None:
        assert "no CUDA device" in proc.stderr and not (tmp_path / "imported").exists(), proc.stderr
    else:
        assert "no bundle at" in proc.stderr and (tmp_path / "imported").exists(), proc.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "site").exists()


def test_splat_quality_dry_run_needs_its_scenes_and_carries_its_selection(tmp_path):
    bundle = tmp_path / "bundle"  # a bundle as gpu_bundle.py lays it out, with the cup scene only
    (bundle / "core").mkdir(parents=True)
    (bundle / "scenes" / "cup" / "sparse").mkdir(parents=True)
    (bundle / "manifest.json").write_text("{}")
    env = {**os.environ, "PYTHON": sys.executable, "GPU_BUNDLE": str(bundle)}
    env.pop("SPLAT_QUALITY_SCENES", None), env.pop("SPLAT_QUALITY_VARIANTS", None)

    def dry(**extra):
        return subprocess.run(["bash", str(SCRIPT), "splat-quality", "--dry-run"], capture_output=True, text=True,
                              env={**env, **extra}, timeout=120)  # fmt: skip

    proc = dry()  # the default selection runs beercan too, which this bundle lacks
    assert proc.returncode != 0 and f"splat-quality needs {bundle}/scenes/beercan" in proc.stderr, proc.stderr
    proc = dry(SPLAT_QUALITY_SCENES="cup demo", SPLAT_QUALITY_VARIANTS="base quality")
    assert proc.returncode == 0, proc.stderr
    assert ("SPLAT_QUALITY_SCENES='cup demo' SPLAT_QUALITY_VARIANTS='base quality' "
            "bash scripts/gpu_check.sh splat-quality") in proc.stdout, proc.stdout  # fmt: skip
