"""Render Gaussians along a camera path and write the frames as an MP4 (H.264), a GIF or PNG files.

MP4 goes through ``imageio-ffmpeg`` (a maintained PyPI package that ships an ffmpeg binary, CPU-only);
GIF through Pillow. Every file is written through ``safeio.atomic_path``: a temp file beside the target,
renamed over it only when complete, so a failed render never leaves half a video.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from safeio import atomic_path, atomic_write_bytes
from splat.config import ConfigError
from splat.render.modes import RenderMode, render_mode
from splat.render.rasterization import Backend
from splat.view.camera_path import CameraPath

VIDEO_SUFFIXES = (".mp4", ".gif")


def render_path(
    gaussians: dict[str, torch.Tensor],  # activated (splat.gaussians.model.activated), on the render device
    cam_path: CameraPath,
    sh_degree: int,
    background: torch.Tensor,  # [3]
    mode: RenderMode = "rgb",
    backend: Backend = "auto",
    progress: bool = False,
) -> Iterator[np.ndarray]:
    """Yield one ``uint8 [H, W, 3]`` frame per camera of ``cam_path``."""
    from tqdm import tqdm

    device = gaussians["means"].device
    for viewmat, K in tqdm(
        zip(cam_path.viewmats, cam_path.Ks, strict=True),
        total=len(cam_path),
        disable=not progress,
        desc="render",
        dynamic_ncols=True,
    ):
        yield render_mode(
            gaussians,
            torch.as_tensor(K, dtype=torch.float32, device=device),
            torch.as_tensor(viewmat, dtype=torch.float32, device=device),
            cam_path.width,
            cam_path.height,
            sh_degree,
            background,
            mode,
            backend,
        )


def check_video_path(path: Path, width: int, height: int) -> None:
    """Raise :class:`~splat.config.ConfigError` for an unsupported suffix or (MP4) odd frame sizes, before rendering anything."""
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise ConfigError(
            f"video {path}: unsupported type {suffix or '(none)'!r}; use one of {VIDEO_SUFFIXES}"
        )
    if suffix == ".mp4" and (width % 2 or height % 2):
        raise ConfigError(f"video {path}: H.264 needs even frame sizes, got {width}x{height}")


def write_video(path: str | Path, frames: Iterable[np.ndarray], fps: float, width: int, height: int) -> int:
    """Write ``frames`` (uint8 [H, W, 3]) to ``path`` (.mp4 or .gif); returns the number written."""
    path = Path(path)
    check_video_path(path, width, height)
    if path.suffix.lower() == ".gif":
        images = [Image.fromarray(_checked(f, width, height)) for f in frames]
        if not images:
            raise ValueError(f"video {path}: no frames to write")
        buf = io.BytesIO()
        images[0].save(
            buf,
            format="GIF",
            save_all=True,
            append_images=images[1:],
            duration=round(1000 / fps),
            loop=0,
            optimize=True,
        )
        atomic_write_bytes(path, buf.getvalue())
        return len(images)

    import imageio_ffmpeg

    n = 0
    with atomic_path(path) as tmp:
        writer = imageio_ffmpeg.write_frames(
            str(tmp),
            (width, height),
            fps=fps,
            codec="libx264",
            pix_fmt_in="rgb24",
            pix_fmt_out="yuv420p",
            quality=7,
            macro_block_size=1,
            output_params=["-f", "mp4", "-movflags", "+faststart"],
            ffmpeg_log_level="error",
        )
        writer.send(None)  # start ffmpeg
        try:
            for frame in frames:
                writer.send(np.ascontiguousarray(_checked(frame, width, height)))
                n += 1
        finally:
            writer.close()
        if n == 0:
            raise ValueError(f"video {path}: no frames to write")
    return n


def read_video(path: str | Path) -> list[np.ndarray]:
    """Decode every frame of a video file (uint8 [H, W, 3]); used by tests and tools."""
    path = Path(path)
    if path.suffix.lower() == ".gif":
        with Image.open(path) as im:
            frames = []
            for i in range(im.n_frames):
                im.seek(i)
                frames.append(np.asarray(im.convert("RGB")).copy())
            return frames
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    meta = reader.__next__()
    w, h = meta["size"]
    return [np.frombuffer(buf, np.uint8).reshape(h, w, 3).copy() for buf in reader]


def save_frame(folder: str | Path, index: int, frame: np.ndarray) -> Path:
    """Save one frame as ``folder/frame_{index:05d}.png``."""
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    path = Path(folder) / f"frame_{index:05d}.png"
    atomic_write_bytes(path, buf.getvalue())
    return path


def write_frames(folder: str | Path, frames: Iterable[np.ndarray]) -> list[Path]:
    """Save frames as ``folder/frame_00000.png``...; returns the paths."""
    return [save_frame(folder, i, frame) for i, frame in enumerate(frames)]


def _checked(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    if frame.dtype != np.uint8 or frame.shape != (height, width, 3):
        raise ValueError(f"frame of shape {frame.shape} {frame.dtype}; expected ({height}, {width}, 3) uint8")
    return frame
