"""Training configuration: dataclasses with a docstring per field (``splat train --help`` shows them).

Defaults are the original 3DGS hyperparameters. Start from a preset (``PRESETS``), then a scene's
``splat.json`` (a JSON object of field names to values, e.g. ``{"steps": 2000, "max_width": 320}``),
then command-line flags; later ones win. Resuming (``resume``) starts from the checkpoint's settings
instead, and only the fields in ``RESUME_SAFE_FIELDS`` may then change.

* :class:`DensifyConfig` holds every densification setting, once. :class:`TrainConfig` extends it (so the
  flags stay flat: ``--refine-every``, and ``splat.json`` keys are unchanged) and the
  :class:`splat.training.strategy.Densifier` takes it whole (``cfg.densify_config()``).
* :func:`validate` checks every field (type, range, finite numbers, allowed values) and raises
  :class:`ConfigError` naming the field, the allowed values and the source (preset, ``splat.json``,
  checkpoint, flags). It is the one place where configurations are checked.
* Paths (``out``, ``resume``, ``cache_dir``, ``images``) come from the command line or the defaults only:
  a ``splat.json`` that sets one is refused, and a checkpoint's are ignored (``PATH_FIELDS``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Literal

SCENE_CONFIG_NAME = "splat.json"

# Fields that name files or folders, or say what may become of them: never taken from a scene's splat.json
# or from a checkpoint.
PATH_FIELDS = ("out", "resume", "cache_dir", "images", "overwrite")
# Fields that may differ between a checkpoint and the run that resumes it (anything else is refused).
RESUME_SAFE_FIELDS = (
    *PATH_FIELDS,
    "steps",
    "eval_steps",
    "save_steps",
    "ckpt_every",
    "keep_ckpts",
    "progress",
    "save_renders",
    "lpips",
    "device",
    "backend",
)


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field, the value and what is allowed."""


# ------------------------------------------------------------------------------------------------------
# limits: every size that comes from a flag or a file is checked against one of these before memory is
# spent on it; each can be raised with its environment variable
# ------------------------------------------------------------------------------------------------------
LIMITS = {
    "frames": ("SPLAT_MAX_FRAMES", 20_000),  # frames / cameras of a camera path (11 minutes at 30 fps)
    "frame_size": ("SPLAT_MAX_FRAME_SIZE", 8192),  # width or height of a rendered frame, in pixels
    "image_pixels": ("SPLAT_MAX_IMAGE_PIXELS", 100_000_000),  # pixels of an input photo (header size)
    "json_bytes": ("SPLAT_MAX_JSON_MB", 64),  # a splat.json or camera-path file, in MB
}
JSON_DEPTH = 64  # nesting of a splat.json / camera-path file (ours are at most 4 deep)


def limit(name: str) -> int:
    """The limit ``name`` of :data:`LIMITS`: its environment variable when set, else the default."""
    var, default = LIMITS[name]
    text = os.environ.get(var)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{var}={text!r} must be a positive integer") from None
    if value < 1:
        raise ConfigError(f"{var}={text!r} must be a positive integer")
    return value


def how_to_raise(name: str) -> str:
    """``"raise it with SPLAT_MAX_X=N"``: the end of every limit's message."""
    return f"raise it with the environment variable {LIMITS[name][0]}"


def check_limit(name: str, value: int, what: str) -> None:
    """Refuse ``value`` beyond limit ``name``: ``"{what} N is more than this run allows: at most M; raise
    it with ..."``."""
    most = limit(name)
    if value > most:
        raise ConfigError(f"{what} {value} is more than allowed: at most {most}; {how_to_raise(name)}")


def read_json(path: Path, what: str, error: type[ValueError] = ConfigError):
    """The JSON in ``path``, bounded: the file's size (``SPLAT_MAX_JSON_MB``) and its nesting
    (:data:`JSON_DEPTH`) are checked before it is parsed; every failure is ``error`` naming ``what``."""
    try:
        size = path.stat().st_size
        mb = limit("json_bytes")
        if size > mb * 2**20:
            raise error(f"{what} is {size / 2**20:.1f} MB: at most {mb} MB; {how_to_raise('json_bytes')}")
        text = path.read_text()
    except UnicodeDecodeError:
        raise error(f"{what} is not a text file") from None
    except OSError as e:
        raise error(f"cannot read {what}: {e.strerror or e}") from e
    depth = _json_depth(text)
    if depth > JSON_DEPTH:
        raise error(f"{what} is nested too deeply ({depth} levels of [ or {{; at most {JSON_DEPTH})")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{what} is not valid JSON: {e}") from e


_JSON_TOKEN = re.compile(r'\\.|[\[\]{}"]', re.S)


def _json_depth(text: str) -> int:
    """Deepest nesting of ``[`` / ``{`` outside strings (a linear scan: no recursion, no parse)."""
    depth = most = 0
    in_string = False
    for m in _JSON_TOKEN.finditer(text):
        ch = m.group()
        if ch == '"':
            in_string = not in_string
        elif in_string or len(ch) == 2:  # inside a string, or an escape such as \"
            continue
        elif ch in "[{":
            depth += 1
            most = max(most, depth)
        else:
            depth -= 1
    return most


@dataclass
class DensifyConfig:
    """Densification: when and how Gaussians are cloned, split, pruned, reset or relocated."""

    strategy: Literal["default", "mcmc"] = "default"
    """default: clone / split / prune / opacity reset (original 3DGS); mcmc: 3DGS-MCMC relocation."""
    refine_start: int = 500
    """Start densifying after this step."""
    refine_stop: int = 15_000
    """Stop densifying (and resetting opacity) at this step (default strategy)."""
    refine_every: int = 100
    """Densify every this many steps."""
    reset_every: int = 3000
    """Reset opacities every this many steps while densifying (default strategy); 0 disables. Opacities clamped to `reset_value` need a few hundred steps to recover: leave that many after the last reset (short runs: one reset or none)."""
    reset_value: float = 0.01
    """Opacities are clamped to at most this value at a reset."""
    grow_grad2d: float = 0.0002
    """Clone/split Gaussians whose mean screen-space gradient exceeds this."""
    absgrad: bool = False
    """AbsGS (Ye et al. 2024): grow on the mean *absolute* screen-space gradient (per-pixel terms summed as absolute values, so opposite pulls across an edge no longer cancel) with its own threshold, ``absgrad_grow_grad2d``. Default strategy only. gsplat measured it on Mip-NeRF 360 as better and smaller (29.11 vs 29.00 dB PSNR, 2.47 M vs 3.24 M Gaussians)."""
    absgrad_grow_grad2d: float = 0.0006
    """With ``absgrad``: the growth threshold on the absolute gradient (gsplat's evaluation used 0.0006; absolute sums are larger than signed ones, so the 0.0002 of ``grow_grad2d`` would grow far too much)."""
    grow_scale3d: float = 0.01
    """Gaussians smaller than this (x scene extent) are cloned, larger ones split."""
    prune_opa: float = 0.005
    """Prune Gaussians less opaque than this."""
    prune_scale3d: float = 0.1
    """Prune Gaussians larger than this (x scene extent) after the first reset."""
    cap_max: int = 1_000_000
    """MCMC: maximum number of Gaussians."""
    noise_lr: float = 5e5
    """MCMC: position noise scale."""
    min_opacity: float = 0.005
    """MCMC: Gaussians less opaque than this are relocated."""
    mcmc_refine_stop: int = 25_000
    """MCMC: stop relocating and adding Gaussians at this step (gsplat's default)."""


@dataclass
class TrainConfig(DensifyConfig):
    # -- run ------------------------------------------------------------------------------------------
    out: Path = Path("outputs/splat")
    """Output folder (checkpoints, point_cloud.ply, metrics.json, renders/)."""
    steps: int = 30_000
    """Number of optimisation steps (each renders `batch_size` images per process)."""
    schedule_steps: int = 0
    """The run length the step schedules are written for (presets: their `steps`). When `steps` differs, every schedule (refine_start / stop / every, reset_every, mcmc_refine_stop, sh_degree_interval, means_lr_steps, eval_steps, save_steps) is scaled by steps / schedule_steps as the run starts, as gsplat's --steps_scaler, so a shortened run keeps the preset's shape. 0: the schedules apply as given (and a warning names what will not happen within `steps`)."""
    batch_size: int = 1
    """Training views rendered per step by each process; the loss is their mean. Under torchrun the step's global batch is world_size x batch_size views, each rank rendering its own slice. Views of one step must share one image size."""
    batch_scaling: bool = False
    """Scale Adam for the global batch B as gsplat's simple_trainer: learning rates x sqrt(B), eps / sqrt(B), betas b -> b^B (gsplat: 1 - B (1 - b), which reaches 0 at B = 10). Off: the settings apply as given. Steps are never rescaled: lower steps and the step schedules yourself (gsplat's --steps_scaler 1/B)."""
    device: str = "auto"
    """Torch device: "auto" (cuda if available, else cpu), "cpu", "cuda", "cuda:1", "mps"."""
    backend: Literal["auto", "gsplat", "torch"] = "auto"
    """Rasterizer: gsplat (CUDA), torch (reference, CPU-capable) or auto (gsplat on CUDA)."""
    seed: int = 42
    """Seed of this run's random generators (view order, densification); global RNG state is left untouched."""
    progress: bool = True
    """Show a live progress bar (loss, PSNR, number of Gaussians, it/s)."""
    resume: Path | None = None
    """Checkpoint (.pt) to resume from: its settings are restored (only steps, eval/save steps, checkpointing, output and progress options may change) and the run then ends exactly as an uninterrupted one."""
    overwrite: bool = False
    """Replace the run already in --out (its checkpoints, PLY files, metrics and config). Without it (or --resume) a new run refuses a folder that holds another run."""
    ckpt_every: int = 1000
    """Write a resumable checkpoint every this many steps (0: only at save_steps and the end). A checkpoint holds the Gaussians and their Adam state: about 720 bytes per Gaussian at sh_degree 3 (0.72 GB per million Gaussians)."""
    keep_ckpts: int = 3
    """Keep only the newest this many periodic checkpoints (those at save_steps are always kept); 0 keeps all."""
    save_steps: tuple[int, ...] = (7_000, 30_000)
    """Steps at which to keep a checkpoint and a PLY (the last step always is)."""

    # -- data -----------------------------------------------------------------------------------------
    images: str = "images"
    """Name of the images folder inside the scene."""
    downscale: float = 1.0
    """Divide every image size by this factor (intrinsics follow)."""
    max_width: int = 1600
    """Images wider than this (after downscale) are scaled to this width, as in the original; 0 disables."""
    test_every: int = 8
    """Hold out every N-th image (sorted by name) for evaluation; 0 trains on all images."""
    cache_dir: Path | None = None
    """Where undistorted images are cached (default OUT/.cache; never inside the scene folder)."""
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Background colour behind the Gaussians, RGB in [0, 1] (the original uses black); with
    ``learn_background`` its starting value."""
    learn_background: bool = False
    """Learn the background colour with the Gaussians (one RGB for the whole scene). For captures with a
    featureless sky or backdrop: SfM finds no points there, and a fixed background that does not match it
    makes the Gaussians paint it, as floaters in front of the cameras that veil held-out views."""
    background_lr: float = 0.05
    """Learning rate of the learned background (Adam, on its logit)."""

    # -- initialisation -------------------------------------------------------------------------------
    sh_degree: int = 3
    """Maximum spherical-harmonics degree."""
    sh_degree_interval: int = 1000
    """Raise the active SH degree by one every this many steps."""
    init_opacity: float = 0.1
    """Initial opacity of every Gaussian."""
    init_scale: float = 1.0
    """Multiplier on the initial scale (mean distance to the 3 nearest SfM points)."""

    # -- optimisation (the original's learning rates) -------------------------------------------------
    means_lr: float = 1.6e-4
    """Initial position learning rate, multiplied by the scene extent."""
    means_lr_final: float = 1.6e-6
    """Final position learning rate (exponential decay over `means_lr_steps`), times the scene extent."""
    means_lr_steps: int = 30_000
    """Steps of the position learning-rate decay."""
    sh0_lr: float = 2.5e-3
    """Learning rate of the SH DC colour."""
    shN_lr: float = 2.5e-3 / 20
    """Learning rate of the higher SH coefficients (DC rate / 20)."""
    opacities_lr: float = 5e-2
    """Opacity learning rate (the original paper's 0.05)."""
    scales_lr: float = 5e-3
    """Log-scale learning rate."""
    quats_lr: float = 1e-3
    """Rotation learning rate."""
    adam_eps: float = 1e-15
    """Adam epsilon."""
    ssim_lambda: float = 0.2
    """Loss = (1 - ssim_lambda) * L1 + ssim_lambda * (1 - SSIM)."""
    opacity_reg: float = 0.01
    """MCMC: weight of the mean-opacity regulariser."""
    scale_reg: float = 0.01
    """MCMC: weight of the mean-scale regulariser."""

    # -- quality options ------------------------------------------------------------------------------
    antialiased: bool = False
    """Anti-aliased rasterization (Mip-Splatting's 2D filter, gsplat's rasterize_mode="antialiased"): each Gaussian's opacity is scaled by sqrt(det Sigma' / det(Sigma' + 0.3 I)), so the 0.3 px low-pass filter no longer dilates small Gaussians. Pick it when the scene will be viewed at other resolutions or distances than the photos. Rendering a model then needs the same mode (saved in its config)."""
    bilateral_grid: bool = False
    """Per-image appearance (gsplat's post_processing="bilateral_grid"): one bilateral grid of colour transforms per training image, with its total-variation loss, absorbs exposure and white-balance changes between photos (phone captures). Held-out views are rendered without a grid (gsplat's convention); the grids stay in checkpoints and out of exported files."""
    depth_loss: bool = False
    """Supervise the rendered expected depth with the SfM points that project into each training view (gsplat's depth_loss: L1 on disparity x scene extent, weight `depth_lambda`)."""
    depth_lambda: float = 1e-2
    """Weight of the depth loss (gsplat's depth_lambda)."""

    # -- evaluation -----------------------------------------------------------------------------------
    eval_steps: tuple[int, ...] = (0, 7_000, 30_000)
    """Evaluate on the held-out views at these steps (and at the last step); 0 is the initialisation."""
    save_renders: bool = True
    """Save held-out renders next to their ground truth at each evaluation."""
    lpips: bool = True
    """Also report LPIPS when the `lpips` package and its weights are available locally (never downloads)."""

    def __post_init__(self) -> None:
        # from Python a folder is as often a str as a Path: take either (an empty one stays "", and is refused)
        for name in ("out", "resume", "cache_dir"):
            value = getattr(self, name)
            if isinstance(value, str | os.PathLike) and not isinstance(value, Path) and os.fspath(value) != "":
                setattr(self, name, Path(value))

    def validate(self, source: str = "config") -> None:
        """Check every field; raise :class:`ConfigError` naming the first bad one."""
        validate(self, source)

    def densify_config(self) -> DensifyConfig:
        """The densification settings alone (what :class:`splat.training.strategy.Densifier` takes)."""
        return DensifyConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(DensifyConfig)})


# ------------------------------------------------------------------------------------------------------
# validation: one rule per field
# ------------------------------------------------------------------------------------------------------
def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _int(lo: int, hi: int | None = None):
    if hi is None:
        return lambda v: _is_int(v) and v >= lo, f"an integer >= {lo}"
    return lambda v: _is_int(v) and lo <= v <= hi, f"an integer from {lo} to {hi}"


def _num(lo: float, hi: float | None = None, lo_open: bool = False, hi_open: bool = False):
    def ok(v):
        if not _is_num(v):
            return False
        if v < lo or (lo_open and v == lo):
            return False
        return hi is None or v < hi or (v == hi and not hi_open)

    lb, rb = ("(" if lo_open else "["), (")" if hi_open else "]")
    text = f"a finite number > {lo:g}" if lo_open else f"a finite number >= {lo:g}"
    if hi is not None:
        text = f"a finite number in {lb}{lo:g}, {hi:g}{rb}"
    return ok, text


def _choice(*values):
    return lambda v: v in values, "one of " + ", ".join(repr(x) for x in values)


def _bool():
    return lambda v: isinstance(v, bool), "true or false"


def _steps_list():
    return (
        lambda v: isinstance(v, tuple) and all(_is_int(x) and x >= 0 for x in v),
        "a list of step numbers (integers >= 0)",
    )


def _path(optional: bool):
    text = "a path" + (" or null" if optional else "")
    return lambda v: (optional and v is None) or (isinstance(v, Path) and str(v) != ""), text


_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def _inside_name(v) -> bool:
    if not isinstance(v, str) or not v or "\\" in v or PureWindowsPath(v).drive:
        return False
    p = PurePosixPath(v)
    return not p.is_absolute() and ".." not in p.parts and p.parts != (".",)


_RULES = {
    # densification
    "strategy": _choice("default", "mcmc"),
    "refine_start": _int(0),
    "refine_stop": _int(0),
    "refine_every": _int(1),
    "reset_every": _int(0),
    "reset_value": _num(0, 1, lo_open=True, hi_open=True),
    "grow_grad2d": _num(0, lo_open=True),
    "absgrad": _bool(),
    "absgrad_grow_grad2d": _num(0, lo_open=True),
    "grow_scale3d": _num(0, lo_open=True),
    "prune_opa": _num(0, 1, hi_open=True),
    "prune_scale3d": _num(0, lo_open=True),
    "cap_max": _int(1),
    "noise_lr": _num(0),
    "min_opacity": _num(0, 1, hi_open=True),
    "mcmc_refine_stop": _int(0),
    # run
    "out": _path(optional=False),
    "steps": _int(1),
    "schedule_steps": _int(0),
    "batch_size": _int(1, 4096),
    "batch_scaling": _bool(),
    "device": (lambda v: isinstance(v, str) and _DEVICE.fullmatch(v) is not None,
               '"auto", "cpu", "cuda", "cuda:N" or "mps"'),  # fmt: skip
    "backend": _choice("auto", "gsplat", "torch"),
    "seed": _int(0),
    "progress": _bool(),
    "resume": _path(optional=True),
    "overwrite": _bool(),
    "ckpt_every": _int(0),
    "keep_ckpts": _int(0),
    "save_steps": _steps_list(),
    # data
    "images": (_inside_name, "a folder name inside the scene (relative, without '..')"),
    "downscale": _num(0, lo_open=True),
    "max_width": _int(0),
    "test_every": (lambda v: _is_int(v) and (v == 0 or v >= 2), "0 or an integer >= 2"),
    "cache_dir": _path(optional=True),
    "background": (
        lambda v: isinstance(v, tuple) and len(v) == 3 and all(_is_num(x) and 0 <= x <= 1 for x in v),
        "three numbers in [0, 1] (R, G, B)",
    ),
    # initialisation
    "sh_degree": _int(0, 3),
    "sh_degree_interval": _int(1),
    "init_opacity": _num(0, 1, lo_open=True, hi_open=True),
    "init_scale": _num(0, lo_open=True),
    # optimisation
    "means_lr": _num(0, lo_open=True),
    "means_lr_final": _num(0, lo_open=True),
    "means_lr_steps": _int(1),
    "sh0_lr": _num(0),
    "shN_lr": _num(0),
    "opacities_lr": _num(0),
    "scales_lr": _num(0),
    "quats_lr": _num(0),
    "adam_eps": _num(0, lo_open=True),
    "ssim_lambda": _num(0, 1),
    "opacity_reg": _num(0),
    "learn_background": _bool(),
    "background_lr": _num(0, lo_open=True),
    "scale_reg": _num(0),
    # quality options
    "antialiased": _bool(),
    "bilateral_grid": _bool(),
    "depth_loss": _bool(),
    "depth_lambda": _num(0, lo_open=True),
    # evaluation
    "eval_steps": _steps_list(),
    "save_renders": _bool(),
    "lpips": _bool(),
}


def validate(cfg: TrainConfig, source: str = "config") -> None:
    """Check every field of ``cfg``: raise :class:`ConfigError` ``"SOURCE: FIELD must be ALLOWED, got VALUE"``."""
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    missing = sorted(set(names) - set(_RULES))
    if missing:  # a new field without a rule is a bug in this module
        raise AssertionError(f"no validation rule for {missing}")
    for name in names:
        ok, allowed = _RULES[name]
        value = getattr(cfg, name)
        if not ok(value):
            raise ConfigError(f"{source}: {name} must be {allowed}, got {_show(value)}")
    if cfg.absgrad and cfg.strategy != "default":
        raise ConfigError(
            f"{source}: absgrad applies to the default strategy only (mcmc does not grow on gradients), "
            f"got strategy={cfg.strategy!r}; drop absgrad or use strategy 'default'"
        )


def _show(value) -> str:
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, Path):
        value = str(value)
    return repr(value)


# ------------------------------------------------------------------------------------------------------
# schedules that follow --steps
# ------------------------------------------------------------------------------------------------------
# Step schedules scaled with the run length, as gsplat's Config.adjust_steps: periods are floored at 1
# (gsplat would take a modulo by 0); a reset_every that truncates to 0 disables the reset, as 0 means here.
_SCHEDULE_STARTS = ("refine_start", "refine_stop", "mcmc_refine_stop")
_SCHEDULE_PERIODS = ("refine_every", "sh_degree_interval", "means_lr_steps")
# Setting any of these in a splat.json or through apply_overrides (without schedule_steps) takes every
# schedule as given: values written for a run length are not scaled again.
SCHEDULE_FIELDS = (*_SCHEDULE_STARTS, *_SCHEDULE_PERIODS, "reset_every")


def scaled_schedule(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with every step schedule scaled by ``steps / schedule_steps`` (gsplat's steps_scaler).

    Values are truncated as gsplat does (``int(value * factor)``); periods stay >= 1. The result has
    ``schedule_steps == steps``, so scaling it again changes nothing. ``schedule_steps == 0`` or equal to
    ``steps``: returned unchanged.
    """
    if cfg.schedule_steps == 0 or cfg.schedule_steps == cfg.steps:
        return cfg
    f = cfg.steps / cfg.schedule_steps
    values: dict = {name: int(getattr(cfg, name) * f) for name in _SCHEDULE_STARTS}
    values.update({name: max(1, int(getattr(cfg, name) * f)) for name in _SCHEDULE_PERIODS})
    values["reset_every"] = int(cfg.reset_every * f)
    values["eval_steps"] = tuple(sorted({int(s * f) for s in cfg.eval_steps}))
    values["save_steps"] = tuple(sorted({max(1, int(s * f)) for s in cfg.save_steps}))
    return dataclasses.replace(cfg, schedule_steps=cfg.steps, **values)


def schedule_warnings(cfg: TrainConfig) -> list[str]:
    """What will not happen within ``cfg.steps`` (one line each): densification that starts after the
    run ends, SH degrees never reached, a position learning rate that does not finish its decay."""
    notes = []
    n = cfg.steps
    hint = "set schedule_steps (presets do) to scale the schedules with steps, or lower"
    if cfg.strategy == "default" and cfg.refine_start + cfg.refine_every >= n:
        notes.append(f"steps={n}: no densification will happen (refine_start={cfg.refine_start}, "
                     f"refine_every={cfg.refine_every}); {hint} refine_start")
    if cfg.strategy == "mcmc" and cfg.refine_start + cfg.refine_every >= n:
        notes.append(f"steps={n}: no MCMC relocation will happen (refine_start={cfg.refine_start}); {hint} refine_start")
    reached = min(cfg.sh_degree, (n - 1) // cfg.sh_degree_interval)
    if reached < cfg.sh_degree:
        notes.append(f"steps={n}: the SH degree only reaches {reached} of {cfg.sh_degree} "
                     f"(sh_degree_interval={cfg.sh_degree_interval}); {hint} sh_degree_interval")
    if cfg.means_lr_steps > n:
        notes.append(f"steps={n}: the position learning rate stops at "
                     f"{100 * n / cfg.means_lr_steps:.0f}% of its decay (means_lr_steps={cfg.means_lr_steps}); "
                     f"{hint} means_lr_steps")
    return notes


# Presets: starting points that `--preset` selects before a scene's splat.json and the flags.
PRESETS: dict[str, TrainConfig] = {
    # the original 3DGS schedule (30k steps)
    "default": TrainConfig(schedule_steps=30_000),
    # 3DGS-MCMC with a 1M cap
    "mcmc": TrainConfig(strategy="mcmc", init_opacity=0.5, init_scale=0.1, schedule_steps=30_000),
    # a few minutes on a laptop CPU: small images, short schedule scaled down proportionally
    "cpu-small": TrainConfig(
        steps=2000,
        max_width=240,
        sh_degree_interval=500,
        means_lr_steps=2000,
        refine_start=200,
        refine_stop=1500,
        refine_every=100,
        reset_every=1000,
        eval_steps=(0, 2000),
        save_steps=(2000,),
        ckpt_every=500,
        schedule_steps=2000,
    ),
    # the default with AbsGS, which gsplat measured as better and smaller at 30k steps; the other quality
    # options answer particular captures or uses and stay opt-in (docs/splat-quality.md)
    "quality": TrainConfig(absgrad=True, schedule_steps=30_000),
}


def preset(name: str) -> TrainConfig:
    """A copy of the preset ``name``, or :class:`ConfigError` listing the presets."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name])


def apply_overrides(
    cfg: TrainConfig, overrides: dict, source: str = "overrides", paths: Literal["accept", "refuse", "ignore"] = "accept"
) -> TrainConfig:
    """Return a validated copy of ``cfg`` with ``overrides`` (field name -> JSON value) applied.

    Overrides that set a step schedule (``SCHEDULE_FIELDS``) but not ``schedule_steps`` set it to 0: the
    schedules then apply as written (they are not scaled with ``steps``).

    JSON values are converted (lists to tuples, integers to floats where a number is expected, strings to
    paths). ``paths`` says what to do with ``PATH_FIELDS``: accept them (flags, the Python API), refuse them
    with a :class:`ConfigError` (a scene's ``splat.json``) or ignore them (a checkpoint's saved config).
    """
    if not isinstance(overrides, dict):
        raise ConfigError(f"{source}: expected an object of option names to values, got {type(overrides).__name__}")
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: unknown option(s) {unknown}; see `splat train --help`")
    given_paths = sorted(set(overrides) & set(PATH_FIELDS))
    if given_paths and paths == "refuse":
        flags = ", ".join("--" + k.replace("_", "-") for k in given_paths)
        raise ConfigError(
            f"{source}: {', '.join(given_paths)} may not be set here (paths come from the command line only); "
            f"remove them and pass {flags} instead"
        )
    values = {}
    if set(overrides) & set(SCHEDULE_FIELDS) and "schedule_steps" not in overrides:
        values["schedule_steps"] = 0  # schedules written out (e.g. a scene's splat.json) apply as given
    for name, value in overrides.items():
        if name in PATH_FIELDS and paths == "ignore":
            continue
        default = getattr(cfg, name)
        if name in ("out", "resume", "cache_dir"):
            value = Path(value) if isinstance(value, str) and value else value
        elif isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        elif isinstance(default, float) and _is_int(value):
            value = float(value)
        values[name] = value
    result = dataclasses.replace(cfg, **values)
    validate(result, source)
    return result


def load_scene_overrides(scene: Path) -> dict:
    """The JSON object in ``SCENE/splat.json`` (empty if there is none)."""
    path = Path(scene) / SCENE_CONFIG_NAME
    if not path.is_file():
        return {}
    data = read_json(path, str(path))
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object of option names to values")
    return data


def scene_config(scene: Path, preset_name: str = "default") -> TrainConfig:
    """The preset with the scene's ``splat.json`` applied (path options there are refused)."""
    path = Path(scene) / SCENE_CONFIG_NAME
    return apply_overrides(preset(preset_name), load_scene_overrides(scene), source=str(path), paths="refuse")


def config_to_dict(cfg: TrainConfig) -> dict:
    """Flat JSON-ready dict: the same keys as ``splat.json`` and the flags (with underscores)."""
    d = dataclasses.asdict(cfg)
    return {
        k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v) for k, v in d.items()
    }


def config_from_checkpoint(ckpt: dict, source: str) -> TrainConfig:
    """The configuration a checkpoint was trained with, validated; its paths are ignored (defaults)."""
    return apply_overrides(TrainConfig(), ckpt["config"], source=f"{source} (saved config)", paths="ignore")
