"""Prompt-to-Prompt on SD3 / SD3.5 and FLUX.1: the Python API.

Examples:

    >>> import torch, editkit
    >>> from editkit.flow import p2p
    >>> pipe = editkit.load_pipeline("stabilityai/stable-diffusion-3.5-medium")
    >>> out = p2p.generate(
    ...     pipe, "a cat riding a bicycle", ["a cat riding a car"],
    ...     edit=p2p.Replace(cross_replace_steps=0.8, image_replace_steps=0.2),
    ...     local_blend=p2p.LocalBlend(words=["bicycle", "car"]),
    ...     generator=torch.Generator().manual_seed(8888), return_attention=True,
    ... )
    >>> out.targets[0].save("car.png")
    >>> maps = p2p.token_maps(pipe, out, 0)   # per-token heatmaps of the source prompt

Text positions. The joint attention's text part is the pipeline's prompt embedding: SD3 / SD3.5
``[CLIP (77 tokens, CLIP-L and CLIP-G side by side) | T5 (max_sequence_length)]``, FLUX.1 T5 only. A word's
positions are its CLIP token positions (start token at 0) and / or its T5 piece positions (no start token),
and the edits' mappers are block-diagonal over the two encoders (Replace: the word-swap rule of
Prompt-to-Prompt per encoder; Refine: Prompt-to-Prompt's token alignment per encoder).

Sampling: :func:`editkit.flow.sampling.generate`, editkit's one flow-matching Euler loop for SD3 and FLUX.1
(the grid of the pipeline's own scheduler), driving the hook session: it gets the step before every
transformer call and local blend rewrites the latents (``[P, C, h, w]``, FLUX.1's unpacked) after every step.
All prompts start from one shared noise. SD3 uses classifier-free guidance (rows ``[uncond(P), cond(P)]``),
FLUX.1-dev its guidance embedding (rows ``[cond(P)]``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image

from ..hooks import describe_layers, hooked
from ..p2p import text as p2p_text
from . import sampling
from .attention import (
    DEFAULT_BLEND_STEPS,
    DEFAULT_BLEND_THRESHOLD,
    DEFAULT_IMAGE_REPLACE_STEPS,
    ImageQKReplace,
    JointAttentionStore,
    JointLocalBlend,
    JointRefine,
    JointReplace,
    JointReweight,
    block_filter,
    cross_alpha,
    paper_blocks,
)
from .inject import ShareValues, default_value_layers

__all__ = ["FlowP2PResult", "LocalBlend", "Refine", "Replace", "Reweight", "generate", "text_layout", "token_maps"]


# --- What the user asks for ------------------------------------------------------------------------------
@dataclass
class Replace:
    """Word swap (prompts with the same word count): image -> text maps through the swap mapper."""

    cross_replace_steps: float | tuple[float, float] = 0.8
    image_replace_steps: float | tuple[float, float] = DEFAULT_IMAGE_REPLACE_STEPS


@dataclass
class Refine:
    """Words added or removed: aligned tokens take the source's maps, new tokens keep their own."""

    cross_replace_steps: float | tuple[float, float] = 0.8
    image_replace_steps: float | tuple[float, float] = DEFAULT_IMAGE_REPLACE_STEPS


@dataclass
class Reweight:
    """Scale the maps of words of the target prompt(s), optionally on top of a Replace or Refine."""

    weights: Mapping[str, float] = field(default_factory=dict)
    base: Replace | Refine | None = None
    cross_replace_steps: float | tuple[float, float] = 0.8
    image_replace_steps: float | tuple[float, float] = DEFAULT_IMAGE_REPLACE_STEPS


@dataclass
class LocalBlend:
    """Edit only where the words' maps say: one entry (a word or list of words) per prompt, source first.

    ``blend_steps``: fraction (or window) of the steps after which the latents are blended (Shin et al.'s
    eta = 0.5); ``blocks``: aggregation blocks (default :func:`~editkit.flow.attention.paper_blocks`)."""

    words: Sequence[str | Sequence[str]]
    threshold: float = DEFAULT_BLEND_THRESHOLD
    blend_steps: float | tuple[float, float] = DEFAULT_BLEND_STEPS
    blocks: Sequence[int] | None = None


@dataclass
class FlowP2PResult:
    source: Image.Image
    targets: list[Image.Image]
    latents: torch.Tensor  # [P, C, h, w] final (unpacked) latents, source first
    prompts: list[str]
    attention: JointAttentionStore | None = None
    mask: torch.Tensor | None = None  # last local-blend mask [P, 1, h, w]

    @property
    def images(self) -> list[Image.Image]:
        return [self.source, *self.targets]


# --- The pipeline's text sequence ------------------------------------------------------------------------
def family(pipe) -> str:
    names = {c.__name__ for c in type(getattr(pipe, "transformer", None)).__mro__}
    if "FluxTransformer2DModel" in names:
        return "flux"
    if "SD3Transformer2DModel" in names:
        return "sd3"
    raise ValueError(f"{type(pipe).__name__} is not an SD3 / SD3.5 or FLUX.1 pipeline: editkit.flow.p2p edits those")


@dataclass(frozen=True)
class TextLayout:
    """Where each encoder's tokens sit in the prompt embedding the transformer attends to."""

    clip: tuple[int, int] | None  # (offset, length) of the CLIP tokens (SD3)
    t5: tuple[int, int] | None  # (offset, length) of the T5 tokens

    @property
    def length(self) -> int:
        return (self.clip[1] if self.clip else 0) + (self.t5[1] if self.t5 else 0)


def text_layout(pipe, max_sequence_length: int) -> TextLayout:
    if family(pipe) == "flux":
        return TextLayout(None, (0, max_sequence_length))
    clip = pipe.tokenizer_max_length
    return TextLayout((0, clip), (clip, max_sequence_length))


def _t5_word_positions(prompt: str, word: str | int, tokenizer) -> list[int]:
    """Positions of a word's T5 pieces (T5 adds no start token; the sequence ends with ``</s>``)."""
    words = prompt.split(" ")
    if isinstance(word, str):
        places = [i for i, w in enumerate(words) if w == word]
        if not places:
            raise ValueError(f"the word {word!r} is not in the prompt {prompt!r} (words: {words})")
    else:
        places = [int(word)]
    pieces = [tokenizer.decode([t]).strip() for t in tokenizer.encode(prompt)][:-1]
    out, ptr, cur = [], 0, 0
    for i, piece in enumerate(pieces):
        cur += len(piece)
        if ptr in places:
            out.append(i)
        if ptr < len(words) and cur >= len(words[ptr]):
            ptr, cur = ptr + 1, 0
    return out


def word_positions(pipe, layout: TextLayout, prompt: str, word: str | int) -> list[int]:
    """Positions of ``word`` of ``prompt`` in the joint text sequence (CLIP and T5 parts)."""
    out = []
    if layout.clip is not None:
        off, n = layout.clip
        idx = p2p_text.word_token_indices(prompt, word, pipe.tokenizer)
        out += [off + i for i in p2p_text.check_within(prompt, word, idx, n)]
    if layout.t5 is not None:
        off, n = layout.t5
        idx = _t5_word_positions(prompt, word, pipe.tokenizer_3 if layout.clip is not None else pipe.tokenizer_2)
        if any(i >= n - 1 for i in idx):
            raise ValueError(f"the word {word!r} of the prompt {prompt!r} falls after the T5 limit of {n} tokens "
                             "(max_sequence_length); shorten the prompt or raise the limit")
        out += [off + i for i in idx]
    return out


def _swap_mapper(source: str, target: str, positions, n: int) -> torch.Tensor:
    """Prompt-to-Prompt's word-swap mapper ``[n, n]`` for one encoder, from per-word positions."""
    sw, tw = source.split(" "), target.split(" ")
    if len(sw) != len(tw):
        raise ValueError(
            f"a word swap (Replace) needs prompts with the same number of words, but {source!r} has {len(sw)} words "
            f"and {target!r} has {len(tw)}; use Refine for prompts that add or remove words")
    mapper = torch.zeros(n, n)
    s_pos = [positions(source, i) for i in range(len(sw))]
    t_pos = [positions(target, i) for i in range(len(tw))]
    src_taken, tgt_taken = set(), set()
    for sp, tp in zip(s_pos, t_pos, strict=True):
        if len(sp) == len(tp):
            for a, b in zip(sp, tp, strict=True):
                mapper[a, b] = 1
        else:
            for a in sp:
                for b in tp:
                    mapper[a, b] = 1 / len(tp)
        src_taken.update(sp)
        tgt_taken.update(tp)
    # every other position (start / end tokens, padding) pairs in order, as the original's running indices
    rest_s = [i for i in range(n) if i not in src_taken]
    rest_t = [j for j in range(n) if j not in tgt_taken]
    for a, b in zip(rest_s, rest_t, strict=False):
        mapper[a, b] = 1
    return mapper


def _mappers(pipe, layout: TextLayout, prompts: list[str], kind: str):
    total = layout.length
    parts = []
    if layout.clip is not None:
        parts.append(("clip", layout.clip, pipe.tokenizer))
    if layout.t5 is not None:
        parts.append(("t5", layout.t5, pipe.tokenizer_3 if layout.clip is not None else pipe.tokenizer_2))
    out = []
    for target in prompts[1:]:
        if kind == "replace":
            m = torch.zeros(total, total)
            for name, (off, n), tok in parts:
                if name == "clip":
                    def pos(p, i, tok=tok):
                        return p2p_text.word_token_indices(p, i, tok)
                else:
                    def pos(p, i, tok=tok):
                        return _t5_word_positions(p, i, tok)
                m[off: off + n, off: off + n] = _swap_mapper(prompts[0], target, pos, n)
            out.append(m)
        else:
            mapper, alphas = torch.zeros(total, dtype=torch.int64), torch.ones(total)
            for _, (off, n), tok in parts:
                mp, al = p2p_text.refinement_mapper(prompts[0], target, tok, n)
                mapper[off: off + n] = mp + off
                alphas[off: off + n] = al
            out.append((mapper, alphas))
    return out


def _build_edit(pipe, layout, prompts, edit, num_steps):
    alpha = cross_alpha(num_steps, len(prompts) - 1, layout.length, edit.cross_replace_steps)
    if isinstance(edit, Replace):
        return JointReplace(torch.stack(_mappers(pipe, layout, prompts, "replace")), alpha)
    if isinstance(edit, Refine):
        pairs = _mappers(pipe, layout, prompts, "refine")
        return JointRefine(torch.stack([m for m, _ in pairs]), torch.stack([a for _, a in pairs]), alpha)
    if isinstance(edit, Reweight):
        if not edit.weights:
            raise ValueError("Reweight needs at least one word and its weight, e.g. weights={'smiling': 2.0}")
        eq = torch.ones(len(prompts) - 1, layout.length)
        for row, prompt in enumerate(prompts[1:]):
            for word, value in edit.weights.items():
                eq[row, word_positions(pipe, layout, prompt, word)] = float(value)
        base = None if edit.base is None else _build_edit(pipe, layout, prompts, edit.base, num_steps)
        return JointReweight(eq, alpha, base)
    raise ValueError(f"edit must be Replace, Refine or Reweight, got {type(edit).__name__}")


# --- Sampling ---------------------------------------------------------------------------------------------
@torch.no_grad()
def generate(
    pipe,
    source_prompt: str,
    target_prompts: str | Sequence[str] = (),
    edit: Replace | Refine | Reweight | None = None,
    local_blend: LocalBlend | None = None,
    *,
    num_inference_steps: int = 28,
    guidance_scale: float | None = None,
    negative_prompt: str | None = None,
    generator: torch.Generator | None = None,
    height: int | None = None,
    width: int | None = None,
    max_sequence_length: int | None = None,
    value_steps: int = 0,
    return_attention: bool = False,
    progress: bool = True,
    output_type: str = "pil",
) -> FlowP2PResult:
    """Generate the source image and its Prompt-to-Prompt edits from one shared initial noise (SD3 / FLUX.1).

    Args:
        edit: :class:`Replace`, :class:`Refine`, :class:`Reweight` or ``None`` (no attention control).
        local_blend: restrict the edit to the region of the given words (Shin et al.'s blend).
        num_inference_steps: flow-matching Euler steps (28, the SD3 / FLUX.1-dev pipelines' default).
        guidance_scale: SD3 classifier-free guidance (7.0) or FLUX.1's embedded guidance (3.5) by default.
        max_sequence_length: T5 tokens (the pipeline's default: 256 SD3, 512 FLUX.1).
        value_steps: share the source row's attention values with the targets during the first
            ``value_steps`` steps, in RF-Solver-Edit's layers (:mod:`editkit.flow.inject`); 0: off.
        return_attention: keep the image -> text maps of the aggregation blocks (``result.attention``) for
            :func:`token_maps`.
    """
    fam = family(pipe)
    prompts = [source_prompt, *([target_prompts] if isinstance(target_prompts, str) else list(target_prompts))]
    if any(not isinstance(p, str) or not p.strip() for p in prompts):
        raise ValueError(f"prompts must be non-empty strings, got {prompts!r}")
    if edit is not None and len(prompts) < 2:
        raise ValueError("an edit needs at least one target prompt")
    if not isinstance(num_inference_steps, int) or isinstance(num_inference_steps, bool) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
    if isinstance(value_steps, bool) or not isinstance(value_steps, int) or not 0 <= value_steps <= num_inference_steps:
        raise ValueError(f"value_steps must be an integer in [0, {num_inference_steps}], got {value_steps!r}")
    guidance_scale = None if guidance_scale is None else float(guidance_scale)  # None: the pipeline's default
    max_len = max_sequence_length or (256 if fam == "sd3" else 512)
    size = pipe.default_sample_size * pipe.vae_scale_factor
    height, width = height or size, width or size
    sampling.check_latent_size(pipe, height, width)
    n = len(prompts)
    layout = text_layout(pipe, max_len)

    # controllers
    layers = describe_layers(pipe.transformer)
    controllers = []
    if edit is not None:
        controllers.append(_build_edit(pipe, layout, prompts, edit, num_inference_steps))
        window = p2p_text.step_window(edit.image_replace_steps, num_inference_steps, "image_replace_steps")
        controllers.append(ImageQKReplace(window))
    if value_steps and n > 1:
        controllers.append(ShareValues(default_value_layers(layers), (0, value_steps)))
    store = blend = None
    if local_blend is not None or return_attention:
        blocks = paper_blocks(layers) if local_blend is None or local_blend.blocks is None else local_blend.blocks
        window = None
        if local_blend is not None and not return_attention:
            window = p2p_text.step_window(local_blend.blend_steps, num_inference_steps, "blend_steps")
        store = JointAttentionStore(block_filter(blocks), window)
        controllers.append(store)  # after the edit: it keeps the edited maps, as the original
    if local_blend is not None:
        if len(local_blend.words) != n:
            raise ValueError(f"local blend words need one entry per prompt ({n}: source first), got {len(local_blend.words)}")
        alpha = torch.zeros(n, layout.length)
        for row, (prompt, ws) in enumerate(zip(prompts, local_blend.words, strict=True)):
            for w in [ws] if isinstance(ws, str) else ws:
                alpha[row, word_positions(pipe, layout, prompt, w)] = 1
        window = p2p_text.step_window(local_blend.blend_steps, num_inference_steps, "blend_steps")
        blend = JointLocalBlend(store, alpha, window, local_blend.threshold, pool=fam == "sd3")
        controllers.append(blend)

    with hooked(pipe.transformer, controllers) as session:
        x = sampling.generate(pipe, prompts, height=height, width=width, num_inference_steps=num_inference_steps,
                              guidance_scale=guidance_scale, generator=generator, negative_prompt=negative_prompt or "",
                              max_sequence_length=max_len, session=session, output_type="latent", progress=progress)
    images = sampling.decode_latents(pipe, x, output_type)
    return FlowP2PResult(images[0], list(images[1:]), x, prompts, store if return_attention else None,
                         None if blend is None else blend.last_mask)


def token_maps(pipe, result: FlowP2PResult, prompt_index: int = 0, max_sequence_length: int | None = None):
    """Per-token heatmaps of one prompt: ``(labels, maps [h, w, K])``, each map normalised by its maximum.

    The tokens are the prompt's T5 pieces (FLUX.1) or its CLIP tokens (SD3, start and end tokens included),
    as ``editkit.jobs`` draws the UNet's cross-attention tokens."""
    if result.attention is None:
        raise ValueError("the result holds no attention maps: generate with return_attention=True")
    fam = family(pipe)
    maps = result.attention.maps(prompt_index).float().cpu()  # [h, w, T]
    prompt = result.prompts[prompt_index]
    if fam == "sd3":
        ids = pipe.tokenizer.encode(prompt)[: pipe.tokenizer_max_length]
        labels = [pipe.tokenizer.decode([int(t)]) for t in ids]
        chosen = maps[..., : len(ids)]
    else:
        ids = pipe.tokenizer_2.encode(prompt)
        labels = [pipe.tokenizer_2.decode([int(t)]) for t in ids]
        chosen = maps[..., : len(ids)]
    chosen = chosen / chosen.reshape(-1, chosen.shape[-1]).amax(0).clamp_min(1e-12)
    return labels, chosen.numpy()
