"""Undistortion of every camera model COLMAP's undistorter handles, checked on pixels.

A pinhole synthetic scene is re-imaged through a distorted camera (each photo resampled so that it is what
the distorted camera would have seen), the model is rewritten with that camera, and `load_scene` must
undistort the photos back into pinhole views whose pixels agree with the original pinhole renders. The
control is the distorted photo itself read as if it were pinhole: the undistorted views must be far closer
to the truth than that.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from PIL import Image

from splat.scene.colmap import SceneError, load_scene, read_reconstruction
from tests.splat.helpers import make_synthetic_scene

W, H = 160, 120


@pytest.fixture(scope="module")
def pinhole_scene(tmp_path_factory) -> Path:
    return make_synthetic_scene(tmp_path_factory.mktemp("pinhole") / "scene", n_views=3, width=W, height=H)


def bilinear(image: np.ndarray, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sample [H, W, C] ``image`` at continuous COLMAP coordinates ``xy`` [N, 2] (pixel centres at +0.5).
    Returns the values [N, C] and a mask [N] of samples that fell inside the image."""
    h, w = image.shape[:2]
    x, y = xy[:, 0] - 0.5, xy[:, 1] - 0.5
    inside = (x >= 0) & (y >= 0) & (x <= w - 1) & (y <= h - 1)
    x, y = np.clip(x, 0, w - 1), np.clip(y, 0, h - 1)
    x0, y0 = np.minimum(np.floor(x).astype(int), w - 2), np.minimum(np.floor(y).astype(int), h - 2)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    top = image[y0, x0] * (1 - fx) + image[y0, x0 + 1] * fx
    bottom = image[y0 + 1, x0] * (1 - fx) + image[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy, inside


def pixel_centres(w: int, h: int) -> np.ndarray:
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    return np.stack([u.ravel(), v.ravel()], axis=1)  # [H*W, 2], row-major


def distorted_scene(pinhole: Path, root: Path, model: str, extra: list[float]) -> Path:
    """Copy ``pinhole`` with every camera replaced by ``model`` (same focal length and centre, distortion
    ``extra``) and every photo resampled as that camera sees the scene."""
    scene = root / model.lower()
    shutil.copytree(pinhole, scene)
    rec = read_reconstruction(scene / "sparse" / "0")
    for camera_id, cam in list(rec.cameras.items()):
        fx, fy, cx, cy = cam.params
        new = pycolmap.Camera.create_from_model_id(
            camera_id, getattr(pycolmap.CameraModelId, model), 1.0, W, H
        )
        new.params = ([fx] if model.startswith("SIMPLE") else [fx, fy]) + [cx, cy] + extra
        rec.cameras[camera_id] = new
        K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]])
        name = next(im.name for im in rec.images.values() if im.camera_id == camera_id)
        original = np.asarray(Image.open(pinhole / "images" / name), dtype=np.float64)
        rays = new.cam_from_img(pixel_centres(W, H))  # [H*W, 2] normalised camera coordinates
        seen, _ = bilinear(original, (np.c_[rays, np.ones(len(rays))] @ K.T)[:, :2])
        Image.fromarray(seen.reshape(H, W, 3).round().astype(np.uint8)).save(scene / "images" / name)
    rec.write_binary(str(scene / "sparse" / "0"))
    return scene


def errors_against_truth(model, pinhole_rec, pinhole_dir: Path) -> list[float]:
    """Mean absolute pixel error of each loaded view against the original pinhole render it came from."""
    by_name = {im.name: pinhole_rec.cameras[im.camera_id] for im in pinhole_rec.images.values()}
    errors = []
    for view in model.views:
        fx, fy, cx, cy = by_name[view.name].params
        K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]])
        truth = np.asarray(Image.open(pinhole_dir / view.name), dtype=np.float64)
        loaded = np.asarray(Image.open(view.image_path), dtype=np.float64).reshape(-1, 3)
        uv = pixel_centres(view.width, view.height)
        expected, inside = bilinear(
            truth, (np.c_[uv, np.ones(len(uv))] @ np.linalg.inv(view.K).T @ K.T)[:, :2]
        )
        assert inside.mean() > 0.8
        errors.append(float(np.abs(loaded - expected)[inside].mean()))
    return errors


@pytest.mark.parametrize(
    "model, extra",
    [
        ("FULL_OPENCV", [-0.25, 0.05, 0.002, -0.001, 0.01, 0.0, 0.0, 0.0]),  # k1 k2 p1 p2 k3 k4 k5 k6
        ("OPENCV_FISHEYE", [0.05, -0.02, 0.0, 0.0]),  # k1..k4 of the equidistant model
        ("FISHEYE", []),  # equidistant, rewritten as OPENCV_FISHEYE with k = 0 before undistortion
        ("SIMPLE_FISHEYE", []),
    ],
)
def test_distorted_cameras_are_undistorted_to_the_true_pinhole_pixels(pinhole_scene, tmp_path, model, extra):
    scene = distorted_scene(pinhole_scene, tmp_path, model, extra)
    before = sorted(p.relative_to(scene).as_posix() for p in scene.rglob("*"))
    loaded = load_scene(scene, cache_dir=tmp_path / "cache")
    assert loaded.undistorted and len(loaded.views) == 3
    rec = read_reconstruction(loaded.model_dir)
    assert {c.model.name for c in rec.cameras.values()} == {"PINHOLE"}
    pinhole_rec = read_reconstruction(pinhole_scene / "sparse" / "0")
    fixed = errors_against_truth(loaded, pinhole_rec, pinhole_scene / "images")

    # control: the distorted photos read as if their cameras were the original pinhole ones
    as_is = load_scene(pinhole_scene)
    for view in as_is.views:
        view.image_path = scene / "images" / view.name
    control = errors_against_truth(as_is, pinhole_rec, pinhole_scene / "images")
    assert max(fixed) < 0.35 * min(control), (fixed, control)
    # the cache lives where it was asked to, with COLMAP's log in a file; the scene is untouched
    assert (tmp_path / "cache" / "undistorted" / "undistort.log").is_file()
    assert sorted(p.relative_to(scene).as_posix() for p in scene.rglob("*")) == before


def test_equirectangular_is_refused_by_name(pinhole_scene, tmp_path):
    scene = tmp_path / "pano"
    shutil.copytree(pinhole_scene, scene)
    rec = read_reconstruction(scene / "sparse" / "0")
    for camera_id in list(rec.cameras):
        cam = pycolmap.Camera.create_from_model_id(
            camera_id, pycolmap.CameraModelId.EQUIRECTANGULAR, 1.0, W, H
        )
        rec.cameras[camera_id] = cam
    rec.write_binary(str(scene / "sparse" / "0"))
    with pytest.raises(SceneError, match="EQUIRECTANGULAR camera model, which cannot be undistorted"):
        load_scene(scene, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()
