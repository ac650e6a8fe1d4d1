"""Inverting real images into Stable Diffusion's DDIM trajectory, so they can be edited like generated ones.

Four methods, selected by name in :func:`invert`:

* ``"ddim"``: plain deterministic DDIM inversion with the prompt's conditional prediction only (guidance 1),
  as the null-text inversion and pnp-diffusers reference code do. Sampling back at guidance 1 returns to the
  image; at guidance ``w > 1`` (what editing needs) the trajectory drifts.
* ``"null-text"``: null-text inversion (Mokady et al., CVPR 2023). Around the DDIM trajectory (the "pivot"),
  the unconditional embedding is optimised per step so that guided sampling follows the pivot.
* ``"negative-prompt"``: negative-prompt inversion (Miyake et al., 2023). No optimisation: the unconditional
  embedding is replaced by the source prompt's conditional embedding, so the guided prediction equals the
  conditional one the inversion used.
* ``"direct"``: Direct Inversion (Ju et al., ICLR 2024, "PnP Inversion"). No optimisation: while editing,
  the *source* branch is put back onto the inversion trajectory after every step; the target branches are
  not touched (they still see the source through the edit's attention injection).

Notation (code name -> symbol in the papers)::

    latents[0], z0            z_0      VAE latent of the image: posterior mean * scaling factor
    latents[k]                z*_t     the DDIM-inverted latent at the k-th timestep from the end ("pivot")
    latents[T], noise         z*_T     the inverted noise, where sampling starts
    t, t_prev                 t, t-1   one DDIM step apart: t_prev = t - num_train_timesteps // T
    alpha_prod_t              ᾱ_t      scheduler.alphas_cumprod[t] (final_alpha_cumprod when t < 0)
    eps                       ε_θ(z_t, t, C)   the noise prediction (v- and x0-predictions are converted)
    cond                      C = ψ(P)  text embedding of the prompt P
    uncond                    ∅         unconditional ("null-text") embedding; ∅_t when optimised per step
    guidance_scale            w
    T                         num_inference_steps

Equations, referred to by number in the code::

    (1) DDIM sampling (Song et al. 2021, eq. 12 with η = 0; Mokady et al. Sec. 3):
            z_{t-1} = sqrt(ᾱ_{t-1}) * (z_t - sqrt(1 - ᾱ_t) ε) / sqrt(ᾱ_t) + sqrt(1 - ᾱ_{t-1}) ε
    (2) DDIM inversion, (1) run backwards with ε_θ(z_{t-1}, t, C) ≈ ε_θ(z_t, t, C) (Mokady et al. Sec. 3):
            z_t = sqrt(ᾱ_t) * (z_{t-1} - sqrt(1 - ᾱ_{t-1}) ε) / sqrt(ᾱ_{t-1}) + sqrt(1 - ᾱ_t) ε
    (3) classifier-free guidance:  ε̃ = ε_θ(z_t, t, ∅) + w (ε_θ(z_t, t, C) - ε_θ(z_t, t, ∅))
    (4) null-text objective, per step, from z̄_T = z*_T (Mokady et al. Sec. 3.2):
            min_{∅_t} || z*_{t-1} - z_{t-1}(z̄_t, ∅_t, C) ||²,   z_{t-1}(·) = (1) with ε̃ of (3)
        then z̄_{t-1} = z_{t-1}(z̄_t, ∅_t, C) and ∅_{t-1} starts from ∅_t.
    (5) negative-prompt inversion (Miyake et al. Sec. 4):  ∅_t := C for every t, so ε̃ = ε_θ(z_t, t, C).
    (6) Direct Inversion (Ju et al. Sec. 4): after each editing step, source row z^src_{t-1} := z*_{t-1}.

Everything stays in memory (``T + 1`` latents, a few MB at 512 px); :meth:`Inversion.save` writes one
``.safetensors`` file when an inversion should be reused across sessions.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from safeio import atomic_path

from .image import image_to_tensor, load_image, model_multiple
from .progress import DDIM_INVERSION, NULL_TEXT
from .progress import report as progress_report
from .sampling import (
    Conditioning,
    check_steps,
    decode_latents,
    default_size,
    denoise,
    encode_image,
    encode_prompts,
    predict_noise,
)

METHODS = ("ddim", "null-text", "negative-prompt", "direct")  # the one list of inversion method names
_FORMAT = "editkit.inversion/1"
# An inversion's latent may be at most this many times the model's default latent per side (2048 px for
# SD 1.5, 4096 px for SDXL): a larger one costs minutes to hours per step. Set it higher to allow more.
MAX_LATENT_FACTOR = 4

__all__ = ["METHODS", "Inversion", "check_inversion", "invert", "reconstruct", "prepare_image"]


@dataclass
class Inversion:
    """A real image inverted into the DDIM trajectory of a pipeline.

    ``latents[k]`` is the latent after ``k`` inversion steps: ``latents[0]`` is the image latent ``z_0``
    and ``latents[T]`` the inverted noise ``z_T``. Sampling step ``i`` (``i = 0`` is the noisiest) goes from
    ``latents[T - i]`` towards ``latents[T - 1 - i]``.
    """

    latents: torch.Tensor  # [T + 1, C, h, w] float32
    prompt: str  # the prompt C the image was inverted with (the source prompt of edits)
    num_inference_steps: int  # T
    guidance_scale: float  # w the inversion was made for (null-text optimises for it)
    method: str  # one of METHODS
    uncond_embeddings: torch.Tensor | None = None  # [T, M, D] float32: ∅_t of sampling step i (null-text only)
    source: str | None = field(default=None, repr=False, compare=False)  # the file it was loaded from

    @property
    def z0(self) -> torch.Tensor:
        """The image latent ``[1, C, h, w]``."""
        return self.latents[:1]

    @property
    def noise(self) -> torch.Tensor:
        """The inverted noise ``z_T``, ``[1, C, h, w]``: the initial latent of edits."""
        return self.latents[-1:]

    def latent_at(self, step: int) -> torch.Tensor:
        """The pivot latent ``[1, C, h, w]`` that sampling step ``step`` should end on."""
        return self.latents[self.num_inference_steps - 1 - step][None]

    def uncond_list(self, device=None, dtype=None) -> list[torch.Tensor] | None:
        """The null-text embeddings as the per-step list ``[1, M, D]`` the sampling loop takes."""
        if self.uncond_embeddings is None:
            return None
        return [u[None].to(device=device, dtype=dtype) for u in self.uncond_embeddings]

    def save(self, path: str | os.PathLike) -> Path:
        """Write to one ``.safetensors`` file, atomically (a temporary file renamed into place)."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {"latents": self.latents.detach().float().contiguous().cpu()}
        if self.uncond_embeddings is not None:
            tensors["uncond_embeddings"] = self.uncond_embeddings.detach().float().contiguous().cpu()
        metadata = {
            "format": _FORMAT,
            "prompt": self.prompt,
            "num_inference_steps": str(self.num_inference_steps),
            "guidance_scale": repr(float(self.guidance_scale)),
            "method": self.method,
        }
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> Inversion:
        """Read an inversion written by :meth:`save`.

        What the file says is checked before its tensors are read: the format, the method, a step count
        in ``[1, 1000]``, a finite guidance scale, tensor shapes that agree with the step count; then every
        value must be finite. Whether the inversion fits a given pipeline (channels, latent size, text
        embedding size) is checked by :func:`check_inversion` when it is used.

        Raises:
            FileNotFoundError: no file at ``path``.
            ValueError: not an editkit inversion, or inconsistent, absurd or non-finite content; the
                message names the file and the problem.
        """
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no inversion file at {path}")
        try:
            with safe_open(str(path), framework="pt", device=str(device)) as f:
                meta = f.metadata() or {}
                keys = set(f.keys())
                if meta.get("format") != _FORMAT or "latents" not in keys:
                    raise ValueError(
                        f"{path} is not an editkit inversion (format {meta.get('format')!r}, expected {_FORMAT!r})"
                    )
                steps, guidance, method = _check_metadata(path, meta)
                shapes = {k: tuple(f.get_slice(k).get_shape()) for k in keys}
                _check_shapes(path, shapes, steps)
                tensors = {k: f.get_tensor(k) for k in keys}
        except (SafetensorError, OSError) as e:
            raise ValueError(f"{path} is not a readable .safetensors file: {e}") from e
        for name, t in tensors.items():
            if not t.is_floating_point():
                raise ValueError(f"{path}: {name} must hold floating-point values, got {t.dtype}")
            if not torch.isfinite(t).all():
                raise ValueError(f"{path}: the tensor {name!r} holds NaN or infinite values; invert the image again")
        return cls(
            latents=tensors["latents"],
            prompt=meta.get("prompt", ""),
            num_inference_steps=steps,
            guidance_scale=guidance,
            method=method,
            uncond_embeddings=tensors.get("uncond_embeddings"),
            source=str(path),
        )


MAX_STEPS = 1000  # the training timesteps of every Stable Diffusion: DDIM cannot take more steps


def _check_metadata(path, meta: dict) -> tuple[int, float, str]:
    try:
        steps = int(meta.get("num_inference_steps", ""))
    except ValueError:
        raise ValueError(f"{path}: num_inference_steps {meta.get('num_inference_steps')!r} is not an integer") from None
    if not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"{path}: num_inference_steps {steps} is outside [1, {MAX_STEPS}]")
    try:
        guidance = float(meta.get("guidance_scale", ""))
    except ValueError:
        raise ValueError(f"{path}: guidance_scale {meta.get('guidance_scale')!r} is not a number") from None
    if not math.isfinite(guidance) or guidance < 0:
        raise ValueError(f"{path}: guidance_scale {guidance} must be a finite number >= 0")
    method = meta.get("method")
    if method not in METHODS:
        raise ValueError(f"{path}: unknown inversion method {method!r}; expected one of {', '.join(METHODS)}")
    return steps, guidance, method


def _check_shapes(path, shapes: dict, steps: int) -> None:
    unknown = set(shapes) - {"latents", "uncond_embeddings"}
    if unknown:
        raise ValueError(f"{path}: unexpected tensors {sorted(unknown)}")
    lat = shapes["latents"]
    if len(lat) != 4 or lat[0] != steps + 1:
        raise ValueError(f"{path}: latents of shape {list(lat)} do not fit {steps} steps (expected [{steps + 1}, C, h, w])")
    if "uncond_embeddings" in shapes:
        un = shapes["uncond_embeddings"]
        if len(un) != 3 or un[0] != steps:
            raise ValueError(f"{path}: uncond_embeddings of shape {list(un)} do not fit {steps} steps (expected [{steps}, M, D])")


def prepare_image(pipe, image, size=None, keep_aspect: bool = False):
    """Load ``image`` for ``pipe``: the model's default size (square, center-cropped) unless told otherwise,
    both sides multiples of :func:`~editkit.image.model_multiple`."""
    if size is None and not keep_aspect:
        size = default_size(pipe)
    elif size is None:
        size = max(default_size(pipe))
    return load_image(image, size=size, keep_aspect=keep_aspect, multiple=model_multiple(pipe))


def check_method(method) -> str:
    if method not in METHODS:
        raise ValueError(f"unknown inversion method {method!r}; expected one of {', '.join(METHODS)}")
    return method


def _check_guidance(guidance_scale) -> float:
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, int | float) or not math.isfinite(guidance_scale) or guidance_scale < 0:
        raise ValueError(f"guidance_scale must be a finite number >= 0, got {guidance_scale!r}")
    return float(guidance_scale)


def _alpha_prod(scheduler, t: int) -> torch.Tensor:
    """ᾱ_t, with the scheduler's own convention for t < 0 (``final_alpha_cumprod``)."""
    return scheduler.alphas_cumprod[t] if t >= 0 else scheduler.final_alpha_cumprod


def _to_eps(scheduler, model_output: torch.Tensor, sample: torch.Tensor, alpha_prod_t: torch.Tensor) -> torch.Tensor:
    """The model's prediction as ε, whatever it predicts (as DDIMScheduler.step converts it)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return model_output
    if kind == "v_prediction":
        return alpha_prod_t**0.5 * model_output + (1 - alpha_prod_t) ** 0.5 * sample
    if kind == "sample":
        return (sample - alpha_prod_t**0.5 * model_output) / (1 - alpha_prod_t) ** 0.5
    raise ValueError(f"unsupported prediction_type {kind!r}")


@torch.no_grad()
def sampling_timesteps(pipe, num_inference_steps: int) -> list[int]:
    """The scheduler's ``T`` sampling timesteps, ascending (``t_1 < ... < t_T``)."""
    pipe.scheduler.set_timesteps(num_inference_steps)
    return [int(t) for t in pipe.scheduler.timesteps.flip(0)]


@torch.no_grad()  # without it every UNet call's autograd graph stayed alive in the trajectory
def ddim_invert_latent(
    pipe,
    z0: torch.Tensor,
    cond: Conditioning,
    num_inference_steps: int,
    progress: bool = True,
    inversion_steps: int | None = None,
) -> torch.Tensor:
    """Plain DDIM inversion (2) of ``z0`` ``[1, C, h, w]`` with the conditional prediction only (guidance 1).

    ``inversion_steps`` (default ``T = num_inference_steps``): invert with this many finer DDIM steps and keep
    the latents at the ``T`` sampling timesteps only, as pnp-diffusers does (``preprocess.py --steps 999``
    saves ``noisy_latents_{t}`` for every t; ``pnp.py`` then samples 50 steps from those files). Every
    sampling timestep must be one of the inversion's timesteps (true for 999 and for multiples of ``T``
    with the DDIM "leading" spacing).

    Returns the trajectory ``[T + 1, C, h, w]`` (float32), ``latents[0] = z0``, ``latents[k]`` at ``t_k``.
    """
    check_steps(num_inference_steps)
    inversion_steps = num_inference_steps if inversion_steps is None else inversion_steps
    check_steps(inversion_steps)
    scheduler = pipe.scheduler
    keep = sampling_timesteps(pipe, num_inference_steps)
    max_steps = int(scheduler.config.num_train_timesteps)
    if not num_inference_steps <= inversion_steps < max_steps or (
        inversion_steps != num_inference_steps and not set(keep) <= set(sampling_timesteps(pipe, inversion_steps))
    ):
        raise ValueError(
            f"inversion_steps={inversion_steps} cannot serve {num_inference_steps} sampling steps: it must be in "
            f"[{num_inference_steps}, {max_steps - 1}] and its timesteps must include the sampling timesteps "
            f"(999, or a multiple of {num_inference_steps}, works)"
        )
    keep = set(keep)
    scheduler.set_timesteps(inversion_steps, device=z0.device)
    stride = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    z = z0.float()
    trajectory = [z]
    timesteps = scheduler.timesteps.flip(0)  # t_1 < t_2 < ... < t_N
    for i, t in enumerate(tqdm(timesteps, disable=not progress, desc="DDIM inversion", leave=False)):
        t = int(t)
        alpha_prod_t_prev = _alpha_prod(scheduler, t - stride).to(z.device)  # ᾱ_{t-1}: where z is now
        alpha_prod_t = _alpha_prod(scheduler, t).to(z.device)  # ᾱ_t: where it goes
        out = predict_noise(pipe, z.to(pipe.unet.dtype), t, cond, i, 1.0).float()
        # ε_θ(z_{t-1}, t, C); v / x0 predictions are converted at the sample's own level ᾱ_{t-1}, as
        # diffusers' DDIMInverseScheduler does
        eps = _to_eps(scheduler, out, z, alpha_prod_t_prev)
        # (2): predicted z_0, then re-noised to level t
        pred_z0 = (z - (1 - alpha_prod_t_prev) ** 0.5 * eps) / alpha_prod_t_prev**0.5
        z = alpha_prod_t**0.5 * pred_z0 + (1 - alpha_prod_t) ** 0.5 * eps
        if t in keep:
            trajectory.append(z)
        progress_report(DDIM_INVERSION, i + 1, len(timesteps))
    scheduler.set_timesteps(num_inference_steps, device=z0.device)
    return torch.cat(trajectory)


def null_text_optimisation(
    pipe,
    trajectory: torch.Tensor,
    cond: Conditioning,
    guidance_scale: float,
    num_inner_steps: int = 10,
    early_stop_epsilon: float = 1e-5,
    progress: bool = True,
) -> torch.Tensor:
    """Null-text inversion (4): one optimised unconditional embedding per sampling step.

    Follows the reference notebook exactly: Adam with learning rate ``1e-2 * (1 - i / 100)`` at step ``i``,
    ``num_inner_steps`` iterations, stopping early once the loss (before the update) is below
    ``early_stop_epsilon + i * 2e-5``; ∅ is warm-started from the previous step's result. The embedding and
    its optimiser state are float32 whatever the pipeline dtype (the UNet runs in its own dtype).

    Returns ``[T, M, D]`` float32, row ``i`` for sampling step ``i``.
    """
    scheduler = pipe.scheduler
    unet_dtype = pipe.unet.dtype
    T = trajectory.shape[0] - 1
    scheduler.set_timesteps(T, device=trajectory.device)
    added_cond = cond.added_cond_kwargs(False)
    added_uncond = None if cond.uncond_added is None else dict(cond.uncond_added)
    uncond = cond.uncond_at(0)[:1].detach().float().clone()  # ∅ initialised with the empty prompt's embedding
    z_cur = trajectory[T : T + 1].float()  # z̄_T = z*_T
    out: list[torch.Tensor] = []
    bar = tqdm(total=T * num_inner_steps, disable=not progress, desc="null-text optimisation", leave=False)

    def unet(z, t, embeds, added):
        model_in = scheduler.scale_model_input(z.to(unet_dtype), t)
        return pipe.unet(model_in, t, encoder_hidden_states=embeds.to(unet_dtype), added_cond_kwargs=added, return_dict=False)[0].float()

    for i, t in enumerate(scheduler.timesteps):
        target = trajectory[T - 1 - i : T - i].float()  # z*_{t-1}
        with torch.no_grad():
            eps_cond = unet(z_cur, t, cond.cond[:1], added_cond)  # ε_θ(z̄_t, t, C), fixed during the inner loop
        uncond = uncond.detach().clone().requires_grad_(True)
        optimizer = torch.optim.Adam([uncond], lr=1e-2 * (1.0 - i / 100.0))
        j = -1
        for j in range(num_inner_steps):  # noqa: B007 - j is read after the loop (early stop)
            with torch.enable_grad():
                eps_uncond = unet(z_cur, t, uncond, added_uncond)
                guided = eps_uncond + guidance_scale * (eps_cond - eps_uncond)  # (3)
                z_prev = scheduler.step(guided, t, z_cur, return_dict=False)[0]  # (1)
                loss = torch.nn.functional.mse_loss(z_prev, target)  # (4)
                (grad,) = torch.autograd.grad(loss, [uncond])
            uncond.grad = grad
            optimizer.step()
            bar.update()
            if loss.item() < early_stop_epsilon + i * 2e-5:
                break
        bar.update(num_inner_steps - 1 - j)
        uncond = uncond.detach()
        out.append(uncond[0])
        with torch.no_grad():  # z̄_{t-1} with the optimised ∅_t, exactly as the sampling loop will compute it
            step_cond = Conditioning(cond.cond[:1], uncond.to(cond.cond.dtype), cond.cond_added, cond.uncond_added)
            guided = predict_noise(pipe, z_cur.to(unet_dtype), t, step_cond, i, guidance_scale).float()
            z_cur = scheduler.step(guided, t, z_cur, return_dict=False)[0]
        progress_report(NULL_TEXT, i + 1, T)
    bar.close()
    return torch.stack(out)


def invert(
    pipe,
    image,
    prompt: str = "",
    method: str = "null-text",
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
    *,
    num_inner_steps: int = 10,
    early_stop_epsilon: float = 1e-5,
    size: int | tuple[int, int] | None = None,
    keep_aspect: bool = False,
    progress: bool = True,
    inversion_steps: int | None = None,
) -> Inversion:
    """Invert a real image into the pipeline's DDIM trajectory.

    Args:
        pipe: a Stable Diffusion 1.x/2.x or SDXL pipeline with a DDIM scheduler (:func:`editkit.load_pipeline`).
        image: a file path or a PIL image (see :func:`editkit.image.load_image` for the size policy).
        prompt: the prompt describing the image (the source prompt of later edits).
        method: ``"ddim"``, ``"null-text"`` (default), ``"negative-prompt"`` or ``"direct"``.
        num_inference_steps: DDIM steps ``T`` (50 in all three papers).
        guidance_scale: ``w`` the edits will use (7.5); null-text inversion optimises for it.
        num_inner_steps: null-text only: Adam iterations per step (10).
        early_stop_epsilon: null-text only: stop a step's iterations once the loss is below
            ``early_stop_epsilon + i * 2e-5`` (1e-5).
        size, keep_aspect: passed to :func:`prepare_image` (default: the model's size, center-cropped).
        progress: show progress bars.
        inversion_steps: DDIM inversion steps (default: ``num_inference_steps``); more, finer steps keep the
            inverted latents closer to the image's true trajectory (pnp-diffusers inverts with 999 and
            samples 50). The inversion keeps the latents at the ``num_inference_steps`` sampling timesteps.

    Returns:
        :class:`Inversion`.

    Examples:
        >>> inv = invert(pipe, "cat.jpg", "a cat sitting on a table")
        >>> reconstruct(pipe, inv).save("cat_rec.png")
        >>> inv.save("cat.safetensors")
    """
    # 1. Check inputs
    check_method(method)
    check_steps(num_inference_steps)
    guidance_scale = _check_guidance(guidance_scale)
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
    if not isinstance(num_inner_steps, int) or num_inner_steps < 0:
        raise ValueError(f"num_inner_steps must be an integer >= 0, got {num_inner_steps!r}")

    # 2. Image -> z_0
    pil = prepare_image(pipe, image, size=size, keep_aspect=keep_aspect)
    device = pipe._execution_device
    z0 = encode_image(pipe, image_to_tensor(pil).to(device))  # [1, C, h, w]

    # 3. Prompt embeddings C and ∅ (the empty prompt)
    cond = encode_prompts(pipe, [prompt], height=pil.height, width=pil.width)

    # 4. DDIM inversion (2), conditional prediction only
    trajectory = ddim_invert_latent(pipe, z0, cond, num_inference_steps, progress=progress, inversion_steps=inversion_steps)

    # 5. Null-text optimisation (4)
    uncond = None
    if method == "null-text":
        uncond = null_text_optimisation(
            pipe, trajectory, cond, guidance_scale, num_inner_steps, early_stop_epsilon, progress=progress
        )
    return Inversion(trajectory, prompt, num_inference_steps, guidance_scale, method, uncond)


def start_latents(pipe, inversion: Inversion, first_step: int, num_targets: int,
                  init_latent: torch.Tensor | None = None) -> torch.Tensor:
    """The rows ``[1 + num_targets, C, h, w]`` that sampling step ``first_step`` starts from.

    The source row is the inversion's pivot at that step (its latent after ``T - first_step`` inversion
    steps). The target rows are the same pivot, or, with ``init_latent`` (an image latent ``[1, C, h, w]``,
    e.g. another view of the same scene), the pivot with its image part swapped for ``init_latent``'s:
    ``z*_t + sqrt(ᾱ_t) (init_latent - z_0)``. A DDIM-inverted latent is ``sqrt(ᾱ_t) z_0 + sqrt(1 - ᾱ_t) ε``
    for the noise ``ε`` the inversion found, so the targets start from ``init_latent`` noised with the
    image's own inverted noise (SDEdit's start, with the noise of the source instead of fresh noise).
    """
    T = inversion.num_inference_steps
    if not isinstance(first_step, int) or not 0 <= first_step < T:
        raise ValueError(f"first_step must be an integer in [0, {T - 1}], got {first_step!r}")
    pivot = inversion.latents[T - first_step][None].float()  # [1, C, h, w]
    targets = pivot.expand(num_targets, *pivot.shape[1:])
    if init_latent is not None:
        init = init_latent.detach().to(pivot.device, torch.float32)
        if init.ndim == 3:
            init = init[None]
        if tuple(init.shape) != tuple(pivot.shape):
            raise ValueError(f"init_latent must have the inversion's latent shape {tuple(pivot.shape)}, got {tuple(init.shape)}")
        scheduler = copy.copy(pipe.scheduler)  # set_timesteps on a copy: the caller's schedule is left as it is
        scheduler.set_timesteps(T)
        t = int(scheduler.timesteps[first_step])  # the timestep of sampling step first_step
        sqrt_a = float(_alpha_prod(scheduler, t)) ** 0.5
        targets = (pivot + sqrt_a * (init - inversion.z0.float().to(pivot.device))).expand_as(targets)
    return torch.cat([pivot, targets])


def inversion_conditioning(pipe, inversion: Inversion, prompts=None, height=None, width=None) -> Conditioning:
    """The conditioning that samples ``prompts`` (default: the inversion prompt) back along the inversion.

    ``"null-text"``: ∅_t per step; ``"negative-prompt"``: ∅ := C of the inversion prompt (5), also for SDXL's
    pooled embedding; ``"ddim"`` and ``"direct"``: the empty prompt.
    """
    prompts = [inversion.prompt] if prompts is None else list(prompts)
    h, w = inversion.latents.shape[-2:]
    height = height or h * pipe.vae_scale_factor
    width = width or w * pipe.vae_scale_factor
    cond = encode_prompts(pipe, prompts, height=height, width=width)
    if inversion.method == "null-text":
        cond.uncond = inversion.uncond_list(cond.cond.device, cond.cond.dtype)
    elif inversion.method == "negative-prompt":
        src = encode_prompts(pipe, [inversion.prompt], height=height, width=width)
        cond.uncond = src.cond
        if src.cond_added is not None:
            cond.uncond_added = {k: v.expand(len(prompts), *v.shape[1:]) for k, v in src.cond_added.items()}
    return cond


def check_inversion(pipe, inversion: Inversion) -> None:
    """Refuse an inversion that ``pipe`` cannot use, or could use only at an absurd cost.

    Checked: the method; the step count (at most the scheduler's training timesteps); the latents
    ``[T + 1, C, h, w]`` (the model's channels; ``h`` and ``w`` multiples of what the UNet takes and at most
    :data:`MAX_LATENT_FACTOR` times its default latent size); null-text embeddings ``[T, M, D]`` matching the
    text encoder; every value finite.

    Raises:
        TypeError: not an :class:`Inversion`.
        ValueError: the message names the inversion's file (when loaded from one) and the problem.
    """
    if not isinstance(inversion, Inversion):
        raise TypeError(f"expected an editkit Inversion, got {type(inversion).__name__}")
    where = inversion.source or "the inversion"
    check_method(inversion.method)
    steps = inversion.num_inference_steps
    max_steps = int(getattr(pipe.scheduler.config, "num_train_timesteps", MAX_STEPS))
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= max_steps:
        raise ValueError(f"{where}: num_inference_steps {steps!r} is outside [1, {max_steps}] for this scheduler")
    latents = inversion.latents
    channels = pipe.unet.config.in_channels
    if latents.ndim != 4 or latents.shape[1] != channels:
        raise ValueError(f"{where}: latents {tuple(latents.shape)} do not fit this model ({channels} latent channels)")
    if latents.shape[0] != steps + 1:
        raise ValueError(f"{where}: holds {latents.shape[0]} latents but says {steps} steps")
    h, w = latents.shape[-2:]
    step = max(1, model_multiple(pipe) // pipe.vae_scale_factor)
    largest = MAX_LATENT_FACTOR * pipe.unet.config.sample_size
    if h % step or w % step or not 0 < h <= largest or not 0 < w <= largest:
        raise ValueError(
            f"{where}: a {h}x{w} latent ({h * pipe.vae_scale_factor}x{w * pipe.vae_scale_factor} px) does not fit "
            f"this model: each side must be a multiple of {step} and at most {largest} "
            f"(MAX_LATENT_FACTOR={MAX_LATENT_FACTOR} times its default latent size)"
        )
    if inversion.uncond_embeddings is not None:
        cond_dim = pipe.unet.config.cross_attention_dim
        cond_dim = cond_dim[0] if isinstance(cond_dim, list | tuple) else cond_dim
        expected = (steps, pipe.tokenizer.model_max_length, cond_dim)
        if tuple(inversion.uncond_embeddings.shape) != expected:
            raise ValueError(
                f"{where}: null-text embeddings {tuple(inversion.uncond_embeddings.shape)} do not fit this model "
                f"(expected {expected})"
            )
        if not torch.isfinite(inversion.uncond_embeddings).all():
            raise ValueError(f"{where}: null-text embeddings hold NaN or infinite values")
    if not torch.isfinite(latents).all():
        raise ValueError(f"{where}: latents hold NaN or infinite values; invert the image again")
    _check_guidance(inversion.guidance_scale)


@torch.no_grad()
def reconstruct(
    pipe,
    inversion: Inversion,
    guidance_scale: float | None = None,
    output_type: str = "pil",
    progress: bool = True,
):
    """Sample back from ``inversion.noise`` with the inversion's prompt and conditioning.

    With ``"direct"`` the source row is put back on the pivot after every step (6), so the result is the
    image latent itself; with ``"negative-prompt"`` (5) the guided prediction equals the conditional one.

    Returns a PIL image, or with ``output_type="latent"`` the final latent ``[1, C, h, w]``.
    """
    check_inversion(pipe, inversion)
    guidance_scale = inversion.guidance_scale if guidance_scale is None else _check_guidance(guidance_scale)
    device = pipe._execution_device
    cond = inversion_conditioning(pipe, inversion)
    callback = None
    if inversion.method == "direct":

        def callback(i, latents):
            return inversion.latent_at(i).to(device=latents.device, dtype=latents.dtype).expand_as(latents).clone()

    latents = inversion.noise.to(device=device, dtype=pipe.unet.dtype)
    latents = denoise(pipe, latents, cond, inversion.num_inference_steps, guidance_scale, progress=progress, step_callback=callback)
    if output_type == "latent":
        return latents
    return decode_latents(pipe, latents, output_type=output_type)[0]
