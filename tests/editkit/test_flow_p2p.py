"""Prompt-to-Prompt on the tiny offline SD3 and FLUX.1 pipelines: text positions, replacement, local blend."""

from __future__ import annotations

import pytest
import torch

from editkit import testing
from editkit.flow import p2p

SOURCE, TARGET = "a cat riding a bicycle", "a cat riding a car"
T5_LEN = 16


@pytest.fixture(scope="module", params=("sd3", "flux"))
def pipe(request):
    return testing.tiny_sd3_pipeline() if request.param == "sd3" else testing.tiny_flux_pipeline()


def gen(pipe, **kw):
    kw.setdefault("num_inference_steps", 3)
    return p2p.generate(pipe, SOURCE, [TARGET], height=32, width=32, max_sequence_length=T5_LEN,
                        generator=torch.Generator().manual_seed(0), progress=False, output_type="pt", **kw)


def test_word_positions_cover_each_encoder(pipe):
    layout = p2p.text_layout(pipe, T5_LEN)
    got = p2p.word_positions(pipe, layout, SOURCE, "bicycle")
    if p2p.family(pipe) == "sd3":
        # CLIP: start token at 0, "bicycle" is word 4 -> 5; T5 after the 77 CLIP positions, no start token -> 4
        assert layout.length == pipe.tokenizer_max_length + T5_LEN
        assert got == [5, pipe.tokenizer_max_length + 4]
    else:
        assert layout.length == T5_LEN and got == [4]
    with pytest.raises(ValueError, match="not in the prompt"):
        p2p.word_positions(pipe, layout, SOURCE, "dog")


def test_replace_over_every_step_gives_the_target_the_source_maps(pipe):
    plain = gen(pipe, return_attention=True, num_inference_steps=2)
    assert not torch.allclose(plain.attention.maps(1), plain.attention.maps(0))
    out = gen(pipe, edit=p2p.Replace(cross_replace_steps=1.0, image_replace_steps=0.0), return_attention=True,
              num_inference_steps=2)
    store = out.attention
    assert store.sums and all(c == 2 for c in store.counts.values())
    for name, maps in store.sums.items():
        torch.testing.assert_close(maps[1], maps[0], rtol=0, atol=1e-7, msg=name)
    labels, maps = p2p.token_maps(pipe, out, 1)
    assert "car" in labels and maps.shape == (8, 8, len(labels))
    assert maps.reshape(-1, len(labels)).max(0) == pytest.approx(1.0)  # each token normalised by its maximum


def test_local_blend_keeps_the_source_latents_outside_the_mask_bit_for_bit(pipe):
    blend = p2p.LocalBlend(["bicycle", "car"], threshold=0.9, blend_steps=1.0)
    out = gen(pipe, edit=p2p.Replace(), local_blend=blend)
    mask = out.mask[1:2].float()  # [1, 1, h, w] union of source and target masks
    keep = ~mask[0, 0].bool()
    assert 0 < keep.sum() < keep.numel()
    assert torch.equal(out.latents[1][:, keep], out.latents[0][:, keep])
    assert not torch.equal(out.latents[1][:, ~keep], out.latents[0][:, ~keep])


def test_the_source_row_is_never_edited(pipe):
    """Replace, image Q/K replacement and value sharing edit the target rows only."""
    plain = gen(pipe)
    edited = gen(pipe, edit=p2p.Replace(), value_steps=2)
    torch.testing.assert_close(edited.latents[0], plain.latents[0], rtol=0, atol=1e-5)
    assert not torch.allclose(edited.latents[1], plain.latents[1], atol=1e-4)


def test_bad_inputs_are_refused(pipe):
    with pytest.raises(ValueError, match="same number of words"):
        p2p.generate(pipe, SOURCE, ["a dog"], edit=p2p.Replace(), num_inference_steps=2, height=32, width=32,
                     max_sequence_length=T5_LEN, progress=False)
    with pytest.raises(ValueError, match="multiples of"):
        p2p.generate(pipe, SOURCE, [TARGET], num_inference_steps=2, height=34, width=32, progress=False)
    with pytest.raises(ValueError, match="one entry per prompt"):
        gen(pipe, local_blend=p2p.LocalBlend(["car"]))


def test_a_unet_pipeline_is_refused():
    with pytest.raises(ValueError, match="not an SD3 / SD3.5 or FLUX.1 pipeline"):
        p2p.family(testing.tiny_pipeline("sd1"))
