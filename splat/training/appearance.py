"""Per-image appearance: one bilateral grid per training image (Wang et al., "Bilateral Guided Radiance
Field Processing", SIGGRAPH 2024), as gsplat's ``post_processing="bilateral_grid"``.

Phone captures change exposure and white balance from photo to photo. Without a model of that, the
Gaussians average the photos' colours and paint the differences into view-dependent floaters. A bilateral
grid is a small 3D lattice of 3x4 affine colour transforms per training image, indexed by the pixel's
position and its grey level; each training render passes through its image's grid before the loss, so the
Gaussians keep one scene-wide colour and the grid absorbs the per-photo changes.

Conventions (gsplat's ``examples/lib_bilagrid.py``):
    grids         [M, 12, L, H, W]  M images; 12 = a 3x4 affine matrix, row-major; L = 8 grey levels,
                                    H = W = 16 cells; starts at the identity transform
    guidance      x, y in [0, 1] (pixel centres / size) -> [-1, 1]; z = 2 * grey - 1 with
                  grey = 0.299 R + 0.587 G + 0.114 B
    sampling      trilinear, ``align_corners=True``, border padding
    regulariser   ``10 * total_variation(grids)``: per axis of the lattice, the sum of squared
                  differences of neighbours divided by the elements of one grid, then / M
    optimiser     Adam, lr 2e-3, eps 1e-15; linear warm-up from 1 % over 1000 steps, then x 0.01 over
                  the run (exponential)

Held-out views: gsplat renders novel views with no grid (``frame_idcs=None``): a held-out photo has no
grid of its own, and none of the training grids belongs to it. We do the same, so held-out PSNR measures
the Gaussians alone (a photo whose exposure differs from the scene's mean is then scored against the
scene's mean colour: this lowers the PSNR of such photos for every method alike). The grids are saved in
checkpoints (to resume) and never in exported files (PLY, compressed formats): they describe the
training photos, not the scene.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

GRID_SHAPE = (16, 16, 8)  # (W cells, H cells, grey levels), gsplat's bilateral_grid_shape
TV_WEIGHT = 10.0  # gsplat: loss += 10 * total_variation_loss(grids)
LR = 2e-3
WARMUP_STEPS = 1000
FINAL_LR_FACTOR = 0.01
_GREY = (0.299, 0.587, 0.114)


class BilateralGrids(nn.Module):
    """One bilateral grid per training image.

    Args:
        num_images: number of grids (one per training image).
        grid_shape: (cells along x, cells along y, grey levels).
    """

    def __init__(self, num_images: int, grid_shape: tuple[int, int, int] = GRID_SHAPE):
        super().__init__()
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        gx, gy, gl = grid_shape
        identity = torch.tensor([1.0, 0, 0, 0, 0, 1.0, 0, 0, 0, 0, 1.0, 0])  # [12], rows of [I | 0]
        self.grids = nn.Parameter(identity.reshape(1, 12, 1, 1, 1).repeat(num_images, 1, gl, gy, gx).contiguous())

    def affine(self, images: Tensor, idx: Tensor) -> Tensor:
        """The 3x4 transform of every pixel of ``images`` [C, H, W, 3] (grids ``idx`` [C]) -> [C, H, W, 3, 4]."""
        C, H, W, _ = images.shape
        ys, xs = torch.meshgrid(
            (torch.arange(H, device=images.device, dtype=images.dtype) + 0.5) / H,
            (torch.arange(W, device=images.device, dtype=images.dtype) + 0.5) / W,
            indexing="ij",
        )  # [H, W] each, in [0, 1]
        grey = images @ images.new_tensor(_GREY)  # [C, H, W]
        xyz = torch.stack(
            [(xs * 2 - 1).expand(C, H, W), (ys * 2 - 1).expand(C, H, W), grey * 2 - 1], dim=-1
        )  # [C, H, W, 3] as grid_sample's (x, y, z) -> (W, H, L) axes
        mats = F.grid_sample(
            self.grids[idx], xyz[:, None], mode="bilinear", align_corners=True, padding_mode="border"
        )  # [C, 12, 1, H, W]
        return mats[:, :, 0].permute(0, 2, 3, 1).reshape(C, H, W, 3, 4)

    def forward(self, images: Tensor, idx: Tensor) -> Tensor:
        """Apply grid ``idx[c]`` to training render ``images[c]`` [C, H, W, 3] -> [C, H, W, 3]."""
        mats = self.affine(images, idx)  # [C, H, W, 3, 4]
        return (mats[..., :3] @ images[..., None])[..., 0] + mats[..., 3]

    def tv_loss(self) -> Tensor:
        """gsplat's total variation of the grids (without the x10 weight, see ``TV_WEIGHT``)."""
        return total_variation(self.grids)


def total_variation(x: Tensor) -> Tensor:
    """Sum over the axes after the first two of mean squared neighbour differences, / batch size.

    x [B, C, ...]: for each axis i >= 2, ``sum (x[.., 1:, ..] - x[.., :-1, ..])^2 / (elements of one batch
    item of the difference)``; the total is divided by B (gsplat's ``total_variation_loss``).
    """
    tv = x.new_zeros(())
    for axis in range(2, x.dim()):
        d = x.narrow(axis, 1, x.shape[axis] - 1) - x.narrow(axis, 0, x.shape[axis] - 1)
        tv = tv + d.square().sum() / max(d[0].numel(), 1)
    return tv / x.shape[0]


def lr_factor(step: int, total_steps: int, warmup: int = WARMUP_STEPS) -> float:
    """Learning-rate multiplier at ``step`` (1-based) of a ``total_steps`` run: a linear warm-up from
    0.01 to 1 over ``warmup`` steps times an exponential decay to ``FINAL_LR_FACTOR`` at the end (gsplat
    chains ``LinearLR(start_factor=0.01, total_iters=1000)`` and ``ExponentialLR(0.01 ** (1 / steps))``)."""
    done = step - 1  # scheduler steps taken before this optimiser step
    warm = 0.01 + (1 - 0.01) * min(done, warmup) / max(warmup, 1)
    return warm * FINAL_LR_FACTOR ** (done / max(total_steps, 1))


__all__ = ["BilateralGrids", "GRID_SHAPE", "LR", "TV_WEIGHT", "lr_factor", "total_variation"]
