"""editkit.editing: Prompt-to-Prompt on a real image (inversion + edit), on tiny offline models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import editkit
from editkit import p2p
from editkit.editing import REAL_IMAGE_SELF_REPLACE_MIN_FACTOR, edit_image
from editkit.hooks import AttentionCall, BatchLayout, LayerInfo
from editkit.inversion import invert
from editkit.p2p.controllers import SELF_REPLACE_MIN_FACTOR, ReplaceEdit

SOURCE, TARGET = "a cat riding a bicycle", "a cat riding a car"


def photo(size=64, seed=0):
    rng = np.random.default_rng(seed)
    small = (rng.random((4, 4, 3)) * 255).astype(np.uint8)
    return Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)


@pytest.fixture(scope="module")
def direct64(sd1):
    """Direct Inversion of a 64 px photo (latent 32x32: local blend reads 8x8 maps, enough for a mask with
    both regions on a random tiny model)."""
    return invert(sd1, photo(), SOURCE, "direct", 3, size=64, progress=False)


@pytest.fixture(scope="module")
def direct32(sd1):
    return invert(sd1, photo(32), SOURCE, "direct", 2, size=32, progress=False)


def test_module_layering_and_exports():
    assert editkit.edit_image is edit_image
    assert not hasattr(editkit.inversion, "edit_image")  # inverting and editing are two modules
    assert editkit.INVERSION_METHODS == editkit.inversion.METHODS == editkit.editing.METHODS
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(editkit.inversion))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not any(m == "p2p" or m.startswith("p2p.") for m in imported), imported  # inverting knows no P2P


def test_direct_inversion_with_local_blend_keeps_the_source_outside_the_mask_exactly(sd1, direct64):
    # PnPInversion's order: the source row is put back on the inversion path first, then the local blend
    # copies it outside the mask, so outside the mask target == source bit for bit. In the other order
    # (blend first, correction after) the target keeps the uncorrected source: 0.0147 max abs off on this model.
    blend = p2p.LocalBlend(words=["bicycle", "car"], threshold=(0.9, 0.9), start_blend=0.0)
    res = edit_image(sd1, direct64, SOURCE, [TARGET], p2p.Replace(), local_blend=blend, progress=False)
    mask = res.mask[1, 0]
    assert 0 < mask.float().mean() < 1, "the test needs a mask with both regions"
    outside = ~mask
    assert torch.equal(res.latents[1][:, outside], res.latents[0][:, outside])
    assert not torch.allclose(res.latents[1][:, mask], res.latents[0][:, mask], atol=1e-3)
    # and the source row is the inversion's z_0: the correction ran on the final step too
    torch.testing.assert_close(res.latents[0], direct64.z0[0].to(res.latents.dtype), rtol=0, atol=0)


def _call(factor, is_cross=False, step=0):
    layer = LayerInfo(name=f"x{factor}", place="up", block=1, is_cross=is_cross, factor=factor)
    return AttentionCall(layer, step, 10, None, BatchLayout(2, True), (1, 1), (8, 8))


def test_self_attention_rules_real_image_vs_text_to_image(sd1, direct32):
    assert (SELF_REPLACE_MIN_FACTOR, REAL_IMAGE_SELF_REPLACE_MIN_FACTOR) == (4, 2)
    t2i = ReplaceEdit([SOURCE, TARGET], sd1.tokenizer, 10, self_replace_steps=1.0)
    real = ReplaceEdit([SOURCE, TARGET], sd1.tokenizer, 10, self_replace_steps=1.0, self_replace_min_factor=2)
    # latent / 2 self-attention (32x32 at 512 px): replaced by the real-image rule only
    assert [t2i.wants_probs(_call(f)) for f in (1, 2, 4, 8)] == [False, False, True, True]
    assert [real.wants_probs(_call(f)) for f in (1, 2, 4, 8)] == [False, True, True, True]
    # edit_image uses the real-image rule by default, and the two rules give different edits
    edit = p2p.Replace(cross_replace_steps=0.8, self_replace_steps=1.0)
    default = edit_image(sd1, direct32, SOURCE, [TARGET], edit, progress=False).latents
    rule4 = edit_image(
        sd1, direct32, SOURCE, [TARGET], edit, progress=False, self_replace_min_factor=4
    ).latents
    assert (default[1] - rule4[1]).abs().max() > 1e-3
    torch.testing.assert_close(default[0], rule4[0], rtol=0, atol=0)  # the source row is never edited
    with pytest.raises(ValueError, match="self_replace_min_factor"):
        edit_image(sd1, direct32, SOURCE, [TARGET], edit, progress=False, self_replace_min_factor=0)
