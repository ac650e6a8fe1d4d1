"""The rules of ``editkit.p2p``, one test each, on the controllers alone (no UNet: fast, and each fails when
its rule changes). End-to-end figures from the original implementation are in ``test_p2p_golden.py``.

Golden schedules below were printed by google/prompt-to-prompt's ``ptp_utils.get_time_words_attention_alpha``
run with the tiny tokenizer of :mod:`editkit.testing` (figures only; its code is not here).
"""

from __future__ import annotations

import pytest
import torch

from editkit.hooks import AttentionCall, BatchLayout, LayerInfo
from editkit.p2p import controllers as C
from editkit.p2p import text
from editkit.testing import make_tokenizer

PROMPTS = ["a cat riding a bicycle", "a cat riding a car"]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def call(factor, is_cross, step=0, place="up", cfg=True, num_prompts=2, latent=(16, 16)):
    layer = LayerInfo(
        name=f"{place}.{factor}.{int(is_cross)}", place=place, block=1, is_cross=is_cross, factor=factor
    )
    return AttentionCall(
        layer, step, 10, None, BatchLayout(num_prompts, cfg), layer.resolution(latent), latent
    )


def test_rule_constants():
    assert (C.STORE_MIN_FACTOR, C.SELF_REPLACE_MIN_FACTOR, C.REAL_IMAGE_SELF_REPLACE_MIN_FACTOR) == (2, 4, 2)
    assert (C.BLEND_FACTOR, C.BLEND_PLACES) == (4, ("down", "up"))


def test_stored_layers_are_latent_over_2_and_below():
    # the original: attn.shape[1] <= 32 ** 2 at a 64x64 latent
    store = C.AttentionStore()
    assert [store.wants_probs(call(f, c)) for c in (True, False) for f in (1, 2, 4, 8)] == [
        False,
        True,
        True,
        True,
    ] * 2
    cross = C.AttentionStore(cross_only=True)
    assert [cross.wants_probs(call(f, c)) for c in (True, False) for f in (1, 2, 4)] == [
        False,
        True,
        True,
        False,
        False,
        False,
    ]


def test_self_attention_is_replaced_at_latent_over_4_text_to_image(tok):
    # prompt-to-prompt_stable.ipynb: att_replace.shape[2] <= 16 ** 2 at a 64x64 latent
    edit = C.ReplaceEdit(PROMPTS, tok, 10, self_replace_steps=1.0)
    assert [edit.wants_probs(call(f, False)) for f in (1, 2, 4, 8)] == [False, False, True, True]


def test_step_windows_follow_the_original(tok):
    # self-attention: int(num_steps * fraction), start inclusive, end exclusive
    edit = C.ReplaceEdit(PROMPTS, tok, 10, self_replace_steps=0.4)
    assert [edit.wants_probs(call(4, False, step=s)) for s in range(10)] == [True] * 4 + [False] * 6
    edit = C.ReplaceEdit(PROMPTS, tok, 10, self_replace_steps=(0.2, 0.5))
    assert [edit.wants_probs(call(4, False, step=s)) for s in range(10)] == [False] * 2 + [True] * 3 + [
        False
    ] * 5
    # cross-attention alpha: golden rows of the original get_time_words_attention_alpha (11 rows for 10 steps)
    alpha = text.cross_replace_alpha(PROMPTS, 10, 0.8, tok, 77)
    assert alpha.shape == (11, 1, 1, 1, 77)
    assert alpha[:, 0, 0, 0, 0].tolist() == [1.0] * 8 + [0.0] * 3
    alpha = text.cross_replace_alpha(PROMPTS, 10, {"default_": (0.2, 0.95), "car": 0.3}, tok, 77)
    # int(0.95 * 11) = 10: the window is a fraction of the 11 rows, not of the 10 steps
    assert alpha[:, 0, 0, 0, 0].tolist() == [0.0, 0.0] + [1.0] * 8 + [0.0]
    assert alpha[:, 0, 0, 0, 5].tolist() == [1.0] * 3 + [0.0] * 8


def test_only_the_conditional_half_is_edited_and_row_0_is_the_source(tok):
    edit = C.ReplaceEdit(PROMPTS, tok, 10, self_replace_steps=1.0)
    g = torch.Generator().manual_seed(0)
    for is_cross, m in ((False, 16), (True, 77)):
        probs = torch.rand(4, 2, 16, m, generator=g).softmax(
            -1
        )  # [uncond src, uncond tgt, cond src, cond tgt]
        out = edit.on_probs(probs.clone(), call(4, is_cross, latent=(16, 16)))
        torch.testing.assert_close(out[:3], probs[:3], rtol=0, atol=0)  # uncond rows and the source untouched
        if not is_cross:
            torch.testing.assert_close(
                out[3], probs[2], rtol=0, atol=0
            )  # target takes the source's self-attention
        else:
            # "car" (token 5) takes "bicycle"'s attention; alpha is 1 at step 0
            torch.testing.assert_close(out[3][..., 5], probs[2][..., 5], rtol=0, atol=0)
            torch.testing.assert_close(out[3][..., 1], probs[2][..., 1], rtol=0, atol=0)


def _store_with(maps_by_layer, latent=(32, 32)):
    """An AttentionStore holding one cross map ``[P, N, 77]`` (one head, one step) per given layer."""
    store = C.AttentionStore(min_factor=2, cross_only=True)
    store.latent_hw, store.steps = latent, 1
    for (place, factor), m in maps_by_layer.items():
        name = f"{place}_blocks.{factor}.attn2"
        store.layers[name] = LayerInfo(name=name, place=place, block=1, is_cross=True, factor=factor)
        store.sums[name], store.heads[name] = m, 1
    return store


def test_local_blend_reads_the_latent_over_4_down_and_up_maps_pooled_3x3(tok):
    # A word map with a single hot pixel at latent/4 (8x8 for a 32x32 latent): 3x3 max pooling grows it to a
    # 3x3 block, nearest upsampling x4 to 12x12 latent pixels. Maps elsewhere (mid, latent/2) must be ignored.
    hot = torch.zeros(2, 64, 77)
    hot[:, 3 * 8 + 3, 5] = 1.0  # pixel (3, 3), token 5 ("bicycle" / "car")
    noise = torch.zeros(2, 64, 77)
    noise[:, 0, 5] = 5.0  # a stronger hot pixel at (0, 0) in the mid block
    store = _store_with(
        {("down", 4): hot, ("up", 4): hot, ("mid", 4): noise, ("up", 2): torch.ones(2, 256, 77)}
    )
    blend = C.LocalBlendControl(
        PROMPTS, tok, store, ["bicycle", "car"], start_blend=0.0, threshold=(0.5, 0.5), num_steps=10
    )

    class Session:
        step = 0

    x = torch.stack([torch.zeros(4, 32, 32), torch.ones(4, 32, 32)])
    out = blend.on_step_end(x, Session())
    expected = torch.zeros(32, 32, dtype=torch.bool)
    expected[2 * 4 : 5 * 4, 2 * 4 : 5 * 4] = True  # pixels 2..4 of the 8x8 map after pooling
    assert torch.equal(blend.last_mask[1, 0], expected)
    assert torch.equal(out[1, 0], expected.float())  # target = source outside, itself inside
    # before start_blend nothing happens: int(0.2 * 10) = 2 steps untouched
    late = C.LocalBlendControl(PROMPTS, tok, store, ["bicycle", "car"], start_blend=0.2, num_steps=10)
    for step, touched in ((0, False), (1, False), (2, True)):
        Session.step = step
        assert (not torch.equal(late.on_step_end(x, Session()), x)) == touched


def test_subtracted_words_use_the_unpooled_map_and_the_second_threshold(tok):
    # threshold = (pooled words, unpooled subtracted words): th[1 - int(use_pool)] in the original
    word = torch.zeros(2, 64, 77)
    word[:, 3 * 8 + 3, 5] = 1.0
    word[:, 3 * 8 + 4, 2] = 1.0  # "cat" (token 2) at pixel (3, 4), inside the pooled word region (2..4)
    word[:, 2 * 8 + 4, 2] = 0.6  # and weaker at (2, 4)
    store = _store_with({("down", 4): word})
    x = torch.stack([torch.zeros(4, 32, 32), torch.ones(4, 32, 32)])

    class Session:
        step = 5

    def mask(th):
        b = C.LocalBlendControl(
            PROMPTS,
            tok,
            store,
            ["bicycle", "car"],
            subtract_words=["cat", "cat"],
            start_blend=0.0,
            threshold=th,
            num_steps=10,
        )
        b.on_step_end(x, Session())
        return b.last_mask[1, 0]

    m = mask((0.5, 0.5))  # both cat pixels subtracted, unpooled: their neighbours stay
    assert not m[12:16, 16:20].any() and not m[8:12, 16:20].any()
    assert m[12:16, 12:16].all() and m[8:12, 12:16].all() and m[16:20, 16:20].all()
    m = mask((0.5, 0.7))  # 0.6 < 0.7: only (3, 4) is subtracted
    assert not m[12:16, 16:20].any() and m[8:12, 16:20].all()
