"""Training configuration: one dataclass, a docstring per field (``splat train --help`` shows them).

Defaults are the original 3DGS hyperparameters. Start from a preset (``PRESETS``), then a scene's
``splat.json`` (a JSON object of field names to values, e.g. ``{"steps": 2000, "max_width": 320}``),
then command-line flags; later ones win.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

SCENE_CONFIG_NAME = "splat.json"


@dataclass
class TrainConfig:
    # -- run ------------------------------------------------------------------------------------------
    out: Path = Path("outputs/splat")
    """Output folder (checkpoints, point_cloud.ply, metrics.json, renders/)."""
    steps: int = 30_000
    """Number of optimisation steps (one image per step)."""
    device: str = "auto"
    """Torch device: "auto" (cuda if available, else cpu), "cpu", "cuda", "cuda:1", ..."""
    backend: Literal["auto", "gsplat", "torch"] = "auto"
    """Rasterizer: gsplat (CUDA), torch (reference, CPU-capable) or auto (gsplat on CUDA)."""
    seed: int = 42
    """Seed of this run's random generators (view order, densification); global RNG state is left untouched."""
    progress: bool = True
    """Show a live progress bar (loss, PSNR, number of Gaussians, it/s)."""
    resume: Path | None = None
    """Checkpoint (.pt) to resume from; the run then ends exactly as an uninterrupted one."""
    ckpt_every: int = 1000
    """Write a resumable checkpoint every this many steps (0: only at save_steps and the end)."""
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
    """Where undistorted images are cached (default SCENE/.splat_cache, or OUT/.splat_cache if the scene is read-only)."""
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Background colour behind the Gaussians (the original uses black)."""

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

    # -- densification --------------------------------------------------------------------------------
    strategy: Literal["default", "mcmc"] = "default"
    """default: clone / split / prune / opacity reset (original 3DGS); mcmc: 3DGS-MCMC relocation."""
    refine_start: int = 500
    """Start densifying after this step."""
    refine_stop: int = 15_000
    """Stop densifying (and resetting opacity) at this step."""
    refine_every: int = 100
    """Densify every this many steps."""
    reset_every: int = 3000
    """Reset opacities every this many steps while densifying (default strategy); 0 disables. Opacities clamped to `reset_value` need a few hundred steps to recover: leave that many after the last reset (short runs: one reset or none)."""
    reset_value: float = 0.01
    """Opacities are clamped to at most this value at a reset."""
    grow_grad2d: float = 0.0002
    """Clone/split Gaussians whose mean screen-space gradient exceeds this."""
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
    opacity_reg: float = 0.01
    """MCMC: weight of the mean-opacity regulariser."""
    scale_reg: float = 0.01
    """MCMC: weight of the mean-scale regulariser."""

    # -- evaluation -----------------------------------------------------------------------------------
    eval_steps: tuple[int, ...] = (7_000, 30_000)
    """Evaluate on the held-out views at these steps (and at the last step)."""
    save_renders: bool = True
    """Save held-out renders next to their ground truth at each evaluation."""
    lpips: bool = True
    """Also report LPIPS when the `lpips` package and its weights are available locally (never downloads)."""

    def validate(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not 0 <= self.sh_degree <= 3:
            raise ValueError(f"sh_degree must be 0..3, got {self.sh_degree}")
        if not 0 < self.init_opacity < 1:
            raise ValueError(f"init_opacity must be in (0, 1), got {self.init_opacity}")
        if not 0 < self.reset_value < 1:
            raise ValueError(f"reset_value must be in (0, 1), got {self.reset_value}")
        if not 0 <= self.ssim_lambda <= 1:
            raise ValueError(f"ssim_lambda must be in [0, 1], got {self.ssim_lambda}")


# Presets: starting points that `--preset` selects before a scene's splat.json and the flags.
PRESETS: dict[str, TrainConfig] = {
    # the original 3DGS schedule (30k steps)
    "default": TrainConfig(),
    # 3DGS-MCMC with a 1M cap
    "mcmc": TrainConfig(strategy="mcmc", init_opacity=0.5, init_scale=0.1),
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
        eval_steps=(2000,),
        save_steps=(2000,),
        ckpt_every=500,
    ),
}


def apply_overrides(cfg: TrainConfig, overrides: dict, source: str = "overrides") -> TrainConfig:
    """Return a copy of ``cfg`` with ``overrides`` (field name -> JSON value) applied, with type checks."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(f"{source}: unknown option(s) {unknown}; see `splat train --help`")
    values = {}
    for name, value in overrides.items():
        default = getattr(cfg, name)
        if name in ("out", "resume", "cache_dir"):
            value = None if value is None else Path(value)
        elif isinstance(default, tuple):
            if not isinstance(value, list | tuple):
                raise ValueError(f"{source}: {name} must be a list, got {value!r}")
            value = tuple(value)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ValueError(f"{source}: {name} must be true or false, got {value!r}")
        elif isinstance(default, int):
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{source}: {name} must be an integer, got {value!r}")
        elif isinstance(default, float):
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise ValueError(f"{source}: {name} must be a number, got {value!r}")
            value = float(value)
        values[name] = value
    return dataclasses.replace(cfg, **values)


def load_scene_overrides(scene: Path) -> dict:
    """The JSON object in ``SCENE/splat.json`` (empty if there is none)."""
    path = Path(scene) / SCENE_CONFIG_NAME
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object of option names to values")
    return data


def config_to_dict(cfg: TrainConfig) -> dict:
    d = dataclasses.asdict(cfg)
    return {
        k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v) for k, v in d.items()
    }
