"""What ``splat view``, ``splat train --viewer`` and ``splat render --path/--path-file`` run.

Kept apart from ``splat.cli`` (which only parses) so that the commands are plain functions to test.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from splat.config import ConfigError, TrainConfig, config_to_dict


def _check_port(port: int) -> None:
    if not 1 <= port <= 65535:
        raise ConfigError(f"port must be in 1..65535, got {port}")


def _background(meta: dict) -> tuple[float, float, float]:
    """The colour the run rendered with: a checkpoint's (learned or configured), else its configuration's."""
    bg = meta.get("background") or (meta.get("config") or {}).get("background", (0.0, 0.0, 0.0))
    return tuple(float(c) for c in bg)  # type: ignore[return-value]


def _wait_for_ctrl_c() -> None:
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass


def serve(cmd) -> int:
    """``splat view``: load the model, start the viewer, serve until Ctrl-C."""
    from splat.model_io import load_gaussians, scene_cameras
    from splat.trainer import resolve_device
    from splat.viewer import Viewer

    _check_port(cmd.port)
    if cmd.resolution is not None and cmd.resolution < 16:
        raise ConfigError(f"resolution must be at least 16 pixels, got {cmd.resolution}")
    params, sh_degree, meta = load_gaussians(cmd.model)
    cameras = scene_cameras(cmd.scene, meta["config"]) if cmd.scene is not None else None
    viewer = None
    try:
        viewer = Viewer(
            params,
            sh_degree,
            cameras,
            host=cmd.host,
            port=cmd.port,
            device=resolve_device(cmd.device),
            resolution=cmd.resolution,
            background=_background(meta),
        )
        n = params["means"].shape[0]
        print(f"viewing {meta['source']} ({n:,} Gaussians) at {viewer.url}  (Ctrl-C to quit)", flush=True)
        _wait_for_ctrl_c()
    except KeyboardInterrupt:  # Ctrl-C while the server was starting
        pass
    finally:
        if viewer is not None:
            viewer.stop()
    return 0


def train_with_viewer(
    scene: Path,
    cfg: TrainConfig,
    port: int = 8080,
    wait: bool = True,
    viewer_kwargs=None,
    on_ready=None,
    sfm=None,
):
    """Train as ``splat.train`` does, with a :class:`splat.viewer.Viewer` on the live Gaussians.

    ``on_ready(viewer)``, when given, is called once the viewer serves and before the first step."""
    from splat.model_io import scene_cameras
    from splat.trainer import Trainer
    from splat.viewer import Viewer

    _check_port(port)
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
            _wait_for_ctrl_c()
    finally:
        viewer.stop()
    return result


def edit_with_viewer(run, scene, cfg, out, port: int = 8080, wait: bool = True, pipe=None, on_ready=None, resume=None):
    """``splat edit`` (:func:`splat.edit.edit_scene`) with a :class:`splat.viewer.Viewer` on the Gaussians
    being edited; each training view's frustum shows its image as the last edit left it.

    ``on_ready(viewer)``, when given, is called once the viewer serves and before the first step."""
    from splat.edit import edit_scene
    from splat.model_io import scene_cameras
    from splat.viewer import Viewer

    _check_port(port)
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
            from splat.model_io import load_gaussians

            params, _, _ = load_gaussians(result.checkpoint)
            holder["viewer"].update_gaussians(params)
            print(f"edit done; the viewer stays at {holder['viewer'].url} until Ctrl-C", file=sys.stderr, flush=True)
            _wait_for_ctrl_c()
    finally:
        if "viewer" in holder:
            holder["viewer"].stop()
    return result


def render_video(cmd) -> int:
    """``splat render MODEL --path KIND | --path-file FILE [--video out.mp4] [--save-frames]``."""
    import torch

    from splat.camera_path import load_path, make_path, save_path
    from splat.model_io import activated, load_gaussians, scene_cameras
    from splat.outputs import check_output_dir
    from splat.trainer import resolve_device
    from splat.video import check_video_path, render_path, write_frames, write_video

    # 1. Check inputs before loading or rendering anything heavy
    if cmd.path is not None and cmd.path_file is not None:
        raise ConfigError("give either --path or --path-file, not both")
    if cmd.frames < 1:
        raise ConfigError(f"frames must be at least 1, got {cmd.frames}")
    if cmd.fps is not None and not 0 < cmd.fps <= 240:
        raise ConfigError(f"fps must be in (0, 240], got {cmd.fps}")
    if cmd.width is not None and cmd.width < 2:
        raise ConfigError(f"width must be at least 2 pixels, got {cmd.width}")
    if cmd.path is not None and cmd.scene is None:
        raise ConfigError(f"--path {cmd.path} needs --scene: the path is fitted to the training cameras")
    params, sh_degree, meta = load_gaussians(cmd.checkpoint)

    # 2. The camera path
    if cmd.path_file is not None:
        cam_path = load_path(cmd.path_file)
        if cmd.fps is not None:
            cam_path.fps = cmd.fps
    else:
        cams = scene_cameras(cmd.scene, meta["config"])
        idx = np.flatnonzero(cams.train) if cams.train.any() else np.arange(len(cams))
        w0, h0 = cams.sizes[idx[0]]
        width = cmd.width or w0
        width, height = max(2, width // 2 * 2), max(2, round(width * h0 / w0) // 2 * 2)  # even, for H.264
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
    gaussians = {k: v.to(device) for k, v in activated(params).items()}
    background = torch.tensor(_background(meta), dtype=torch.float32, device=device)
    frames = render_path(gaussians, cam_path, sh_degree, background, cmd.mode, progress=sys.stderr.isatty())
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
    from splat.video import save_frame

    for i, frame in enumerate(frames):
        save_frame(folder, i, frame)
        yield frame
