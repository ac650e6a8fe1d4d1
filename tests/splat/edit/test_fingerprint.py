"""The inversion cache's key: a changed component of the pipeline (VAE, text encoder, tokenizer, scheduler config,
a LoRA fused into the UNet) must miss the cache; the same weights loaded again must hit it."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from splat.edit import EditConfig, ViewEditor
from splat.edit.fingerprint import pipeline_fingerprint


@pytest.fixture(scope="module")
def pipe(tiny_model_dirs):
    from editkit.models import load_pipeline

    return load_pipeline(tiny_model_dirs["sd1"], device="cpu")


def _swap_vae(p):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for w in p.vae.parameters():  # another VAE of the same shape: every weight differs
            w.add_(0.01 * torch.randn(w.shape, generator=g))


def _swap_text_encoder(p):
    with torch.no_grad():
        for w in p.text_encoder.parameters():
            w.mul_(1.01)


def _scheduler_config(p):
    p.scheduler = type(p.scheduler).from_config(p.scheduler.config, beta_end=0.02)


def _fuse_lora(p):
    """W += B A (rank 1) on every attention query of the UNet, as ``fuse_lora`` leaves it."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, m in p.unet.named_modules():
            if name.endswith(("attn1", "attn2")):
                w = m.to_q.weight  # [out, in]
                w.add_(0.05 * torch.randn(w.shape[0], 1, generator=g) @ torch.randn(1, w.shape[1], generator=g))


def _new_token(p):
    p.tokenizer.add_tokens(["<cat-toy>"])  # textual inversion's first half


def _one_value(p):
    with torch.no_grad():
        p.unet.conv_out.bias[0] += 1e-3


CFG = EditConfig(source="a photo of a cat", target="a photo of a dog", steps=4, guidance=1.0, edit_size=32,
                 progress=False)  # fmt: skip
PHOTO = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))


@pytest.mark.parametrize("change", [_swap_vae, _swap_text_encoder, _scheduler_config, _fuse_lora, _new_token,
                                    _one_value])  # fmt: skip
def test_any_changed_component_changes_the_cache_key(pipe, change, tmp_path):
    """Mutations caught: the previous key (name + UNet config + sums of conv_in, conv_out and one down-block
    weight, not the bias the last case moves) was the same for every change here; dropping any component from the digest
    (modules, tokenizer or scheduler config) fails its case."""
    key = ViewEditor(pipe, CFG, None, tmp_path)._key(PHOTO)
    assert ViewEditor(copy.deepcopy(pipe), CFG, None, tmp_path)._key(PHOTO) == key  # same weights, same key
    other = copy.deepcopy(pipe)
    change(other)
    assert ViewEditor(other, CFG, None, tmp_path)._key(PHOTO) != key


def test_a_fused_lora_misses_the_cache_and_the_same_weights_hit_it(pipe, tmp_path):
    """Mutation caught: a fingerprint that changes once the pipeline has been used (e.g. the tokenizer's
    truncation settings, set by its first call, in the digest) misses the cache with the same weights."""
    first = ViewEditor(pipe, CFG, None, tmp_path)
    first.inversion(PHOTO)
    again = ViewEditor(copy.deepcopy(pipe), CFG, None, tmp_path)  # the same weights, another object, after use
    again.inversion(PHOTO)
    assert (again.computed, again.loaded) == (0, 1)
    other = copy.deepcopy(pipe)
    _fuse_lora(other)
    changed = ViewEditor(other, CFG, None, tmp_path)
    changed.inversion(PHOTO)
    assert (changed.computed, changed.loaded) == (1, 0)


def test_fingerprint_is_stable_and_reads_every_tensor(pipe):
    assert pipeline_fingerprint(pipe) == pipeline_fingerprint(copy.deepcopy(pipe))
    other = copy.deepcopy(pipe)
    with torch.no_grad():  # the last tensor of the last module in the digest's order
        list(other.vae.parameters())[-1].mul_(-1.0)
    assert pipeline_fingerprint(other) != pipeline_fingerprint(pipe)
