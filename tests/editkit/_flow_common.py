"""Shared by the tests of editkit.flow: the tiny SD3 / FLUX pipelines (built once per test session) and a photo."""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

SOURCE, TARGET = "a photo of a cat", "a photo of a dog"


@functools.cache
def tiny(family: str):
    """The tiny pipeline of ``family`` ("sd3" or "flux"), seed 0, built once (editkit.flow never mutates it)."""
    from editkit.testing import tiny_flux_pipeline, tiny_sd3_pipeline

    pipe = tiny_sd3_pipeline(seed=0) if family == "sd3" else tiny_flux_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def photo(size=32):
    """A smooth colour image standing in for a photo (32 x 32 px: a 16 x 16 latent, 64 image tokens)."""
    rng = np.random.default_rng(0)
    small = (rng.random((4, 4, 3)) * 255).astype(np.uint8)
    return Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)
