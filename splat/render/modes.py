"""One picture of the Gaussians from one camera, in a viewer's render modes.

    rgb      the splatted colours over the background (``splat.render.rasterization.rasterize``, SH evaluated)
    depth    expected depth ``sum_i w_i z_i / sum_i w_i`` (the same blending weights ``w_i`` as the colour,
             with the camera-space depth ``z_i`` as a one-channel feature), near = bright, colour-mapped
    alpha    the accumulated opacity ``sum_i w_i`` as grey
    centres  the Gaussian centres projected as dots in their DC colour, nearer ones drawn last

All go through :func:`splat.render.rasterization.rasterize` (gsplat on CUDA, the reference twin on CPU) except
``centres``, which is a plain projection. Output: ``uint8 [H, W, 3]`` numpy, ready for a browser or a video.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

from splat.render._torch_impl import SH_C0
from splat.render.rasterization import Backend, rasterize

RenderMode = Literal["rgb", "depth", "alpha", "centres"]
RENDER_MODES = ("rgb", "depth", "alpha", "centres")

# a few anchors of a perceptually ordered dark-blue -> yellow map, for depth
_DEPTH_ANCHORS = np.array(
    [[0.05, 0.03, 0.20], [0.23, 0.15, 0.55], [0.13, 0.45, 0.56], [0.20, 0.72, 0.47], [0.99, 0.91, 0.14]]
)


def to_uint8(image: Tensor) -> np.ndarray:
    """[H, W, 3] float in [0, 1] -> uint8 numpy (round half up, as ``splat.outputs.atomic_save_image``)."""
    return (image.detach().clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)


@torch.no_grad()
def render_rgb(
    gaussians: dict[str, Tensor],  # activated: means, quats, scales, opacities, colors [N, K, 3]
    K: Tensor,  # [3, 3]
    viewmat: Tensor,  # [4, 4] world-to-camera
    width: int,
    height: int,
    sh_degree: int,
    background: Tensor,  # [3]
    backend: Backend = "auto",
) -> tuple[Tensor, Tensor]:
    """(image [H, W, 3], alpha [H, W, 1]) exactly as ``rasterize`` returns them for this camera."""
    g = gaussians
    img, alpha, _ = rasterize(
        g["means"],
        g["quats"],
        g["scales"],
        g["opacities"],
        g["colors"],
        viewmat[None],
        K[None],
        width,
        height,
        sh_degree=sh_degree,
        backgrounds=background[None],
        backend=backend,
    )
    return img[0], alpha[0]


@torch.no_grad()
def render_mode(
    gaussians: dict[str, Tensor],
    K: Tensor,
    viewmat: Tensor,
    width: int,
    height: int,
    sh_degree: int,
    background: Tensor,
    mode: RenderMode = "rgb",
    backend: Backend = "auto",
) -> np.ndarray:
    """The picture for ``mode`` (see the module docstring) as ``uint8 [H, W, 3]``."""
    if mode not in RENDER_MODES:
        raise ValueError(f"unknown render mode {mode!r}; choose from {', '.join(RENDER_MODES)}")
    if mode == "rgb":
        return to_uint8(render_rgb(gaussians, K, viewmat, width, height, sh_degree, background, backend)[0])
    if mode == "centres":
        return _centres(gaussians, K, viewmat, width, height, background)
    g = gaussians
    z = g["means"] @ viewmat[:3, :3].T[:, 2] + viewmat[2, 3]  # camera-space depth, [N]
    acc, alpha, _ = rasterize(
        g["means"],
        g["quats"],
        g["scales"],
        g["opacities"],
        z[:, None],
        viewmat[None],
        K[None],
        width,
        height,
        sh_degree=None,
        backgrounds=torch.zeros(1, 1, device=z.device),
        backend=backend,
    )
    alpha = alpha[0, ..., 0].cpu().numpy()  # [H, W]
    if mode == "alpha":
        grey = np.clip(alpha, 0, 1)
        return (np.repeat(grey[..., None], 3, -1) * 255 + 0.5).astype(np.uint8)
    depth = acc[0, ..., 0].cpu().numpy() / np.maximum(alpha, 1e-6)  # [H, W]
    valid = alpha > 0.5
    out = np.empty((height, width, 3), np.float64)
    out[:] = background.cpu().numpy()
    if valid.any():
        lo, hi = np.percentile(depth[valid], [2, 98])
        t = 1 - np.clip((depth - lo) / max(hi - lo, 1e-9), 0, 1)  # near = 1
        xs = np.linspace(0, 1, len(_DEPTH_ANCHORS))
        cmap = np.stack([np.interp(t, xs, _DEPTH_ANCHORS[:, c]) for c in range(3)], -1)
        out[valid] = cmap[valid]
    return (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)


def _centres(
    g: dict[str, Tensor], K: Tensor, viewmat: Tensor, width: int, height: int, background: Tensor
) -> np.ndarray:
    cam = g["means"] @ viewmat[:3, :3].T + viewmat[:3, 3]  # [N, 3] camera frame
    front = cam[:, 2] > 0.01
    cam = cam[front]
    rgb = (g["colors"][front, 0] * SH_C0 + 0.5).clamp(0, 1)  # DC colour, [M, 3]
    uv = cam @ K.T
    uv = uv[:, :2] / uv[:, 2:3]  # [M, 2] pixels
    order = torch.argsort(cam[:, 2], descending=True)  # far first, near overwrites
    out = np.empty((height, width, 3), np.uint8)
    out[:] = (background.cpu().numpy().clip(0, 1) * 255 + 0.5).astype(np.uint8)
    u = uv[order, 0].floor().long().cpu().numpy()
    v = uv[order, 1].floor().long().cpu().numpy()
    col = (rgb[order].cpu().numpy() * 255 + 0.5).astype(np.uint8)
    radius = 1 if max(width, height) >= 200 else 0
    for du in range(-radius, radius + 1):
        for dv in range(-radius, radius + 1):
            uu, vv = u + du, v + dv
            ok = (uu >= 0) & (uu < width) & (vv >= 0) & (vv < height)
            out[vv[ok], uu[ok]] = col[ok]  # numpy assignment: the last write (nearest) wins
    return out
