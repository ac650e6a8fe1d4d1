"""``splat edit RUN --scene SCENE --source "..." --target "..."``: edit a trained scene with a text prompt
(:mod:`splat.edit`); with ``--viewer`` a live web viewer of the scene being edited, with ``--video`` an orbit."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from splat.commands import EXIT_INTERRUPTED
from splat.commands._common import check_port, wait_for_ctrl_c
from splat.config import ConfigError
from splat.edit.config import EditConfig


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


def edit_with_viewer(run, scene, cfg, out, port: int = 8080, wait: bool = True, pipe=None, on_ready=None, resume=None):
    """``splat edit`` (:func:`splat.edit.edit_scene`) with a :class:`splat.view.viewer.Viewer` on the Gaussians
    being edited; each training view's frustum shows its image as the last edit left it.

    ``on_ready(viewer)``, when given, is called once the viewer serves and before the first step."""
    from splat.config import config_to_dict
    from splat.edit.dataset_update import edit_scene
    from splat.scene.cameras import scene_cameras
    from splat.view.viewer import Viewer

    check_port(port)
    holder = {}

    def start(trainer):
        viewer = Viewer(
            dict(trainer.params.items()),
            trainer.cfg.sh_degree,
            scene_cameras(scene, config_to_dict(trainer.cfg)),
            port=port,
            device=trainer.device,
            backend=trainer.cfg.backend,
            background=tuple(float(c) for c in trainer.current_background().detach().cpu()),
        )
        holder["viewer"] = viewer
        print(f"viewer: {viewer.url}", file=sys.stderr, flush=True)
        trainer.step_callbacks.append(viewer.on_train_step)
        if on_ready is not None:
            on_ready(viewer)

    def edited(name, image):
        holder["viewer"].set_view_image(name, image)

    try:
        result = edit_scene(run, scene, cfg, out, pipe=pipe, on_start=start, on_view_edited=edited, resume=resume)
        if wait and "viewer" in holder:
            from splat.gaussians.model import load_model

            holder["viewer"].update_gaussians(load_model(result.checkpoint).params)
            print(f"edit done; the viewer stays at {holder['viewer'].url} until Ctrl-C", file=sys.stderr, flush=True)
            wait_for_ctrl_c()
    finally:
        if "viewer" in holder:
            holder["viewer"].stop()
    return result


def main(argv: list[str]) -> int:
    cmd = tyro.cli(EditCommand, args=argv, prog="splat edit")
    from editkit.models import ModelNotFoundError
    from splat.edit.dataset_update import edit_scene
    from splat.training.errors import TrainingInterrupted

    run = cmd.run
    out = cmd.out
    if out is None:
        folder = run if run.is_dir() else run.parent.parent if run.parent.name == "ckpts" else run.parent
        out = folder.parent / f"{folder.name}-edit"
    if cmd.video_frames < 1:
        raise ConfigError(f"video_frames must be at least 1, got {cmd.video_frames}")
    try:
        if cmd.viewer:
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
        from splat.commands.render import RenderCommand, render_video

        video = result.out / "orbit.mp4"
        render = RenderCommand(checkpoint=result.checkpoint, scene=cmd.scene, out=result.out, path="orbit",
                               video=video, frames=cmd.video_frames, device=cmd.edit.device)  # fmt: skip
        render_video(render)
        summary["video"] = str(video)
    print(json.dumps(summary, indent=2))
    return 0
