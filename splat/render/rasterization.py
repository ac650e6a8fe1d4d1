"""One entry point for rendering Gaussians: gsplat's CUDA rasterizer, or our PyTorch twin on CPU."""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from splat.render._torch_impl import rasterize_torch

Backend = Literal["auto", "gsplat", "torch"]


def rasterize(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    colors: Tensor,  # [N, K, 3] (SH) or [N, D]
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    sh_degree: int | None = None,
    backgrounds: Tensor | None = None,  # [C, D]
    backend: Backend = "auto",
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    absgrad: bool = False,
    rasterize_mode: Literal["classic", "antialiased"] = "classic",
    render_mode: Literal["RGB", "RGB+ED"] = "RGB",
) -> tuple[Tensor, Tensor, dict]:
    """Rasterize N 3D Gaussians into C pinhole images.

    Args:
        means: Gaussian centres in the world frame. [N, 3]
        quats: rotations as ``wxyz`` quaternions, need not be normalised. [N, 4]
        scales: activated (positive) scales along the Gaussian's axes. [N, 3]
        opacities: activated opacities in (0, 1). [N]
        colors: SH coefficients [N, K, 3] with ``K >= (sh_degree + 1)**2`` when ``sh_degree`` is set,
            else per-Gaussian features [N, D].
        viewmats: world-to-camera transforms (OpenCV/COLMAP axes: x right, y down, z forward). [C, 4, 4]
        Ks: pinhole intrinsics. [C, 3, 3]
        width, height: image size in pixels.
        sh_degree: SH degree to evaluate, or None for plain features.
        backgrounds: colour behind the Gaussians. [C, D]
        backend: ``"gsplat"`` (CUDA), ``"torch"`` (reference, any device) or ``"auto"`` (gsplat for CUDA
            tensors, torch otherwise).
        absgrad: also accumulate AbsGS's absolute screen-space gradient into ``meta["means2d"].absgrad``
            [C, N, 2] during backward (what ``DefaultStrategy(absgrad=True)`` grows on).
        rasterize_mode: ``"antialiased"`` multiplies each opacity by Mip-Splatting's compensation
            ``sqrt(det Sigma'_raw / det(Sigma'_raw + eps2d I))``; ``"classic"`` is the original 3DGS.
        render_mode: ``"RGB+ED"`` appends the expected depth (normalised by alpha) as a last channel.

    Each pixel is ``sum_i c_i alpha_i prod_{j<i} (1 - alpha_j)`` over the depth-sorted Gaussians, with
    ``alpha_i = o_i exp(-1/2 d^T Sigma'^-1 d)`` and ``Sigma' = J W Sigma W^T J^T + eps2d I``.

    Returns:
        colours [C, H, W, D], alphas [C, H, W, 1], and a meta dict with at least ``means2d`` [C, N, 2]
        (its ``.grad`` is what densification reads), ``radii`` [C, N, 2], ``width``, ``height``,
        ``n_cameras`` and ``gaussian_ids`` (the keys gsplat's strategies need).
    """
    if backend == "auto":
        backend = "gsplat" if means.is_cuda else "torch"
    args = (means, quats, scales, opacities, colors, viewmats, Ks, width, height)
    kwargs = dict(
        sh_degree=sh_degree, backgrounds=backgrounds, near_plane=near_plane, far_plane=far_plane, eps2d=eps2d,
        absgrad=absgrad, rasterize_mode=rasterize_mode, render_mode=render_mode,
    )
    if backend == "gsplat":
        if not means.is_cuda:
            raise ValueError("backend='gsplat' needs CUDA tensors; use backend='torch' on CPU")
        from gsplat import rasterization  # lazy: importing is CUDA-free, but keep start-up light

        return rasterization(*args, **kwargs, packed=False)
    if backend == "torch":
        return rasterize_torch(*args, **kwargs)
    raise ValueError(f"unknown backend {backend!r}; expected 'auto', 'gsplat' or 'torch'")
