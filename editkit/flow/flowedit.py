"""FlowEdit: inversion-free, optimisation-free text-based editing with rectified-flow models (Kulikov et al.,
ICCV 2025; reference code github.com/fallenshock/FlowEdit, ``FlowEdit_utils.py``).

Instead of inverting the photo to noise and sampling back with the target prompt, FlowEdit integrates an ODE
directly from the source image to the edited one whose velocity is the *difference* of the target and source
velocities, evaluated on noisy versions of the two that share their noise::

    z_edit <- x_src                                               (at t_{N - n_max})
    for each step i with N - n_min >= N - i ... (the last n_max steps, except the last n_min):
        for k in 1..n_avg:   eps ~ N(0, I)
            z_src = (1 - t_i) x_src + t_i eps                     (forward process of the source)
            z_tar = z_edit + z_src - x_src                        (the same noise, moved by the edit so far)
            dV   += (v(z_tar, t_i | target, g_tar) - v(z_src, t_i | source, g_src)) / n_avg
        z_edit <- z_edit + (t_{i+1} - t_i) dV
    then (n_min > 0) the last n_min steps sample the target from z_edit + (noised x_src) - x_src (SDEdit-like)

Defaults are those of the authors' experiment files (``SD3_exp.yaml``, ``FLUX_exp.yaml``, the settings of the
paper): SD3 T=50 steps, n_max=33, n_min=0, n_avg=1, source / target guidance 3.5 / 13.5; FLUX T=28, n_max=24,
n_min=0, n_avg=1, guidance 1.5 / 5.5. (The function defaults in ``FlowEdit_utils.FlowEditSD3`` say n_max=15;
the experiment file the paper's results come from says 33.)

Where we differ from the reference, deliberately:

* the noise comes from a ``torch.Generator`` (the reference draws from the global RNG after seeding it); for
  the same seed the draws are identical: like the reference's ``randn_like`` we fill a tensor of the source
  latent's layout (packed tokens for FLUX; channels-last in memory on the CPU, as the pipeline's image
  preprocessing hands it to the VAE) in its memory order;
* the source and target rows go through the transformer in one batch for FLUX too (the reference makes two
  calls); rows are independent, the results agree to float tolerance;
* ``n_min > 0`` on SD3: the reference's branch cannot run (it casts to an undefined ``noise_pred_tar``), so we
  follow the paper and its FLUX branch: re-noise the source at ``t_{N-n_min}`` with fresh noise, shift it by the
  edit, and sample the remaining steps with the target prompt alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

from ..progress import report as progress_report
from . import sampling as fs

FLOWEDIT = "FlowEdit"  # progress stage name


@dataclass(frozen=True)
class FlowEditConfig:
    """FlowEdit's settings (see the module docstring for where the defaults come from)."""

    num_inference_steps: int  # T: the grid of the pipeline's scheduler with T steps
    n_max: int  # the edit starts at step T - n_max (larger: stronger edits, less faithful)
    n_min: int = 0  # the last n_min steps are plain target sampling
    n_avg: int = 1  # velocity differences averaged over n_avg noise draws per step
    source_guidance: float = 1.5
    target_guidance: float = 5.5

    def validate(self) -> FlowEditConfig:
        for name in ("num_inference_steps", "n_max", "n_min", "n_avg"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if self.num_inference_steps < 1 or self.n_avg < 1:
            raise ValueError("num_inference_steps and n_avg must be at least 1")
        if not self.n_min < self.n_max <= self.num_inference_steps:
            raise ValueError(f"FlowEdit needs n_min < n_max <= num_inference_steps, got n_min={self.n_min}, "
                             f"n_max={self.n_max}, num_inference_steps={self.num_inference_steps}")
        for name in ("source_guidance", "target_guidance"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        return self

    @property
    def transformer_calls(self) -> int:
        """Transformer evaluations of one edit (each a batch of 2 rows, 4 with SD3's guidance)."""
        return (self.n_max - self.n_min) * self.n_avg + self.n_min


DEFAULTS = {
    "sd3": FlowEditConfig(50, n_max=33, n_min=0, n_avg=1, source_guidance=3.5, target_guidance=13.5),
    "flux": FlowEditConfig(28, n_max=24, n_min=0, n_avg=1, source_guidance=1.5, target_guidance=5.5),
}


def default_config(pipe, **overrides) -> FlowEditConfig:
    """The reference defaults of the pipeline's family, with ``overrides`` (``None`` values ignored).

    Given ``num_inference_steps`` without ``n_max``, ``n_max`` keeps the reference's fraction of the steps
    (33/50 on SD3, 24/28 on FLUX; rounded, at least 1): the edit's strength does not change with the step count.
    """
    base = DEFAULTS[fs.family(pipe)]
    given = {k: v for k, v in overrides.items() if v is not None}
    if "num_inference_steps" in given and "n_max" not in given and isinstance(given["num_inference_steps"], int):
        given["n_max"] = max(1, round(given["num_inference_steps"] * base.n_max / base.num_inference_steps))
        given["n_max"] = max(given["n_max"], given.get("n_min", base.n_min) + 1)
    return replace(base, **given).validate()


@dataclass
class FlowEditResult:
    image: object  # PIL.Image (or what output_type asked for)
    latents: torch.Tensor  # [1, C, h, w] edited x_0
    source_latents: torch.Tensor  # [1, C, h, w]
    config: FlowEditConfig
    transformer_calls: int = 0
    extra: dict = field(default_factory=dict)


@torch.no_grad()
def flowedit_latents(pipe, x_src: torch.Tensor, cond: fs.FlowConditioning, config: FlowEditConfig, *,
                     generator: torch.Generator | None = None, session=None, progress: bool = False) -> torch.Tensor:
    """FlowEdit on latents: ``x_src`` ``[1, C, h, w]`` (the photo's ``x_0``), ``cond`` of [source, target].

    Every transformer call is one batch of the two prompts (:class:`~editkit.hooks.BatchLayout` with 2
    prompts: rows source / target, with SD3's guidance ``[u_src, u_tar, c_src, c_tar]``); ``session`` is told
    the step index ``i`` of the ``num_inference_steps`` grid before each call.
    """
    from tqdm.auto import tqdm

    config.validate()
    if cond.num_prompts != 2:
        raise ValueError(f"FlowEdit needs the conditioning of [source, target], got {cond.num_prompts} prompts")
    grid = fs.schedule(pipe, config.num_inference_steps, x_src.shape[-2:])
    n = grid.num_steps
    guidance = [config.source_guidance, config.target_guidance]
    fs.begin_session(session, pipe, 2, guidance, x_src.shape[-2:], n)
    target = cond.select([1])
    x_src = x_src.float()
    z_edit = x_src.clone()
    x_tar = None
    first = n - config.n_max
    for i in tqdm(range(first, n), disable=not progress, desc=FLOWEDIT, leave=False):
        t = grid.timesteps[i]
        t_i, t_next = grid.sigmas[i], grid.sigmas[i + 1]
        if n - i > config.n_min:
            dv = torch.zeros_like(x_src)
            for _ in range(config.n_avg):
                eps = fs.randn_model(pipe, x_src, generator)
                z_src = (1 - t_i) * x_src + t_i * eps
                z_tar = z_edit + z_src - x_src
                v = fs.velocity(pipe, torch.cat([z_src, z_tar]), t, cond, guidance, step=i, session=session).float()
                dv += (1 / config.n_avg) * (v[1:] - v[:1])
            z_edit = z_edit + (t_next - t_i) * dv
        else:
            if x_tar is None:  # step N - n_min: start the SDEdit-like phase from the edit so far
                eps = fs.randn_model(pipe, x_src, generator)
                x_tar = z_edit + ((1 - t_i) * x_src + t_i * eps) - x_src
            v = fs.velocity(pipe, x_tar, t, target, [config.target_guidance], step=i, session=session).float()
            x_tar = x_tar + (t_next - t_i) * v
        progress_report(FLOWEDIT, i + 1 - first, n - first)
    return z_edit if config.n_min == 0 else x_tar


def flowedit(pipe, image, source_prompt: str, target_prompt: str, *, num_inference_steps: int | None = None,
             n_max: int | None = None, n_min: int | None = None, n_avg: int | None = None,
             source_guidance: float | None = None, target_guidance: float | None = None,
             negative_prompt: str = "", generator: torch.Generator | int | None = None, size=None, session=None,
             output_type: str = "pil", progress: bool = False) -> FlowEditResult:
    """Edit a photo with FlowEdit (SD3 / SD3.5 or FLUX.1 pipeline).

    Args:
        image: a path, a PIL image or a ``[1, 3, H, W]`` tensor in ``[-1, 1]`` (one view of a scene, say);
            PIL / paths are read with :func:`editkit.load_image` (``size`` as there) and cropped to the model's
            multiple, as the reference script crops to 16 px.
        source_prompt, target_prompt: what the photo shows, and what it should show.
        num_inference_steps, n_max, n_min, n_avg, source_guidance, target_guidance: FlowEdit's settings; each
            ``None`` takes the family's reference default (:data:`DEFAULTS`). ``n_max / num_inference_steps``
            plays the role of an img2img strength.
        generator: a ``torch.Generator`` or an int seed (a CPU generator is made from it).

    Returns:
        :class:`FlowEditResult` with the edited image, its latents and the number of transformer calls.
    """
    config = default_config(pipe, num_inference_steps=num_inference_steps, n_max=n_max, n_min=n_min,
                            n_avg=n_avg, source_guidance=source_guidance, target_guidance=target_guidance)
    if not isinstance(source_prompt, str) or not isinstance(target_prompt, str):
        raise ValueError("source_prompt and target_prompt must be strings")
    if isinstance(generator, int) and not isinstance(generator, bool):
        generator = torch.Generator().manual_seed(generator)
    pixels = image_tensor(pipe, image, size)
    x_src = fs.encode_image(pipe, pixels)
    cond = fs.encode_prompts(pipe, [source_prompt, target_prompt], negative_prompt)
    out = flowedit_latents(pipe, x_src, cond, config, generator=generator, session=session, progress=progress)
    out = out.to(pipe.transformer.dtype)
    result_image = out if output_type == "latent" else fs.decode_latents(pipe, out, output_type)[0]
    return FlowEditResult(result_image, out, x_src, config, config.transformer_calls)


def image_tensor(pipe, image, size=None) -> torch.Tensor:
    """A photo as the model's input ``[1, 3, H, W]`` in ``[-1, 1]``.

    Paths and PIL images go through :func:`editkit.load_image` with ``multiple = 2 * vae_scale_factor`` (16 px
    on SD3 / FLUX): ``size=None`` keeps the photo's size, center-cropped to that multiple (the reference
    script crops the same amount, from the bottom-right); an int or ``(h, w)`` resizes as ``load_image`` does.
    A tensor must already have sides that are multiples of it.
    """
    from ..image import load_image

    f = 2 * pipe.vae_scale_factor
    if isinstance(image, torch.Tensor):
        pixels = image if image.ndim == 4 else image[None]
        if (pixels.ndim != 4 or pixels.shape[:2] != (1, 3) or pixels.shape[-2] % f or pixels.shape[-1] % f
                or not torch.isfinite(pixels).all()):
            raise ValueError(f"an image tensor must be [1, 3, H, W] in [-1, 1] with H and W multiples of {f}, "
                             f"got {tuple(image.shape)}")
    else:
        # the pipeline's own preprocessing, as the reference script: its tensor (and so the VAE's latent) is
        # channels-last in memory, which decides the order randn_like fills the noise in (randn_model)
        pixels = pipe.image_processor.preprocess(load_image(image, size=size, multiple=f))
    return pixels.to(device=pipe._execution_device, dtype=torch.float32)
