"""Shared fixtures: a tiny synthetic COLMAP scene rendered with the reference rasterizer."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(2)

_REPO = Path(__file__).resolve().parents[2]
# ../shared/scenes beside the checkout; a worktree under ../wt/NAME finds it two levels up
SHARED_SCENES = next(
    (p for p in (_REPO.parent / "shared" / "scenes", _REPO.parent.parent / "shared" / "scenes") if p.is_dir()),
    _REPO.parent / "shared" / "scenes",
)


def look_at(centre: np.ndarray, target: np.ndarray, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """World-to-camera [4, 4] (OpenCV axes) for a camera at ``centre`` looking at ``target``."""
    fwd = target - centre
    fwd = fwd / np.linalg.norm(fwd)
    right = np.cross(fwd, np.asarray(up))
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    R = np.stack([right, down, fwd])
    w2c = np.eye(4)
    w2c[:3, :3] = R
    w2c[:3, 3] = -R @ centre
    return w2c


def make_synthetic_scene(
    root: Path,
    n_views: int = 16,
    n_gaussians: int = 60,
    width: int = 64,
    height: int = 48,
    point_noise: float = 0.05,
    seed: int = 0,
    background: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> Path:
    """Render random coloured Gaussians from a ring of cameras over ``background``; write images/ and
    sparse/0 (binary)."""
    import pycolmap
    from PIL import Image

    from splat._torch_impl import rasterize_torch
    from splat.params import rgb_to_sh

    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n_gaussians, 3, generator=g) * 2 - 1) * torch.tensor([0.8, 0.8, 0.5])
    scales = 0.06 + 0.08 * torch.rand(n_gaussians, 3, generator=g)
    quats = torch.randn(n_gaussians, 4, generator=g)
    opac = torch.full((n_gaussians,), 0.85)
    rgb = torch.rand(n_gaussians, 3, generator=g)
    sh = rgb_to_sh(rgb)[:, None, :]

    (root / "images").mkdir(parents=True)
    (root / "sparse" / "0").mkdir(parents=True)
    rec = pycolmap.Reconstruction()
    f = 0.9 * width
    for i in range(n_views):
        a = 2 * np.pi * i / n_views
        centre = np.array([3.5 * np.cos(a), 3.5 * np.sin(a), 1.2 + 0.3 * np.sin(3 * a)])
        w2c = look_at(centre, np.zeros(3))
        K = torch.tensor([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]], dtype=torch.float32)
        with torch.no_grad():
            img, _, _ = rasterize_torch(
                means,
                quats,
                scales,
                opac,
                sh,
                torch.from_numpy(w2c).float()[None],
                K[None],
                width,
                height,
                sh_degree=0,
                backgrounds=torch.tensor([background], dtype=torch.float32),
            )
        arr = (img[0].clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
        name = f"{i:03d}.png"
        Image.fromarray(arr).save(root / "images" / name)
        cam = pycolmap.Camera(
            model="PINHOLE", width=width, height=height, params=[f, f, width / 2, height / 2], camera_id=i + 1
        )
        rec.add_camera_with_trivial_rig(cam)
        im = pycolmap.Image(name=name, camera_id=i + 1, image_id=i + 1)
        quat_xyzw = _rotmat_to_xyzw(w2c[:3, :3])
        pose = pycolmap.Rigid3d(pycolmap.Rotation3d(quat_xyzw), w2c[:3, 3])
        rec.add_image_with_trivial_frame(im, pose)
    rng = np.random.default_rng(seed)
    # SfM-like points: noisy copies of the true centres (3 per Gaussian), noisy colours
    pts = np.repeat(means.numpy(), 3, axis=0) + rng.normal(0, point_noise, (3 * n_gaussians, 3))
    cols = np.clip(np.repeat(rgb.numpy(), 3, axis=0) + rng.normal(0, 0.1, (3 * n_gaussians, 3)), 0, 1)
    for p, c in zip(pts, cols, strict=True):
        rec.add_point3D(p, pycolmap.Track(), (c * 255).astype(np.uint8))
    rec.write_binary(str(root / "sparse" / "0"))
    return root


def _rotmat_to_xyzw(R: np.ndarray) -> np.ndarray:
    w = np.sqrt(max(0.0, 1 + R[0, 0] + R[1, 1] + R[2, 2])) / 2
    x = np.sqrt(max(0.0, 1 + R[0, 0] - R[1, 1] - R[2, 2])) / 2
    y = np.sqrt(max(0.0, 1 - R[0, 0] + R[1, 1] - R[2, 2])) / 2
    z = np.sqrt(max(0.0, 1 - R[0, 0] - R[1, 1] + R[2, 2])) / 2
    x = np.copysign(x, R[2, 1] - R[1, 2])
    y = np.copysign(y, R[0, 2] - R[2, 0])
    z = np.copysign(z, R[1, 0] - R[0, 1])
    return np.array([x, y, z, w])


@pytest.fixture(scope="session", autouse=True)
def _splat_cache_in_tmp(tmp_path_factory):
    """Default scene caches (``$SPLAT_CACHE_DIR``) go to a temporary folder, never the user's ~/.cache."""
    old = os.environ.get("SPLAT_CACHE_DIR")
    os.environ["SPLAT_CACHE_DIR"] = str(tmp_path_factory.mktemp("splat-cache"))
    yield
    if old is None:
        os.environ.pop("SPLAT_CACHE_DIR", None)
    else:
        os.environ["SPLAT_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def synthetic_scene(tmp_path_factory) -> Path:
    return make_synthetic_scene(tmp_path_factory.mktemp("synthetic") / "scene")


def small_config(out: Path, **kw):
    """A fast CPU configuration for the synthetic scene."""
    from splat.config import TrainConfig

    base = TrainConfig(
        out=out,
        steps=150,
        device="cpu",
        progress=False,
        sh_degree=1,
        sh_degree_interval=100,
        means_lr_steps=150,
        refine_start=50,
        refine_stop=120,
        refine_every=25,
        reset_every=100,
        eval_steps=(0, 150),
        save_steps=(150,),
        ckpt_every=0,
        save_renders=False,
        lpips=False,
    )
    return dataclasses.replace(base, **kw)
