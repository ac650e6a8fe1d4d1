"""Shared fixtures of the splat tests (the helpers they use live in ``tests/splat/helpers.py``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.splat.helpers import make_synthetic_scene


@pytest.fixture(scope="session", autouse=True)
def _splat_cache_in_tmp(tmp_path_factory):
    """Default scene caches (``$SPLAT_CACHE_DIR``) go to a temporary folder, never the user's ~/.cache."""
    old = os.environ.get("SPLAT_CACHE_DIR")
    os.environ["SPLAT_CACHE_DIR"] = str(tmp_path_factory.mktemp("splat-cache"))
    yield
    if old is None:
        os.environ.pop("SPLAT_CACHE_DIR", None)
    else:
        os.environ["SPLAT_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def synthetic_scene(tmp_path_factory) -> Path:
    return make_synthetic_scene(tmp_path_factory.mktemp("synthetic") / "scene")


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """A model of the demo scene without training (``helpers.make_demo_run``), built once for every test."""
    from tests.splat.helpers import make_demo_run

    return make_demo_run(tmp_path_factory.mktemp("demo") / "run")
