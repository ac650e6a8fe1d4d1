"""`splat edit --method flowedit`: a scene edited per view with FlowEdit on an SD3 / FLUX.1 pipeline (the tiny
offline SD3 of editkit.testing): no inversion, the strength sets FlowEdit's n_max, and a method the model's
family does not offer is refused before anything is loaded or written."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from splat.edit import EditConfig, SceneEditError, edit_scene

from .conftest import DEMO

SOURCE, TARGET = "a photo of a cat", "a photo of a dog"


@pytest.fixture(scope="module")
def sd3():
    from editkit.testing import tiny_sd3_pipeline

    return tiny_sd3_pipeline()


def _cfg(tmp, **kw):
    base = dict(source=SOURCE, target=TARGET, method="flowedit", steps=4, strength=0.5, edit_size=32,
                edit_every=2, iterations=6, cache_dir=tmp / "cache", progress=False)  # fmt: skip
    return EditConfig(**{**base, **kw})


def test_flowedit_edits_the_views_without_inversions(run, sd3, tmp_path):
    calls = []
    hook = sd3.transformer.register_forward_hook(lambda *a: calls.append(1))
    try:
        res = edit_scene(run, DEMO, _cfg(tmp_path), tmp_path / "out", pipe=sd3)
    finally:
        hook.remove()
    info = json.loads((res.out / "edit.json").read_text())
    assert res.views_edited == 3 and info["inversions_computed"] == 0
    assert not (tmp_path / "cache").exists()  # FlowEdit needs no inversion cache
    # strength 0.5 of 4 steps: n_max = 2 FlowEdit steps, one transformer call each (n_avg 1 on SD3)
    assert len(calls) == 3 * 2
    images = [np.asarray(Image.open(p)) for p in sorted((res.out / "edited_images").glob("*.png"))]
    assert len(images) == 3 and all(im.std() > 1 for im in images)


@pytest.mark.parametrize("method", ["p2p", "pnp"])
def test_a_flow_model_refuses_the_unet_methods_before_writing(run, sd3, tmp_path, method):
    with pytest.raises(SceneEditError, match="per-view edit is --method flowedit"):
        edit_scene(run, DEMO, _cfg(tmp_path, method=method), tmp_path / "out", pipe=sd3)
    assert not (tmp_path / "out").exists()


def test_flowedit_on_a_unet_model_is_refused_before_loading(run, tmp_path):
    from editkit.testing import save_tiny_pipeline

    folder = save_tiny_pipeline(tmp_path / "sd")
    with pytest.raises(SceneEditError, match="flowedit needs an SD3 / SD3.5 or FLUX.1 model"):
        edit_scene(run, DEMO, _cfg(tmp_path, model=str(folder)), tmp_path / "out")
    assert not (tmp_path / "out").exists()
