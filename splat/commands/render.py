"""``splat render MODEL --scene SCENE --out DIR``: a trained model's views beside their photos; with ``--path`` /
``--path-file``, the frames of a camera path as PNG files and / or a video."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro

from splat.config import ConfigError, check_limit


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


def main(argv: list[str]) -> int:
    cmd = tyro.cli(RenderCommand, args=argv, prog="splat render")
    if cmd.path is not None or cmd.path_file is not None:
        return render_video(cmd)
    return render_views(cmd)


def load_for_scene(checkpoint: Path, scene: Path, device: str, images: str, out: Path | None):
    """``(model on the device, the scene's split as the model's run made it)``; the output folder checked as a
    run's would be, the scene checked to be the model's. Paths come from the arguments, never from files."""
    import dataclasses

    from splat.device import resolve_device
    from splat.gaussians.model import load_model
    from splat.outputs import OutputError, would_be_writable
    from splat.scene.views import load_split

    model = load_model(checkpoint)
    dev = resolve_device(device)
    if out is not None and out.exists() and not out.is_dir():
        raise OutputError(f"output folder {out} exists and is not a folder")
    if out is not None and not would_be_writable(out):
        raise OutputError(f"output folder {out} cannot be written (permission denied)")
    cfg = dataclasses.replace(model.config, images=images)
    split = load_split(scene, images=cfg.images, cache_dir=None, downscale=cfg.downscale, max_width=cfg.max_width,
                       test_every=cfg.test_every)  # fmt: skip
    model.check_scene(split.fingerprint, scene)
    return model.to(dev), split


def render_views(cmd: RenderCommand) -> int:
    """The dataset views of ``--split``, each as ``{stem}_render.png`` beside ``{stem}_gt.png``."""
    import torch

    from splat.outputs import atomic_save_image, check_output_dir, image_stem

    if cmd.scene is None:
        raise ConfigError("--scene is needed to render the dataset views (or give --path / --path-file)")
    model, split = load_for_scene(cmd.checkpoint, cmd.scene, cmd.device, cmd.images, cmd.out)
    check_output_dir(cmd.out)
    sets = {"test": [split.test_set], "train": [split.train_set], "all": [split.train_set, split.test_set]}
    n = 0
    with torch.no_grad():
        for ds in sets[cmd.split]:
            for i in range(len(ds)):
                f = ds[i]
                img, _, _ = model.render(f.K.to(model.device), f.viewmat.to(model.device), f.width, f.height)
                stem = image_stem(f.name)
                atomic_save_image(cmd.out / f"{stem}_render.png", img)
                atomic_save_image(cmd.out / f"{stem}_gt.png", f.image)
                n += 1
    print(f"rendered {n} views to {cmd.out}")
    return 0


def render_video(cmd: RenderCommand) -> int:
    """``--path KIND | --path-file FILE [--video out.mp4] [--save-frames]``."""
    import numpy as np

    from splat.device import resolve_device
    from splat.gaussians.model import load_model
    from splat.outputs import check_output_dir
    from splat.scene.cameras import scene_cameras
    from splat.view.camera_path import load_path, make_path, save_path
    from splat.view.video import check_video_path, render_path, write_frames, write_video

    # 1. Check inputs before loading or rendering anything heavy
    if cmd.path is not None and cmd.path_file is not None:
        raise ConfigError("give either --path or --path-file, not both")
    if cmd.frames < 1:
        raise ConfigError(f"frames must be at least 1, got {cmd.frames}")
    check_limit("frames", cmd.frames, "--frames")  # before a path of that many cameras is made
    if cmd.fps is not None and not 0 < cmd.fps <= 240:
        raise ConfigError(f"fps must be in (0, 240], got {cmd.fps}")
    if cmd.width is not None and cmd.width < 2:
        raise ConfigError(f"width must be at least 2 pixels, got {cmd.width}")
    if cmd.width is not None:
        check_limit("frame_size", cmd.width, "--width")
    if cmd.path is not None and cmd.scene is None:
        raise ConfigError(f"--path {cmd.path} needs --scene: the path is fitted to the training cameras")
    model = load_model(cmd.checkpoint)

    # 2. The camera path
    if cmd.path_file is not None:
        cam_path = load_path(cmd.path_file)
        if cmd.fps is not None:
            cam_path.fps = cmd.fps
    else:
        cams = scene_cameras(cmd.scene, model.config)
        idx = np.flatnonzero(cams.train) if cams.train.any() else np.arange(len(cams))
        w0, h0 = cams.sizes[idx[0]]
        width = cmd.width or w0
        width, height = max(2, width // 2 * 2), max(2, round(width * h0 / w0) // 2 * 2)  # even, for H.264
        check_limit("frame_size", height, f"--width {width} makes frames whose height")
        Ks = []
        for i in idx:
            K = cams.Ks[i].copy()
            w, h = cams.sizes[i]
            K[0] *= width / w
            K[1] *= height / h
            Ks.append(K)
        cam_path = make_path(
            cmd.path, cams.viewmats[idx], np.stack(Ks), width, height, cmd.frames, cmd.fps or 30.0
        )
    if cmd.video is not None:
        check_video_path(cmd.video, cam_path.width, cam_path.height)
    if cmd.save_path is not None:
        save_path(cmd.save_path, cam_path)
    write_pngs = cmd.save_frames or cmd.video is None
    if write_pngs:
        check_output_dir(cmd.out)

    # 3. Render and write
    device = resolve_device(cmd.device)
    gaussians = {k: v.to(device) for k, v in model.activated().items()}
    background = model.current_background().detach().clamp(0, 1).to(device)
    frames = render_path(gaussians, cam_path, model.sh_degree, background, cmd.mode, progress=sys.stderr.isatty())
    if cmd.video is not None:
        if cmd.save_frames:
            frames = _tee_pngs(frames, cmd.out)
        n = write_video(cmd.video, frames, cam_path.fps, cam_path.width, cam_path.height)
        print(f"wrote {cmd.video} ({n} frames, {cam_path.width}x{cam_path.height}, {cam_path.fps:g} fps)")
    else:
        n = len(write_frames(cmd.out, frames))
    if write_pngs:
        print(f"wrote {n} frames to {cmd.out}")
    return 0


def _tee_pngs(frames, folder: Path):
    from splat.view.video import save_frame

    for i, frame in enumerate(frames):
        save_frame(folder, i, frame)
        yield frame
