"""Shared fixtures: tiny Stable Diffusion pipelines built offline and loaded through editkit's own loader."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
# One torch thread in the test process (subprocesses the tests start keep torch's default). The tests' tensors
# are small; with two OpenMP threads every op waits for both, and on a 2-core machine whose other core is busy
# (a helper process, a browser, a server thread of the test) that wait is long: see tests.helpers.one_torch_thread.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_SCENES = REPO.parent / "shared" / "scenes"


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory) -> dict[str, Path]:
    """Tiny SD 1.x / 2.x / SDXL pipelines saved in diffusers' folder layout."""
    from editkit.testing import save_tiny_pipeline

    root = tmp_path_factory.mktemp("tiny-models")
    return {flavour: save_tiny_pipeline(root / flavour, flavour) for flavour in ("sd1", "sd2", "sdxl")}


@pytest.fixture(scope="session")
def sd1(tiny_model_dirs):
    from editkit import load_pipeline

    return load_pipeline(tiny_model_dirs["sd1"], device="cpu")


@pytest.fixture(scope="session")
def sd2(tiny_model_dirs):
    from editkit import load_pipeline

    return load_pipeline(tiny_model_dirs["sd2"], device="cpu")


@pytest.fixture(scope="session")
def sdxl(tiny_model_dirs):
    from editkit import load_pipeline

    return load_pipeline(tiny_model_dirs["sdxl"], device="cpu")


@pytest.fixture(scope="session")
def playwright_driver():
    """One Playwright driver for the whole run. Its sync API runs an event loop in this thread, so a second
    driver cannot start while one is up: the browser fixtures (tests/apps, tests/splat/view) each launch their
    own Chromium from this one."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        yield p
