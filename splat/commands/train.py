"""``splat train SCENE [--out DIR] [--preset NAME] [options]``: train Gaussians (SfM first when the scene has no
COLMAP model yet); with ``--viewer``, a live web viewer of the Gaussians being trained.

Options come from a preset, then ``SCENE/splat.json`` (a JSON object of option names, with underscores, to
values), then the flags. Paths (``--out``, ``--resume``, ``--cache-dir``, ``--images``) come from the flags
only. ``--resume CKPT`` restores the checkpoint's settings; only steps, eval/save steps, checkpointing,
output, progress and device may change. ``prepare``'s SfM options are taken prefixed: ``--sfm.matcher``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import tyro

from splat.commands._common import check_port, wait_for_ctrl_c
from splat.config import PRESETS, TrainConfig
from splat.scene.sfm import PrepareConfig


@dataclass
class TrainSfmOptions(PrepareConfig):
    """SfM options used by `splat train` when the scene has no COLMAP model yet (as `splat prepare`)."""

    overwrite: tyro.conf.Suppress[bool] = False  # train never replaces an existing model
    progress: tyro.conf.Suppress[bool] = True  # follows train's --progress


PresetName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]


@dataclass
class TrainCommand:
    """Train 3D Gaussians on a COLMAP scene folder (SCENE/images + SCENE/sparse/0)."""

    scene: tyro.conf.Positional[Path]
    """Scene folder. If SCENE/sparse/0 is missing, SfM is run on SCENE/images first."""
    preset: PresetName = "default"  # type: ignore[valid-type]
    """Starting configuration: default (original 3DGS, 30k steps), mcmc, cpu-small (a few CPU minutes), quality (default + AbsGS densification; see docs/splat-quality.md for the opt-in options). Schedules follow --steps (see --schedule-steps)."""
    config: Annotated[TrainConfig, tyro.conf.arg(name="")] = field(default_factory=TrainConfig)
    sfm: Annotated[TrainSfmOptions, tyro.conf.arg(name="sfm")] = field(default_factory=TrainSfmOptions)
    viewer: bool = False
    """Serve a live web viewer of the Gaussians being trained (see `splat view`)."""
    viewer_port: int = 8080
    """Port of the --viewer web server."""
    viewer_wait: bool = True
    """With --viewer: keep serving after training until Ctrl-C."""
    dist_timeout: float = 7200.0
    """Under torchrun: seconds a rank waits in a collective for the others (rank 0 reads and undistorts
    the scene while the others wait; `splat prepare --cache-dir` can do that beforehand)."""


def parse_train(argv: list[str]) -> tuple[Path, TrainConfig]:
    """``(scene, config)`` of ``splat train ARGV`` (see :func:`parse_train_command`)."""
    cmd = parse_train_command(argv)
    return cmd.scene, cmd.config


def parse_train_command(argv: list[str], world_size: int = 1) -> TrainCommand:
    """Two passes: find the scene, preset and checkpoint, then re-parse with their settings as defaults.

    The defaults are the preset with the scene's ``splat.json`` applied, or, with ``--resume CKPT``, the
    checkpoint's saved settings (the preset and ``splat.json`` are then not used); flags win either way.
    On resume without ``--batch-size``, the batch size is the checkpoint's global batch divided by
    ``world_size`` (the number of processes) when it divides: 2 processes x 1 view resume as 1 x 2.
    """
    from splat.config import ConfigError, config_from_checkpoint, scene_config, validate

    prog = "splat train"
    first = tyro.cli(TrainCommand, args=argv, prog=prog)
    if first.config.resume is not None:
        from splat.gaussians.checkpoint import read_checkpoint

        if any(a == "--preset" or a.startswith("--preset=") for a in argv):
            raise ConfigError("--preset does not apply with --resume: the checkpoint's settings are restored")

        ckpt = read_checkpoint(first.config.resume)
        defaults = config_from_checkpoint(ckpt, str(first.config.resume))
        global_batch = int(ckpt.get("global_batch", 1))
        given = any(a == "--batch-size" or a.startswith("--batch-size=") for a in argv)
        if not given and global_batch % world_size == 0:
            defaults = dataclasses.replace(defaults, batch_size=global_batch // world_size)
        del ckpt
    else:
        defaults = scene_config(first.scene, first.preset)
    second = tyro.cli(
        TrainCommand,
        args=argv,
        prog=prog,
        default=TrainCommand(first.scene, first.preset, defaults, TrainSfmOptions()),
    )
    validate(second.config, "command line")
    return second


def train_with_viewer(
    scene: Path,
    cfg: TrainConfig,
    port: int = 8080,
    wait: bool = True,
    viewer_kwargs=None,
    on_ready=None,
    sfm=None,
):
    """Train as ``splat.train`` does, with a :class:`splat.view.viewer.Viewer` on the live Gaussians.

    ``on_ready(viewer)``, when given, is called once the viewer serves and before the first step."""
    from splat.config import config_to_dict
    from splat.scene.cameras import scene_cameras
    from splat.training.trainer import Trainer
    from splat.view.viewer import Viewer

    check_port(port)
    trainer = Trainer(scene, cfg, sfm=sfm)
    viewer = Viewer(
        dict(trainer.params.items()),
        cfg.sh_degree,
        scene_cameras(scene, config_to_dict(cfg)),
        port=port,
        device=trainer.device,
        backend=cfg.backend,
        background=tuple(cfg.background),
        **(viewer_kwargs or {}),
    )
    print(f"viewer: {viewer.url}", file=sys.stderr, flush=True)
    trainer.step_callbacks.append(viewer.on_train_step)
    try:
        if on_ready is not None:
            on_ready(viewer)
        result = trainer.train()
        if wait:
            viewer.update_gaussians(dict(trainer.params.items()), trainer.step)
            print(
                f"training done; the viewer stays at {viewer.url} until Ctrl-C", file=sys.stderr, flush=True
            )
            wait_for_ctrl_c()
    finally:
        viewer.stop()
    return result


def main(argv: list[str]) -> int:
    # first: `splat train --help` imports no torch; the process count (torchrun's WORLD_SIZE, checked
    # by distributed.from_env below) sets the batch size a resumed run infers from its checkpoint
    world = os.environ.get("WORLD_SIZE", "1")
    cmd = parse_train_command(argv, int(world) if world.isdigit() and int(world) > 0 else 1)
    from splat.training import distributed
    from splat.training.trainer import train

    ctx = distributed.from_env()  # several processes when launched by torchrun
    cfg = cmd.config
    sfm = PrepareConfig(**{**vars(cmd.sfm), "overwrite": False, "progress": cfg.progress})
    if ctx.enabled:
        if cmd.viewer:
            raise distributed.LaunchError("--viewer does not apply to a distributed run (torchrun)")
        cfg = dataclasses.replace(cfg, device=distributed.rank_device(ctx, cfg.device))
        with distributed.process_group(ctx, cfg.device, cmd.dist_timeout):
            result = train(cmd.scene, cfg, sfm=sfm, dist=ctx)
        if not ctx.is_main:
            return 0
    elif cmd.viewer:
        result = train_with_viewer(cmd.scene, cfg, cmd.viewer_port, cmd.viewer_wait, sfm=sfm)
    else:
        result = train(cmd.scene, cfg, sfm=sfm)
    final = result.metrics.get(str(result.steps), {})
    summary = {
        "out": str(result.out),
        "ply": str(result.ply),
        "steps": result.steps,
        "num_gaussians": result.num_gaussians,
        "elapsed_s": round(result.elapsed_s, 1),
        **{k: final.get(k) for k in ("psnr", "ssim", "lpips") if k in final},
    }
    print(json.dumps(summary, indent=2))
    return 0
