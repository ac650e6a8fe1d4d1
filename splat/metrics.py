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


def ssim(pred: Tensor, gt: Tensor) -> Tensor:
    """SSIM of [H, W, 3] images (11x11 Gaussian window, sigma 1.5, as the original)."""
    from pytorch_msssim import ssim as _ssim

    return _ssim(pred.permute(2, 0, 1)[None], gt.permute(2, 0, 1)[None], data_range=1.0, size_average=True)


def _load_lpips(device: torch.device):
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
