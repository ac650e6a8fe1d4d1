"""The LPIPS term of the edit's loss (Instruct-NeRF2NeRF's): ``weight x LPIPS(render, training image)`` on
``patch`` px patches, added to the photometric loss of every training step while the scene is edited.

The reference (Instruct-NeRF2NeRF's ``in2n`` and ``in2n-small`` methods) adds torchmetrics' LPIPS with the
AlexNet backbone, weight 1.0 (``lpips_loss_mult``), on 32 x 32 patches of its ray batch, both images mapped
to [-1, 1] and clamped; its ``in2n-tiny`` method turns it off. Instruct-GS2GS declares the same settings but
its loss override is commented out, so it trains with splatfacto's L1 + SSIM only. We render whole views, so
the term is the mean over every ``patch`` x ``patch`` tile of the view (the centred grid of whole tiles): the
expectation of the reference's randomly placed patches, over our grid.

The network is the one ``splat train`` reports LPIPS with (:func:`splat.training.metrics.load_lpips`: the
``lpips`` package and its AlexNet weights already on disk; nothing is downloaded). Without them the term is
off and :func:`load_lpips_term` says so once.
"""

from __future__ import annotations

import sys

import torch
from torch import Tensor

NO_WEIGHTS_NOTE = (
    "splat edit: note: the LPIPS term of the edit loss is off: the `lpips` package or torchvision's AlexNet "
    "weights (alexnet-owt-7be5be79.pth in torch.hub's checkpoints folder) are not on disk. To enable it: "
    "pip install --no-deps lpips torchvision==<the release matching your torch>, and place the AlexNet weights "
    "there; --lpips-weight 0 turns the term off without this note."
)


def patch_tiles(image: Tensor, patch: int) -> Tensor:
    """The centred grid of whole ``patch`` x ``patch`` tiles of ``image`` [H, W, 3] -> [N, 3, patch, patch]."""
    H, W = image.shape[:2]
    ny, nx = H // patch, W // patch
    y0, x0 = (H - ny * patch) // 2, (W - nx * patch) // 2
    crop = image[y0 : y0 + ny * patch, x0 : x0 + nx * patch]
    return crop.reshape(ny, patch, nx, patch, 3).permute(0, 2, 4, 1, 3).reshape(ny * nx, 3, patch, patch)


class LPIPSTerm:
    """``weight`` x the mean LPIPS of ``net`` over the ``patch`` px tiles of a render and its training image
    ([H, W, 3] in [0, 1]; both mapped to [-1, 1] and clamped, as the reference). ``net(x, y)`` takes two
    [N, 3, h, w] batches in [-1, 1] and returns one distance per pair (e.g. ``lpips.LPIPS``)."""

    def __init__(self, net, weight: float, patch: int):
        self.net, self.weight, self.patch = net, float(weight), int(patch)

    def __call__(self, render: Tensor, image: Tensor) -> Tensor:
        x = (patch_tiles(render, self.patch) * 2 - 1).clamp(-1, 1)
        y = (patch_tiles(image, self.patch) * 2 - 1).clamp(-1, 1)
        return self.weight * self.net(x, y).mean()


def load_lpips_term(weight: float, patch: int, image_size: tuple[int, int], device) -> tuple[LPIPSTerm | None, str]:
    """The edit's LPIPS term, or None with the reason it is off (``weight`` 0: asked off, silently; no
    weights on disk, or training images smaller than one patch: printed once on stderr)."""
    if weight == 0:
        return None, "--lpips-weight 0"
    width, height = image_size
    if min(width, height) < patch:
        reason = f"the training images ({width}x{height}) are smaller than one --lpips-patch ({patch} px)"
        print(f"splat edit: note: the LPIPS term of the edit loss is off: {reason}", file=sys.stderr, flush=True)
        return None, reason
    from splat.training import metrics

    net = metrics.load_lpips(torch.device(device))
    if net is None:
        print(NO_WEIGHTS_NOTE, file=sys.stderr, flush=True)
        return None, "no LPIPS weights on disk"
    return LPIPSTerm(net, weight, patch), "on"
