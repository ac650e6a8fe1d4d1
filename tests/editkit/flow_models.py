"""Bare tiny MM-DiT transformers and their inputs for the hook-layer tests (no pipeline, no tokenizer)."""

from __future__ import annotations

import functools

import torch

from editkit import testing

LATENT = 16  # a 16 x 16 latent: 8 x 8 = 64 image tokens on both models
TEXT = 7  # text tokens


class Model:
    """A tiny transformer and a call that takes unpacked latents ``[B, 4, 16, 16]`` and text ``[B, T, 96]``."""

    def __init__(self, family: str):
        self.family = family
        if family == "flux":
            self.net = testing.tiny_flux_transformer(seed=0)
        else:
            self.net = testing.tiny_sd3_transformer(seed=0, variant="sd35")

    def __call__(self, latents: torch.Tensor, text: torch.Tensor, t: float = 0.7) -> torch.Tensor:
        b = latents.shape[0]
        with torch.no_grad():
            if self.family == "flux":
                h, w = latents.shape[-2:]
                packed = pack(latents)
                img_ids = torch.zeros(h // 2, w // 2, 3)
                img_ids[..., 1] = torch.arange(h // 2)[:, None]
                img_ids[..., 2] = torch.arange(w // 2)[None, :]
                out = self.net(hidden_states=packed, encoder_hidden_states=text, pooled_projections=torch.ones(b, 32) * 0.1,
                               timestep=torch.full((b,), t), guidance=torch.full((b,), 3.5),
                               img_ids=img_ids.reshape(-1, 3), txt_ids=torch.zeros(text.shape[1], 3), return_dict=False)[0]
                return unpack(out, h, w)
            return self.net(hidden_states=latents, encoder_hidden_states=text, pooled_projections=torch.ones(b, 80) * 0.1,
                            timestep=torch.full((b,), 1000 * t), return_dict=False)[0]


@functools.cache
def get_model(family: str) -> Model:
    """One tiny model per family for the whole test session (the hooks restore its processors)."""
    return Model(family)


def pack(x: torch.Tensor) -> torch.Tensor:
    """FluxPipeline._pack_latents: ``[B, C, H, W] -> [B, H/2 * W/2, 4C]``."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    b, _, d = x.shape
    return x.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, d // 4, h, w)


def inputs(batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, LATENT, LATENT, generator=g), torch.randn(batch, TEXT, 96, generator=g)
