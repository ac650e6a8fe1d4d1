"""Prompt-to-Prompt controllers for the joint attention of MM-DiT models (SD3 / SD3.5, FLUX.1).

They run on the one hook layer of editkit (:mod:`editkit.hooks`): ``hooked(pipe.transformer, controllers)``
installs the processor, the flow sampling loop drives the step clock, and each call carries a
:class:`~editkit.hooks.TokenLayout` saying which positions of the joint sequence are text and which image
(SD3 ``[image | text]``, FLUX ``[text | image]``).

The joint attention matrix of one row splits into four blocks (Shin et al., ICCV 2025)::

                 image keys        text keys
    image rows   image -> image    image -> text      <- what Prompt-to-Prompt's cross-attention was
    text rows    text -> image     text -> text

What the edits do (``P`` prompts, source first; conditional rows only, as Prompt-to-Prompt):

* **image-query -> text-key block** of the target rows: Replace / Refine / Reweight exactly as Prompt-to-Prompt
  edits the UNet's cross-attention (mapper, refinement alignment, equaliser), mixed per step and token by the
  ``cross_replace_steps`` schedule. Unlike a UNet's cross-attention this block is not a distribution on its
  own: each row's softmax also covers the image keys. Replace and Refine therefore rescale the target's
  image -> image part of each row to the mass the new text part leaves (``1 - sum(text part)``), so the row
  keeps summing to 1: the image token attends to text exactly as the source's did and to the image with the
  target's own distribution, at the source's text/image balance. Reweight scales the chosen words' columns and
  leaves the rest of the row alone, as the original re-weighting does (rows then no longer sum to 1).
* **text-query rows** are left as the target's own. In a UNet the text features never see the image, so
  Prompt-to-Prompt had nothing to replace there; the closest behaviour is to let the target prompt's text
  stream evolve as it would. Copying the source's text rows would also hand a swapped word the source word's
  view of the image (its text -> image row), mixing the two prompts' text streams in every later block.
* **structure**: Shin et al.'s main control, replacing the target's image queries and image keys by the
  source's (``q_i, k_i``) during the first ``image_replace_steps`` (tau = 0.2) in every block
  (:class:`ImageQKReplace`). It takes the place of Prompt-to-Prompt's self-attention replacement and keeps the
  fused kernel (only Q and K change).

Local blend (:class:`JointLocalBlend`) follows Shin et al.: the image -> text maps of the chosen words,
averaged over heads, the aggregation blocks and the stored steps, smoothed by a 7x7 Gaussian (sigma 1) on the
token grid, 3x3 max-pooled (SD3; their FLUX branch skips the pooling), upsampled to the latent, normalised by
the maximum and thresholded at 0.3; ``x <- x_src + mask * (x - x_src)`` after every step of the blend window
(the first ``eta = 0.5`` of the steps).

Aggregation blocks (:func:`paper_blocks`): Shin et al. read the maps from the five blocks whose image -> text
maps segmented best in their analysis of each released model (SD3-medium ``[7, 8, 5, 4, 9]``, SD3.5-medium
``[7, 9, 8, 5, 10]``, SD3.5-large ``[18, 21, 20, 24, 16]``, FLUX.1 ``[18, 17, 12, 14, 11]``, all double-stream
/ joint blocks). Those are facts about trained weights, recognised here from the architecture's block counts;
any other architecture (e.g. the tiny test models) aggregates all joint blocks. (Their code enumerates
processor names, so on SD3.5-medium, whose first 13 blocks also have ``attn2``, its indices do not all land on
the blocks listed; editkit takes the listed numbers as block indices.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F

from ..hooks import AttentionCall, Controller, HookSession, LayerInfo
from ..p2p.text import step_window

DEFAULT_IMAGE_REPLACE_STEPS = 0.2  # tau of Shin et al.'s Algorithm 1
DEFAULT_BLEND_STEPS = 0.5  # eta of Shin et al.'s Algorithm 1
DEFAULT_BLEND_THRESHOLD = 0.3
BLUR_KERNEL, BLUR_SIGMA = 7, 1.0

# (joint blocks, image-only attn2 layers, single-stream blocks) -> Shin et al.'s five aggregation blocks
_PAPER_BLOCKS = {
    (24, 0, 0): (7, 8, 5, 4, 9),  # SD3-medium
    (24, 13, 0): (7, 9, 8, 5, 10),  # SD3.5-medium (MM-DiT-X: attn2 in blocks 0..12)
    (38, 0, 0): (18, 21, 20, 24, 16),  # SD3.5-large (and -large-turbo)
    (19, 0, 38): (18, 17, 12, 14, 11),  # FLUX.1 dev / schnell
}

LayerFilter = Callable[[LayerInfo], bool]


def joint_layers(layers: dict[str, LayerInfo]) -> list[LayerInfo]:
    return [lyr for lyr in layers.values() if lyr.place == "joint"]


def paper_blocks(layers: dict[str, LayerInfo]) -> tuple[int, ...]:
    """Shin et al.'s aggregation blocks for a recognised architecture, else every joint block."""
    key = (sum(lyr.place == "joint" for lyr in layers.values()), sum(lyr.place == "image" for lyr in layers.values()),
           sum(lyr.place == "single" for lyr in layers.values()))
    if key in _PAPER_BLOCKS:
        return _PAPER_BLOCKS[key]
    return tuple(sorted(lyr.block for lyr in joint_layers(layers)))


def block_filter(blocks: Iterable[int] | None, places: Sequence[str] = ("joint",)) -> LayerFilter:
    """Layers of the given places whose block index is in ``blocks`` (``None``: all of those places)."""
    chosen = None if blocks is None else frozenset(int(b) for b in blocks)

    def accept(layer: LayerInfo) -> bool:
        return layer.place in places and (chosen is None or layer.block in chosen)

    return accept


def image_to_text(probs: torch.Tensor, call: AttentionCall) -> torch.Tensor:
    """The image-query -> text-key block ``[..., N, T]`` of joint attention probabilities ``[..., L, L]`` (a view)."""
    return probs[..., call.tokens.image, call.tokens.text]


def _check_text(call: AttentionCall, expected: int, what: str) -> None:
    if call.tokens.num_text != expected:
        raise ValueError(
            f"{call.layer.name} has {call.tokens.num_text} text tokens but the {what} was built for {expected}; "
            "build it with the pipeline's text lengths (SD3: 77 CLIP + max_sequence_length T5; FLUX: max_sequence_length)"
        )


class JointAttentionStore(Controller):
    """Image -> text maps of the conditional rows, averaged over heads, summed over steps, per layer.

    ``sums[name]`` is ``[P, N, T]``; ``counts[name]`` the number of steps summed. Only the layers ``accept``
    chooses are stored, only during ``steps`` (a ``(first, last + 1)`` step range; ``None``: every step).
    Controllers before it in the list edit what it stores (put the edit first to store edited maps, as the
    original Prompt-to-Prompt does).
    """

    cond_rows_only = True

    def __init__(self, accept: LayerFilter | None = None, steps: tuple[int, int] | None = None):
        self.accept = accept or block_filter(None)
        self.steps = steps
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.layers: dict[str, LayerInfo] = {}
        self.grid: tuple[int, int] | None = None

    def wants_probs(self, call: AttentionCall) -> bool:
        if call.tokens is None or call.tokens.num_text == 0 or not self.accept(call.layer):
            return False
        return self.steps is None or self.steps[0] <= call.step < self.steps[1]

    def on_probs(self, probs: torch.Tensor, call: AttentionCall) -> torch.Tensor:
        maps = image_to_text(probs[call.layout.cond], call).float().mean(1)  # [P, N, T]
        name = call.layer.name
        if name in self.sums:
            self.sums[name] += maps
            self.counts[name] += 1
        else:
            self.sums[name] = maps.clone()
            self.counts[name] = 1
            self.layers[name] = call.layer
        self.grid = call.resolution
        return probs

    def maps(self, prompt_index: int | None = None) -> torch.Tensor:
        """Mean over the stored layers and steps: ``[P, h, w, T]`` (or ``[h, w, T]`` for one prompt)."""
        if not self.sums:
            raise ValueError("no image -> text attention was stored (no chosen layer ran in the stored steps)")
        total = sum(self.sums.values()) / sum(self.counts.values())  # [P, N, T]
        h, w = self.grid
        out = total.reshape(total.shape[0], h, w, total.shape[-1])
        return out if prompt_index is None else out[prompt_index]


class JointAttentionEdit(Controller):
    """Base of the image -> text edits: the ``cross_replace_steps`` schedule and the row bookkeeping.

    Args:
        cross_alpha: ``[num_steps + 1, P - 1, T]`` (or ``[num_steps + 1, P - 1, 1, 1, T]``) weight of the
            source's map per step, target and text token (see :func:`cross_alpha`).
        accept: the layers edited (default: every layer with text tokens, as Prompt-to-Prompt edits every
            cross-attention layer).
        renormalise: rescale the target's image -> image part so each edited row sums to 1 (module docstring).
    """

    cond_rows_only = True
    renormalise = True

    def __init__(self, cross_alpha: torch.Tensor, accept: LayerFilter | None = None):
        alpha = torch.as_tensor(cross_alpha, dtype=torch.float32)
        if alpha.ndim == 5:
            alpha = alpha[:, :, 0, 0, :]
        if alpha.ndim != 3:
            raise ValueError(f"cross_alpha must be [steps + 1, P - 1, T], got shape {tuple(alpha.shape)}")
        self.cross_alpha = alpha  # [S + 1, P - 1, T]
        self.accept = accept or block_filter(None, ("joint", "single"))

    @property
    def num_text(self) -> int:
        return self.cross_alpha.shape[-1]

    def wants_probs(self, call: AttentionCall) -> bool:
        if call.tokens is None or call.tokens.num_text == 0 or not self.accept(call.layer):
            return False
        return bool(self.cross_alpha[min(call.step, len(self.cross_alpha) - 1)].any())

    def on_probs(self, probs: torch.Tensor, call: AttentionCall) -> torch.Tensor:
        _check_text(call, self.num_text, "edit")
        rows = call.layout.cond
        img, txt = call.tokens.image, call.tokens.text
        i2t = probs[rows, :, img, txt]  # [P, H, N, T]
        base, replace = i2t[0], i2t[1:]
        alpha = self.cross_alpha[call.step].to(probs.device, probs.dtype)[:, None, None, :]  # [P-1, 1, 1, T]
        new = self.edit(base, replace) * alpha + (1 - alpha) * replace  # [P-1, H, N, T]
        targets = slice(rows.start + 1, rows.stop)
        if self.renormalise:
            i2i = probs[targets, :, img, img]  # [P-1, H, N, N]
            keep = (1 - new.sum(-1, keepdim=True)).clamp_min(0) / i2i.sum(-1, keepdim=True).clamp_min(1e-30)
            probs[targets, :, img, img] = i2i * keep
        probs[targets, :, img, txt] = new.to(probs.dtype)
        return probs

    def edit(self, base: torch.Tensor, replace: torch.Tensor) -> torch.Tensor:
        """``base [H, N, T]`` (source), ``replace [P-1, H, N, T]`` (targets) -> ``[P-1, H, N, T]``."""
        raise NotImplementedError


class JointReplace(JointAttentionEdit):
    """Word swap: target token ``j`` takes ``sum_i mapper[i, j] * source[i]`` (``mapper [P-1, T, T]``)."""

    def __init__(self, mapper: torch.Tensor, cross_alpha: torch.Tensor, accept: LayerFilter | None = None):
        super().__init__(cross_alpha, accept)
        self.mapper = torch.as_tensor(mapper, dtype=torch.float32)
        if self.mapper.shape[1:] != (self.num_text, self.num_text):
            raise ValueError(f"mapper must be [P - 1, {self.num_text}, {self.num_text}], got {tuple(self.mapper.shape)}")

    def edit(self, base, replace):
        return torch.einsum("hnw,bwt->bhnt", base, self.mapper.to(base.device, base.dtype))


class JointRefine(JointAttentionEdit):
    """Refinement: target token ``j`` takes source token ``mapper[j]`` where ``alphas[j]`` is 1, else keeps its own."""

    def __init__(self, mapper: torch.Tensor, alphas: torch.Tensor, cross_alpha: torch.Tensor,
                 accept: LayerFilter | None = None):
        super().__init__(cross_alpha, accept)
        self.mapper = torch.as_tensor(mapper, dtype=torch.int64)  # [P-1, T]
        self.alphas = torch.as_tensor(alphas, dtype=torch.float32)  # [P-1, T]
        if self.mapper.shape[1:] != (self.num_text,) or self.alphas.shape != self.mapper.shape:
            raise ValueError(f"mapper and alphas must be [P - 1, {self.num_text}], got {tuple(self.mapper.shape)} "
                             f"and {tuple(self.alphas.shape)}")

    def edit(self, base, replace):
        mapped = base[:, :, self.mapper.to(base.device)].permute(2, 0, 1, 3)  # [P-1, H, N, T]
        alphas = self.alphas.to(base.device, base.dtype)[:, None, None, :]
        return mapped * alphas + replace * (1 - alphas)


class JointReweight(JointAttentionEdit):
    """Scale the image -> text attention of chosen tokens (``equalizer [P-1, T]``), optionally after a base edit."""

    renormalise = False  # as the original re-weighting: the scaled row is not renormalised

    def __init__(self, equalizer: torch.Tensor, cross_alpha: torch.Tensor, base: JointAttentionEdit | None = None,
                 accept: LayerFilter | None = None):
        super().__init__(cross_alpha, accept)
        self.equalizer = torch.as_tensor(equalizer, dtype=torch.float32)
        self.base = base
        if self.equalizer.shape[1:] != (self.num_text,):
            raise ValueError(f"equalizer must be [P - 1, {self.num_text}], got {tuple(self.equalizer.shape)}")

    def edit(self, base, replace):
        if self.base is not None:
            base = self.base.edit(base, replace)
        return base * self.equalizer.to(base.device, base.dtype)[:, None, None, :]


class ImageQKReplace(Controller):
    """Shin et al.'s structure control: the target rows take the source row's image queries and keys.

    During steps ``window = (first, last + 1)``, in the accepted layers, the conditional target rows' ``q``
    and ``k`` at the image positions become the source's (row 0 of the conditional rows); text positions
    and the unconditional rows keep their own, as in the paper's code. Only Q/K change, so the layer keeps
    the fused attention kernel.
    """

    def __init__(self, window: tuple[int, int], accept: LayerFilter | None = None):
        self.window = window
        self.accept = accept or block_filter(None, ("joint", "single"))

    def wants_qk(self, call: AttentionCall) -> bool:
        return (call.tokens is not None and self.window[0] <= call.step < self.window[1] and self.accept(call.layer)
                and call.layout.num_prompts > 1)

    def on_qk(self, query, key, call):
        rows, img = call.layout.cond, call.tokens.image
        query, key = query.clone(), key.clone()
        for x in (query, key):
            x[rows.start + 1 : rows.stop, :, img] = x[rows.start : rows.start + 1, :, img]
        return query, key


def gaussian_blur(maps: torch.Tensor, kernel: int = BLUR_KERNEL, sigma: float = BLUR_SIGMA) -> torch.Tensor:
    """``[P, 1, h, w]`` blurred by a normalised ``kernel x kernel`` Gaussian, zero padding (Shin et al.)."""
    x = torch.arange(kernel, dtype=torch.float32) - kernel // 2
    g = torch.exp(-(x[None, :] ** 2 + x[:, None] ** 2) / (2 * sigma**2))
    g = (g / g.sum()).to(maps.device, maps.dtype)[None, None]
    return F.conv2d(maps, g, padding=kernel // 2)


class JointLocalBlend(Controller):
    """Keep the target latents equal to the source's outside a mask made from the words' image -> text maps.

    Args:
        store: the :class:`JointAttentionStore` read (its layers and steps are the aggregation).
        word_alpha: ``[P, T]``, 1 at the text positions of each prompt's blend words.
        window: ``(first, last + 1)`` steps after which the latents are blended.
        threshold: of the max-normalised mask.
        pool: 3x3 max-pool before upsampling (SD3 in Shin et al.; their FLUX branch does not pool).
    """

    def __init__(self, store: JointAttentionStore, word_alpha: torch.Tensor, window: tuple[int, int],
                 threshold: float = DEFAULT_BLEND_THRESHOLD, pool: bool = True):
        self.store = store
        self.word_alpha = torch.as_tensor(word_alpha, dtype=torch.float32)
        if not torch.isfinite(torch.tensor(float(threshold))) or not 0.0 <= threshold < 1.0:
            raise ValueError(f"the local blend threshold must be in [0, 1), got {threshold!r}")
        self.window = window
        self.threshold = float(threshold)
        self.pool = pool
        self.last_mask: torch.Tensor | None = None

    def reset(self) -> None:
        self.last_mask = None

    def mask(self, latent_hw: tuple[int, int]) -> torch.Tensor:
        """The blend mask ``[P, 1, H, W]`` (bool) at latent size, from what the store holds now."""
        maps = self.store.maps()  # [P, h, w, T]
        alpha = self.word_alpha.to(maps.device)
        if alpha.shape != (maps.shape[0], maps.shape[-1]):
            raise ValueError(f"local blend words give {tuple(alpha.shape)} token weights for maps of "
                             f"{maps.shape[0]} prompts x {maps.shape[-1]} text tokens")
        m = (maps * alpha[:, None, None, :]).sum(-1) / alpha.sum(-1).clamp_min(1)[:, None, None]  # word mean
        m = gaussian_blur(m[:, None])
        if self.pool:
            m = F.max_pool2d(m, (3, 3), (1, 1), padding=(1, 1))
        m = F.interpolate(m, size=tuple(latent_hw))
        m = m / m.amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)
        m = m.gt(self.threshold)
        return m[:1] | m

    def on_step_end(self, latents: torch.Tensor, session: HookSession) -> torch.Tensor:
        if not self.window[0] <= session.step < self.window[1]:
            return latents
        mask = self.mask(session.latent_hw)
        self.last_mask = mask
        mask = mask.to(latents.dtype)
        return latents[:1] + mask * (latents - latents[:1])


def steps_window(steps, num_steps: int, name: str) -> tuple[int, int]:
    """A fraction ``f`` -> ``(0, int(f * num_steps))``; a ``(start, end)`` pair of fractions likewise."""
    return step_window(steps, num_steps, name)


def cross_alpha(num_steps: int, num_targets: int, num_text: int, cross_replace_steps=1.0) -> torch.Tensor:
    """``[num_steps + 1, P - 1, T]``: 1 during the ``cross_replace_steps`` window, as Prompt-to-Prompt's
    ``get_time_words_attention_alpha`` with one window for every token."""
    start, end = step_window(cross_replace_steps, num_steps + 1, "cross_replace_steps")
    alpha = torch.zeros(num_steps + 1, num_targets, num_text)
    alpha[start:end] = 1
    return alpha
