"""Attention-map visualisation: per-token cross-attention heatmaps and self-attention components.

``cross_attention_grid`` shows what the original's ``show_cross_attention`` shows (the maps of every token of
a prompt, averaged over steps, heads and the down and up layers at latent / 4, each normalised by its
maximum, labelled with the token), optionally over the image. ``self_attention_components`` shows the
principal components of the averaged self-attention (the original's ``show_self_attention_comp``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from .controllers import AttentionStore


def _label(tile: np.ndarray, label: str) -> np.ndarray:
    h, w = tile.shape[:2]
    band = Image.new("RGB", (w, max(14, h // 6)), (255, 255, 255))
    draw = ImageDraw.Draw(band)
    tw = draw.textlength(label)
    draw.text(((w - tw) / 2, 1), label, fill=(0, 0, 0))
    return np.concatenate([tile, np.asarray(band)], axis=0)


def _grid(tiles: Sequence[np.ndarray], columns: int | None = None, gap: int = 4) -> Image.Image:
    columns = columns or len(tiles)
    rows = (len(tiles) + columns - 1) // columns
    h, w = tiles[0].shape[:2]
    canvas = np.full((rows * h + (rows - 1) * gap, columns * w + (columns - 1) * gap, 3), 255, np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, columns)
        canvas[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = tile
    return Image.fromarray(canvas)


def _heat(values: np.ndarray, size: int, image: Image.Image | None, alpha: float) -> np.ndarray:
    """Map ``values`` in [0, 1] (h, w) to a red-yellow heatmap tile, blended over ``image`` if given."""
    v = np.clip(values, 0, 1)
    rgb = np.stack([np.clip(2 * v, 0, 1), np.clip(2 * v - 1, 0, 1) * 0.9 + 0.1 * v, 0.2 * (1 - v)], -1)
    tile = Image.fromarray((rgb * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
    if image is not None:
        tile = Image.blend(image.convert("RGB").resize((size, size)), tile, alpha)
    return np.asarray(tile)


def cross_attention_grid(
    store: AttentionStore,
    tokenizer,
    prompt: str,
    prompt_index: int = 0,
    factor: int = 4,
    places: Sequence[str] = ("up", "down"),
    image: Image.Image | None = None,
    size: int = 256,
    alpha: float = 0.6,
    include_special: bool = True,
) -> Image.Image:
    """One PIL grid with a heatmap per token of ``prompt`` (start and end tokens included by default).

    Args:
        store: ``result.attention`` of a run with ``return_attention=True``.
        prompt_index: which prompt of the run (0 = source).
        factor: the layers at latent / factor per side (4: the original's 16x16 maps at 512 px).
        image: draw the heatmaps over this image (e.g. ``result.images[prompt_index]``).
    """
    if store is None:
        raise ValueError("no attention was stored: run with return_attention=True")
    maps = store.aggregate(factor, places, True, prompt_index)  # [h, w, M]
    tokens = tokenizer.encode(prompt)
    tiles = []
    for i, tok in enumerate(tokens):
        if not include_special and i in (0, len(tokens) - 1):
            continue
        m = maps[:, :, i].float().cpu().numpy()
        m = m / max(m.max(), 1e-12)
        tiles.append(_label(_heat(m, size, image, alpha), tokenizer.decode([int(tok)])))
    return _grid(tiles)


def self_attention_components(
    store: AttentionStore,
    prompt_index: int = 0,
    factor: int = 4,
    places: Sequence[str] = ("up", "down"),
    num_components: int = 6,
    size: int = 256,
) -> Image.Image:
    """The top principal components of the averaged self-attention ``[hw, hw]`` as images."""
    if store is None:
        raise ValueError("no attention was stored: run with return_attention='all'")
    if store.cross_only:
        raise ValueError("self-attention was not stored (return_attention=True keeps cross-attention only): "
                         "run with return_attention='all'")
    maps = store.aggregate(factor, places, False, prompt_index)  # [h, w, hw]
    h, w = maps.shape[:2]
    a = maps.reshape(h * w, h * w).double().cpu()
    _, _, vh = torch.linalg.svd(a - a.mean(dim=1, keepdim=True))
    tiles = []
    for i in range(min(num_components, vh.shape[0])):
        comp = vh[i].reshape(h, w).numpy()
        comp = comp - comp.min()
        comp = comp / max(comp.max(), 1e-12)
        tile = np.asarray(Image.fromarray((comp * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC))
        tiles.append(np.repeat(tile[:, :, None], 3, axis=2))
    return _grid(tiles)
