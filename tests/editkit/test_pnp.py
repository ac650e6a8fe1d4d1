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


@pytest.fixture(scope="module")
def text_through_features(tiny_model_dirs):
    """A tiny pipeline in which the prompt reaches ε only through the injected ResBlock's residual branch.

    Cross-attention outputs are zeroed everywhere but in the mid block, and the injected ResBlock's skip
    path is scaled by 1e-2: whatever the text changes flows through that block's conv2 output, the feature
    Plug-and-Play replaces by the source's. Injection must then remove nearly all of guidance's drift away
    from the image (measured: MSE 0.0186 without injection, 3.6e-6 with features injected); on the plain
    random model most of the text's effect enters after the injected layer and the gain is ~1 %.
    """
    pipe = load_pipeline(tiny_model_dirs["sd1"], device="cpu")
    unet = pipe.unet
    with torch.no_grad():
        unet.conv_in.weight.mul_(1e-6)  # smooth ε (see test_inversion.smooth_pipeline)
        for name, module in unet.named_modules():
            if name.endswith("attn2.to_out.0") and not name.startswith("mid_block"):
                module.weight.zero_()
                module.bias.zero_()
        shortcut = unet.get_submodule(injection_layers(unet).feature_block).conv_shortcut
        shortcut.weight.mul_(1e-2)
        shortcut.bias.mul_(1e-2)
    return pipe


def test_feature_injection_removes_the_drift_the_prompt_causes(text_through_features):
    pipe = text_through_features
    rng = np.random.default_rng(1)
    img = Image.fromarray((rng.random((4, 4, 3)) * 255).astype(np.uint8)).resize((32, 32), Image.Resampling.BICUBIC)
    inv = invert(pipe, img, "", "ddim", STEPS, size=SIZE, progress=False)
    z0 = inv.z0
    # the source prompt as target, with the default negative prompt: guidance 7.5 drifts away from the image
    free = pnp_edit(pipe, inv, "", pnp_f_t=0.0, pnp_attn_t=0.0, progress=False)
    injected = pnp_edit(pipe, inv, "", pnp_f_t=1.0, pnp_attn_t=0.0, progress=False)
    half = pnp_edit(pipe, inv, "", pnp_f_t=0.5, pnp_attn_t=0.0, progress=False)
    err = {k: float(((r.latents - z0) ** 2).mean()) for k, r in (("free", free), ("injected", injected), ("half", half))}
    print("PnP reconstruction MSE:", err)
    assert err["free"] > 2 * float((z0**2).mean())  # the drift is larger than the image itself
    assert err["injected"] * 100 < err["free"], err  # measured ~5000x
    # the window counts: injecting for the first half of the steps only leaves part of the drift
    assert err["injected"] * 10 < err["half"] < err["free"], err


def test_self_attention_uses_the_source_queries_and_keys_inside_the_window(pipe, inversion):
    """Every injected layer's output, recomputed from its input: softmax(q_src k_src^T) v_own inside the
    ``pnp_attn_t`` window, the layer's own attention after it (and the two differ)."""
    layers = [name.removesuffix(".processor") for name in injection_layers(pipe.unet).attention]
    calls: dict[str, list] = {name: [] for name in layers}
    handles = []
    for name in layers:
        module = pipe.unet.get_submodule(name)

        def hook(mod, args, kwargs, out, name=name):
            hidden = args[0] if args else kwargs["hidden_states"]
            calls[name].append((hidden.detach().clone(), out.detach().clone()))

        handles.append(module.register_forward_hook(hook, with_kwargs=True))
    try:  # features on every step keep the source row in the batch; Q/K for the first half only
        pnp_edit(pipe, inversion, "a photo of a cat", pnp_f_t=1.0, pnp_attn_t=0.5, progress=False)
    finally:
        for h in handles:
            h.remove()

    def attend(mod, hidden, qk_row):
        rows, n, _ = hidden.shape
        heads = mod.heads

        def split(x):
            return x.view(rows, n, heads, -1).transpose(1, 2)

        q, k, v = split(mod.to_q(hidden)), split(mod.to_k(hidden)), split(mod.to_v(hidden))
        if qk_row is not None:
            q, k = q[qk_row : qk_row + 1].expand_as(q), k[qk_row : qk_row + 1].expand_as(k)
        w = torch.softmax(q @ k.transpose(-1, -2) * mod.scale, dim=-1)
        o = (w @ v).transpose(1, 2).reshape(rows, n, -1)
        return mod.to_out[1](mod.to_out[0](o))

    qk_steps = int(STEPS * 0.5)
    for name, seen in calls.items():
        assert len(seen) == STEPS, name
        mod = pipe.unet.get_submodule(name)
        with torch.no_grad():
            for step, (hidden, out) in enumerate(seen):
                assert hidden.shape[0] == 3  # [source, uncond, cond]
                injected, own = attend(mod, hidden, 0), attend(mod, hidden, None)
                expected = injected if step < qk_steps else own
                torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
                # the check has teeth: the target rows' own attention is not the source's
                assert (injected[1:] - own[1:]).abs().max() > 100 * 1e-4, (name, step)


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
