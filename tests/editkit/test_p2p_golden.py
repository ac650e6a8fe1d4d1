"""Prompt-to-Prompt semantics against golden values from the ORIGINAL implementation.

Where the figures come from: google/prompt-to-prompt's controllers (``AttentionStore``,
``AttentionControlEdit``, ``AttentionReplace``, ``LocalBlend`` of ``null_text_w_ptp.ipynb``; the
text-to-image self-attention rule of ``prompt-to-prompt_stable.ipynb``), ``ptp_utils.py`` (``diffusion_step``,
``get_time_words_attention_alpha``, ``get_word_inds``) and ``seq_aligner.py``, run on CPU on the tiny SD1 model
of :mod:`editkit.testing` (seed 0) in a scratch folder outside this repository, with the minimum adapted:
``register_attention_control``'s ``ca_forward`` replayed as a diffusers attention processor (same einsum /
softmax / controller call on ``[B*H, N, M]``), ``init_latent``'s ``// 8`` replaced by the VAE factor (2), the
pixel-count rules halved per side for a 32x32 latent (store ``32**2`` -> ``16**2``, self-replace ``16**2`` ->
``8**2`` text-to-image / ``32**2`` -> ``16**2`` real-image), and LocalBlend's hard-coded layer lists
(``down_cross[2:4] + up_cross[:3]`` at 16x16) pointed at the tiny model's latent/4 layers
(``down_cross[1:2] + up_cross[:2]`` at 8x8). Run: 64 px, 10 DDIM steps, guidance 7.5, noise
``torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))``, prompts below,
``AttentionReplace(cross_replace_steps=0.8, self_replace_steps=0.4)`` with ``LOW_RESOURCE = False`` (the
conditional half of the batch is edited). Only the figures carry over; none of that code is here.

Each rule of ``editkit.p2p`` changes at least one figure (checked by hand, see the commit message):
stored layers (counts, the aggregated map), self-replaced layers and the step windows (the target latents),
the edited half (the target latents), local-blend layers and pooling (the target latents and mask).
"""

from __future__ import annotations

import pytest
import torch

from editkit import p2p

PROMPTS = ("a cat riding a bicycle", "a cat riding a car")
RUN = dict(height=64, width=64, num_inference_steps=10, guidance_scale=7.5, progress=False, output_type="pt")

# figures printed by the original run (float32; see the module docstring)
STORE_COUNTS = {"down_cross": 2, "mid_cross": 1, "up_cross": 4, "down_self": 2, "mid_self": 1, "up_self": 4}
AGG_SOURCE_BICYCLE = (0.8300727009773254, 0.01504907663911581, 0.013427559286355972)  # sum, max, [3, 6]
SOURCE_LATENT = (-2050.264892578125, 29219.263671875)  # sum, abs-sum of row 0
GOLDEN = {
    # real-image self-attention rule (32**2 at 512 px), no local blend
    "real": dict(target=(-2322.83740234375, 29216.44921875, 1.9276986122131348, -13.023350715637207)),
    # text-to-image rule (16**2 at 512 px), no local blend
    "t2i": dict(target=(-2323.01806640625, 29216.90625, 1.9314632415771484, -13.025226593017578)),
    # text-to-image rule (16**2 at 512 px), LocalBlend(["bicycle", "car"], substruct ["cat", "cat"],
    # start 0.2, th=(0.5, 0.7)): the subtracted mask covers the words' mask, the final mask is empty
    "t2i-subtract": dict(
        target=(-2050.264892578125, 29219.263671875, 1.9538246393203735, -12.688841819763184),
        mask_mean=(0.0, 0.0),
    ),
}


def latents():
    return torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))


def figures(x):
    return (float(x[1].sum()), float(x[1].abs().sum()), float(x[1, 0, 10, 20]), float(x[1, 3, 30, 5]))


def assert_figures(got, want, rel=2e-4):
    assert got == pytest.approx(want, rel=rel, abs=1e-3), (got, want)


@pytest.fixture(scope="module")
def real_rule(sd1):
    return p2p.generate(
        sd1,
        PROMPTS[0],
        [PROMPTS[1]],
        p2p.Replace(0.8, 0.4),
        latents=latents(),
        self_replace_min_factor=2,
        return_attention="all",
        **RUN,
    )


def test_store_keeps_the_original_layers(real_rule):
    counts = {f"{p}_{'cross' if c else 'self'}": 0 for c in (True, False) for p in ("down", "mid", "up")}
    for layer in real_rule.attention.layers.values():
        counts[f"{layer.place}_{'cross' if layer.is_cross else 'self'}"] += 1
    assert counts == STORE_COUNTS


def test_aggregated_cross_attention_matches_the_original(real_rule):
    maps = real_rule.attention.aggregate(4, ("up", "down"), True, 0)[..., 5]  # token of "bicycle"
    assert_figures((float(maps.sum()), float(maps.max()), float(maps[3, 6])), AGG_SOURCE_BICYCLE)


def test_replace_with_the_real_image_rule_matches_the_original(real_rule):
    x = real_rule.latents
    assert_figures((float(x[0].sum()), float(x[0].abs().sum())), SOURCE_LATENT)
    assert_figures(figures(x), GOLDEN["real"]["target"])


def test_replace_with_the_text_to_image_rule_matches_the_original(sd1):
    out = p2p.generate(sd1, PROMPTS[0], [PROMPTS[1]], p2p.Replace(0.8, 0.4), latents=latents(), **RUN)
    assert_figures(figures(out.latents), GOLDEN["t2i"]["target"])


def test_local_blend_with_subtracted_words_matches_the_original(sd1):
    blend = p2p.LocalBlend(
        ["bicycle", "car"], subtract_words=["cat", "cat"], start_blend=0.2, threshold=(0.5, 0.7)
    )
    out = p2p.generate(
        sd1, PROMPTS[0], [PROMPTS[1]], p2p.Replace(0.8, 0.4), local_blend=blend, latents=latents(), **RUN
    )
    assert_figures(figures(out.latents), GOLDEN["t2i-subtract"]["target"])
    assert (
        tuple(float(m) for m in out.mask.float().mean(dim=(1, 2, 3))) == GOLDEN["t2i-subtract"]["mask_mean"]
    )
