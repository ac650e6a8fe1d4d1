"""editkit.flow.flowedit against the reference implementation's output, on the tiny SD3 and FLUX pipelines.

Golden values: the authors' ``FlowEdit_utils.py`` (github.com/fallenshock/FlowEdit at 457f402, unmodified),
run once on this project's 2-core CPU machine under the diffusers it was tested with (its README: 0.30.x; we
used diffusers 0.30.1, transformers 4.44.2, torch 2.13.0 CPU, float32). Recipe:

1. ``editkit.testing.save_tiny_pipeline(dir, "sd3" | "flux", seed=0)`` (diffusers 0.42.1, transformers 5.24);
2. in the old environment, rebuild ``StableDiffusion3Pipeline`` / ``FluxPipeline`` from those folders
   (components loaded one by one; the CLIP tokenizer from its vocab.json / merges.txt, the T5 one from its
   tokenizer.json with ``T5TokenizerFast``, CLIPTextModel's weights given back their ``text_model.`` prefix);
3. ``x0 = (vae.encode(pipe.image_processor.preprocess(photo())).latent_dist.mode() - shift) * scale`` as the
   reference's ``run_script.py`` (float32, no autocast), ``photo()`` below (32 x 32 px);
4. ``torch.manual_seed(SEED); FlowEditSD3|FlowEditFLUX(pipe, pipe.scheduler, x0, "a photo of a cat",
   "a photo of a dog", "", **SETTINGS)`` with the settings of ``GOLDEN`` below;
5. recorded: the sum and absolute sum of the output latents ``[1, 4, 16, 16]`` and every 64th value.

The SD3 run uses ``n_min=0``: the reference's SD3 branch for ``n_min > 0`` cannot run (it casts to an
undefined ``noise_pred_tar``); the FLUX run uses ``n_min=1`` and so also pins the SDEdit-like tail phase.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from editkit.flow import flowedit as fe
from editkit.flow import sampling as fs

from ._flow_common import SOURCE, TARGET, photo, tiny

GOLDEN = {
    "sd3": dict(
        seed=42,
        settings=dict(num_inference_steps=4, n_avg=2, source_guidance=3.5, target_guidance=13.5, n_min=0, n_max=3),
        sum=-308.033203125,
        abs_sum=564.0968627929688,
        every_64th=[-0.7459, -0.430711, 0.916639, 1.034774, -0.757575, -1.923013, -0.949358, 0.029383,
                    0.192462, -0.918253, -0.877238, -0.342576, -1.037075, 0.436438, -0.263478, -0.878507],
    ),
    "flux": dict(
        seed=10,
        settings=dict(num_inference_steps=4, n_avg=1, source_guidance=1.5, target_guidance=5.5, n_min=1, n_max=3),
        sum=3.4364876747131348,
        abs_sum=333.5201721191406,
        every_64th=[-0.614479, 0.182389, 0.326627, 0.395965, 0.284093, 0.437798, 0.552837, -0.191245,
                    0.405299, -0.383586, -0.246241, 0.447468, -0.71207, 0.33491, -0.359635, 0.168434],
    ),
}


@pytest.fixture(scope="module")
def pipes():
    return {"sd3": tiny("sd3"), "flux": tiny("flux")}


@pytest.mark.parametrize("fam", ["sd3", "flux"])
def test_flowedit_equals_the_reference_implementation(pipes, fam):
    """Mutations caught: source / target guidance rows swapped; the edit ODE stepped with t_i instead of
    (t_{i+1} - t_i); SD3 timestep not scaled by 1000 (or FLUX's scaled twice); FLUX noise drawn unpacked
    (a different permutation of the seed's draws); n_min tail skipped."""
    golden = GOLDEN[fam]
    res = fe.flowedit(pipes[fam], photo(), SOURCE, TARGET, generator=torch.Generator().manual_seed(golden["seed"]),
                      output_type="latent", **golden["settings"])
    out = res.latents.float()
    assert tuple(out.shape) == (1, 4, 16, 16)
    np.testing.assert_allclose(out.flatten()[::64].numpy(), golden["every_64th"], atol=1e-4)
    assert abs(float(out.sum()) - golden["sum"]) < 1e-4 * out.numel()
    assert abs(float(out.abs().sum()) - golden["abs_sum"]) < 1e-4 * out.numel()
    # the edit moved the photo (the golden is not the source image itself)
    assert float((out - res.source_latents.float()).abs().max()) > 0.1


def test_flowedit_is_seeded_and_counts_its_calls(pipes):
    """Same generator seed -> identical output; another seed -> another output. The calls counted through a
    forward hook equal FlowEditConfig.transformer_calls. Mutations caught: noise drawn from the global RNG;
    n_avg loop run once; steps before N - n_max not skipped."""
    pipe = pipes["sd3"]
    calls = []
    handle = pipe.transformer.register_forward_hook(lambda *a: calls.append(1))
    try:
        kw = dict(num_inference_steps=4, n_max=2, n_avg=2, output_type="latent")
        a = fe.flowedit(pipe, photo(), SOURCE, TARGET, generator=1, **kw)
        torch.manual_seed(123)  # the global RNG must not matter
        b = fe.flowedit(pipe, photo(), SOURCE, TARGET, generator=1, **kw)
        c = fe.flowedit(pipe, photo(), SOURCE, TARGET, generator=2, **kw)
    finally:
        handle.remove()
    assert torch.equal(a.latents, b.latents)
    assert not torch.allclose(a.latents, c.latents)
    assert a.transformer_calls == 2 * 2 == len(calls) // 3


def test_defaults_come_from_the_reference_experiment_files(pipes):
    """Mutation caught: SD3 and FLUX defaults swapped, or n_max=15 (the function default) instead of 33."""
    sd3, flux = fe.default_config(pipes["sd3"]), fe.default_config(pipes["flux"])
    assert (sd3.num_inference_steps, sd3.n_max, sd3.n_min, sd3.n_avg) == (50, 33, 0, 1)
    assert (sd3.source_guidance, sd3.target_guidance) == (3.5, 13.5)
    assert (flux.num_inference_steps, flux.n_max, flux.n_min, flux.n_avg) == (28, 24, 0, 1)
    assert (flux.source_guidance, flux.target_guidance) == (1.5, 5.5)


@pytest.mark.parametrize("bad, match", [
    (dict(n_max=5, num_inference_steps=4), "n_max"),
    (dict(n_min=3, n_max=3), "n_min"),
    (dict(n_avg=0), "n_avg"),
    (dict(target_guidance=float("nan")), "target_guidance"),
])
def test_bad_settings_are_refused_with_their_name(pipes, bad, match):
    with pytest.raises(ValueError, match=match):
        fe.flowedit(pipes["sd3"], photo(), SOURCE, TARGET, **bad)


def test_same_prompt_leaves_the_photo_unchanged(pipes):
    """With source == target and equal guidance the velocity difference is zero: FlowEdit returns x_src
    exactly (up to float noise). Mutation caught: z_tar not built from the same noise as z_src."""
    res = fe.flowedit(pipes["flux"], photo(), SOURCE, SOURCE, num_inference_steps=4, n_max=3,
                      source_guidance=3.0, target_guidance=3.0, generator=0, output_type="latent")
    assert float((res.latents.float() - res.source_latents.float()).abs().max()) < 1e-5


def test_pack_unpack_round_trip_and_token_order():
    """FLUX's packing: token k covers the 2x2 patch at (k // (w/2), k % (w/2)), channels (c, dy, dx) in
    that order (diffusers' _pack_latents). Mutation caught: rows and columns of patches swapped."""
    from diffusers import FluxPipeline

    x = torch.randn(2, 4, 6, 8)
    tokens = fs.pack(x)
    assert torch.equal(tokens, FluxPipeline._pack_latents(x, 2, 4, 6, 8))
    assert torch.equal(fs.unpack(tokens, (6, 8)), x)
