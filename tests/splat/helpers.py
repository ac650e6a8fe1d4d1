"""What the splat tests share: a tiny synthetic COLMAP scene rendered with the reference rasterizer, a fast CPU
configuration for it, and a model of the demo scene without training (a run folder with a checkpoint and a PLY)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

_REPO = Path(__file__).resolve().parents[2]
DEMO = _REPO / "assets" / "demo"
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

    from splat.gaussians.params import rgb_to_sh
    from splat.render._torch_impl import rasterize_torch

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


def make_demo_run(out: Path, max_width: int = 32) -> Path:
    """The demo scene's initial Gaussians (a third of them), perturbed so that every parameter (rotations,
    anisotropic scales, higher SH) matters, saved as a run folder at step 7 (checkpoint + PLY)."""
    from splat.config import TrainConfig, config_to_dict
    from splat.gaussians.ply import write_ply
    from splat.training.trainer import Trainer

    cfg = TrainConfig(
        out=out, device="cpu", progress=False, max_width=max_width, lpips=False, sh_degree=2, steps=7,
        sh_degree_interval=1, save_renders=False,
    )  # fmt: skip
    trainer = Trainer(DEMO, cfg)
    g = torch.Generator().manual_seed(0)
    keep = torch.arange(0, len(trainer.params["means"]), 3)  # a third of the SfM points: fast CPU renders
    trainer.params = torch.nn.ParameterDict(
        {k: torch.nn.Parameter(v[keep]) for k, v in trainer.params.items()}
    )
    with torch.no_grad():
        p = trainer.params
        p["quats"].copy_(torch.randn(p["quats"].shape, generator=g))
        p["scales"].add_(0.3 * torch.randn(p["scales"].shape, generator=g))
        p["shN"].copy_(0.2 * torch.randn(p["shN"].shape, generator=g))
        p["opacities"].fill_(1.5)
    trainer.step = 7
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config_to_dict(cfg)))
    trainer.save_checkpoint(out / "ckpts" / "ckpt_000007.pt")
    write_ply(out / "point_cloud" / "iteration_7" / "point_cloud.ply", trainer.params)
    return out
