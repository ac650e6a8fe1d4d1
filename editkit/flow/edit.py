"""The flow families' editing methods behind one call, for the command line, the UI and scene editing.

:class:`FlowSettings` holds what a user chooses (the method and its settings; ``None`` means the method's
reference default for the loaded family), :func:`check_settings` refuses bad values before any model is
loaded, and :func:`edit_photo` applies one source prompt and its target prompts to one photo.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import flowedit as fe
from . import inversion as fi
from . import sampling as fs

METHODS = ("flowedit", "rf-inversion")


@dataclass(kw_only=True)
class FlowSettings:
    method: str = "flowedit"
    steps: int | None = None  # FlowEdit: T; RF-Inversion: inversion and sampling steps
    n_max: int | None = None
    n_min: int | None = None
    n_avg: int | None = None
    source_guidance: float | None = None
    target_guidance: float | None = None
    gamma: float | None = None
    eta: float | None = None


def check_settings(settings: FlowSettings) -> FlowSettings:
    """Refuse bad values with a ``ValueError`` naming the setting (no model needed)."""
    if settings.method not in METHODS:
        raise ValueError(f"unknown flow method {settings.method!r}; expected one of {', '.join(METHODS)}")
    for name in ("steps", "n_max", "n_min", "n_avg"):
        value = getattr(settings, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "n_min" else 1)):
            raise ValueError(f"{name} must be a {'non-negative' if name == 'n_min' else 'positive'} integer, got {value!r}")
    for name in ("source_guidance", "target_guidance", "gamma", "eta"):
        value = getattr(settings, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                  or not math.isfinite(value) or value < 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    for name in ("gamma", "eta"):
        value = getattr(settings, name)
        if value is not None and value > 1:
            raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return settings


def photo_size(pipe, image):
    """The ``size`` a photo is edited at: its own (cropped to the model's multiple), or, when its longer side
    is above the model's native resolution (``default_sample_size * vae_scale_factor``: 1024 px on SD3.5 and
    FLUX.1), that resolution for the longer side, aspect kept."""

    native = int(pipe.default_sample_size * pipe.vae_scale_factor)
    if isinstance(image, torch.Tensor):
        return None
    from ..image import open_header

    im, _ = open_header(image)  # a photo over the limit or unreadable: the ValueError that names it
    longer = max(im.size)
    if im is not image:
        im.close()
    return None if longer <= native else native


def edit_photo(pipe, image, source: str, targets: list[str], settings: FlowSettings, *, seed: int | None = None,
               size=None, progress: bool = False):
    """Edit one photo into each target prompt. Returns ``(source_image, [edited images])`` (PIL); the source
    image is the photo as the model sees it (its latent decoded). The generator is seeded with ``seed`` for
    every target, so each edit is reproducible on its own. ``size=None``: :func:`photo_size`."""
    check_settings(settings)
    native = photo_size(pipe, image) if size is None else None
    if native is not None:
        from ..image import load_image

        image = load_image(image, size=native, keep_aspect=True, multiple=2 * pipe.vae_scale_factor)
    images = []
    x_src = None
    for target in targets:
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        if settings.method == "flowedit":
            res = fe.flowedit(pipe, image, source, target, num_inference_steps=settings.steps, n_max=settings.n_max,
                              n_min=settings.n_min, n_avg=settings.n_avg, source_guidance=settings.source_guidance,
                              target_guidance=settings.target_guidance, generator=generator, size=size,
                              progress=progress)
            images.append(res.image)
            x_src = res.source_latents
        else:
            out, _ = fi.rf_inversion_edit(pipe, image, target, source_prompt=source, num_inference_steps=settings.steps,
                                          gamma=settings.gamma, eta=settings.eta,
                                          source_guidance=settings.source_guidance,
                                          target_guidance=settings.target_guidance, generator=generator, size=size,
                                          progress=progress)
            images.append(out)
    if x_src is None:
        x_src = fs.encode_image(pipe, fe.image_tensor(pipe, image, size))
    return fs.decode_latents(pipe, x_src)[0], images


def generate_and_edit(pipe, source: str, targets: list[str], settings: FlowSettings, *, seed: int | None = None,
                      guidance: float | None = None, height: int | None = None, width: int | None = None,
                      progress: bool = False):
    """Generate the source prompt's image (the pipeline's Euler sampler; ``settings.steps`` or 28 steps), then
    FlowEdit its latent into each target prompt. Returns ``(source_image, [edited images])``."""
    check_settings(settings)
    if settings.method != "flowedit":
        raise ValueError("generate edits its image with FlowEdit; --method rf-inversion is for photos")
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    x_src = fs.generate(pipe, source, height=height, width=width, num_inference_steps=settings.steps,
                        guidance_scale=guidance, generator=generator, output_type="latent", progress=progress)
    config = fe.default_config(pipe, num_inference_steps=settings.steps, n_max=settings.n_max, n_min=settings.n_min,
                               n_avg=settings.n_avg, source_guidance=settings.source_guidance,
                               target_guidance=settings.target_guidance)
    images = []
    for target in targets:
        cond = fs.encode_prompts(pipe, [source, target])
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        out = fe.flowedit_latents(pipe, x_src.float(), cond, config, generator=g, progress=progress)
        images.append(fs.decode_latents(pipe, out.to(pipe.transformer.dtype))[0])
    return fs.decode_latents(pipe, x_src)[0], images
