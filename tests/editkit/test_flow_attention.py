"""The hook layer on MM-DiT (tiny SD3.5 and FLUX.1 transformers): layer description, exactness when nothing
edits, token positions, and the joint-attention Prompt-to-Prompt edits and local blend."""

from __future__ import annotations

import pytest
import torch

from editkit.flow.attention import (
    ImageQKReplace,
    JointAttentionStore,
    JointLocalBlend,
    JointReplace,
    JointReweight,
    block_filter,
    cross_alpha,
    image_to_text,
    paper_blocks,
)
from editkit.hooks import BatchLayout, Controller, HookError, LayerInfo, describe_layers, hooked
from tests.editkit.flow_models import LATENT, TEXT, get_model, inputs

FAMILIES = ("sd3", "flux")


@pytest.fixture(scope="module", params=FAMILIES)
def model(request):
    return get_model(request.param)


class Probe(Controller):
    """Records what the attention multiplies in the chosen layer; edits nothing."""

    def __init__(self, layer: str, qk=False, values=False, probs=False):
        self.layer, self.qk, self.v, self.p = layer, qk, values, probs
        self.seen = {}

    def wants_qk(self, call):
        return self.qk and call.layer.name == self.layer

    def wants_values(self, call):
        return self.v and call.layer.name == self.layer

    def wants_probs(self, call):
        return self.p and call.layer.name == self.layer

    def on_qk(self, query, key, call):
        self.seen.update(query=query.clone(), key=key.clone(), tokens=call.tokens)
        return query, key

    def on_values(self, value, call):
        self.seen.update(value=value.clone(), tokens=call.tokens)
        return value

    def on_probs(self, probs, call):
        self.seen.update(probs=probs.clone(), tokens=call.tokens)
        return probs


def run(model, controllers, latents, text, step=0, num_steps=4, t=0.7):
    with hooked(model.net, controllers) as session:
        session.begin(BatchLayout(latents.shape[0], False), (LATENT, LATENT), num_steps)
        session.set_step(step, 1000 * t)
        return model(latents, text, t)


def first_joint(model) -> str:
    return next(n for n, lyr in describe_layers(model.net).items() if lyr.place == "joint" and lyr.block == 0)


# --- Layer description ------------------------------------------------------------------------------------
def test_describe_layers_from_the_config():
    sd3 = get_model("sd3").net
    layers = describe_layers(sd3)
    assert {lyr.place for lyr in layers.values()} == {"joint", "image"}  # sd35 variant: attn2 in block 0
    assert all(lyr.factor == sd3.config.patch_size and not lyr.text_first for lyr in layers.values())
    assert sorted(lyr.block for lyr in layers.values() if lyr.place == "joint") == list(range(sd3.config.num_layers))
    assert layers["transformer_blocks.0.attn2.processor"].place == "image"

    flux = get_model("flux").net
    layers = describe_layers(flux)
    joint = [lyr for lyr in layers.values() if lyr.place == "joint"]
    single = [lyr for lyr in layers.values() if lyr.place == "single"]
    assert len(joint) == flux.config.num_layers and len(single) == flux.config.num_single_layers
    # FluxPipeline packs 2x2 latent patches into one token: the token grid is latent / (2 * patch_size)
    assert all(lyr.factor == 2 * flux.config.patch_size and lyr.text_first for lyr in layers.values())
    assert sorted(lyr.depth for lyr in single) == [flux.config.num_layers + i for i in range(len(single))]
    assert single[0].resolution((LATENT, LATENT)) == (LATENT // 2, LATENT // 2)


def test_paper_blocks_recognise_released_architectures():
    def fake(joint, image=0, single=0):
        out = {f"j{i}": LayerInfo(f"j{i}", "joint", i, False, 2) for i in range(joint)}
        out.update({f"i{i}": LayerInfo(f"i{i}", "image", i, False, 2) for i in range(image)})
        out.update({f"s{i}": LayerInfo(f"s{i}", "single", i, False, 2, True) for i in range(single)})
        return out

    assert paper_blocks(fake(19, 0, 38)) == (18, 17, 12, 14, 11)  # FLUX.1
    assert paper_blocks(fake(24)) == (7, 8, 5, 4, 9)  # SD3-medium
    assert paper_blocks(fake(24, 13)) == (7, 9, 8, 5, 10)  # SD3.5-medium
    assert paper_blocks(fake(3)) == (0, 1, 2)  # anything else: every joint block


def test_unknown_transformer_is_refused():
    from diffusers import PixArtTransformer2DModel

    net = PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, num_layers=1,
                                   cross_attention_dim=16, sample_size=8, caption_channels=16)
    with pytest.raises(HookError, match="cannot place attention layer"):
        describe_layers(net)


# --- Exactness ----------------------------------------------------------------------------------------------
class Nothing(Controller):
    pass


class ReadQK(Controller):
    def wants_qk(self, call):
        return True


class ReadProbs(Controller):
    def wants_probs(self, call):
        return True

    def on_probs(self, probs, call):
        assert torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-5)
        return probs


def test_hooked_model_equals_the_unhooked_model(model):
    latents, text = inputs(2)
    plain = model(latents, text)
    before = dict(model.net.attn_processors)
    # no controller, and a controller that reads nothing: the stock (fused) processors run, bit for bit
    assert torch.equal(run(model, [], latents, text), plain)
    assert torch.equal(run(model, Nothing(), latents, text), plain)
    # Q/K read everywhere: the explicit path with the fused kernel, still bit for bit
    assert torch.equal(run(model, ReadQK(), latents, text), plain)
    # probabilities materialised everywhere: the same attention to float tolerance
    torch.testing.assert_close(run(model, ReadProbs(), latents, text), plain, rtol=0, atol=1e-5)
    assert {k: type(v) for k, v in model.net.attn_processors.items()} == {k: type(v) for k, v in before.items()}


def test_token_positions_follow_the_stream_order(model):
    """In the first joint block the image positions of Q depend on the latents only and the text positions on
    the text only: changing one input must move exactly the positions the layout names."""
    layer = first_joint(model)
    latents, text = inputs(1, seed=1)
    other_latents, other_text = inputs(1, seed=2)
    seen = []
    for lat, txt in ((latents, text), (latents, other_text), (other_latents, text)):
        probe = Probe(layer, qk=True)
        run(model, probe, lat, txt)
        seen.append(probe.seen)
    tokens = seen[0]["tokens"]
    assert (tokens.num_image, tokens.num_text) == ((LATENT // 2) ** 2, TEXT)
    q0, q_text, q_image = (s["query"] for s in seen)
    assert torch.equal(q0[:, :, tokens.image], q_text[:, :, tokens.image])  # text changed, image rows did not
    assert not torch.allclose(q0[:, :, tokens.text], q_text[:, :, tokens.text])
    assert torch.equal(q0[:, :, tokens.text], q_image[:, :, tokens.text])  # latents changed, text rows did not
    assert not torch.allclose(q0[:, :, tokens.image], q_image[:, :, tokens.image])


# --- Prompt-to-Prompt on joint attention ------------------------------------------------------------------
def two_prompt_run(model, controllers, steps=3, seed=3):
    """Source and target rows from the same latents with different text, a few steps of the clock."""
    latents, text = inputs(1, seed=seed)
    _, target_text = inputs(1, seed=seed + 1)
    latents, text = latents.expand(2, -1, -1, -1), torch.cat([text, target_text])
    with hooked(model.net, controllers) as session:
        session.begin(BatchLayout(2, False), (LATENT, LATENT), steps)
        for i in range(steps):
            session.set_step(i, 1000 * (1 - i / steps))
            out = model(latents, text, 1 - i / steps)
    return out


def test_replace_over_every_step_gives_the_target_the_source_maps(model):
    steps = 3
    every_layer = block_filter(None, ("joint", "single"))
    store = JointAttentionStore(every_layer)
    run_plain = JointAttentionStore(every_layer)
    two_prompt_run(model, [run_plain], steps)
    assert not torch.allclose(run_plain.maps(1), run_plain.maps(0))  # different prompts, different maps

    mapper = torch.eye(TEXT)[None]
    edit = JointReplace(mapper, cross_alpha(steps, 1, TEXT, 1.0), every_layer)
    two_prompt_run(model, [edit, store], steps)  # store after the edit: it keeps the edited maps
    assert store.counts and all(c == steps for c in store.counts.values())
    for name, maps in store.sums.items():
        torch.testing.assert_close(maps[1], maps[0], rtol=0, atol=1e-7, msg=name)


def test_replace_moves_attention_through_the_mapper_and_keeps_rows_normalised(model):
    """A mapper sending source tokens 2, 4, 5 to target tokens 4, 5, 2 (not its own transpose); the rows
    still sum to 1."""
    perm = list(range(TEXT))
    perm[2], perm[4], perm[5] = 4, 5, 2
    mapper = torch.eye(TEXT)[perm][None]  # mapper[i, j] = 1 where j = perm[i]
    layer = first_joint(model)
    probe = Probe(layer, probs=True)
    edit = JointReplace(mapper, cross_alpha(1, 1, TEXT, 1.0))
    two_prompt_run(model, [edit, probe], steps=1)
    probs, tokens = probe.seen["probs"], probe.seen["tokens"]

    class Src(Controller):  # the unedited maps of the same call
        def wants_probs(self, call):
            return call.layer.name == layer

        def on_probs(self, p, call):
            self.p = p.clone()
            return p

    src = Src()
    two_prompt_run(model, [src], steps=1)
    i2t_src = image_to_text(src.p, probe_call(tokens))
    i2t_new = image_to_text(probs, probe_call(tokens))
    torch.testing.assert_close(i2t_new[1][..., perm], i2t_src[0], rtol=0, atol=1e-7)
    torch.testing.assert_close(probs[1][:, tokens.image].sum(-1), torch.ones(probs.shape[1], tokens.num_image), atol=1e-5, rtol=0)
    assert torch.equal(probs[1][:, tokens.text], src.p[1][:, tokens.text])  # text-query rows: the target's own


def probe_call(tokens):
    class C:
        pass

    c = C()
    c.tokens = tokens
    return c


def test_reweight_scales_the_chosen_columns_only(model):
    layer = first_joint(model)
    eq = torch.ones(1, TEXT)
    eq[0, 3] = 2.0
    probe = Probe(layer, probs=True)

    class Src(Probe):
        pass

    src = Src(layer, probs=True)
    two_prompt_run(model, [src], steps=1)
    two_prompt_run(model, [JointReweight(eq, cross_alpha(1, 1, TEXT, 1.0)), probe], steps=1)
    tokens = probe.seen["tokens"]
    new, old = probe.seen["probs"], src.seen["probs"]
    img, txt = tokens.image, tokens.text
    # the original re-weighting: the source's map times the weight, nothing renormalised
    torch.testing.assert_close(new[1][:, img, txt], old[0][:, img, txt] * eq[0], rtol=0, atol=1e-7)
    assert torch.equal(new[1][:, img, img], old[1][:, img, img])


def test_edit_refuses_a_mapper_built_for_another_text_length(model):
    edit = JointReplace(torch.eye(TEXT + 1)[None], cross_alpha(1, 1, TEXT + 1, 1.0))
    with pytest.raises(ValueError, match="text tokens but the edit was built for"):
        two_prompt_run(model, [edit], steps=1)


def test_image_qk_replace_copies_the_source_image_positions_in_its_window(model):
    layer = first_joint(model)
    for step, inside in ((0, True), (1, False)):
        probe = Probe(layer, qk=True)
        latents, text = inputs(1, seed=5)
        other, other_text = inputs(1, seed=6)
        with hooked(model.net, [ImageQKReplace((0, 1)), probe]) as session:
            session.begin(BatchLayout(2, False), (LATENT, LATENT), 4)
            session.set_step(step, 500)
            model(torch.cat([latents, other]), torch.cat([text, other_text]), 0.5)
        q, tokens = probe.seen["query"], probe.seen["tokens"]
        assert torch.equal(q[1][:, tokens.image], q[0][:, tokens.image]) is inside
        assert not torch.allclose(q[1][:, tokens.text], q[0][:, tokens.text])  # text positions: the target's own


# --- Local blend ----------------------------------------------------------------------------------------------
def test_local_blend_keeps_the_source_outside_the_mask_bit_for_bit(model):
    """A few Euler steps of the flow with Replace, store and blend over every step: outside the final mask the
    target latents are the source's exactly."""
    steps = 3
    latents, text = inputs(1, seed=7)
    _, target_text = inputs(1, seed=8)
    x = latents.expand(2, -1, -1, -1).clone()
    text = torch.cat([text, target_text])
    store = JointAttentionStore(block_filter(None))
    words = torch.zeros(2, TEXT)
    words[:, 2] = 1
    blend = JointLocalBlend(store, words, window=(0, steps), threshold=0.9)
    edit = JointReplace(torch.eye(TEXT)[None], cross_alpha(steps, 1, TEXT, 0.5))
    sigmas = torch.linspace(1, 0, steps + 1)
    with hooked(model.net, [edit, store, blend]) as session:
        session.begin(BatchLayout(2, False), (LATENT, LATENT), steps)
        for i in range(steps):
            session.set_step(i, 1000 * sigmas[i])
            v = model(x, text, float(sigmas[i]))
            x = x + (sigmas[i + 1] - sigmas[i]) * v
            x = session.step_end(x)
    mask = blend.last_mask  # [2, 1, h, w]: the union of source and target masks
    assert mask.shape == (2, 1, LATENT, LATENT)
    keep = ~mask[1, 0]
    assert 0 < keep.sum() < keep.numel()  # a real mask: some pixels edited, some kept
    assert torch.equal(x[1][:, keep], x[0][:, keep])
    assert not torch.equal(x[1][:, ~keep], x[0][:, ~keep])
