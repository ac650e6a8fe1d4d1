"""The hook layer: no-op hooks reproduce diffusers exactly, processors come back, layers are placed right."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from editkit import Controller, HookError, describe_layers, hooked
from editkit.hooks import BatchLayout, HookProcessor, HookSession, LayerInfo
from editkit.sampling import denoise, encode_prompts, initial_latents

PROMPT = "a cat riding a bicycle"


class ReadEverything(Controller):
    """Asks for Q/K and probabilities everywhere and changes nothing: forces the explicit path."""

    def __init__(self):
        self.calls = 0

    def wants_qk(self, call):
        return True

    def wants_probs(self, call):
        return True

    def on_probs(self, probs, call):
        self.calls += 1
        assert torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-5)
        return probs


def _plain(pipe, steps=3, size=32, guidance=7.5):
    g = torch.Generator().manual_seed(0)
    return pipe(PROMPT, num_inference_steps=steps, height=size, width=size, generator=g, guidance_scale=guidance,
                output_type="latent").images


@pytest.mark.parametrize("flavour", ["sd1", "sd2", "sdxl"])
def test_noop_hooks_reproduce_plain_diffusers(flavour, request):
    pipe = request.getfixturevalue(flavour)
    before = dict(pipe.unet.attn_processors)
    reference = _plain(pipe)

    # (a) diffusers' own sampling loop, with our processor on every layer
    with hooked(pipe.unet, [ReadEverything()]):
        assert all(isinstance(p, HookProcessor) for p in pipe.unet.attn_processors.values())
        inside = _plain(pipe)
    torch.testing.assert_close(inside, reference)

    # (b) editkit's sampling loop, every layer forced through the explicit (materialised) path
    probe = ReadEverything()
    g = torch.Generator().manual_seed(0)
    cond = encode_prompts(pipe, [PROMPT], height=32, width=32)
    x_t = initial_latents(pipe, 1, 32, 32, generator=g)
    ours_plain = denoise(pipe, x_t, cond, 3, 7.5, progress=False)
    with hooked(pipe.unet, [probe]) as session:
        ours_hooked = denoise(pipe, x_t, cond, 3, 7.5, session=session, progress=False)
    torch.testing.assert_close(ours_plain, reference, rtol=0, atol=0)
    torch.testing.assert_close(ours_hooked, reference, rtol=1e-4, atol=1e-4)
    assert probe.calls == 3 * len(before)
    assert session.materialised == set(before)

    after = pipe.unet.attn_processors
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)


def test_processors_restored_when_the_block_raises(sd1):
    before = dict(sd1.unet.attn_processors)
    with pytest.raises(RuntimeError, match="boom"), hooked(sd1.unet, []):
        raise RuntimeError("boom")
    assert all(sd1.unet.attn_processors[k] is before[k] for k in before)


def test_layers_placed_from_the_config(sd1, sdxl):
    layers = describe_layers(sd1.unet)  # 4 blocks, attention in down 0-2, mid, up 1-3 (like SD 1.5)
    by_place = {(lyr.place, lyr.block): lyr.factor for lyr in layers.values()}
    assert by_place == {("down", 0): 1, ("down", 1): 2, ("down", 2): 4, ("mid", 0): 8,
                        ("up", 1): 4, ("up", 2): 2, ("up", 3): 1}
    assert sum(lyr.is_cross for lyr in layers.values()) == len(layers) // 2
    xl = describe_layers(sdxl.unet)  # 3 blocks, no attention in down 0 (like SDXL)
    assert {(lyr.place, lyr.block): lyr.factor for lyr in xl.values()} == {
        ("down", 1): 2, ("down", 2): 4, ("mid", 0): 4, ("up", 0): 4, ("up", 1): 2}
    # odd latent sizes: each downsampler is ceil(x / 2)
    assert LayerInfo("x", "down", 2, False, 4).resolution((97, 64)) == (25, 16)


def test_only_needed_layers_materialise(sd1):
    class CrossOnly(Controller):
        def wants_probs(self, call):
            return call.layer.is_cross and call.layer.factor >= 4

    cond = encode_prompts(sd1, [PROMPT], height=32, width=32)
    x_t = initial_latents(sd1, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with hooked(sd1.unet, [CrossOnly()]) as session:
        denoise(sd1, x_t, cond, 2, 7.5, session=session, progress=False)
    layers = describe_layers(sd1.unet)
    assert session.materialised == {n for n, lyr in layers.items() if lyr.is_cross and lyr.factor >= 4}
    with hooked(sd1.unet, [Controller()]) as session:
        denoise(sd1, x_t, cond, 2, 7.5, session=session, progress=False)
    assert session.materialised == set()


def test_step_clock_and_layout_are_explicit(sd1):
    seen = []

    class Clock(Controller):
        def wants_probs(self, call):
            seen.append((call.step, call.layout, call.resolution, call.layer.factor))
            return False

    cond = encode_prompts(sd1, [PROMPT, "a dog"], height=32, width=48)
    x_t = initial_latents(sd1, 2, 32, 48, generator=torch.Generator().manual_seed(0))
    with hooked(sd1.unet, [Clock()]) as session:
        denoise(sd1, x_t, cond, 3, 7.5, session=session, progress=False)
    assert sorted({s for s, *_ in seen}) == [0, 1, 2]
    assert {lay for _, lay, *_ in seen} == {BatchLayout(2, True)}
    assert all(res == ((16 + f - 1) // f, (24 + f - 1) // f) for *_, res, f in seen)
    layout = BatchLayout(3, cfg=True)
    assert (layout.batch_size, layout.uncond, layout.cond) == (6, slice(0, 3), slice(3, 6))
    assert BatchLayout(3, cfg=False).cond == slice(0, 3)


@pytest.mark.parametrize("cross", [False, True])
def test_explicit_path_matches_sdpa_on_a_bare_attention(cross):
    torch.manual_seed(0)
    attn = Attention(query_dim=8, cross_attention_dim=6 if cross else None, heads=2, dim_head=4)
    x = torch.randn(2, 16, 8)
    ctx = torch.randn(2, 5, 6) if cross else None
    reference = AttnProcessor2_0()(attn, x, ctx)
    layer = LayerInfo("down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor", "down", 0, cross, 1)
    session = HookSession(layers={layer.name: layer}, controllers=[ReadEverything()])
    session.begin(BatchLayout(1, cfg=True), (4, 4), num_steps=1)
    out = HookProcessor(layer, session, AttnProcessor2_0())(attn, x, ctx)
    torch.testing.assert_close(out, reference)
    assert session.materialised == {layer.name}


def test_resolution_mismatch_is_a_clear_error(sd1):
    cond = encode_prompts(sd1, [PROMPT], height=32, width=32)
    x_t = initial_latents(sd1, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with hooked(sd1.unet, [ReadEverything()]) as session:
        session.begin(BatchLayout(1, True), (20, 20), 1)  # wrong latent size on purpose
        with pytest.raises(HookError, match="query tokens"):
            sd1.unet(torch.cat([x_t] * 2), 10, encoder_hidden_states=cond.encoder_hidden_states(0, True))


def test_no_attention_layer_is_a_clear_error():
    class NoAttention:
        attn_processors: dict = {}

    with pytest.raises(HookError, match="no attention layers"), hooked(NoAttention(), []):
        pass


def test_cond_only_controllers_leave_the_unconditional_half_fused(sd1):
    shapes = []

    class CondOnly(Controller):
        cond_rows_only = True

        def wants_probs(self, call):
            return call.layer.is_cross

        def on_probs(self, probs, call):
            shapes.append((probs.shape[0], call.layout.cfg, (call.layout.cond.start, call.layout.cond.stop)))
            return probs

    cond = encode_prompts(sd1, [PROMPT, "a dog"], height=32, width=32)
    x_t = initial_latents(sd1, 2, 32, 32, generator=torch.Generator().manual_seed(0))
    reference = denoise(sd1, x_t, cond, 2, 7.5, progress=False)
    with hooked(sd1.unet, [CondOnly()]) as session:
        out = denoise(sd1, x_t, cond, 2, 7.5, session=session, progress=False)
    assert shapes and set(shapes) == {(2, False, (0, 2))}  # only the 2 conditional rows, no guidance
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-4)
