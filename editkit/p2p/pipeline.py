"""Prompt-to-Prompt sampling: the Python API.

Examples:

    >>> import torch, editkit
    >>> from editkit import p2p
    >>> pipe = editkit.load_pipeline("stable-diffusion-v1-5/stable-diffusion-v1-5")
    >>> out = p2p.generate(
    ...     pipe, "a cat riding a bicycle", ["a cat riding a car"],
    ...     edit=p2p.Replace(cross_replace_steps=0.8, self_replace_steps=0.4),
    ...     local_blend=p2p.LocalBlend(words=["bicycle", "car"]),
    ...     generator=torch.Generator().manual_seed(8888), return_attention=True,
    ... )
    >>> out.targets[0].save("car.png")
    >>> p2p.cross_attention_grid(out.attention, pipe.tokenizer, out.prompts[0]).save("maps.png")
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image

from .. import sampling
from ..hooks import hooked
from .controllers import (
    BLEND_FACTOR,
    SELF_REPLACE_MIN_FACTOR,
    AttentionEdit,
    AttentionStore,
    LocalBlendControl,
    RefineEdit,
    ReplaceEdit,
    ReweightEdit,
)

ATTENTION_CHOICES = (False, True, "cross", "all")  # values of generate(return_attention=...)


# --- What the user asks for: plain dataclasses, turned into controllers once the prompts are known ----------
@dataclass
class Replace:
    """Word swap ("a cat riding a bicycle" -> "a cat riding a car"): prompts with the same word count."""

    cross_replace_steps: float | tuple[float, float] | dict = 0.8
    self_replace_steps: float | tuple[float, float] = 0.4

    def build(self, prompts, tokenizer, num_steps, max_len, self_replace_min_factor=SELF_REPLACE_MIN_FACTOR) -> AttentionEdit:
        return ReplaceEdit(prompts, tokenizer, num_steps, self.cross_replace_steps, self.self_replace_steps, max_len,
                           self_replace_min_factor)


@dataclass
class Refine:
    """Refinement ("a cat" -> "a watercolor painting of a cat"): words added or removed."""

    cross_replace_steps: float | tuple[float, float] | dict = 0.8
    self_replace_steps: float | tuple[float, float] = 0.4

    def build(self, prompts, tokenizer, num_steps, max_len, self_replace_min_factor=SELF_REPLACE_MIN_FACTOR) -> AttentionEdit:
        return RefineEdit(prompts, tokenizer, num_steps, self.cross_replace_steps, self.self_replace_steps, max_len,
                          self_replace_min_factor)


@dataclass
class Reweight:
    """Scale the attention of words of the target prompt(s), optionally on top of a Replace or Refine."""

    weights: Mapping[str, float] = field(default_factory=dict)
    base: Replace | Refine | None = None
    cross_replace_steps: float | tuple[float, float] | dict = 0.8
    self_replace_steps: float | tuple[float, float] = 0.4

    def build(self, prompts, tokenizer, num_steps, max_len, self_replace_min_factor=SELF_REPLACE_MIN_FACTOR) -> AttentionEdit:
        base = None if self.base is None else self.base.build(prompts, tokenizer, num_steps, max_len, self_replace_min_factor)
        return ReweightEdit(prompts, tokenizer, num_steps, self.weights, base, self.cross_replace_steps,
                            self.self_replace_steps, max_len, self_replace_min_factor)


@dataclass
class LocalBlend:
    """Edit only where the words' cross-attention says: ``words`` has one entry (a word or a list of
    words) per prompt, source first, e.g. ``["bicycle", "car"]``; ``subtract_words`` likewise."""

    words: Sequence[str | Sequence[str]]
    subtract_words: Sequence[str | Sequence[str]] | None = None
    start_blend: float = 0.2
    threshold: tuple[float, float] = (0.3, 0.3)


@dataclass
class P2PResult:
    """Output of :func:`generate`."""

    source: Image.Image
    targets: list[Image.Image]
    latents: torch.Tensor  # [P, C, h, w] final latents, source first
    prompts: list[str]
    attention: AttentionStore | None = None  # stored maps when return_attention is set (cross only unless "all")
    mask: torch.Tensor | None = None  # last local-blend mask [P, 1, h, w] when local_blend was used

    @property
    def images(self) -> list[Image.Image]:
        return [self.source, *self.targets]


def check_inputs(source_prompt, target_prompts, guidance_scale) -> list[str]:
    if not isinstance(source_prompt, str) or not source_prompt.strip():
        raise ValueError(f"source_prompt must be a non-empty string, got {source_prompt!r}")
    if isinstance(target_prompts, str):
        target_prompts = [target_prompts]
    target_prompts = list(target_prompts)
    if any(not isinstance(p, str) or not p.strip() for p in target_prompts):
        raise ValueError(f"target prompts must be non-empty strings, got {target_prompts!r}")
    sampling.check_guidance(guidance_scale)
    return [source_prompt, *target_prompts]


@torch.no_grad()
def generate(
    pipe,
    source_prompt: str,
    target_prompts: str | Sequence[str] = (),
    edit: Replace | Refine | Reweight | None = None,
    local_blend: LocalBlend | None = None,
    *,
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
    negative_prompt: str | None = None,
    generator: torch.Generator | None = None,
    latents: torch.Tensor | None = None,
    height: int | None = None,
    width: int | None = None,
    return_attention: bool | str = False,
    progress: bool = True,
    uncond_embeddings: Sequence[torch.Tensor] | None = None,
    step_callback: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
    output_type: str = "pil",
    self_replace_min_factor: int = SELF_REPLACE_MIN_FACTOR,
    first_step: int = 0,
) -> P2PResult:
    """Generate the source image and its Prompt-to-Prompt edits from one shared initial noise.

    Args:
        pipe: a Stable Diffusion 1.x/2.x or SDXL pipeline (see :func:`editkit.load_pipeline`).
        source_prompt: the prompt of the source image (row 0).
        target_prompts: one or more edited prompts.
        edit: :class:`Replace`, :class:`Refine` or :class:`Reweight`; ``None`` samples the prompts
            independently from the same noise (the "no attention control" baseline).
        local_blend: restrict the edit to the region of the given words.
        num_inference_steps: DDIM steps (50 in the paper).
        guidance_scale: classifier-free guidance (7.5 in the paper).
        negative_prompt: unconditional prompt; ``None`` is the empty prompt, as the original.
        generator / latents: the initial noise, ``[1, C, h, w]`` shared by all prompts.
        return_attention: store attention maps (``result.attention``) for visualisation: ``True`` or
            ``"cross"`` keeps the cross-attention maps (what :func:`~editkit.p2p.cross_attention_grid` draws),
            ``"all"`` also the self-attention maps (for :func:`~editkit.p2p.self_attention_components`;
            ``[N, N]`` per layer at latent / 2 and below, far larger), ``False`` nothing.
        progress: show a progress bar.
        uncond_embeddings: one ``[1, M, D]`` unconditional embedding per step (null-text inversion).
        step_callback: ``f(i, latents [P, C, h, w]) -> latents`` after each scheduler step, before the
            controllers' step callback (local blend): Direct Inversion's source correction.
        self_replace_min_factor: self-attention is replaced in layers at most latent / this per side: 4 (the
            text-to-image notebook's ``16 ** 2`` at 512 px, the default here) or 2 (the real-image rule,
            ``32 ** 2``, the default of :func:`editkit.editing.edit_image`).
        first_step: start at this step (image-to-image): ``latents`` ``[P, C, h, w]`` are then the latents
            at that step's timestep; the edit's step windows still count from step 0 of
            ``num_inference_steps`` (see :func:`editkit.sampling.denoise`).
    """
    # 1. Check inputs
    prompts = check_inputs(source_prompt, target_prompts, guidance_scale)
    sampling.check_steps(num_inference_steps)
    if edit is not None and len(prompts) < 2:
        raise ValueError("an edit needs at least one target prompt")
    default_h, default_w = sampling.default_size(pipe)
    height, width = height or default_h, width or default_w
    sampling.check_size(pipe, height, width)
    if uncond_embeddings is not None and len(uncond_embeddings) != num_inference_steps:
        raise ValueError(f"uncond_embeddings has {len(uncond_embeddings)} entries for {num_inference_steps} steps")

    # 2. Controllers
    tokenizer = pipe.tokenizer
    max_len = tokenizer.model_max_length
    controllers = []
    if edit is not None:
        controllers.append(edit.build(prompts, tokenizer, num_inference_steps, max_len, self_replace_min_factor))
    store = None
    if return_attention not in ATTENTION_CHOICES:
        raise ValueError(f"return_attention must be one of {ATTENTION_CHOICES}, got {return_attention!r}")
    if return_attention:
        # what cross_attention_grid draws: cross-attention only, unless self-attention is asked for
        store = AttentionStore(cross_only=return_attention != "all")
    elif local_blend is not None:
        store = AttentionStore(min_factor=BLEND_FACTOR, cross_only=True)
    if store is not None:
        controllers.append(store)  # after the edit: the store keeps the edited maps, as the original
    blend = None
    if local_blend is not None:
        blend = LocalBlendControl(prompts, tokenizer, store, local_blend.words, local_blend.subtract_words,
                                  local_blend.start_blend, local_blend.threshold, num_inference_steps, max_len)
        controllers.append(blend)

    # 3. Encode prompts
    cond = sampling.encode_prompts(pipe, prompts, negative_prompt, height, width)
    if uncond_embeddings is not None:
        cond.uncond = [u.to(cond.cond.device, cond.cond.dtype) for u in uncond_embeddings]

    # 4. Initial latents, shared by all prompts
    x_t = sampling.initial_latents(pipe, len(prompts), height, width, generator, latents)

    # 5. Denoising loop under the hooks
    if controllers:
        with hooked(pipe.unet, controllers) as session:
            x_0 = sampling.denoise(pipe, x_t, cond, num_inference_steps, guidance_scale, session=session,
                                   progress=progress, step_callback=step_callback, first_step=first_step)
    else:
        x_0 = sampling.denoise(pipe, x_t, cond, num_inference_steps, guidance_scale, progress=progress,
                               step_callback=step_callback, first_step=first_step)

    # 6. Decode
    images = sampling.decode_latents(pipe, x_0, output_type=output_type)
    return P2PResult(
        source=images[0],
        targets=list(images[1:]),
        latents=x_0,
        prompts=prompts,
        attention=store if return_attention else None,
        mask=None if blend is None else blend.last_mask,
    )
