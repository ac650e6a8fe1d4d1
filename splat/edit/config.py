"""What ``splat edit`` is asked to do: :class:`EditConfig` (every field a flag) and :func:`plan_edit`, which checks
prompts, words and numbers before any model is loaded or anything written. No torch here: ``splat edit --help``
imports only this module."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from splat.config import ConfigError

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
INVERSIONS = ("direct", "null-text", "negative-prompt", "ddim")


class SceneEditError(ConfigError):
    """The edit cannot run as asked (prompts, words, settings, run folder); the message says why."""


def default_cache_dir() -> Path:
    """Where inversions are cached: ``$EDITKIT_CACHE``, else ``$XDG_CACHE_HOME/editkit``, else
    ``~/.cache/editkit``; inversions go to its ``inversions/`` folder."""
    root = os.environ.get("EDITKIT_CACHE")
    if root:
        return Path(root) / "inversions"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "editkit" / "inversions"


@dataclass
class EditConfig:
    """What ``splat edit`` does to a trained scene (every field is a ``splat edit`` flag)."""

    source: str
    """What the photos show now ("a photo of a cup on a table")."""
    target: str
    """What they should show ("a photo of a golden cup on a table")."""
    method: Literal["p2p", "pnp", "flowedit"] = "p2p"
    """Per-view edit: Prompt-to-Prompt (attention control, local blend) or Plug-and-Play (feature injection)
    with a Stable Diffusion UNet; FlowEdit (inversion-free: no inversion cache) with SD3 / SD3.5 / FLUX.1."""
    edit: Literal["replace", "refine", "reweight"] = "replace"
    """Prompt-to-Prompt edit: replace (word swap: as many words in both prompts), refine (words added or
    changed), reweight (scale the attention of --reweight words)."""
    reweight: tuple[str, ...] = ()
    """Re-weighted words of the target prompt, as WORD=SCALE (e.g. golden=2)."""
    blend_words: tuple[str, ...] = ()
    """Local blend: words of the source prompt naming what may change; the rest of every training image
    stays the original photo, pixel for pixel."""
    blend_target_words: tuple[str, ...] = ()
    """Local blend: the matching words of the target prompt (default: the same words as --blend-words)."""
    blend_threshold: float = 0.3
    """Local blend: a pixel is edited where the words' attention exceeds this fraction of its maximum."""
    cross_replace: float = 0.8
    """Prompt-to-Prompt: fraction of the steps with the source's cross-attention."""
    self_replace: float = 0.4
    """Prompt-to-Prompt: fraction of the steps with the source's self-attention."""
    model: str = DEFAULT_MODEL
    """Diffusion weights: hub id, diffusers folder or single .safetensors file (Stable Diffusion 1.x/2.x/SDXL
    for p2p / pnp; SD3 / SD3.5 / FLUX.1 for flowedit)."""
    steps: int = 50
    """DDIM steps of the inversion and of each edit (the edit runs the last strength x steps of them)."""
    guidance: float = 7.5
    """Classifier-free guidance of the edits."""
    inversion: Literal["direct", "null-text", "negative-prompt", "ddim"] = "direct"
    """Inversion of the photos (Prompt-to-Prompt; Plug-and-Play always uses DDIM inversion)."""
    strength: float = 0.75
    """Noise level of each edit: the fraction of the DDIM steps run from the noised render (0-1]."""
    strength_end: float | None = None
    """Anneal the strength linearly to this value over the run (default: fixed strength)."""
    lower_bound: float | None = None
    """Random noise level: each edit's strength drawn uniformly in [lower_bound, upper_bound] (seeded, as
    Instruct-NeRF2NeRF's --lower-bound / --upper-bound: 0.02 / 0.98) instead of --strength."""
    upper_bound: float | None = None
    """Random noise level: upper end of the draw (see --lower-bound)."""
    edit_every: int = 10
    """Training steps between two view edits (Instruct-NeRF2NeRF: 10)."""
    iterations: int | None = None
    """Training steps of the edit (default: every training view edited twice)."""
    edit_size: int | None = None
    """Longer side of the images the diffusion model edits (default: the model's own size, 512 for SD 1.5)."""
    residual: bool = True
    """New training image = render + decode(target) - decode(encode(render)): what the edit changed, applied
    to the render (the VAE's round-trip loss cancels); else decode(target), as Instruct-NeRF2NeRF."""
    lpips_weight: float = 1.0
    """Weight of the LPIPS (AlexNet) term between each render and its training image in the edit's loss
    (Instruct-NeRF2NeRF: 1.0); on when the `lpips` package and its weights are on disk (never downloaded,
    as `splat train`'s LPIPS), 0 turns it off."""
    lpips_patch: int = 32
    """Side of the patches the LPIPS term compares (Instruct-NeRF2NeRF: 32; AlexNet needs at least 31): the
    mean over the view's centred grid of whole patches."""
    densify: Literal["off", "prune", "full"] = "off"
    """Gaussians during the edit: "off" (moved and recoloured only), "prune" (transparent and oversized ones
    removed every --refine-every steps), "full" (3DGS's clone / split / prune as well: shape edits need new
    Gaussians)."""
    refine_every: int = 100
    """Training steps between two prunings / densifications of --densify."""
    seed: int = 0
    """Seed of the training, of the order in which views are edited and of the random noise levels."""
    device: str = "auto"
    """Torch device of the Gaussians and the diffusion model ("auto": cuda if available, else cpu)."""
    cache_dir: Path | None = None
    """Folder of cached inversions (default: $EDITKIT_CACHE/inversions or ~/.cache/editkit/inversions)."""
    progress: bool = True
    """Show one progress bar for the whole edit."""


# ---------------------------------------------------------------------------------------------------------
# checking what the user asked for (no model, nothing written)


def plan_edit(cfg: EditConfig):
    """Check prompts, words and numbers; returns the Prompt-to-Prompt :class:`editkit.jobs.EditGroup`
    (``None`` for Plug-and-Play). Raises :class:`SceneEditError` with the reason."""
    from editkit.jobs import InputError, P2PSettings, check_sampling, parse_reweight, plan_p2p
    from editkit.sampling import start_step

    try:
        steps, guidance = check_sampling(cfg.steps, cfg.guidance)
        if steps != cfg.steps:
            raise InputError(f"steps must be a whole number, got {cfg.steps!r}")
        for name in ("strength", "strength_end"):
            value = getattr(cfg, name)
            if value is not None:
                try:
                    start_step(steps, value)
                except ValueError as e:
                    raise InputError(f"{name}: {e}") from None
        bounds = (cfg.lower_bound, cfg.upper_bound)
        if (bounds[0] is None) != (bounds[1] is None):
            raise InputError("a random noise level needs both --lower-bound and --upper-bound")
        if bounds[0] is not None:
            if cfg.strength_end is not None:
                raise InputError("--strength-end anneals a fixed strength: drop it, or drop --lower-bound / --upper-bound")
            lo, hi = bounds
            if not all(isinstance(b, int | float) and not isinstance(b, bool) and 0.0 < b <= 1.0 for b in bounds) or lo > hi:
                raise InputError(f"lower_bound / upper_bound must satisfy 0 < lower <= upper <= 1, got {lo!r} / {hi!r}")
        w = cfg.lpips_weight
        if not isinstance(w, int | float) or isinstance(w, bool) or not math.isfinite(w) or w < 0:
            raise InputError(f"lpips_weight must be a finite number >= 0 (0: no LPIPS term), got {w!r}")
        p = cfg.lpips_patch
        if not isinstance(p, int) or isinstance(p, bool) or p < 31:
            raise InputError(f"lpips_patch must be a whole number of pixels >= 31 (AlexNet's smallest input), got {p!r}")
        if cfg.densify not in ("off", "prune", "full"):
            raise InputError(f"densify must be 'off', 'prune' or 'full', got {cfg.densify!r}")
        for name in ("edit_every", "iterations", "refine_every"):
            value = getattr(cfg, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise InputError(f"{name} must be a whole number >= 1, got {value!r}")
        if cfg.edit_size is not None and (not isinstance(cfg.edit_size, int) or cfg.edit_size < 8):
            raise InputError(f"edit_size must be a whole number of pixels >= 8, got {cfg.edit_size!r}")
        if cfg.inversion not in INVERSIONS:
            raise InputError(f"inversion must be one of {', '.join(INVERSIONS)}, got {cfg.inversion!r}")
        source, target = (cfg.source or "").strip(), (cfg.target or "").strip()
        if cfg.method in ("pnp", "flowedit"):
            if cfg.blend_words or cfg.blend_target_words or cfg.reweight or cfg.edit == "reweight":
                raise InputError(
                    "local blend and re-weighting are Prompt-to-Prompt edits: use --method p2p, or drop "
                    "--blend-words / --reweight"
                )
            if not target:
                raise InputError("Enter a target prompt (what the edited scene should show).")
            return None
        if cfg.method != "p2p":
            raise InputError(f"method must be 'p2p', 'pnp' or 'flowedit', got {cfg.method!r}")
        weights = parse_reweight(list(cfg.reweight))
        if cfg.edit == "reweight" and not weights:
            raise InputError("--edit reweight needs words to re-weight: --reweight WORD=SCALE (e.g. golden=2)")
        kind = cfg.edit
        if kind == "reweight":  # on top of a word swap when the prompts line up, else a refinement
            kind = "replace" if len(source.split()) == len(target.split()) else "refine"
        settings = P2PSettings(
            kind=kind,
            cross_replace=cfg.cross_replace,
            self_replace=cfg.self_replace,
            reweight=weights,
            blend_source=list(cfg.blend_words),
            blend_target=list(cfg.blend_target_words or cfg.blend_words),
        )
        if cfg.blend_target_words and not cfg.blend_words:
            raise InputError("--blend-target-words needs --blend-words (the words of the source prompt)")
        (group,) = plan_p2p(settings, source, [target])
        if group.local_blend is not None:
            th = float(cfg.blend_threshold)
            if not 0.0 <= th < 1.0:
                raise InputError(f"blend_threshold must be in [0, 1), got {cfg.blend_threshold!r}")
            group.local_blend = dataclasses.replace(group.local_blend, threshold=(th, th))
        return group
    except InputError as e:
        raise SceneEditError(str(e)) from None


FLOW_FAMILIES = ("sd3", "flux")


def check_method_family(method: str, family: str | None, model) -> None:
    """Refuse a per-view edit the model's family does not offer (``family`` None: not known yet)."""
    if family is None:
        return
    if method == "flowedit" and family not in FLOW_FAMILIES:
        raise SceneEditError(f"--method flowedit needs an SD3 / SD3.5 or FLUX.1 model; {model} is {family}: use p2p or pnp")
    if method != "flowedit" and family in FLOW_FAMILIES:
        raise SceneEditError(f"{model} is a {family} model: its per-view edit is --method flowedit, not {method}")
