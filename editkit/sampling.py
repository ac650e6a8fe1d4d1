"""The shared sampling machinery: prompt conditioning, initial latents, the guided DDIM loop, VAE I/O.

The loop is written out here rather than borrowed from a diffusers pipeline's ``__call__`` because the
editing methods need to own it: the step clock of the hook layer is set before every UNet call, local
blend rewrites the latents after every step, null-text inversion swaps the unconditional embedding per step,
and Plug-and-Play feeds the inverted source latent as a batch row. Prompt encoding and SDXL's added
conditioning come from the pipeline's own methods, so they stay exactly what diffusers computes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .hooks import BatchLayout, HookSession
from .progress import SAMPLING
from .progress import report as progress_report


def is_sdxl(pipe) -> bool:
    return getattr(pipe, "text_encoder_2", None) is not None or hasattr(pipe, "_get_add_time_ids")


def execution_device(pipe) -> torch.device:
    return pipe._execution_device


@dataclass
class Conditioning:
    """Text conditioning of one batch of prompts (row ``p`` = prompt ``p``).

    ``uncond`` is either one tensor ``[P, M, D]`` or a list with one ``[1 or P, M, D]`` tensor per
    denoising step (null-text inversion's optimised unconditional embeddings). SDXL's pooled text embeddings
    and time ids are in ``cond_added`` / ``uncond_added`` (``{"text_embeds": [P, E], "time_ids": [P, 6]}``).
    """

    cond: torch.Tensor  # [P, M, D]
    uncond: torch.Tensor | list[torch.Tensor] | None  # [P, M, D] or per step
    cond_added: dict | None = None
    uncond_added: dict | None = None

    @property
    def num_prompts(self) -> int:
        return self.cond.shape[0]

    def uncond_at(self, step: int) -> torch.Tensor:
        u = self.uncond[step] if isinstance(self.uncond, list | tuple) else self.uncond
        return u.expand(self.num_prompts, *u.shape[1:]) if u.shape[0] == 1 else u

    def encoder_hidden_states(self, step: int, cfg: bool) -> torch.Tensor:
        """``[B, M, D]`` in :class:`~editkit.hooks.BatchLayout` order."""
        if not cfg:
            return self.cond
        return torch.cat([self.uncond_at(step).to(self.cond.dtype), self.cond])

    def added_cond_kwargs(self, cfg: bool) -> dict | None:
        if self.cond_added is None:
            return None
        if not cfg:
            return dict(self.cond_added)
        return {k: torch.cat([self.uncond_added[k], self.cond_added[k]]) for k in self.cond_added}

    def select(self, rows: Sequence[int]) -> Conditioning:
        """The conditioning of a subset of the prompts."""
        idx = list(rows)

        def pick(x):
            if x is None:
                return None
            if isinstance(x, dict):
                return {k: v[idx] for k, v in x.items()}
            if isinstance(x, list | tuple):
                return [u if u.shape[0] == 1 else u[idx] for u in x]
            return x if x.shape[0] == 1 else x[idx]

        return Conditioning(pick(self.cond), pick(self.uncond), pick(self.cond_added), pick(self.uncond_added))


@torch.no_grad()
def encode_prompts(
    pipe,
    prompts: Sequence[str],
    negative_prompt: str | Sequence[str] | None = None,
    height: int | None = None,
    width: int | None = None,
) -> Conditioning:
    """Encode ``prompts`` (and the unconditional / negative prompt) with the pipeline's own text encoders.

    With ``negative_prompt=None`` the unconditional embedding is that of the empty prompt (SD 1.x/2.x) or
    zeros (SDXL with ``force_zeros_for_empty_prompt``), exactly as the diffusers pipelines do.
    """
    prompts = list(prompts)
    if not prompts or any(not isinstance(p, str) for p in prompts):
        raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}")
    device = execution_device(pipe)
    if isinstance(negative_prompt, str):
        negative_prompt = [negative_prompt] * len(prompts)
    if not is_sdxl(pipe):
        cond, uncond = pipe.encode_prompt(prompts, device, 1, True, negative_prompt=negative_prompt)
        return Conditioning(cond, uncond)
    cond, uncond, pooled, neg_pooled = pipe.encode_prompt(
        prompts, device=device, num_images_per_prompt=1, do_classifier_free_guidance=True, negative_prompt=negative_prompt
    )
    height = height or pipe.default_sample_size * pipe.vae_scale_factor
    width = width or pipe.default_sample_size * pipe.vae_scale_factor
    proj_dim = pipe.text_encoder_2.config.projection_dim if pipe.text_encoder_2 is not None else pooled.shape[-1]
    time_ids = pipe._get_add_time_ids((height, width), (0, 0), (height, width), dtype=cond.dtype, text_encoder_projection_dim=proj_dim)
    time_ids = time_ids.to(device).repeat(len(prompts), 1)
    return Conditioning(
        cond,
        uncond,
        cond_added={"text_embeds": pooled, "time_ids": time_ids},
        uncond_added={"text_embeds": neg_pooled, "time_ids": time_ids},
    )


def default_size(pipe) -> tuple[int, int]:
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    return size, size


def check_size(pipe, height: int, width: int) -> None:
    f = pipe.vae_scale_factor
    if height <= 0 or width <= 0 or height % f or width % f:
        raise ValueError(f"height and width must be positive multiples of {f} for this model, got {height}x{width}")


def initial_latents(pipe, num_prompts: int, height: int, width: int, generator=None, latents=None) -> torch.Tensor:
    """One initial noise ``[1, C, h, w]`` shared by all prompts (as Prompt-to-Prompt does), ``[P, C, h, w]``."""
    from diffusers.utils.torch_utils import randn_tensor

    device = execution_device(pipe)
    shape = (1, pipe.unet.config.in_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    if latents is None:
        latents = randn_tensor(shape, generator=generator, device=device, dtype=pipe.unet.dtype)
        latents = latents * pipe.scheduler.init_noise_sigma
    else:
        latents = latents.to(device=device, dtype=pipe.unet.dtype)
        if latents.ndim == 3:
            latents = latents[None]
        if latents.shape[1:] != shape[1:] or latents.shape[0] not in (1, num_prompts):
            raise ValueError(f"latents must have shape [1 or {num_prompts}, {shape[1]}, {shape[2]}, {shape[3]}], got {tuple(latents.shape)}")
        if not torch.isfinite(latents).all():
            raise ValueError("latents hold NaN or infinite values")
    return latents.expand(num_prompts, *latents.shape[1:]).clone()


def predict_noise(pipe, latents, t, cond: Conditioning, step: int, guidance_scale: float, session: HookSession | None = None):
    """One guided UNet evaluation: returns the guided model output ``[P, C, h, w]``."""
    cfg = guidance_scale > 1.0
    if session is not None:
        session.set_step(step, t)
    model_in = torch.cat([latents] * 2) if cfg else latents
    model_in = pipe.scheduler.scale_model_input(model_in, t)
    out = pipe.unet(
        model_in,
        t,
        encoder_hidden_states=cond.encoder_hidden_states(step, cfg),
        added_cond_kwargs=cond.added_cond_kwargs(cfg),
        return_dict=False,
    )[0]
    if cfg:
        uncond, text = out.chunk(2)
        out = uncond + guidance_scale * (text - uncond)
    return out


@torch.no_grad()
def denoise(
    pipe,
    latents: torch.Tensor,
    cond: Conditioning,
    num_inference_steps: int,
    guidance_scale: float,
    session: HookSession | None = None,
    progress: bool = True,
    step_callback: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
    eta: float = 0.0,
    generator=None,
    first_step: int = 0,
) -> torch.Tensor:
    """The guided denoising loop (DDIM by default) from ``latents`` ``[P, C, h, w]``.

    ``first_step > 0`` starts part-way (image-to-image): ``latents`` are then the latents at timestep
    ``timesteps[first_step]`` and the steps before it are skipped; step indices (what ``session`` and
    ``step_callback`` see, and the controllers' schedules) stay those of the full ``num_inference_steps``.

    Every UNet call is preceded by ``session.set_step(i, t)`` and every scheduler step followed by
    ``step_callback(i, latents)`` (a correction such as Direct Inversion's) and then ``session.step_end``
    (local blend and other latent-space controllers).
    """
    check_steps(num_inference_steps)
    pipe.scheduler.set_timesteps(num_inference_steps, device=latents.device)
    timesteps = pipe.scheduler.timesteps
    if session is not None:
        session.begin(BatchLayout(latents.shape[0], guidance_scale > 1.0), tuple(latents.shape[-2:]), len(timesteps))
    if not isinstance(first_step, int) or isinstance(first_step, bool) or not 0 <= first_step < len(timesteps):
        raise ValueError(f"first_step must be an integer in [0, {len(timesteps) - 1}], got {first_step!r}")
    extra = {"eta": eta, "generator": generator} if "eta" in _step_params(pipe.scheduler) else {}
    bar = tqdm(timesteps[first_step:], disable=not progress, desc="sampling", leave=False)
    for i, t in enumerate(bar, start=first_step):
        noise = predict_noise(pipe, latents, t, cond, i, guidance_scale, session)
        latents = pipe.scheduler.step(noise, t, latents, return_dict=False, **extra)[0]
        # corrections first (Direct Inversion puts the source row back on its trajectory), then the
        # controllers (local blend copies that corrected source outside its mask), as PnPInversion does
        if step_callback is not None:
            latents = step_callback(i, latents)
        if session is not None:
            latents = session.step_end(latents)
        progress_report(SAMPLING, i + 1 - first_step, len(timesteps) - first_step)
    return latents


def _step_params(scheduler):
    import inspect

    return inspect.signature(scheduler.step).parameters


def check_guidance(guidance_scale, minimum: float = 1.0) -> float:
    """A finite classifier-free guidance scale ``>= minimum`` (NaN or infinite guidance gives black images)."""
    if (isinstance(guidance_scale, bool) or not isinstance(guidance_scale, int | float)
            or not math.isfinite(guidance_scale) or guidance_scale < minimum):
        raise ValueError(f"guidance_scale must be a finite number >= {minimum:g}, got {guidance_scale!r}")
    return float(guidance_scale)


def start_step(num_inference_steps: int, strength: float) -> int:
    """The first sampling step of an image-to-image run of ``strength`` in ``(0, 1]``, as diffusers'
    img2img pipelines count it: the last ``int(num_inference_steps * strength)`` steps are run."""
    check_steps(num_inference_steps)
    if (isinstance(strength, bool) or not isinstance(strength, int | float) or not math.isfinite(strength)
            or not 0.0 < strength <= 1.0):
        raise ValueError(f"strength must be a number in (0, 1], got {strength!r}")
    run = min(int(num_inference_steps * strength), num_inference_steps)
    if run < 1:
        raise ValueError(
            f"strength {strength} runs no step of {num_inference_steps}: use a strength of at least "
            f"{1 / num_inference_steps:.3g} or more steps"
        )
    return num_inference_steps - run


def check_steps(num_inference_steps) -> None:
    if not isinstance(num_inference_steps, int) or isinstance(num_inference_steps, bool) or num_inference_steps <= 0:
        raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")


@torch.no_grad()
def decode_latents(pipe, latents: torch.Tensor, output_type: str = "pil"):
    """VAE-decode ``latents`` ``[P, C, h, w]`` to PIL images (or ``"pt"`` / ``"np"``)."""
    vae = pipe.vae
    needs_upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    dtype = torch.float32 if needs_upcast else vae.dtype
    with _vae_dtype(vae, dtype):
        image = vae.decode(latents.to(dtype) / vae.config.scaling_factor, return_dict=False)[0]
    return pipe.image_processor.postprocess(image, output_type=output_type, do_denormalize=[True] * image.shape[0])


@torch.no_grad()
def encode_image(pipe, image: torch.Tensor, generator=None) -> torch.Tensor:
    """VAE-encode ``image`` ``[N, 3, H, W]`` in ``[-1, 1]`` to latents (the posterior mean, as the inversion
    papers do), scaled by the VAE's scaling factor."""
    vae = pipe.vae
    needs_upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    dtype = torch.float32 if needs_upcast else vae.dtype
    with _vae_dtype(vae, dtype):
        dist = vae.encode(image.to(device=vae.device, dtype=dtype)).latent_dist
    return (dist.mean * vae.config.scaling_factor).to(pipe.unet.dtype)


class _vae_dtype:
    def __init__(self, vae, dtype):
        self.vae, self.dtype, self.old = vae, dtype, vae.dtype

    def __enter__(self):
        if self.dtype != self.old:
            self.vae.to(self.dtype)

    def __exit__(self, *exc):
        if self.dtype != self.old:
            self.vae.to(self.old)
