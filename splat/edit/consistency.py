"""How well the per-view edits agree with one another in 3D, without any diffusion model:
:func:`multiview_consistency`.

Each edited training image ``E_i`` is carried into its nearest training views ``j`` with the scene's
rendered depth: every pixel ``p`` of view ``j`` is lifted to 3D with ``j``'s expected depth ``D_j(p)``
(``sum_k w_k z_k / sum_k w_k``, the colour's blending weights ``w_k``), projected into view ``i`` and ``E_i`` is
sampled there (bilinear; backward warping, so no holes). A pixel counts where the scene covers it in ``j``
(accumulated opacity > ``min_alpha``), it lands inside ``i`` in front of the camera, and it is not occluded
there (its depth in ``i`` within ``depth_tol`` of ``D_i`` at that place). The figure is the PSNR between the
warped ``E_i`` and ``E_j`` over those pixels, averaged over the ordered pairs: edits that agree in 3D warp
onto one another; edits that each view made its own way do not. Photometric effects the warp cannot model
(view-dependent colour, depth blurred at silhouettes) put a ceiling on it; the scene's own renders, which
agree by construction, show where that ceiling is.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from splat.render.rasterization import rasterize


@torch.no_grad()
def render_depth(gaussians: dict[str, Tensor], K: Tensor, viewmat: Tensor, width: int, height: int,
                 backend: str = "auto") -> tuple[Tensor, Tensor]:  # fmt: skip
    """Expected camera-space depth ``[H, W]`` and accumulated opacity ``[H, W]`` of activated ``gaussians``
    (means, quats, scales, opacities) seen from ``viewmat`` / ``K``."""
    g = gaussians
    z = g["means"] @ viewmat[:3, :3].T[:, 2] + viewmat[2, 3]  # [N] camera-space depth
    acc, alpha, _ = rasterize(g["means"], g["quats"], g["scales"], g["opacities"], z[:, None], viewmat[None],
                              K[None], width, height, sh_degree=None,
                              backgrounds=torch.zeros(1, 1, device=z.device), backend=backend)  # fmt: skip
    alpha = alpha[0, ..., 0]  # [H, W]
    return acc[0, ..., 0] / alpha.clamp_min(1e-6), alpha


def warp(image: Tensor, depth_src: Tensor, K_src: Tensor, viewmat_src: Tensor, depth_dst: Tensor,
         alpha_dst: Tensor, K_dst: Tensor, viewmat_dst: Tensor, *, min_alpha: float = 0.5,
         depth_tol: float = 0.05) -> tuple[Tensor, Tensor]:  # fmt: skip
    """``image`` (float ``[H, W, 3]`` of the source view) seen from the destination view ->
    (warped ``[H', W', 3]``, valid mask bool ``[H', W']``), with the destination's depth ``depth_dst``
    ``[H', W']`` and opacity ``alpha_dst``, and the source's depth ``depth_src`` ``[H, W]`` for occlusion."""
    Hd, Wd = depth_dst.shape
    Hs, Ws = depth_src.shape
    dev = depth_dst.device
    ys, xs = torch.meshgrid(torch.arange(Hd, device=dev, dtype=torch.float32) + 0.5,
                            torch.arange(Wd, device=dev, dtype=torch.float32) + 0.5, indexing="ij")  # fmt: skip
    # 1. destination pixels -> destination camera -> world
    x_cam = (xs - K_dst[0, 2]) / K_dst[0, 0] * depth_dst
    y_cam = (ys - K_dst[1, 2]) / K_dst[1, 1] * depth_dst
    cam = torch.stack([x_cam, y_cam, depth_dst], -1)  # [H', W', 3]
    R_d, t_d = viewmat_dst[:3, :3], viewmat_dst[:3, 3]
    world = (cam - t_d) @ R_d  # R^T (x - t), row vectors: [H', W', 3]
    # 2. world -> source camera -> source pixels (pixel centres at +0.5, as the rasterizer's)
    src = world @ viewmat_src[:3, :3].T + viewmat_src[:3, 3]  # [H', W', 3]
    z = src[..., 2]
    zs = z.clamp_min(1e-6)
    u = K_src[0, 0] * src[..., 0] / zs + K_src[0, 2]
    v = K_src[1, 1] * src[..., 1] / zs + K_src[1, 2]
    grid = torch.stack([2 * u / Ws - 1, 2 * v / Hs - 1], -1)[None]  # [1, H', W', 2], align_corners=False
    sample = lambda x: F.grid_sample(x.permute(2, 0, 1)[None], grid, mode="bilinear", padding_mode="border",  # noqa: E731
                                     align_corners=False)[0].permute(1, 2, 0)  # fmt: skip
    warped = sample(image.float())  # [H', W', 3]
    seen = sample(depth_src[..., None].float())[..., 0]  # the source's own depth where the point lands
    inside = (u >= 0) & (u <= Ws) & (v >= 0) & (v <= Hs) & (z > 1e-6)
    visible = (z - seen).abs() <= depth_tol * z
    return warped, inside & visible & (alpha_dst > min_alpha)


def neighbours(viewmats: Tensor, k: int) -> list[list[int]]:
    """For each camera (world-to-camera ``[V, 4, 4]``), its ``k`` nearest others by camera centre."""
    R, t = viewmats[:, :3, :3], viewmats[:, :3, 3]
    centres = -(R.transpose(1, 2) @ t[..., None])[..., 0]  # [V, 3]
    d = torch.cdist(centres, centres)
    d.fill_diagonal_(float("inf"))
    k = min(k, len(viewmats) - 1)
    return d.topk(k, largest=False).indices.tolist() if k > 0 else [[] for _ in range(len(viewmats))]


@torch.no_grad()
def view_geometry(trainer, views) -> dict[int, tuple[Tensor, Tensor, Tensor, Tensor]]:
    """For each training view index in ``views``: ``(K, viewmat, depth [H, W], opacity [H, W])`` on the trainer's
    device, from ``trainer``'s current Gaussians (what :func:`multiview_consistency` warps with). Computed once,
    it serves every set of images of the same views scored against the same Gaussians (``geometry=``)."""
    p = trainer.params
    g = {"means": p["means"], "quats": p["quats"], "scales": torch.exp(p["scales"]),
         "opacities": torch.sigmoid(p["opacities"])}  # fmt: skip
    dev = trainer.device
    geo = {}
    for i in sorted(views):
        f = trainer.train_set[i]
        K, vm = f.K.to(dev), f.viewmat.to(dev)
        depth, alpha = render_depth(g, K, vm, f.width, f.height, trainer.cfg.backend)
        geo[i] = (K, vm, depth, alpha)
    return geo


@torch.no_grad()
def multiview_consistency(trainer, images: dict[int, Tensor], k: int = 2, min_alpha: float = 0.5,
                          depth_tol: float = 0.05, min_pixels: int = 16, geometry: dict | None = None) -> dict:  # fmt: skip
    """Masked PSNR of each training image in ``images`` (view index -> uint8 ``[H, W, 3]``) warped into its
    ``k`` nearest training views among ``images`` and compared there with theirs, with ``trainer``'s current
    Gaussians' depth (see the module docstring). ``geometry``: :func:`view_geometry` of (at least) these views
    with the same Gaussians, to score several sets of images without rendering the depth again.

    Returns ``{"psnr": mean dB over the pairs, "pairs": pairs counted, "coverage": mean fraction of the
    destination's pixels compared, "neighbours": k}``; ``psnr`` is None when no pair has ``min_pixels``.
    """
    views = sorted(images)
    dev = trainer.device
    geo = geometry if geometry is not None else {}
    missing = [i for i in views if i not in geo]
    if missing:
        geo = {**geo, **view_geometry(trainer, missing)}
    near = neighbours(torch.stack([geo[i][1] for i in views]), k)
    scores, coverage = [], []
    for a, i in enumerate(views):
        K_i, vm_i, depth_i, _ = geo[i]
        image_i = images[i].to(dev).float() / 255.0
        for b in near[a]:
            j = views[b]
            K_j, vm_j, depth_j, alpha_j = geo[j]
            warped, mask = warp(image_i, depth_i, K_i, vm_i, depth_j, alpha_j, K_j, vm_j, min_alpha=min_alpha,
                                depth_tol=depth_tol)  # fmt: skip
            n = int(mask.sum())
            coverage.append(n / mask.numel())
            if n < min_pixels:
                continue
            target = images[j].to(dev).float() / 255.0
            mse = float(((warped - target)[mask] ** 2).mean())
            scores.append(10 * math.log10(1.0 / max(mse, 1e-10)))
    return {"psnr": float(sum(scores) / len(scores)) if scores else None, "pairs": len(scores),
            "coverage": float(sum(coverage) / len(coverage)) if coverage else 0.0, "neighbours": k}  # fmt: skip
