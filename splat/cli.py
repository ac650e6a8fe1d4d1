"""``splat`` command line: train, render, eval, export, prepare.

    splat train SCENE [--out DIR] [--preset NAME] [options]   train Gaussians (runs SfM first if needed)
    splat render CKPT --scene SCENE --out DIR [--split test]  render views of a trained model
    splat eval CKPT --scene SCENE                             PSNR / SSIM (/ LPIPS) on held-out views
    splat export CKPT --out FILE.ply                          write the Gaussians as a 3DGS PLY
    splat prepare SCENE [--overwrite] [--matcher ...]         COLMAP SfM from SCENE/images

Every option is documented in ``splat <command> --help``. Options for ``train`` come from a preset,
then ``SCENE/splat.json`` (a JSON object of option names, with underscores, to values), then the flags.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import tyro

from splat.config import PRESETS, TrainConfig
from splat.sfm import PrepareConfig

PresetName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]

EXIT_DIVERGED = 3  # training stopped on a non-finite loss or parameter (last good checkpoint kept)
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it


@dataclass
class TrainCommand:
    """Train 3D Gaussians on a COLMAP scene folder (SCENE/images + SCENE/sparse/0)."""

    scene: tyro.conf.Positional[Path]
    """Scene folder. If SCENE/sparse/0 is missing, SfM is run on SCENE/images first."""
    preset: PresetName = "default"  # type: ignore[valid-type]
    """Starting configuration: default (original 3DGS, 30k steps), mcmc, cpu-small (a few CPU minutes)."""
    config: Annotated[TrainConfig, tyro.conf.arg(name="")] = field(default_factory=TrainConfig)


@dataclass
class RenderCommand:
    """Render views of a trained model next to their ground truth."""

    checkpoint: tyro.conf.Positional[Path]
    """Checkpoint (.pt) written by `splat train`."""
    scene: Path
    """Scene folder the model was trained on (cameras come from its COLMAP model)."""
    out: Path = Path("outputs/renders")
    """Folder for the PNG files."""
    split: Literal["test", "train", "all"] = "test"
    """Which views to render (the split uses the training run's test_every)."""
    device: str = "auto"
    """Torch device ("auto": cuda if available, else cpu)."""


@dataclass
class EvalCommand:
    """Evaluate a trained model on the held-out views (PSNR, SSIM, LPIPS when available)."""

    checkpoint: tyro.conf.Positional[Path]
    """Checkpoint (.pt) written by `splat train`."""
    scene: Path
    """Scene folder the model was trained on."""
    out: Path | None = None
    """Write metrics.json and renders here (default: print only)."""
    device: str = "auto"
    """Torch device ("auto": cuda if available, else cpu)."""


@dataclass
class ExportCommand:
    """Export a checkpoint as a PLY in the original 3DGS layout (readable by splat viewers)."""

    checkpoint: tyro.conf.Positional[Path]
    """Checkpoint (.pt) written by `splat train`."""
    out: Path = Path("point_cloud.ply")
    """Output PLY file."""


@dataclass
class PrepareCommand:
    """Run structure-from-motion on SCENE/images and write SCENE/sparse/0."""

    scene: tyro.conf.Positional[Path]
    """Scene folder with an images/ sub-folder."""
    sfm: Annotated[PrepareConfig, tyro.conf.arg(name="")] = field(default_factory=PrepareConfig)


COMMANDS = {
    "train": TrainCommand,
    "render": RenderCommand,
    "eval": EvalCommand,
    "export": ExportCommand,
    "prepare": PrepareCommand,
}


def parse_train(argv: list[str]) -> tuple[Path, TrainConfig]:
    """Two passes: find the scene and preset, then re-parse with preset + splat.json as defaults."""
    from splat.trainer import default_config

    prog = "splat train"
    first = tyro.cli(TrainCommand, args=argv, prog=prog)
    defaults = default_config(first.scene, first.preset)
    second = tyro.cli(
        TrainCommand, args=argv, prog=prog, default=TrainCommand(first.scene, first.preset, defaults)
    )
    return second.scene, second.config


def _checkpoint_setup(checkpoint: Path, scene: Path, device: str):
    """A Trainer for ``scene`` configured as the checkpoint's run, with the checkpoint's Gaussians."""
    import torch

    from splat.checkpoint import read_checkpoint
    from splat.config import apply_overrides
    from splat.trainer import Trainer

    ckpt = read_checkpoint(checkpoint)
    saved = {k: v for k, v in ckpt["config"].items() if k not in ("resume",)}
    cfg = apply_overrides(TrainConfig(), saved, source=str(checkpoint))
    cfg = dataclasses.replace(cfg, device=device, resume=None, progress=False)
    trainer = Trainer(scene, cfg)
    trainer.params = torch.nn.ParameterDict(
        {k: torch.nn.Parameter(v.to(trainer.device)) for k, v in ckpt["params"].items()}
    )
    trainer.step = int(ckpt["step"])
    return trainer


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"splat: unknown command {name!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    from splat.trainer import TrainingDiverged, TrainingInterrupted

    try:
        return _run(name, rest)
    except (ValueError, FileNotFoundError) as e:  # SceneError, OutputError, config errors
        print(f"splat {name}: error: {e}", file=sys.stderr)
        return 1
    except TrainingDiverged as e:
        print(f"splat {name}: error: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except TrainingInterrupted as e:
        print(f"splat {name}: {e}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print(f"splat {name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _run(name: str, rest: list[str]) -> int:
    if name == "train":
        from splat.trainer import train

        scene, cfg = parse_train(rest)
        result = train(scene, cfg)
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

    cmd = tyro.cli(COMMANDS[name], args=rest, prog=f"splat {name}")
    if name == "prepare":
        from splat.sfm import prepare

        summary = prepare(cmd.scene, cmd.sfm)
        if not cmd.sfm.progress:  # prepare prints its summary itself when progress is on
            print(summary)
        return 0
    if name == "export":
        from splat.checkpoint import read_checkpoint
        from splat.ply import write_ply

        write_ply(cmd.out, read_checkpoint(cmd.checkpoint)["params"])
        print(f"wrote {cmd.out}")
        return 0
    if name == "eval":
        trainer = _checkpoint_setup(cmd.checkpoint, cmd.scene, cmd.device)
        if cmd.out is None:
            trainer.cfg = dataclasses.replace(trainer.cfg, save_renders=False)
            trainer.out = Path(_tmpdir())
        else:
            trainer.out = cmd.out
        from splat.outputs import check_output_dir

        check_output_dir(trainer.out)
        print(json.dumps(trainer.evaluate(trainer.step), indent=2))
        return 0
    if name == "render":
        from splat.outputs import atomic_save_image, check_output_dir

        trainer = _checkpoint_setup(cmd.checkpoint, cmd.scene, cmd.device)
        check_output_dir(cmd.out)
        sets = {
            "test": [trainer.test_set],
            "train": [trainer.train_set],
            "all": [trainer.train_set, trainer.test_set],
        }
        import torch

        n = 0
        with torch.no_grad():
            for ds in sets[cmd.split]:
                for i in range(len(ds)):
                    f = ds[i]
                    img, _, _ = trainer.render(
                        f.K.to(trainer.device),
                        f.viewmat.to(trainer.device),
                        f.width,
                        f.height,
                        trainer.active_sh_degree(max(trainer.step, 1)),
                    )
                    stem = Path(f.name).with_suffix("").as_posix().replace("/", "__")
                    atomic_save_image(cmd.out / f"{stem}_render.png", img)
                    atomic_save_image(cmd.out / f"{stem}_gt.png", f.image)
                    n += 1
        print(f"rendered {n} views to {cmd.out}")
        return 0
    raise AssertionError(name)


def _tmpdir() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="splat-eval-")


if __name__ == "__main__":
    raise SystemExit(main())
