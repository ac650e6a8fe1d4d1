"""One sampling machinery for rectified-flow transformers (SD3 / SD3.5 and FLUX.1): conditioning, the time
grid, the velocity (the one place the transformer is called), ODE steps, VAE I/O.

Notation (as in the FlowEdit and RF-Inversion papers, time running from data to noise)::

    x_0        the image latent, (vae_latent - shift_factor) * scaling_factor           [P, C, h, w]
    x_t        (1 - t) x_0 + t eps, eps ~ N(0, I)                                        (t = sigma in diffusers)
    v(x_t, t)  the transformer's output: the velocity dx_t / dt = eps - x_0 it learnt
    sigmas     the grid t_0 = 1 > t_1 > ... > t_N = 0 of the pipeline's own scheduler (shifted: SD3 shift 3,
               FLUX a shift that grows with the number of image tokens); timestep fed to the model
               = 1000 t (SD3) or t (FLUX, which scales by 1000 inside)
    Euler      x_{t_{i+1}} = x_{t_i} + (t_{i+1} - t_i) v(x_{t_i}, t_i)   (FlowMatchEulerDiscreteScheduler.step)

Latents are kept in the VAE's layout ``[P, C, h, w]`` for both families; FLUX's 2 x 2 packing into tokens
``[P, (h/2)(w/2), 4C]`` happens inside :func:`velocity` (and :func:`randn_model` draws noise in the packed
layout, as the reference implementations do, so a seed means the same noise).

Batch layout of a transformer call (:class:`editkit.hooks.BatchLayout`, as for the UNet): prompt ``p`` is row
``p`` of the latents; with classifier-free guidance (SD3) the transformer batch is ``[uncond(p_0..P-1),
cond(p_0..P-1)]``; FLUX.1-dev is guidance-distilled (the scale is an input of the model), so its batch is
``[cond(p_0..P-1)]``. In an edit prompt 0 is the source and prompt 1 the target.

A hook session (the object :func:`editkit.hooks.hooked` yields, or anything with ``begin(layout, latent_hw,
num_steps)``, ``set_step(step, timestep)`` and ``step_end(latents)``) is told the step explicitly before every
transformer call; ``latent_hw`` is the VAE latent's ``(h, w)`` (before patchifying / packing).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..hooks import BatchLayout
from ..progress import SAMPLING
from ..progress import report as progress_report


def family(pipe) -> str:
    """``"sd3"`` for an SD3 / SD3.5 pipeline, ``"flux"`` for a FLUX.1 pipeline, else a clear ``TypeError``."""
    transformer = getattr(pipe, "transformer", None)
    name = type(transformer).__name__ if transformer is not None else None
    if name == "SD3Transformer2DModel":
        return "sd3"
    if name == "FluxTransformer2DModel":
        return "flux"
    raise TypeError(
        f"{type(pipe).__name__} is not a rectified-flow pipeline editkit can edit "
        "(expected StableDiffusion3Pipeline or FluxPipeline)"
    )


@dataclass
class FlowConditioning:
    """Text conditioning of ``P`` prompts (row ``p`` = prompt ``p``).

    ``negative`` / ``negative_pooled`` are SD3's negative-prompt embeddings (classifier-free guidance);
    ``text_ids`` are FLUX's text position ids ``[M, 3]`` (zeros).
    """

    family: str
    embeds: torch.Tensor  # [P, M, D] text tokens (SD3: CLIP-L|CLIP-G padded, then T5; FLUX: T5)
    pooled: torch.Tensor  # [P, E] pooled text embedding
    negative: torch.Tensor | None = None  # [P, M, D]
    negative_pooled: torch.Tensor | None = None  # [P, E]
    text_ids: torch.Tensor | None = None  # [M, 3]

    @property
    def num_prompts(self) -> int:
        return self.embeds.shape[0]

    def select(self, rows: Sequence[int]) -> FlowConditioning:
        idx = list(rows)
        pick = lambda x: None if x is None else x[idx]
        return FlowConditioning(self.family, self.embeds[idx], self.pooled[idx], pick(self.negative),
                                pick(self.negative_pooled), self.text_ids)


@torch.no_grad()
def encode_prompts(pipe, prompts: Sequence[str], negative_prompt: str = "", max_sequence_length: int | None = None):
    """Encode ``prompts`` with the pipeline's own ``encode_prompt`` (SD3: with ``negative_prompt``, ``""`` by
    default as in the diffusers pipeline and FlowEdit's scripts; FLUX has no negative prompt).

    ``max_sequence_length`` of T5 defaults to the pipeline's own default (SD3 256, FLUX 512).
    """
    prompts = list(prompts)
    if not prompts or any(not isinstance(p, str) for p in prompts):
        raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}")
    fam = family(pipe)
    device = pipe._execution_device
    extra = {} if max_sequence_length is None else {"max_sequence_length": max_sequence_length}
    if fam == "sd3":
        embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
            prompt=prompts, prompt_2=None, prompt_3=None, negative_prompt=[negative_prompt] * len(prompts),
            do_classifier_free_guidance=True, device=device, **extra,
        )
        return FlowConditioning(fam, embeds, pooled, negative, negative_pooled)
    embeds, pooled, text_ids = pipe.encode_prompt(prompt=prompts, prompt_2=None, device=device, **extra)
    return FlowConditioning(fam, embeds, pooled, text_ids=text_ids)


# ----------------------------------------------------------------------------------------------- time grid


@dataclass
class FlowSchedule:
    """The pipeline scheduler's grid for ``num_steps`` steps: ``timesteps[i] = 1000 * sigmas[i]``."""

    timesteps: torch.Tensor  # [N] model timesteps, 1000 t
    sigmas: torch.Tensor  # [N + 1] t_0 = 1 (or less with a custom grid) ... t_N = 0

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)


def image_seq_len(pipe, latent_hw: tuple[int, int]) -> int:
    """Number of image tokens of a ``latent_hw`` latent (both families patchify 2 x 2)."""
    h, w = latent_hw
    return (h // 2) * (w // 2)


def schedule(pipe, num_steps: int, latent_hw: tuple[int, int]) -> FlowSchedule:
    """The time grid the pipeline's own ``__call__`` would use (a copy of its scheduler is configured, the
    pipeline's scheduler is left alone).

    FLUX (``use_dynamic_shifting``): ``sigmas = linspace(1, 1/N, N)`` shifted by ``mu`` interpolated linearly
    in the number of image tokens between ``base_shift`` and ``max_shift``, as ``FluxPipeline`` and
    FlowEdit's ``FlowEditFLUX`` do. SD3: the scheduler's static shift (3.0).
    """
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"num_inference_steps must be a positive integer, got {num_steps!r}")
    scheduler = copy.deepcopy(pipe.scheduler)
    cfg = scheduler.config
    if getattr(cfg, "use_dynamic_shifting", False):
        n = image_seq_len(pipe, latent_hw)
        m = (cfg.max_shift - cfg.base_shift) / (cfg.max_image_seq_len - cfg.base_image_seq_len)
        mu = n * m + (cfg.base_shift - m * cfg.base_image_seq_len)
        sigmas = np.linspace(1.0, 1 / num_steps, num_steps)
        scheduler.set_timesteps(sigmas=sigmas, mu=mu, device="cpu")
    else:
        scheduler.set_timesteps(num_steps, device="cpu")
    return FlowSchedule(scheduler.timesteps.float(), scheduler.sigmas.float())


# ----------------------------------------------------------------------------------------------- latents


def pack(latents: torch.Tensor) -> torch.Tensor:
    """FLUX's token layout: ``[B, C, h, w]`` -> ``[B, (h/2)(w/2), 4C]``, row-major over 2 x 2 patches."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2)  # [B, C, h/2, 2, w/2, 2]
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`pack`: ``[B, (h/2)(w/2), 4C]`` -> ``[B, C, h, w]``."""
    b, _, d = tokens.shape
    h, w = latent_hw
    x = tokens.view(b, h // 2, w // 2, d // 4, 2, 2)  # [B, h/2, w/2, C, 2, 2]
    return x.permute(0, 3, 1, 4, 2, 5).reshape(b, d // 4, h, w)


def randn_model(pipe, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Gaussian noise shaped like ``like`` ``[B, C, h, w]``, drawn as FlowEdit's reference draws it:
    ``randn_like`` of the latent in the model's token layout (packed for FLUX), i.e. filled in that tensor's
    *memory* order (on the CPU the VAE returns channels-last latents, so the order matters), from
    ``generator`` on its own device. The same seed then gives the reference's noise. (The pipelines' initial
    noise is drawn unpacked and contiguous: :func:`generate`.)"""
    model_like = pack(like) if family(pipe) == "flux" else like
    gen_device = generator.device if generator is not None else torch.device("cpu")
    noise = torch.empty_like(model_like, device=gen_device, dtype=torch.float32).normal_(generator=generator)
    noise = noise.to(device=like.device, dtype=like.dtype)
    return unpack(noise, like.shape[-2:]) if family(pipe) == "flux" else noise


def check_latent_size(pipe, height: int, width: int) -> tuple[int, int]:
    """The latent ``(h, w)`` of a ``height x width`` image; both must be multiples of ``2 * vae_scale_factor``
    (the transformers patchify the latent 2 x 2)."""
    f = 2 * pipe.vae_scale_factor
    if height <= 0 or width <= 0 or height % f or width % f:
        raise ValueError(f"height and width must be positive multiples of {f} for this model, got {height}x{width}")
    return height // pipe.vae_scale_factor, width // pipe.vae_scale_factor


@torch.no_grad()
def encode_image(pipe, image: torch.Tensor) -> torch.Tensor:
    """``image`` ``[N, 3, H, W]`` in ``[-1, 1]`` -> ``x_0`` (the posterior mode, shifted and scaled)."""
    vae = pipe.vae
    z = vae.encode(image.to(device=vae.device, dtype=vae.dtype)).latent_dist.mode()
    return ((z - vae.config.shift_factor) * vae.config.scaling_factor).to(pipe.transformer.dtype)


@torch.no_grad()
def decode_latents(pipe, latents: torch.Tensor, output_type: str = "pil"):
    """``x_0`` ``[P, C, h, w]`` -> images (PIL by default, ``"pt"`` / ``"np"``)."""
    vae = pipe.vae
    z = latents.to(vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor
    image = vae.decode(z, return_dict=False)[0]
    return pipe.image_processor.postprocess(image, output_type=output_type)


# ----------------------------------------------------------------------------------------------- velocity


def _scales(guidance, num_prompts: int) -> list[float]:
    values = [guidance] * num_prompts if isinstance(guidance, int | float) else list(guidance)
    if len(values) != num_prompts or any(isinstance(g, bool) or not math.isfinite(float(g)) for g in values):
        raise ValueError(f"guidance must be one finite number or one per prompt ({num_prompts}), got {guidance!r}")
    return [float(g) for g in values]


def uses_cfg(pipe, guidance) -> bool:
    """Whether the transformer batch has unconditional rows: SD3 with any scale above 1."""
    scales = [guidance] if isinstance(guidance, int | float) else list(guidance)
    return family(pipe) == "sd3" and any(float(g) > 1.0 for g in scales)


def velocity(pipe, latents: torch.Tensor, t: torch.Tensor, cond: FlowConditioning, guidance, *,
             step: int | None = None, session=None) -> torch.Tensor:
    """The guided velocity ``v(x_t, t)`` of every row, ``[P, C, h, w]``: the one transformer call.

    Args:
        latents: ``x_t`` of each prompt, ``[P, C, h, w]`` (row ``p`` is conditioned on prompt ``p``).
        t: the model timestep ``1000 t`` (a scalar tensor, as the scheduler gives it).
        guidance: one scale or one per prompt. SD3: classifier-free guidance
            ``v_u + g (v_c - v_u)`` (no unconditional rows when every scale is <= 1: ``v_c``); FLUX: the
            distilled guidance the model takes as input (``guidance_embeds``).
        step: the step index told to ``session`` (``session.set_step(step, t)``) before the call.
    """
    fam = family(pipe)
    num_prompts = latents.shape[0]
    scales = _scales(guidance, num_prompts)
    if session is not None and step is not None:
        session.set_step(step, t)
    transformer = pipe.transformer
    dtype = transformer.dtype
    if fam == "sd3":
        cfg = uses_cfg(pipe, scales)
        model_in = torch.cat([latents, latents]) if cfg else latents
        embeds = torch.cat([cond.negative, cond.embeds]) if cfg else cond.embeds
        pooled = torch.cat([cond.negative_pooled, cond.pooled]) if cfg else cond.pooled
        out = transformer(
            hidden_states=model_in.to(dtype),
            timestep=t.to(latents.device).expand(model_in.shape[0]),
            encoder_hidden_states=embeds,
            pooled_projections=pooled,
            return_dict=False,
        )[0]
        if not cfg:
            return out
        uncond, text = out.chunk(2)  # BatchLayout: [uncond(p), cond(p)]
        g = torch.tensor(scales, device=out.device, dtype=out.dtype).view(-1, 1, 1, 1)
        return uncond + g * (text - uncond)
    # FLUX: packed tokens, position ids of the image grid, guidance as an input
    h, w = latents.shape[-2:]
    img_ids = pipe._prepare_latent_image_ids(num_prompts, h // 2, w // 2, latents.device, dtype)
    guidance_in = None
    if transformer.config.guidance_embeds:
        guidance_in = torch.tensor(scales, device=latents.device, dtype=torch.float32)
    out = transformer(
        hidden_states=pack(latents).to(dtype),
        timestep=t.to(latents.device).expand(num_prompts) / 1000,
        guidance=guidance_in,
        pooled_projections=cond.pooled,
        encoder_hidden_states=cond.embeds,
        txt_ids=cond.text_ids,
        img_ids=img_ids,
        return_dict=False,
    )[0]
    return unpack(out, (h, w))


def begin_session(session, pipe, num_prompts: int, guidance, latent_hw, num_steps: int) -> None:
    if session is not None:
        session.begin(BatchLayout(num_prompts, uses_cfg(pipe, guidance)), tuple(latent_hw), num_steps)


# ----------------------------------------------------------------------------------------------- ODE solvers

SOLVERS = ("euler", "rf-solver", "fireflow")

Field = Callable[[torch.Tensor, float, int], torch.Tensor]  # (x [P, C, h, w], t in [0, 1], step) -> dx/dt


def calls_per_run(solver: str, num_steps: int) -> int:
    """Transformer evaluations of one pass of ``num_steps`` steps."""
    return {"euler": num_steps, "rf-solver": 2 * num_steps, "fireflow": num_steps + 1}[check_solver(solver)]


def check_solver(solver: str) -> str:
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; expected one of {', '.join(SOLVERS)}")
    return solver


def integrate(field: Field, x: torch.Tensor, ts: Sequence[float], solver: str = "euler", *,
              on_step: Callable[[int, torch.Tensor], torch.Tensor] | None = None, stage: str = SAMPLING,
              progress: bool = False) -> torch.Tensor:
    """Solve ``dx/dt = field(x, t)`` along the grid ``ts`` (decreasing: sampling; increasing: inversion).

    ``euler``: ``x += h v(x, t_i)``. ``rf-solver`` (RF-Solver's second-order Taylor step, which with its
    finite-difference derivative ``(v(x + h/2 v, t + h/2) - v) / (h/2)`` is the explicit midpoint rule):
    ``x += h v(x + h/2 v(x, t_i), t_i + h/2)``, two calls a step. ``fireflow`` (FireFlow): the same midpoint
    step, with ``v(x, t_i)`` replaced by the previous step's midpoint velocity (one call a step plus one).
    """
    from tqdm.auto import tqdm

    check_solver(solver)
    n = len(ts) - 1
    reused = None
    for i in tqdm(range(n), disable=not progress, desc=stage, leave=False):
        t, t_next = float(ts[i]), float(ts[i + 1])
        h = t_next - t
        if solver == "euler":
            x = x + h * field(x, t, i)
        else:
            v = reused if (solver == "fireflow" and reused is not None) else field(x, t, i)
            v_mid = field(x + (h / 2) * v, t + h / 2, i)
            x = x + h * v_mid
            reused = v_mid
        if on_step is not None:
            x = on_step(i, x)
        progress_report(stage, i + 1, n)
    return x


def model_field(pipe, cond: FlowConditioning, guidance, session=None) -> Field:
    """``(x, t, step) -> v(x, t)`` of the pipeline's transformer (model timestep ``1000 t``)."""

    def field(x, t, step):
        timestep = torch.tensor(t, dtype=torch.float32) * 1000
        return velocity(pipe, x, timestep, cond, guidance, step=step, session=session).to(x.dtype)

    return field


@torch.no_grad()
def sample(pipe, latents: torch.Tensor, cond: FlowConditioning, guidance, num_inference_steps: int, *,
           solver: str = "euler", session=None, sigmas: Sequence[float] | None = None, progress: bool = False):
    """Sample from ``latents`` (``x_1``, ``[P, C, h, w]``) to ``x_0`` along the pipeline's grid.

    With ``solver="euler"`` this is exactly the diffusers pipeline's loop (``FlowMatchEulerDiscreteScheduler``).
    ``sigmas`` overrides the grid (e.g. the tail of one, for image-to-image).
    """
    if sigmas is None:
        sigmas = schedule(pipe, num_inference_steps, latents.shape[-2:]).sigmas.tolist()
    begin_session(session, pipe, latents.shape[0], guidance, latents.shape[-2:], len(sigmas) - 1)
    on_step = (lambda i, x: session.step_end(x)) if session is not None else None
    return integrate(model_field(pipe, cond, guidance, session), latents, sigmas, solver, on_step=on_step,
                     progress=progress)


DEFAULT_GUIDANCE = {"sd3": 7.0, "flux": 3.5}  # StableDiffusion3Pipeline / FluxPipeline defaults
DEFAULT_STEPS = {"sd3": 28, "flux": 28}


@torch.no_grad()
def generate(pipe, prompts: str | Sequence[str], *, height: int | None = None, width: int | None = None,
             num_inference_steps: int | None = None, guidance_scale: float | None = None, generator=None,
             latents: torch.Tensor | None = None, negative_prompt: str = "", max_sequence_length: int | None = None,
             session=None, output_type: str = "pil", progress: bool = False):
    """Text to image with the shared noise of all prompts (one image per prompt), Euler as the pipelines do.

    Defaults follow the diffusers pipelines: 28 steps; guidance 7.0 (SD3) / 3.5 (FLUX); size
    ``default_sample_size * vae_scale_factor``; T5 ``max_sequence_length`` (:func:`encode_prompts`).
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    fam = family(pipe)
    steps = num_inference_steps or DEFAULT_STEPS[fam]
    guidance = DEFAULT_GUIDANCE[fam] if guidance_scale is None else guidance_scale
    size = pipe.default_sample_size * pipe.vae_scale_factor
    latent_hw = check_latent_size(pipe, height or size, width or size)
    cond = encode_prompts(pipe, prompts, negative_prompt, max_sequence_length)
    if latents is None:  # drawn as the pipelines' prepare_latents draw it: [1, C, h, w], then packed (FLUX)
        from diffusers.utils.torch_utils import randn_tensor

        channels = pipe.transformer.config.in_channels // (4 if fam == "flux" else 1)
        latents = randn_tensor((1, channels, *latent_hw), generator=generator, device=pipe._execution_device,
                               dtype=pipe.transformer.dtype)
    x = sample(pipe, latents.expand(len(prompts), *latents.shape[1:]).clone(), cond, guidance, steps,
               session=session, progress=progress)
    return x if output_type == "latent" else decode_latents(pipe, x, output_type)
