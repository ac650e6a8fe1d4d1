"""Depth from the SfM points: sparse depth targets per training view and gsplat's disparity loss.

gsplat's ``depth_loss`` (``examples/simple_trainer.py``) projects the SfM points each image observed into
it, samples the rendered expected depth at those pixels (``render_mode="RGB+ED"``, bilinear) and adds
``depth_lambda * scene_scale * L1(1 / rendered, 1 / SfM depth)``.

Where we differ: splat's scene model keeps the SfM points but not which image observed which (COLMAP's
tracks), so :func:`sparse_depths` takes every point that projects inside the view in front of the camera
and keeps, per cell of ``cell`` x ``cell`` pixels, the nearest one (a coarse z-buffer: points hidden
behind a nearer surface are dropped, as an observation list would not contain them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def sparse_depths(
    points: Tensor,  # [P, 3] world
    viewmat: Tensor,  # [4, 4] world-to-camera
    K: Tensor,  # [3, 3]
    width: int,
    height: int,
    cell: int = 4,
    near: float = 0.01,
) -> tuple[Tensor, Tensor]:
    """SfM depth targets of one view -> (pixel positions [M, 2] (x, y), depths [M]).

    Keeps points in front of the camera (z > ``near``) projecting inside the image, then the nearest
    point of each ``cell`` x ``cell`` pixel block.
    """
    cam = points @ viewmat[:3, :3].T + viewmat[:3, 3]  # [P, 3]
    z = cam[:, 2]
    front = z > near
    cam, z = cam[front], z[front]
    uv = (cam @ K.T)[:, :2] / z[:, None]  # [P', 2] pixels
    inside = (uv[:, 0] >= 0) & (uv[:, 0] < width) & (uv[:, 1] >= 0) & (uv[:, 1] < height)
    uv, z = uv[inside], z[inside]
    if len(z) == 0:
        return uv, z
    n_cx = (width + cell - 1) // cell
    cell_id = (uv[:, 1] // cell).long() * n_cx + (uv[:, 0] // cell).long()  # [M']
    # nearest first, then the first occurrence of each cell
    order = torch.argsort(z, stable=True)
    cell_sorted = cell_id[order]
    order2 = torch.argsort(cell_sorted, stable=True)
    cs = cell_sorted[order2]
    first = torch.ones_like(cs, dtype=torch.bool)
    first[1:] = cs[1:] != cs[:-1]
    keep = order[order2[first]]
    return uv[keep], z[keep]


def sample_depth(depth_map: Tensor, uv: Tensor) -> Tensor:
    """Bilinear samples of ``depth_map`` [H, W] at pixel positions ``uv`` [M, 2] -> [M].

    As gsplat: positions normalised by ``(size - 1)`` with ``align_corners=True``.
    """
    H, W = depth_map.shape
    grid = torch.stack([uv[:, 0] / (W - 1) * 2 - 1, uv[:, 1] / (H - 1) * 2 - 1], dim=-1)  # [M, 2]
    out = F.grid_sample(depth_map[None, None], grid[None, :, None], align_corners=True)  # [1, 1, M, 1]
    return out[0, 0, :, 0]


def disparity_l1(pred: Tensor, target: Tensor, scene_scale: float) -> Tensor:
    """gsplat's ``depth_l1_loss``: mean |1/pred - 1/target| x scene scale (non-positive depths -> 0)."""
    disp = torch.where(pred > 0, 1.0 / pred.clamp_min(1e-10), torch.zeros_like(pred))
    disp_gt = torch.where(target > 0, 1.0 / target.clamp_min(1e-10), torch.zeros_like(target))
    return F.l1_loss(disp, disp_gt) * scene_scale


__all__ = ["disparity_l1", "sample_depth", "sparse_depths"]
