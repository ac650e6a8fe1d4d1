"""The one adapter around pycolmap: a COLMAP scene folder in, pinhole views and SfM points out.

Accepted layout::

    SCENE/images/...              the photos (sub-folders allowed, names as in the model)
    SCENE/sparse/0/cameras.bin    (or .txt) - also accepted directly in SCENE/sparse/
    SCENE/sparse/0/images.bin
    SCENE/sparse/0/points3D.bin

Cameras are per image. PINHOLE and SIMPLE_PINHOLE models are used as they are. Any other model
(SIMPLE_RADIAL, RADIAL, OPENCV, ...) is undistorted once with ``pycolmap.undistort_images`` into
``SCENE/.splat_cache/undistorted`` (rebuilt when the model files change), so users never convert by hand.
When ``splat prepare`` made upright copies of EXIF-rotated photos (``SCENE/.splat_cache/upright``), SfM ran
on those, so they are what is read (and undistorted) instead of the raw files.
Every problem with the input raises :class:`SceneError` naming the file and what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

PINHOLE_MODELS = ("PINHOLE", "SIMPLE_PINHOLE")
MODEL_FILES = ("cameras", "images", "points3D")
CACHE_DIRNAME = ".splat_cache"


class SceneError(ValueError):
    """A scene folder that cannot be used, with the reason in the message."""


@dataclass
class View:
    """One registered image with a pinhole camera."""

    name: str  # image name as stored in the model, e.g. "0001.jpg"
    image_path: Path
    K: np.ndarray  # [3, 3] float64 intrinsics for an image of (width, height)
    width: int
    height: int
    cam_from_world: np.ndarray  # [4, 4] float64 world-to-camera (OpenCV axes)
    exif_transpose: bool = False  # the file must be EXIF-rotated to match the camera


@dataclass
class SceneModel:
    views: list[View]  # sorted by name
    points: np.ndarray  # [P, 3] float64 SfM points, COLMAP world frame
    colors: np.ndarray  # [P, 3] uint8
    model_dir: Path  # the (possibly undistorted) model that was read
    undistorted: bool


def find_model_dir(scene: Path) -> Path | None:
    """``SCENE/sparse/0`` or ``SCENE/sparse`` when it holds the model files directly, else None."""
    for cand in (scene / "sparse" / "0", scene / "sparse"):
        if any((cand / f"cameras{ext}").exists() for ext in (".bin", ".txt")):
            return cand
    return None


def read_reconstruction(model_dir: Path):
    """Read a binary or text COLMAP model, turning every failure into a :class:`SceneError`."""
    import pycolmap

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise SceneError(f"COLMAP model folder {model_dir} does not exist")
    for ext in (".bin", ".txt"):
        present = [f for f in MODEL_FILES if (model_dir / f"{f}{ext}").is_file()]
        if present:
            missing = [f"{f}{ext}" for f in MODEL_FILES if f not in present]
            if missing:
                raise SceneError(f"COLMAP model in {model_dir} is incomplete: missing {', '.join(missing)}")
            break
    else:
        raise SceneError(f"no COLMAP model (cameras/images/points3D .bin or .txt) in {model_dir}")
    try:
        rec = pycolmap.Reconstruction()
        (rec.read_binary if ext == ".bin" else rec.read_text)(str(model_dir))
    except Exception as e:  # pycolmap raises assorted types (IndexError, RuntimeError, ValueError)
        raise SceneError(f"cannot read the COLMAP model in {model_dir} (corrupt or truncated?): {e}") from e
    if rec.num_reg_images() == 0:
        raise SceneError(f"COLMAP model in {model_dir} has no registered images")
    return rec


def _pinhole_K(camera) -> np.ndarray:
    name = camera.model.name
    p = np.asarray(camera.params, dtype=np.float64)
    if name == "SIMPLE_PINHOLE":
        fx = fy = p[0]
        cx, cy = p[1], p[2]
    elif name == "PINHOLE":
        fx, fy, cx, cy = p[:4]
    else:
        raise SceneError(f"camera {camera.camera_id} has model {name}, expected a pinhole model")
    return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=np.float64)


def check_image_size(path: Path, width: int, height: int) -> bool:
    """Check ``path`` is an image of the camera's size. Returns True if it needs its EXIF rotation."""
    try:
        with Image.open(path) as im:
            raw = im.size
            if raw == (width, height):
                return False
            oriented = ImageOps.exif_transpose(im).size
    except FileNotFoundError:
        raise SceneError(f"image {path} is listed in the COLMAP model but missing") from None
    except OSError as e:
        raise SceneError(f"cannot read image {path}: {e}") from e
    if oriented == (width, height):
        return True
    raise SceneError(
        f"image {path} is {raw[0]}x{raw[1]} pixels but its COLMAP camera is {width}x{height}; "
        "the photos and the model do not belong together (resized or replaced images?)"
    )


def _fingerprint(model_dir: Path, image_dir: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(model_dir.iterdir()):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    h.update(str(image_dir.resolve()).encode())
    return h.hexdigest()


def undistort_to_cache(model_dir: Path, image_dir: Path, cache_root: Path) -> Path:
    """Undistort a model with non-pinhole cameras into ``cache_root/undistorted`` (atomically) and return it."""
    import pycolmap

    target = cache_root / "undistorted"
    fp = _fingerprint(model_dir, image_dir)
    stamp = target / "source.json"
    if stamp.is_file() and json.loads(stamp.read_text()).get("fingerprint") == fp:
        return target
    try:
        cache_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cache_root, prefix=".undistort-"))
    except OSError as e:
        raise SceneError(f"cannot create the undistortion cache in {cache_root}: {e}") from e
    try:
        pycolmap.undistort_images(output_path=str(tmp), input_path=str(model_dir), image_path=str(image_dir))
        (tmp / "source.json").write_text(json.dumps({"fingerprint": fp, "source": str(model_dir)}))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, SceneError):
            raise
        raise SceneError(f"undistorting {model_dir} failed: {e}") from e
    return target


def upright_image_dir(scene: Path, image_dir: Path, names: list[str], cache_dir: str | Path | None) -> Path:
    """The folder of upright copies that ``splat.sfm.prepare`` wrote for EXIF-rotated photos
    (``SCENE/.splat_cache/upright``, or ``CACHE/upright``) when it holds an up-to-date copy of every
    image in ``names``; else ``image_dir``. SfM ran on those copies, so the model's pixels are theirs."""
    roots = [scene / CACHE_DIRNAME] + ([Path(cache_dir)] if cache_dir is not None else [])
    for upright in (root / "upright" for root in roots):
        if not upright.is_dir():
            continue
        try:
            fresh = all(
                (upright / n).stat().st_mtime_ns >= (image_dir / n).stat().st_mtime_ns for n in names
            )
        except FileNotFoundError:
            fresh = False
        if fresh:
            return upright
    return image_dir


def load_scene(scene: str | Path, images: str = "images", cache_dir: str | Path | None = None) -> SceneModel:
    """Read ``scene`` into pinhole views (undistorting when needed) and SfM points; validate everything."""
    scene = Path(scene)
    if not scene.is_dir():
        raise SceneError(f"scene folder {scene} does not exist")
    image_dir = scene / images
    if not image_dir.is_dir():
        raise SceneError(f"scene {scene} has no images folder ({image_dir} is missing)")
    model_dir = find_model_dir(scene)
    if model_dir is None:
        raise SceneError(f"scene {scene} has no COLMAP model: expected {scene / 'sparse' / '0'}/cameras.bin")
    rec = read_reconstruction(model_dir)
    if rec.num_points3D() == 0:
        raise SceneError(f"COLMAP model in {model_dir} has no 3D points; Gaussians are initialised from them")

    reg_ids = sorted(rec.reg_image_ids(), key=lambda i: rec.images[i].name)
    image_dir = upright_image_dir(scene, image_dir, [rec.images[i].name for i in reg_ids], cache_dir)
    # validate every registered image before anything is written (e.g. the undistortion cache)
    for i in reg_ids:
        img = rec.images[i]
        cam = rec.cameras[img.camera_id]
        check_image_size(image_dir / img.name, cam.width, cam.height)

    undistorted = any(rec.cameras[rec.images[i].camera_id].model.name not in PINHOLE_MODELS for i in reg_ids)
    if undistorted:
        cache_root = Path(cache_dir) if cache_dir is not None else scene / CACHE_DIRNAME
        out = undistort_to_cache(model_dir, image_dir, cache_root)
        model_dir, image_dir = out / "sparse", out / "images"
        rec = read_reconstruction(model_dir)
        reg_ids = sorted(rec.reg_image_ids(), key=lambda i: rec.images[i].name)

    views = []
    for i in reg_ids:
        img = rec.images[i]
        cam = rec.cameras[img.camera_id]
        path = image_dir / img.name
        transpose = check_image_size(path, cam.width, cam.height)
        w2c = np.eye(4)
        w2c[:3, :] = img.cam_from_world().matrix()
        views.append(View(img.name, path, _pinhole_K(cam), cam.width, cam.height, w2c, transpose))

    ids = list(rec.point3D_ids())
    points = np.array([rec.points3D[j].xyz for j in ids], dtype=np.float64).reshape(-1, 3)
    colors = np.array([rec.points3D[j].color for j in ids], dtype=np.uint8).reshape(-1, 3)
    return SceneModel(views, points, colors, model_dir, undistorted)
