"""editkit.pnp: Plug-and-Play injection on tiny offline models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from editkit import load_pipeline
from editkit.hooks import describe_layers
from editkit.inversion import invert
from editkit.pnp import DEFAULT_NEGATIVE_PROMPT, PnPResult, injection_layers, pnp_edit
from editkit.sampling import denoise, encode_prompts

STEPS = 4
SIZE = 16


@pytest.fixture(scope="module")
def pipe(tiny_model_dirs):
    pipe = load_pipeline(tiny_model_dirs["sd1"], device="cpu")
    with torch.no_grad():  # smooth ε (see test_inversion.smooth_pipeline)
        pipe.unet.conv_in.weight.mul_(1e-6)
    return pipe


@pytest.fixture(scope="module")
def inversion(pipe):
    rng = np.random.default_rng(1)
    img = Image.fromarray((rng.random((4, 4, 3)) * 255).astype(np.uint8)).resize((32, 32), Image.Resampling.BICUBIC)
    return invert(pipe, img, "", "ddim", STEPS, size=SIZE, progress=False)


def all_forward_hooks(module):
    return sum(len(m._forward_hooks) for m in module.modules())


def test_injection_points_follow_the_reference(sd1, sdxl):
    layers = injection_layers(sd1.unet)
    assert layers.feature_block == "up_blocks.1.resnets.1"
    names = set(layers.attention)
    assert all(".attn1." in n and n.startswith("up_blocks.") for n in names)
    assert not any(n.startswith(("up_blocks.0.", "up_blocks.1.attentions.0.")) for n in names)
    expected = {n for n, lyr in describe_layers(sd1.unet).items() if lyr.place == "up" and not lyr.is_cross and lyr.block >= 1}
    expected -= {n for n in expected if n.startswith("up_blocks.1.attentions.0.")}
    assert names == expected
    xl = injection_layers(sdxl.unet)  # SDXL: no attention in its last up block, the coarsest level is block 0
    assert xl.feature_block == "up_blocks.0.resnets.1"
    assert any(n.startswith("up_blocks.0.attentions.1.") for n in xl.attention)


def test_zero_thresholds_equal_plain_sampling_and_hooks_are_removed(pipe, inversion):
    before = {k: type(v) for k, v in pipe.unet.attn_processors.items()}
    hooks_before = all_forward_hooks(pipe.unet)
    res = pnp_edit(pipe, inversion, "a photo of a cat", pnp_f_t=0.0, pnp_attn_t=0.0, progress=False)
    assert isinstance(res, PnPResult) and res.image.size == (SIZE, SIZE)
    cond = encode_prompts(pipe, ["a photo of a cat"], DEFAULT_NEGATIVE_PROMPT, SIZE, SIZE)
    plain = denoise(pipe, inversion.noise.clone(), cond, STEPS, 7.5, progress=False)
    torch.testing.assert_close(res.latents, plain, atol=1e-5, rtol=1e-5)
    # with injection on, afterwards: processors and forward hooks as before
    pnp_edit(pipe, inversion, "a photo of a cat", pnp_f_t=1.0, pnp_attn_t=1.0, progress=False)
    assert {k: type(v) for k, v in pipe.unet.attn_processors.items()} == before
    assert all_forward_hooks(pipe.unet) == hooks_before == 0


def test_injection_pulls_towards_the_source(pipe, inversion):
    z0 = inversion.z0
    # the source prompt as target, with the default negative prompt: guidance 7.5 drifts away from the image
    free = pnp_edit(pipe, inversion, "", pnp_f_t=0.0, pnp_attn_t=0.0, progress=False)
    injected = pnp_edit(pipe, inversion, "", pnp_f_t=1.0, pnp_attn_t=1.0, progress=False)
    err_free = float(((free.latents - z0) ** 2).mean())
    err_inj = float(((injected.latents - z0) ** 2).mean())
    print(f"PnP reconstruction MSE: no injection {err_free:.4g}, injection on every step {err_inj:.4g}")
    # Deterministic; the margin is small on a random tiny model because its cross-attention after the
    # injected layers carries most of the text's effect (measured: 12.86 vs 12.97).
    assert err_inj < err_free


def test_features_are_injected(pipe, inversion):
    """While injecting, every row of the ResBlock's conv2 output is the source row's."""
    module = pipe.unet.get_submodule(injection_layers(pipe.unet).feature_block).conv2
    seen = []
    # conv2's own output is read back from the ResBlock's output minus its skip path
    resnet = pipe.unet.get_submodule(injection_layers(pipe.unet).feature_block)
    handle = resnet.register_forward_hook(lambda m, args, out: seen.append((args[0], out)))
    try:
        pnp_edit(pipe, inversion, "a photo of a cat", pnp_f_t=1.0, pnp_attn_t=0.0, progress=False)
    finally:
        handle.remove()
    assert len(seen) == STEPS and module._forward_hooks == {}
    for inp, out in seen:
        assert out.shape[0] == 3  # [source, uncond, cond]
        skip = resnet.conv_shortcut(inp) if resnet.conv_shortcut is not None else inp
        residual = out * resnet.output_scale_factor - skip  # the residual branch that was injected
        torch.testing.assert_close(residual[1:], residual[:1].expand_as(residual[1:]), atol=1e-4, rtol=1e-4)


def test_reuse_inversion_and_several_targets(pipe, inversion):
    res = pnp_edit(pipe, inversion, ["a photo of a dog", "a watercolor cat"], return_inversion=True, progress=False)
    assert len(res.images) == 2 and res.inversion is inversion and res.latents.shape[0] == 2
    single = pnp_edit(pipe, inversion, "a watercolor cat", progress=False)
    torch.testing.assert_close(res.latents[1:], single.latents, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kw", [{"pnp_f_t": 1.5}, {"pnp_attn_t": -0.1}, {"pnp_f_t": float("nan")}])
def test_thresholds_outside_0_1(pipe, inversion, kw):
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        pnp_edit(pipe, inversion, "a cat", progress=False, **kw)


def test_bad_steps_and_images(sd1, tmp_path):
    img = Image.new("RGB", (32, 32), (200, 100, 50))
    with pytest.raises(ValueError, match="num_inference_steps"):
        pnp_edit(sd1, img, "a cat", num_inference_steps=0, progress=False)
    with pytest.raises(ValueError, match="num_inference_steps"):
        pnp_edit(sd1, img, "a cat", num_inference_steps=-5, progress=False)
    (tmp_path / "x.png").write_text("no")
    with pytest.raises(ValueError, match="x.png"):
        pnp_edit(sd1, tmp_path / "x.png", "a cat", num_inference_steps=2, progress=False)
