"""Prompt-to-Prompt controllers on the editkit hook layer.

The hierarchy follows google/prompt-to-prompt: :class:`AttentionStore` does the bookkeeping,
:class:`AttentionEdit` owns the time schedules and has one abstract method, ``replace_cross_attention``;
:class:`ReplaceEdit`, :class:`RefineEdit` and :class:`ReweightEdit` are a few lines each; :class:`LocalBlendControl`
rewrites the latents after each step from the stored cross-attention.

Semantics kept from the original (published results depend on them):

* Only the conditional half of the guidance batch is read and edited; row 0 of it is the source prompt,
  rows 1.. the targets. (The original assumes the conditional half is the second one; here the
  :class:`~editkit.hooks.BatchLayout` says where it is.)
* Cross-attention is replaced in every layer, weighted per step and token by ``cross_replace_alpha``;
  self-attention is replaced during the ``self_replace_steps`` window, only in layers whose feature map
  is at most the latent size / 4 per side (the text-to-image notebook's ``<= 16 ** 2`` pixels at 512 px);
  real-image edits (:func:`editkit.editing.edit_image`) use latent / 2 (the null-text notebook's and
  PnPInversion's ``<= 32 ** 2``), chosen by ``self_replace_min_factor``.
* The attention store keeps layers at most latent / 2 per side (the original's ``<= 32 ** 2`` at 512 px),
  after the edit, summed over steps; averages are over steps, layers and heads.
* Local blend uses the cross-attention maps of the down and up layers at latent / 4 per side (the
  original's 16x16 maps), 3x3 max-pooling, normalisation by the maximum, thresholds ``(0.3, 0.3)`` and the
  start step ``0.2`` of the later variant of the original code, with optional subtracted words.

Layers are chosen by their downsampling factor relative to the latent (derived from the UNet config by the
hook layer), so the same rules hold at 768 px and on SDXL.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..hooks import AttentionCall, Controller, HookSession
from . import text

STORE_MIN_FACTOR = 2  # store layers whose map is at most latent / 2 per side (32x32 at 512 px)
SELF_REPLACE_MIN_FACTOR = 4  # replace self-attention at most latent / 4 per side (16x16 at 512 px), text-to-image
REAL_IMAGE_SELF_REPLACE_MIN_FACTOR = 2  # at most latent / 2 per side (32x32 at 512 px): the real-image code's rule
BLEND_FACTOR = 4  # local blend reads the latent / 4 cross-attention maps (16x16 at 512 px)
BLEND_PLACES = ("down", "up")


class AttentionStore(Controller):
    """Sums the attention probabilities of the conditional rows over steps, per layer.

    ``sums[name]`` is ``[P, N, M]`` (summed over heads and steps); ``heads[name]`` the number of heads, so
    averages weight every head of every layer equally, as the original does.
    """

    cond_rows_only = True

    def __init__(self, min_factor: int = STORE_MIN_FACTOR, cross_only: bool = False):
        self.min_factor = min_factor
        self.cross_only = cross_only
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.heads: dict[str, int] = {}
        self.layers: dict = {}
        self.steps = 0
        self.latent_hw: tuple[int, int] | None = None
        self._last_step = -1

    def wants_probs(self, call: AttentionCall) -> bool:
        return call.layer.factor >= self.min_factor and (call.layer.is_cross or not self.cross_only)

    def on_probs(self, probs: torch.Tensor, call: AttentionCall) -> torch.Tensor:
        cond = probs[call.layout.cond].float()  # [P, H, N, M]
        name = call.layer.name
        summed = cond.sum(1)  # [P, N, M]
        if name in self.sums:
            self.sums[name] += summed
        else:
            self.sums[name] = summed
            self.heads[name] = cond.shape[1]
            self.layers[name] = call.layer
        self.latent_hw = call.latent_hw
        if call.step != self._last_step:
            self._last_step = call.step
            self.steps += 1
        return probs

    def maps(self, factor: int, places: Sequence[str], is_cross: bool, average: bool = True):
        """The stored maps of the chosen layers: a list of ``([P, N, M] head-sum, heads)``."""
        out = []
        for name, layer in self.layers.items():
            if layer.factor == factor and layer.place in places and layer.is_cross == is_cross:
                s = self.sums[name] / self.steps if average and self.steps else self.sums[name]
                out.append((s, self.heads[name]))
        return out

    def aggregate(self, factor: int, places: Sequence[str], is_cross: bool, prompt_index: int) -> torch.Tensor:
        """Average over steps, layers and heads of one prompt's maps: ``[h, w, M]``."""
        chosen = self.maps(factor, places, is_cross)
        if not chosen:
            available = sorted({(lyr.place, lyr.factor, lyr.is_cross) for lyr in self.layers.values()})
            raise ValueError(
                f"no stored {'cross' if is_cross else 'self'}-attention at 1/{factor} of the latent in {tuple(places)}; "
                f"stored (place, factor, is_cross): {available}"
            )
        total = sum(s[prompt_index] for s, _ in chosen) / sum(h for _, h in chosen)
        h, w = next(iter(self.layers[n] for n in self.layers if self.layers[n].factor == factor)).resolution(self.latent_hw)
        return total.reshape(h, w, total.shape[-1])


class AttentionEdit(Controller):
    """Base of the cross-attention edits: time schedules and the source -> target replacement.

    Args:
        prompts: source first, then the targets.
        num_steps: denoising steps of the run (the schedules are fractions of it).
        cross_replace_steps: fraction, ``(start, end)`` window, or per-word dict with ``"default_"``.
        self_replace_steps: fraction or ``(start, end)`` window.
        self_replace_min_factor: replace self-attention only in layers at most latent / this per side
            (4: text-to-image rule; 2: real-image rule).
    """

    cond_rows_only = True

    def __init__(self, prompts, tokenizer, num_steps: int, cross_replace_steps=0.8, self_replace_steps=0.4, max_len: int = 77,
                 self_replace_min_factor: int = SELF_REPLACE_MIN_FACTOR):
        if len(prompts) < 2:
            raise ValueError("an edit needs a source prompt and at least one target prompt")
        if isinstance(self_replace_min_factor, bool) or not isinstance(self_replace_min_factor, int) or self_replace_min_factor < 1:
            raise ValueError(f"self_replace_min_factor must be a positive integer (2 or 4), got {self_replace_min_factor!r}")
        self.prompts = list(prompts)
        self.max_len = max_len
        self.self_replace_min_factor = self_replace_min_factor
        self.cross_alpha = text.cross_replace_alpha(prompts, num_steps, cross_replace_steps, tokenizer, max_len)
        self.self_window = text.step_window(self_replace_steps, num_steps)

    def wants_probs(self, call: AttentionCall) -> bool:
        if call.layer.is_cross:
            return bool(self.cross_alpha[call.step].any())  # alpha 0 everywhere: the edit is the identity
        start, end = self.self_window
        return start <= call.step < end and call.layer.factor >= self.self_replace_min_factor

    def on_probs(self, probs: torch.Tensor, call: AttentionCall) -> torch.Tensor:
        rows = call.layout.cond
        cond = probs[rows]  # [P, H, N, M]
        base, replace = cond[0], cond[1:]  # [H, N, M], [P-1, H, N, M]
        if call.layer.is_cross:
            if base.shape[-1] != self.max_len:
                raise ValueError(f"the text encoder gives {base.shape[-1]} tokens, the edit was built for {self.max_len}")
            alpha = self.cross_alpha[call.step].to(probs.device, probs.dtype)  # [P-1, 1, 1, M]
            new = self.replace_cross_attention(base, replace) * alpha + (1 - alpha) * replace
        else:
            new = base.unsqueeze(0).expand_as(replace)
        # `new` is a fresh tensor (or row 0 broadcast), so the target rows can be written in place
        probs[rows.start + 1 : rows.stop] = new.to(probs.dtype)
        return probs

    def replace_cross_attention(self, base: torch.Tensor, replace: torch.Tensor) -> torch.Tensor:
        """``base [H, N, M]`` (source), ``replace [P-1, H, N, M]`` (targets) -> ``[P-1, H, N, M]``."""
        raise NotImplementedError


class ReplaceEdit(AttentionEdit):
    """Word swap: the target tokens take the source tokens' attention through a mapping matrix."""

    def __init__(self, prompts, tokenizer, num_steps, cross_replace_steps=0.8, self_replace_steps=0.4, max_len=77,
                 self_replace_min_factor=SELF_REPLACE_MIN_FACTOR):
        super().__init__(prompts, tokenizer, num_steps, cross_replace_steps, self_replace_steps, max_len,
                         self_replace_min_factor)
        self.mapper = torch.stack([text.replacement_mapper(prompts[0], p, tokenizer, max_len) for p in prompts[1:]])

    def replace_cross_attention(self, base, replace):
        return torch.einsum("hpw,bwn->bhpn", base, self.mapper.to(base.device, base.dtype))


class RefineEdit(AttentionEdit):
    """Refinement: tokens aligned with the source take its attention; new tokens keep their own."""

    def __init__(self, prompts, tokenizer, num_steps, cross_replace_steps=0.8, self_replace_steps=0.4, max_len=77,
                 self_replace_min_factor=SELF_REPLACE_MIN_FACTOR):
        super().__init__(prompts, tokenizer, num_steps, cross_replace_steps, self_replace_steps, max_len,
                         self_replace_min_factor)
        pairs = [text.refinement_mapper(prompts[0], p, tokenizer, max_len) for p in prompts[1:]]
        self.mapper = torch.stack([m for m, _ in pairs])  # [P-1, M]
        self.alphas = torch.stack([a for _, a in pairs]).reshape(len(pairs), 1, 1, max_len)  # [P-1, 1, 1, M]

    def replace_cross_attention(self, base, replace):
        mapped = base[:, :, self.mapper.to(base.device)].permute(2, 0, 1, 3)  # [P-1, H, N, M]
        alphas = self.alphas.to(base.device, base.dtype)
        return mapped * alphas + replace * (1 - alphas)


class ReweightEdit(AttentionEdit):
    """Attention re-weighting: scale the attention of chosen words, optionally on top of another edit.

    ``weights`` maps words (or word indices) of the target prompts to a factor. With ``base`` (a
    Replace or Refine edit), its cross-attention replacement runs first, as in the original; the time
    schedules are this controller's own.
    """

    def __init__(self, prompts, tokenizer, num_steps, weights, base: AttentionEdit | None = None,
                 cross_replace_steps=0.8, self_replace_steps=0.4, max_len=77,
                 self_replace_min_factor=SELF_REPLACE_MIN_FACTOR):
        super().__init__(prompts, tokenizer, num_steps, cross_replace_steps, self_replace_steps, max_len,
                         self_replace_min_factor)
        self.base = base
        self.equalizer = text.equalizer(prompts[1:], weights, tokenizer, max_len)  # [P-1, M]

    def replace_cross_attention(self, base, replace):
        if self.base is not None:
            base = self.base.replace_cross_attention(base, replace)  # [P-1, H, N, M]
        eq = self.equalizer.to(base.device, base.dtype)[:, None, None, :]  # [P-1, 1, 1, M]
        return base * eq


class LocalBlendControl(Controller):
    """Keep the target latents equal to the source's outside a mask made from the words' cross-attention.

    ``x_t <- x_src + mask * (x_t - x_src)`` after every step from ``start_blend`` on. The mask is the union
    of the source's and the target's word masks, minus the subtracted words' masks.
    """

    def __init__(self, prompts, tokenizer, store: AttentionStore, words, subtract_words=None,
                 start_blend: float = 0.2, threshold=(0.3, 0.3), num_steps: int = 50, max_len: int = 77):
        self.store = store
        self.alpha = self._word_alpha(prompts, words, tokenizer, max_len, "words")
        self.subtract = None if subtract_words is None else self._word_alpha(prompts, subtract_words, tokenizer, max_len, "subtract_words")
        if not 0.0 <= start_blend <= 1.0:
            raise ValueError(f"start_blend must be in [0, 1], got {start_blend}")
        self.start_blend = int(start_blend * num_steps)
        self.threshold = tuple(threshold) if isinstance(threshold, Sequence) else (float(threshold),) * 2
        self.last_mask: torch.Tensor | None = None

    @staticmethod
    def _word_alpha(prompts, words, tokenizer, max_len, name) -> torch.Tensor:
        if len(words) != len(prompts):
            raise ValueError(f"local blend {name} needs one entry per prompt ({len(prompts)}: source first), got {len(words)}")
        alpha = torch.zeros(len(prompts), max_len)
        for row, (prompt, ws) in enumerate(zip(prompts, words, strict=True)):
            for w in [ws] if isinstance(ws, str) else ws:
                alpha[row, text.check_within(prompt, w, text.word_token_indices(prompt, w, tokenizer), max_len)] = 1
        return alpha  # [P, M]

    def reset(self) -> None:
        self.last_mask = None

    def _mask(self, maps: torch.Tensor, alpha: torch.Tensor, use_pool: bool, hw) -> torch.Tensor:
        # maps: [P, h, w, M] (mean over layers and heads) -> bool mask [P, 1, H, W]
        m = (maps * alpha[:, None, None, :]).sum(-1)[:, None]  # [P, 1, h, w]
        if use_pool:
            m = F.max_pool2d(m, (3, 3), (1, 1), padding=(1, 1))
        m = F.interpolate(m, size=hw)
        m = m / m.amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)
        m = m.gt(self.threshold[1 - int(use_pool)])
        return m[:1] | m

    def on_step_end(self, latents: torch.Tensor, session: HookSession) -> torch.Tensor:
        if session.step + 1 <= self.start_blend:
            return latents
        chosen = self.store.maps(BLEND_FACTOR, BLEND_PLACES, is_cross=True, average=False)
        if not chosen:
            raise ValueError(
                f"local blend needs cross-attention at 1/{BLEND_FACTOR} of the latent in the down and up blocks; "
                "this UNet has none at that resolution"
            )
        heads = sum(h for _, h in chosen)
        layer = next(lyr for lyr in self.store.layers.values() if lyr.factor == BLEND_FACTOR)
        h, w = layer.resolution(self.store.latent_hw)
        maps = (sum(s for s, _ in chosen) / heads).reshape(-1, h, w, chosen[0][0].shape[-1])  # [P, h, w, M]
        alpha = self.alpha.to(maps.device)
        mask = self._mask(maps, alpha, True, latents.shape[-2:])
        if self.subtract is not None:
            mask = mask & ~self._mask(maps, self.subtract.to(maps.device), False, latents.shape[-2:])
        self.last_mask = mask
        mask = mask.to(latents.dtype)
        return latents[:1] + mask * (latents - latents[:1])
