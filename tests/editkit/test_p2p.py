"""Prompt-to-Prompt on tiny models: invariants of the edits, local blend, errors, visualisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from editkit import p2p
from editkit.hooks import HookProcessor

SOURCE = "a cat riding a bicycle"
SIZE = dict(height=32, width=32, num_inference_steps=4, progress=False)


def run(pipe, targets, edit=None, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    return p2p.generate(pipe, SOURCE, targets, edit, generator=g, output_type="pt", **{**SIZE, **kw})


def _close(a, b, tol=1e-4):
    return torch.allclose(a, b, atol=tol, rtol=0)


@pytest.fixture(scope="module")
def plain(sd1):
    """The source prompt sampled alone: what row 0 of every edit must reproduce."""
    return run(sd1, []).latents[0]


@pytest.mark.parametrize("edit", [p2p.Replace(), p2p.Refine(), p2p.Replace(cross_replace_steps=(0.2, 0.9), self_replace_steps=(0.0, 1.0))])
def test_identical_target_reproduces_the_source(sd1, plain, edit):
    out = run(sd1, [SOURCE], edit)
    assert _close(out.latents[0], plain)
    assert _close(out.latents[1], out.latents[0])


def test_reweight_with_unit_weights_changes_nothing(sd1):
    target = "a cat riding a car"
    refine = run(sd1, [target], p2p.Replace())
    ones = run(sd1, [target], p2p.Reweight(weights={"car": 1.0}, base=p2p.Replace()))
    assert _close(ones.latents, refine.latents)
    same = run(sd1, [SOURCE], p2p.Reweight(weights={"cat": 1.0, "bicycle": 1.0}))
    assert _close(same.latents[1], same.latents[0])
    # and a real weight does change the target, not the source
    strong = run(sd1, [target], p2p.Reweight(weights={"car": 8.0}, base=p2p.Replace()))
    assert _close(strong.latents[0], refine.latents[0])
    assert not _close(strong.latents[1], refine.latents[1], 1e-3)


def test_swap_changes_the_target_only(sd1, plain):
    target = "a cat riding a car"
    edited = run(sd1, [target], p2p.Replace())
    assert _close(edited.latents[0], plain)  # the source row is never edited
    free = run(sd1, [target])  # same noise, no attention control
    assert not _close(edited.latents[1], edited.latents[0], 1e-3)  # the swap changed the image ...
    assert not _close(edited.latents[1], free.latents[1], 1e-3)  # ... and the control changed it
    # attention control keeps the edit closer to the source than sampling the target prompt alone
    d_edit = (edited.latents[1] - plain).norm()
    d_free = (free.latents[1] - plain).norm()
    assert d_edit < d_free


def test_several_targets_in_one_batch(sd1, plain):
    out = run(sd1, ["a cat riding a car", "a dog riding a bicycle"], p2p.Replace())
    assert out.latents.shape[0] == 3 and _close(out.latents[0], plain)
    single = run(sd1, ["a cat riding a car"], p2p.Replace())
    assert _close(out.latents[1], single.latents[1])  # targets do not interact


def test_local_blend_keeps_the_source_outside_the_mask(sd1):
    # A random tiny model attends almost uniformly, so its maps need 64 px (8x8 maps at latent / 4) and a
    # high threshold to give a mask with both regions.
    blend = p2p.LocalBlend(words=["bicycle", "car"], threshold=(0.9, 0.9), start_blend=0.0)
    out = run(sd1, ["a cat riding a car"], p2p.Replace(), local_blend=blend, height=64, width=64)
    mask = out.mask[1, 0]
    assert 0 < mask.float().mean() < 1, "the test needs a mask with both regions"
    outside = ~mask
    torch.testing.assert_close(out.latents[1][:, outside], out.latents[0][:, outside])
    assert not _close(out.latents[1][:, mask], out.latents[0][:, mask], 1e-3)
    # subtracted words only shrink the mask
    sub = p2p.LocalBlend(words=["bicycle", "car"], subtract_words=["cat", "cat"], threshold=(0.9, 0.9), start_blend=0.0)
    out2 = run(sd1, ["a cat riding a car"], p2p.Replace(), local_blend=sub, height=64, width=64)
    assert (out2.mask & ~out.mask).sum() == 0


def test_attention_maps_and_visualisation(sd1):
    out = p2p.generate(sd1, SOURCE, ["a cat riding a car"], p2p.Replace(), return_attention=True,
                       generator=torch.Generator().manual_seed(0), **SIZE)
    store = out.attention
    assert store.steps == SIZE["num_inference_steps"]
    maps = store.aggregate(4, ("up", "down"), True, 0)
    assert maps.shape == (4, 4, 77)  # 32 px -> 16 latent -> 1/4 -> 4x4
    torch.testing.assert_close(maps.sum(-1), torch.ones(4, 4))  # averaged probabilities still sum to 1
    # target row of the swap carries the source's maps (stored after the edit, as the original)
    torch.testing.assert_close(store.aggregate(4, ("up", "down"), True, 1)[..., 5], maps[..., 5], atol=0.05, rtol=0)
    grid = p2p.cross_attention_grid(store, sd1.tokenizer, SOURCE, image=out.source, size=64)
    assert grid.size[0] == 7 * 64 + 6 * 4  # one tile per token, start and end included
    assert np.asarray(grid).std() > 0
    # heatmaps store only what the grid draws: cross-attention, at latent / 2 and below
    assert store.layers and all(lyr.is_cross and lyr.factor >= 2 for lyr in store.layers.values())
    with pytest.raises(ValueError, match="return_attention='all'"):
        p2p.self_attention_components(store)
    full = p2p.generate(sd1, SOURCE, ["a cat riding a car"], p2p.Replace(), return_attention="all",
                        generator=torch.Generator().manual_seed(0), **SIZE).attention
    assert {lyr.is_cross for lyr in full.layers.values()} == {True, False}
    # the same cross maps (up to float rounding: self-attention is materialised instead of fused in "all")
    torch.testing.assert_close(full.aggregate(4, ("up", "down"), True, 0), maps, rtol=0, atol=1e-5)
    comps = p2p.self_attention_components(full, num_components=3, size=32)
    assert comps.size == (3 * 32 + 2 * 4, 32)
    with pytest.raises(ValueError, match="return_attention must be one of"):
        p2p.generate(sd1, SOURCE, ["a cat riding a car"], return_attention="self", **SIZE)


@pytest.mark.parametrize("flavour", ["sd2", "sdxl"])
def test_other_families(flavour, request):
    pipe = request.getfixturevalue(flavour)
    same = run(pipe, [SOURCE], p2p.Refine(), local_blend=p2p.LocalBlend(["cat", "cat"]))
    assert _close(same.latents[1], same.latents[0])
    swap = run(pipe, ["a cat riding a car"], p2p.Replace(), return_attention=True)
    assert not _close(swap.latents[1], swap.latents[0], 1e-3)
    assert swap.attention.aggregate(4, ("up", "down"), True, 0).shape[:2] == (4, 4)


def test_errors(sd1):
    with pytest.raises(ValueError, match="same number of words"):
        run(sd1, ["a cat riding a red car"], p2p.Replace())
    with pytest.raises(ValueError, match="'happy' is not in the prompt"):
        run(sd1, ["a cat riding a car"], p2p.Reweight(weights={"happy": 2.0}))
    with pytest.raises(ValueError, match="'boat' is not in the prompt"):
        run(sd1, ["a cat riding a car"], p2p.Replace(), local_blend=p2p.LocalBlend(["bicycle", "boat"]))
    with pytest.raises(ValueError, match="one entry per prompt"):
        run(sd1, ["a cat riding a car"], local_blend=p2p.LocalBlend(["bicycle"]))
    with pytest.raises(ValueError, match="num_inference_steps"):
        run(sd1, ["a cat riding a car"], p2p.Replace(), num_inference_steps=0)
    with pytest.raises(ValueError, match="source_prompt"):
        p2p.generate(sd1, "  ", ["a cat"])
    with pytest.raises(ValueError, match="multiples of"):
        run(sd1, ["a cat riding a car"], height=33)
    assert all(not isinstance(p, HookProcessor) for p in sd1.unet.attn_processors.values())
