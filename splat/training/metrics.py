"""Image quality metrics for evaluation: PSNR, SSIM (the original's 11x11 Gaussian window) and LPIPS
when its package and weights are already on disk (never downloaded)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor


def psnr(pred: Tensor, gt: Tensor) -> float:
    mse = F.mse_loss(pred.clamp(0, 1), gt).item()
    return float("inf") if mse == 0 else -10.0 * math.log10(mse)


def _fused_ssim():
    """``fused_ssim.fused_ssim`` (a CUDA kernel, https://github.com/rahul-goel/fused-ssim, not on PyPI) if
    installed, else None."""
    try:
        from fused_ssim import fused_ssim
    except ImportError:
        return None
    return fused_ssim


def ssim(pred: Tensor, gt: Tensor) -> Tensor:
    """SSIM of [H, W, 3] images (11x11 Gaussian window, sigma 1.5, as the original).

    On CUDA tensors, the fused kernel of ``fused-ssim`` when it is installed, with ``padding="valid"``:
    the same window, constants and valid-region mean as pytorch-msssim, in one kernel forward and
    backward (its speed-up is not measured here: no GPU was available). Otherwise pytorch-msssim.
    """
    x, y = pred.permute(2, 0, 1)[None], gt.permute(2, 0, 1)[None]  # [1, 3, H, W]
    if pred.is_cuda and min(pred.shape[:2]) > 10:
        fused = _fused_ssim()
        if fused is not None:
            return fused(x.contiguous(), y.contiguous(), padding="valid")
    from pytorch_msssim import ssim as _ssim

    return _ssim(x, y, data_range=1.0, size_average=True)


def load_lpips(device: torch.device):
    """LPIPS(alex) if the package and all its weights are on disk already; None otherwise (no download)."""
    try:
        import lpips  # noqa: F401
    except ImportError:
        return None
    backbone = Path(torch.hub.get_dir()) / "checkpoints" / "alexnet-owt-7be5be79.pth"
    if not backbone.is_file():
        return None
    try:
        import lpips

        return lpips.LPIPS(net="alex", verbose=False).to(device).eval()
    except Exception:
        return None
