"""Camera paths for videos: an orbit (ellipse), a spiral, or a smooth interpolation through views.

Conventions: world-to-camera matrices with OpenCV/COLMAP axes (x right, y down, z forward), as the rest of
``splat``. In a world-to-camera ``[R | t]`` the rows of ``R`` are the camera's right, down and forward
axes in world coordinates and the camera centre is ``-R^T t``.

Scene frame fitted to the training cameras:
    centre  the point nearest (least squares) to all the cameras' optical axes: what they look at
    up      the mean of the cameras' up vectors (``-down``), normalised

    orbit        an ellipse around ``centre`` in the plane perpendicular to ``up`` at the cameras' mean
                 height; its axes are the principal directions of the camera centres in that plane and its
                 radii their 90th-percentile distance along each axis; every camera looks at ``centre``
                 with ``up`` kept (no roll)
    spiral       the same ellipse, radius breathing by +-25 % and height rising and falling by the spread
                 of the camera heights, over two turns
    interpolate  the training views in capture (name) order: Catmull-Rom through the camera centres,
                 slerp between the rotations, intrinsics linearly

A path saves to and loads from JSON (``format: splat-camera-path-1``), validated with clear errors.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from safeio import atomic_write_text
from splat.config import ConfigError, how_to_raise, limit, read_json

PathKind = Literal["orbit", "spiral", "interpolate"]
PATH_KINDS = ("orbit", "spiral", "interpolate")
FORMAT = "splat-camera-path-1"


class CameraPathError(ConfigError):
    """A camera path cannot be fitted, or a camera-path file is invalid (bad input: exit 2)."""



@dataclass
class CameraPath:
    viewmats: np.ndarray  # [F, 4, 4] world-to-camera
    Ks: np.ndarray  # [F, 3, 3] intrinsics for an image of width x height
    width: int
    height: int
    fps: float = 30.0

    def __len__(self) -> int:
        return len(self.viewmats)

    def centres(self) -> np.ndarray:
        """Camera centres in the world frame. [F, 3]"""
        return camera_centres(self.viewmats)


# ------------------------------------------------------------------------------------------------------
# geometry helpers
# ------------------------------------------------------------------------------------------------------
def camera_centres(viewmats: np.ndarray) -> np.ndarray:
    R, t = viewmats[:, :3, :3], viewmats[:, :3, 3]
    return -np.einsum("fji,fj->fi", R, t)  # -R^T t, [F, 3]


def look_at(position: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """World-to-camera [4, 4] for a camera at ``position`` looking at ``target``, ``up`` pointing up."""
    fwd = target - position
    norm = np.linalg.norm(fwd)
    if norm < 1e-12:
        raise CameraPathError("camera position coincides with its look-at target")
    fwd = fwd / norm
    right = np.cross(fwd, up)
    if np.linalg.norm(right) < 1e-9:
        raise CameraPathError("camera looks along its up axis; the orientation is undefined")
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    R = np.stack([right, down, fwd])  # rows: camera axes in the world
    w2c = np.eye(4)
    w2c[:3, :3] = R
    w2c[:3, 3] = -R @ position
    return w2c


def scene_frame(viewmats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(centre [3], up [3]) of a set of cameras [F, 4, 4]; see the module docstring."""
    if len(viewmats) < 2:
        raise CameraPathError(f"need at least 2 cameras to fit a path, got {len(viewmats)}")
    origins = camera_centres(viewmats)  # [F, 3]
    dirs = viewmats[:, 2, :3]  # forward axes, [F, 3]
    # sum_f (I - d d^T) (x - o_f) = 0: the point nearest to every optical axis
    proj = np.eye(3)[None] - dirs[:, :, None] * dirs[:, None, :]  # [F, 3, 3]
    A, b = proj.sum(0), np.einsum("fij,fj->i", proj, origins)
    if np.linalg.cond(A) > 1e8:  # all axes parallel: fall back to a point in front of the cameras
        centre = origins.mean(0) + dirs.mean(0) * np.linalg.norm(origins - origins.mean(0), axis=1).mean()
    else:
        centre = np.linalg.solve(A, b)
    up = -viewmats[:, 1, :3].mean(0)
    if np.linalg.norm(up) < 1e-9:
        raise CameraPathError("the cameras' up vectors cancel out; cannot tell which way is up")
    return centre, up / np.linalg.norm(up)


def _ellipse(viewmats: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float, float]:
    """centre, up, and the ellipse's axes e1, e2 (unit) with radii r1, r2, at the cameras' mean height."""
    centre, up = scene_frame(viewmats)
    offsets = camera_centres(viewmats) - centre  # [F, 3]
    heights = offsets @ up  # [F]
    flat = offsets - heights[:, None] * up  # in the plane perpendicular to up
    cov = flat.T @ flat
    _, vecs = np.linalg.eigh(cov)  # ascending; the two largest span the plane
    e1, e2 = vecs[:, 2], np.cross(up, vecs[:, 2])
    r1 = float(np.percentile(np.abs(flat @ e1), 90))
    r2 = float(np.percentile(np.abs(flat @ e2), 90))
    if max(r1, r2) < 1e-9:
        raise CameraPathError("the cameras all sit on the up axis through the centre; cannot fit an orbit")
    r1, r2 = max(r1, 0.1 * r2), max(r2, 0.1 * r1)  # a flat capture still gets a round-ish orbit
    return centre, up, e1, e2, r1, r2


def orbit_positions(viewmats: np.ndarray, frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    centre, up, e1, e2, r1, r2 = _ellipse(viewmats)
    height = float(np.mean((camera_centres(viewmats) - centre) @ up))
    theta = 2 * np.pi * np.arange(frames) / frames
    pos = centre + np.cos(theta)[:, None] * r1 * e1 + np.sin(theta)[:, None] * r2 * e2 + height * up
    return pos, centre, up


def _check_frames(frames: int) -> None:
    if not isinstance(frames, int) or frames < 1:
        raise CameraPathError(f"frames must be a positive integer, got {frames!r}")


def orbit_path(
    viewmats: np.ndarray, K: np.ndarray, width: int, height: int, frames: int = 120, fps: float = 30.0
) -> CameraPath:
    """One turn of an ellipse fitted to ``viewmats`` [F, 4, 4], every camera looking at the centre."""
    _check_frames(frames)
    pos, centre, up = orbit_positions(np.asarray(viewmats, dtype=np.float64), frames)
    mats = np.stack([look_at(p, centre, up) for p in pos])
    return CameraPath(mats, np.repeat(np.asarray(K, dtype=np.float64)[None], frames, 0), width, height, fps)


def spiral_path(
    viewmats: np.ndarray,
    K: np.ndarray,
    width: int,
    height: int,
    frames: int = 120,
    fps: float = 30.0,
    turns: int = 2,
) -> CameraPath:
    """Two turns around the fitted ellipse, radius and height oscillating; looks at the centre."""
    _check_frames(frames)
    viewmats = np.asarray(viewmats, dtype=np.float64)
    centre, up, e1, e2, r1, r2 = _ellipse(viewmats)
    heights = (camera_centres(viewmats) - centre) @ up
    h0, dh = float(heights.mean()), max(float(heights.std()), 0.1 * min(r1, r2))
    t = np.arange(frames) / frames
    theta = 2 * np.pi * turns * t
    breathe = 1 + 0.25 * np.sin(2 * np.pi * t)
    pos = (
        centre
        + (breathe * np.cos(theta) * r1)[:, None] * e1
        + (breathe * np.sin(theta) * r2)[:, None] * e2
        + (h0 + dh * np.sin(2 * np.pi * t * turns * 0.5 + np.pi / 2))[:, None] * up
    )
    mats = np.stack([look_at(p, centre, up) for p in pos])
    return CameraPath(mats, np.repeat(np.asarray(K, dtype=np.float64)[None], frames, 0), width, height, fps)


def rotmat_to_quat(R: np.ndarray) -> np.ndarray:
    """[3, 3] rotation -> unit quaternion wxyz (Shepperd's method)."""
    tr = np.trace(R)
    if tr > 0:
        s = 2 * math.sqrt(tr + 1)
        q = [s / 4, (R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s]
    elif R[0, 0] > R[1, 1] and R[0, 0] > R[2, 2]:
        s = 2 * math.sqrt(1 + R[0, 0] - R[1, 1] - R[2, 2])
        q = [(R[2, 1] - R[1, 2]) / s, s / 4, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s]
    elif R[1, 1] > R[2, 2]:
        s = 2 * math.sqrt(1 + R[1, 1] - R[0, 0] - R[2, 2])
        q = [(R[0, 2] - R[2, 0]) / s, (R[0, 1] + R[1, 0]) / s, s / 4, (R[1, 2] + R[2, 1]) / s]
    else:
        s = 2 * math.sqrt(1 + R[2, 2] - R[0, 0] - R[1, 1])
        q = [(R[1, 0] - R[0, 1]) / s, (R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, s / 4]
    q = np.asarray(q)
    return q / np.linalg.norm(q)


def quat_to_rotmat(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def slerp(q0: np.ndarray, q1: np.ndarray, t: float) -> np.ndarray:
    if q0 @ q1 < 0:
        q1 = -q1  # the shorter arc
    dot = float(np.clip(q0 @ q1, -1.0, 1.0))
    if dot > 0.9995:
        q = q0 + t * (q1 - q0)
        return q / np.linalg.norm(q)
    omega = math.acos(dot)
    return (math.sin((1 - t) * omega) * q0 + math.sin(t * omega) * q1) / math.sin(omega)


def catmull_rom(p0, p1, p2, p3, t: float) -> np.ndarray:
    """Uniform Catmull-Rom between p1 (t=0) and p2 (t=1); C1-continuous through the control points."""
    t2, t3 = t * t, t * t * t
    return 0.5 * (
        (2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t2 + (-p0 + 3 * p1 - 3 * p2 + p3) * t3
    )


def interpolate_path(
    viewmats: np.ndarray, Ks: np.ndarray, width: int, height: int, frames: int = 120, fps: float = 30.0
) -> CameraPath:
    """A smooth path through ``viewmats`` [V, 4, 4] in the given order, passing through every view."""
    _check_frames(frames)
    viewmats, Ks = np.asarray(viewmats, dtype=np.float64), np.asarray(Ks, dtype=np.float64)
    v = len(viewmats)
    if v < 2:
        raise CameraPathError(f"need at least 2 views to interpolate, got {v}")
    centres = camera_centres(viewmats)
    quats = [rotmat_to_quat(m[:3, :3]) for m in viewmats]
    mats, ks = [], []
    for f in range(frames):
        s = f * (v - 1) / max(frames - 1, 1)  # position along the keyframes, 0 .. v-1
        i = min(int(s), v - 2)
        t = s - i
        p = catmull_rom(centres[max(i - 1, 0)], centres[i], centres[i + 1], centres[min(i + 2, v - 1)], t)
        R = quat_to_rotmat(slerp(quats[i], quats[i + 1], t))
        m = np.eye(4)
        m[:3, :3] = R
        m[:3, 3] = -R @ p
        mats.append(m)
        ks.append((1 - t) * Ks[i] + t * Ks[i + 1])
    return CameraPath(np.stack(mats), np.stack(ks), width, height, fps)


def make_path(
    kind: str,
    viewmats: np.ndarray,
    Ks: np.ndarray,
    width: int,
    height: int,
    frames: int = 120,
    fps: float = 30.0,
) -> CameraPath:
    """Dispatch on ``kind`` ("orbit", "spiral" or "interpolate"); ``Ks`` [V, 3, 3] per view."""
    if kind == "orbit":
        return orbit_path(viewmats, Ks[0], width, height, frames, fps)
    if kind == "spiral":
        return spiral_path(viewmats, Ks[0], width, height, frames, fps)
    if kind == "interpolate":
        return interpolate_path(viewmats, Ks, width, height, frames, fps)
    raise CameraPathError(f"unknown camera path {kind!r}; choose from {', '.join(PATH_KINDS)}")


# ------------------------------------------------------------------------------------------------------
# JSON
# ------------------------------------------------------------------------------------------------------
def save_path(path: str | Path, cam_path: CameraPath) -> None:
    data = {
        "format": FORMAT,
        "width": int(cam_path.width),
        "height": int(cam_path.height),
        "fps": float(cam_path.fps),
        "cameras": [
            {"cam_from_world": m.tolist(), "K": k.tolist()}
            for m, k in zip(cam_path.viewmats, cam_path.Ks, strict=True)
        ],
    }
    atomic_write_text(Path(path), json.dumps(data, indent=1))


def load_path(path: str | Path) -> CameraPath:
    """Read and validate a camera path written by :func:`save_path` (or by hand)."""
    path = Path(path)
    if not path.is_file():
        raise CameraPathError(f"camera path {path} does not exist")
    data = read_json(path, f"camera path {path}", CameraPathError)  # size and nesting bounded first
    if not isinstance(data, dict):
        raise CameraPathError(f"camera path {path} must hold a JSON object")
    if data.get("format") != FORMAT:
        raise CameraPathError(f"camera path {path}: 'format' must be {FORMAT!r}, got {data.get('format')!r}")
    for key in ("width", "height"):
        if not isinstance(data.get(key), int) or isinstance(data.get(key), bool) or data[key] < 1:
            raise CameraPathError(f"camera path {path}: {key!r} must be a positive integer, got {data.get(key)!r}")
        if data[key] > limit("frame_size"):
            raise CameraPathError(f"camera path {path}: {key} {data[key]} is more than allowed: at most "
                                  f"{limit('frame_size')} pixels; {how_to_raise('frame_size')}")  # fmt: skip
    fps = data.get("fps", 30.0)
    if not isinstance(fps, int | float) or isinstance(fps, bool) or not 0 < fps <= 240:
        raise CameraPathError(f"camera path {path}: 'fps' must be a number in (0, 240], got {fps!r}")
    cams = data.get("cameras")
    if not isinstance(cams, list) or not cams:
        raise CameraPathError(f"camera path {path}: 'cameras' must be a non-empty list")
    if len(cams) > limit("frames"):
        raise CameraPathError(f"camera path {path}: {len(cams)} cameras is more than allowed: at most "
                              f"{limit('frames')}; {how_to_raise('frames')}")  # fmt: skip
    mats, ks = [], []
    for i, cam in enumerate(cams):
        where = f"camera path {path}: cameras[{i}]"
        if not isinstance(cam, dict) or set(cam) != {"cam_from_world", "K"}:
            raise CameraPathError(f"{where} must be an object with exactly 'cam_from_world' (4x4) and 'K' (3x3)")
        m = _matrix(cam["cam_from_world"], (4, 4), f"{where}.cam_from_world")
        k = _matrix(cam["K"], (3, 3), f"{where}.K")
        R = m[:3, :3]
        if (
            not np.allclose(m[3], [0, 0, 0, 1])
            or not np.allclose(R @ R.T, np.eye(3), atol=1e-4)
            or np.linalg.det(R) < 0
        ):
            raise CameraPathError(f"{where}.cam_from_world is not a rigid transform (rotation + translation)")
        if k[0, 0] <= 0 or k[1, 1] <= 0 or not np.allclose(k[2], [0, 0, 1]):
            raise CameraPathError(f"{where}.K must have positive focal lengths and last row [0, 0, 1]")
        mats.append(m)
        ks.append(k)
    return CameraPath(np.stack(mats), np.stack(ks), data["width"], data["height"], float(fps))


def _matrix(value, shape: tuple[int, int], where: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise CameraPathError(f"{where} must be a {shape[0]}x{shape[1]} list of numbers") from e
    if arr.shape != shape or not np.all(np.isfinite(arr)):
        raise CameraPathError(f"{where} must be a {shape[0]}x{shape[1]} list of finite numbers")
    return arr
