"""``splat`` command line: train, render, eval, export, prepare.

    splat train SCENE [--out DIR] [--preset NAME] [options]   train Gaussians (runs SfM first if needed)
    splat render CKPT --scene SCENE --out DIR [--split test]  render views of a trained model
    splat render CKPT --scene SCENE --path orbit --video o.mp4  a video along an orbit / spiral / interpolation
    splat eval CKPT --scene SCENE                             PSNR / SSIM (/ LPIPS) on held-out views
    splat view RUN_OR_CKPT_OR_PLY [--scene SCENE] [--port N]  live web viewer (viser)
    splat export CKPT --out FILE.ply                          write the Gaussians as a 3DGS PLY
    splat prepare SCENE [--overwrite] [--matcher ...]         COLMAP SfM from SCENE/images
    splat edit RUN --scene SCENE --source "..." --target "..."  edit a trained scene with a prompt (splat.edit)

CKPT may be a checkpoint (.pt), a 3DGS PLY (ours or the original implementation's) or a run folder.
Every option is documented in ``splat <command> --help``. Options for ``train`` come from a preset,
then ``SCENE/splat.json`` (a JSON object of option names, with underscores, to values), then the flags.
Paths (``--out``, ``--resume``, ``--cache-dir``, ``--images``) come from the flags only: ``splat.json``
may not set them and a checkpoint's are ignored. ``train --resume CKPT`` restores the checkpoint's
settings; only steps, eval/save steps, checkpointing, output, progress and device may change.
``train`` also takes ``prepare``'s SfM options, prefixed: ``--sfm.matcher sequential``.

Exit codes: 0 ok, 1 internal error (a bug: please report it with the traceback), 2 bad input or usage
(configuration, scene, checkpoint, an output that cannot be written or a full disk; one line on stderr
naming the problem), 130 interrupted.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import tyro

from splat.config import PRESETS, ConfigError, TrainConfig
from splat.edit import EditConfig
from splat.sfm import PrepareConfig


@dataclass
class TrainSfmOptions(PrepareConfig):
    """SfM options used by `splat train` when the scene has no COLMAP model yet (as `splat prepare`)."""

    overwrite: tyro.conf.Suppress[bool] = False  # train never replaces an existing model
    progress: tyro.conf.Suppress[bool] = True  # follows train's --progress

PresetName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]

EXIT_DIVERGED = 3  # training stopped on a non-finite loss or parameter (last good checkpoint kept)
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it


@dataclass
class TrainCommand:
    """Train 3D Gaussians on a COLMAP scene folder (SCENE/images + SCENE/sparse/0)."""

    scene: tyro.conf.Positional[Path]
    """Scene folder. If SCENE/sparse/0 is missing, SfM is run on SCENE/images first."""
    preset: PresetName = "default"  # type: ignore[valid-type]
    """Starting configuration: default (original 3DGS, 30k steps), mcmc, cpu-small (a few CPU minutes), quality (default + AbsGS, anti-aliasing, per-image bilateral grids). Schedules follow --steps (see --schedule-steps)."""
    config: Annotated[TrainConfig, tyro.conf.arg(name="")] = field(default_factory=TrainConfig)
    sfm: Annotated[TrainSfmOptions, tyro.conf.arg(name="sfm")] = field(default_factory=TrainSfmOptions)
    viewer: bool = False
    """Serve a live web viewer of the Gaussians being trained (see `splat view`)."""
    viewer_port: int = 8080
    """Port of the --viewer web server."""
    viewer_wait: bool = True
    """With --viewer: keep serving after training until Ctrl-C."""


@dataclass
class RenderCommand:
    """Render views of a trained model next to their ground truth, or a video along a camera path."""

    checkpoint: tyro.conf.Positional[Path]
    """Checkpoint (.pt) written by `splat train`, a 3DGS PLY, or a run folder (its newest model)."""
    scene: Path | None = None
    """Scene folder the model was trained on (cameras come from its COLMAP model); not needed with --path-file."""
    out: Path = Path("outputs/renders")
    """Folder for the PNG files."""
    split: Literal["test", "train", "all"] = "test"
    """Which views to render (the split uses the training run's test_every)."""
    images: str = "images"
    """Name of the images folder inside the scene (as given to `splat train --images`)."""
    device: str = "auto"
    """Torch device ("auto": cuda if available, else cpu)."""
    path: Literal["orbit", "spiral", "interpolate"] | None = None
    """Render along a camera path fitted to the training cameras instead of the dataset views."""
    path_file: Path | None = None
    """Render along a camera path read from this JSON file (see --save-path)."""
    save_path: Path | None = None
    """Write the camera path used to this JSON file."""
    frames: int = 120
    """Number of frames of a --path."""
    fps: float | None = None
    """Frames per second of the video (default: the path file's, else 30)."""
    video: Path | None = None
    """Write the path's frames to this video (.mp4, H.264; or .gif)."""
    save_frames: bool = False
    """Also write each frame of the path as a PNG in --out (the default when there is no --video)."""
    width: int | None = None
    """Width of the path's frames (default: the training images'); height follows their aspect."""
    mode: Literal["rgb", "depth", "alpha", "centres"] = "rgb"
    """What to draw along a path (see `splat view`)."""


@dataclass
class EvalCommand:
    """Evaluate a trained model on the held-out views (PSNR, SSIM, LPIPS when available)."""

    checkpoint: tyro.conf.Positional[Path]
    """Checkpoint (.pt) written by `splat train`, a 3DGS PLY, or a run folder (its newest model)."""
    scene: Path
    """Scene folder the model was trained on."""
    out: Path | None = None
    """Write metrics.json and renders here (default: print only, write nothing)."""
    images: str = "images"
    """Name of the images folder inside the scene (as given to `splat train --images`)."""
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
class ViewCommand:
    """Look at trained Gaussians in a web browser (viser): orbit, jump to training cameras, screenshots."""

    model: tyro.conf.Positional[Path]
    """Run folder (its newest checkpoint or PLY), checkpoint (.pt) or 3DGS PLY."""
    scene: Path | None = None
    """Scene folder the model was trained on: shows its cameras as frustums (click one to jump to it)."""
    port: int = 8080
    """Port of the web server."""
    host: str = "127.0.0.1"
    """Address to listen on ("0.0.0.0": every interface)."""
    device: str = "auto"
    """Torch device ("auto": cuda if available, else cpu, where renders are small and slow)."""
    resolution: int | None = None
    """Long side of the rendered image (default: 1920 on CUDA, 128 on CPU); also a slider in the page."""


@dataclass
class PrepareCommand:
    """Run structure-from-motion on SCENE/images and write SCENE/sparse/0."""

    scene: tyro.conf.Positional[Path]
    """Scene folder with an images/ sub-folder."""
    sfm: Annotated[PrepareConfig, tyro.conf.arg(name="")] = field(default_factory=PrepareConfig)


@dataclass
class EditCommand:
    """Edit a trained scene with a text prompt: Instruct-NeRF2NeRF's Iterative Dataset Update with
    editkit's Prompt-to-Prompt or Plug-and-Play edits of each view (see splat.edit)."""

    run: tyro.conf.Positional[Path]
    """A `splat train` output folder (its newest checkpoint), a checkpoint (.pt) or a 3DGS PLY."""
    scene: Path
    """Scene folder the run was trained on (its photos are what the edits start from)."""
    edit: Annotated[EditConfig, tyro.conf.arg(name="")]
    out: Path | None = None
    """Output folder of the edited run (default: RUN-edit beside the run); must not exist or be empty."""
    resume: Path | None = None
    """Go on with an interrupted edit from this checkpoint in OUT (or OUT itself: its newest), same settings."""
    viewer: bool = False
    """Serve a live web viewer of the scene being edited; each training camera shows its current image."""
    viewer_port: int = 8080
    """Port of the --viewer web server."""
    viewer_wait: bool = True
    """With --viewer: keep serving after the edit until Ctrl-C."""
    video: bool = False
    """Also write OUT/orbit.mp4: the edited scene along an orbit fitted to the training cameras."""
    video_frames: int = 120
    """Frames of the --video orbit (30 per second)."""


COMMANDS = {
    "train": TrainCommand,
    "render": RenderCommand,
    "eval": EvalCommand,
    "export": ExportCommand,
    "prepare": PrepareCommand,
    "view": ViewCommand,
    "edit": EditCommand,
}


def parse_train(argv: list[str]) -> tuple[Path, TrainConfig]:
    """``(scene, config)`` of ``splat train ARGV`` (see :func:`parse_train_command`)."""
    cmd = parse_train_command(argv)
    return cmd.scene, cmd.config


def parse_train_command(argv: list[str]) -> TrainCommand:
    """Two passes: find the scene, preset and checkpoint, then re-parse with their settings as defaults.

    The defaults are the preset with the scene's ``splat.json`` applied, or, with ``--resume CKPT``, the
    checkpoint's saved settings (the preset and ``splat.json`` are then not used); flags win either way.
    """
    from splat.config import validate
    from splat.trainer import config_from_checkpoint, default_config

    prog = "splat train"
    first = tyro.cli(TrainCommand, args=argv, prog=prog)
    if first.config.resume is not None:
        from splat.checkpoint import read_checkpoint
        from splat.config import ConfigError

        if any(a == "--preset" or a.startswith("--preset=") for a in argv):
            raise ConfigError("--preset does not apply with --resume: the checkpoint's settings are restored")

        defaults = config_from_checkpoint(read_checkpoint(first.config.resume), str(first.config.resume))
    else:
        defaults = default_config(first.scene, first.preset)
    second = tyro.cli(
        TrainCommand,
        args=argv,
        prog=prog,
        default=TrainCommand(first.scene, first.preset, defaults, TrainSfmOptions()),
    )
    validate(second.config, "command line")
    return second


def _checkpoint_setup(checkpoint: Path, scene: Path, device: str, images: str, out: Path):
    """A Trainer for ``scene`` configured as the model's run, holding the model's Gaussians (no SfM
    initialisation). The model is a checkpoint, a 3DGS PLY (its run's ``config.json`` is used when it sits
    in a run folder, else the defaults) or a run folder. Paths come from the arguments, never from files."""
    from splat.trainer import Trainer, config_from_checkpoint, read_model

    ckpt, file = read_model(checkpoint)
    cfg = config_from_checkpoint(ckpt, str(file))
    cfg = dataclasses.replace(cfg, device=device, images=images, out=out, resume=None, progress=False)
    return Trainer(scene, cfg, checkpoint=ckpt, checkpoint_path=file)


def _input_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input (a one-line message, exit 2); anything else is a bug (exit 1)."""
    from safeio import OwnershipError, WriteError
    from splat.checkpoint import CheckpointError
    from splat.colmap import SceneError
    from splat.config import ConfigError
    from splat.distributed import LaunchError
    from splat.outputs import OutputError
    from splat.sfm import SfmError

    return (ConfigError, SceneError, SfmError, CheckpointError, OutputError, WriteError, OwnershipError, LaunchError)


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
    except _input_errors() as e:  # bad configuration, scene, checkpoint, or an output that cannot be written
        print(f"splat {name}: error: {e}", file=sys.stderr)
        return 2
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
        from splat import distributed
        from splat.trainer import train

        ctx = distributed.from_env()  # several processes when launched by torchrun
        cmd = parse_train_command(rest)
        cfg = cmd.config
        sfm = PrepareConfig(**{**vars(cmd.sfm), "overwrite": False, "progress": cfg.progress})
        if ctx.enabled:
            if cmd.viewer:
                raise distributed.LaunchError("--viewer does not apply to a distributed run (torchrun)")
            cfg = dataclasses.replace(cfg, device=distributed.rank_device(ctx, cfg.device))
            with distributed.process_group(ctx, cfg.device):
                result = train(cmd.scene, cfg, sfm=sfm, dist=ctx)
            if not ctx.is_main:
                return 0
        elif cmd.viewer:
            from splat.viewer_cli import train_with_viewer

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

    cmd = tyro.cli(COMMANDS[name], args=rest, prog=f"splat {name}")
    if name == "prepare":
        from splat.sfm import prepare

        summary = prepare(cmd.scene, cmd.sfm)
        if not cmd.sfm.progress:  # prepare prints its summary itself when progress is on
            print(summary)
        return 0
    if name == "export":
        import torch

        from splat.checkpoint import read_checkpoint
        from splat.ply import write_ply
        from splat.trainer import params_from_checkpoint

        params = params_from_checkpoint(read_checkpoint(cmd.checkpoint), torch.device("cpu"), cmd.checkpoint)
        write_ply(cmd.out, params)
        print(f"wrote {cmd.out}")
        return 0
    if name == "eval":
        import tempfile

        with tempfile.TemporaryDirectory(prefix="splat-eval-") as tmp:  # removed on exit, as it is ours
            out = cmd.out if cmd.out is not None else Path(tmp)
            trainer = _checkpoint_setup(cmd.checkpoint, cmd.scene, cmd.device, cmd.images, out)
            if cmd.out is None:
                trainer.cfg = dataclasses.replace(trainer.cfg, save_renders=False)
            from splat.outputs import check_output_dir

            check_output_dir(trainer.out)
            print(json.dumps(trainer.evaluate(trainer.step), indent=2))
        return 0
    if name == "edit":
        return _edit(cmd)
    if name == "view":
        from splat.viewer_cli import serve

        return serve(cmd)
    if name == "render" and (cmd.path is not None or cmd.path_file is not None):
        from splat.viewer_cli import render_video

        return render_video(cmd)
    if name == "render":
        from splat.outputs import atomic_save_image, check_output_dir, image_stem

        if cmd.scene is None:
            raise ConfigError("--scene is needed to render the dataset views (or give --path / --path-file)")
        trainer = _checkpoint_setup(cmd.checkpoint, cmd.scene, cmd.device, cmd.images, cmd.out)
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
                    stem = image_stem(f.name)
                    atomic_save_image(cmd.out / f"{stem}_render.png", img)
                    atomic_save_image(cmd.out / f"{stem}_gt.png", f.image)
                    n += 1
        print(f"rendered {n} views to {cmd.out}")
        return 0
    raise AssertionError(name)


def _edit(cmd: EditCommand) -> int:
    from editkit.models import ModelNotFoundError
    from splat.edit import edit_scene
    from splat.trainer import TrainingInterrupted

    run = cmd.run
    out = cmd.out
    if out is None:
        folder = run if run.is_dir() else run.parent.parent if run.parent.name == "ckpts" else run.parent
        out = folder.parent / f"{folder.name}-edit"
    if cmd.video_frames < 1:
        raise ConfigError(f"video_frames must be at least 1, got {cmd.video_frames}")
    try:
        if cmd.viewer:
            from splat.viewer_cli import edit_with_viewer

            result = edit_with_viewer(run, cmd.scene, cmd.edit, out, cmd.viewer_port, cmd.viewer_wait,
                                      resume=cmd.resume)  # fmt: skip
        else:
            result = edit_scene(run, cmd.scene, cmd.edit, out, resume=cmd.resume)
    except ModelNotFoundError as e:
        print(f"splat edit: error: {e.for_cli()}", file=sys.stderr)
        return 2
    except TrainingInterrupted as e:
        print(
            f"splat edit: interrupted at step {e.step}; wrote {e.checkpoint}\n"
            f"resume with the same command and: --out {out} --resume {e.checkpoint}",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    summary = {
        "out": str(result.out),
        "checkpoint": str(result.checkpoint),
        "ply": str(result.ply),
        "steps": result.steps,
        "views_edited": result.views_edited,
        "inversions_computed": result.inversions_computed,
        "inversions_loaded": result.inversions_loaded,
        "seconds_per_edit": round(result.seconds_per_edit, 3),
        "elapsed_s": round(result.elapsed_s, 1),
        "psnr_vs_photos_before": result.before.get("psnr"),
        "psnr_vs_photos_after": result.after.get("psnr"),
        "before_after": str(result.contact_sheet) if result.contact_sheet else None,
    }
    if cmd.video:
        from splat.viewer_cli import render_video

        video = result.out / "orbit.mp4"
        render = RenderCommand(checkpoint=result.checkpoint, scene=cmd.scene, out=result.out, path="orbit",
                               video=video, frames=cmd.video_frames, device=cmd.edit.device)  # fmt: skip
        render_video(render)
        summary["video"] = str(video)
    print(json.dumps(summary, indent=2))
    return 0


def entry() -> int:
    """The ``splat`` console script: :func:`main`, and under torchrun an immediate exit afterwards (see
    :func:`splat.distributed.end_worker`)."""
    code = main()
    from splat.distributed import end_worker

    end_worker(code)
    return code


if __name__ == "__main__":
    raise SystemExit(entry())
