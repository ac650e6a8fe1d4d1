"""Held-out evaluation: PSNR / SSIM (/ LPIPS) of a model's renders against the photos, renders saved beside
the ground truth. The trainer evaluates at its ``eval_steps``; ``splat eval`` calls the same function on a
loaded :class:`splat.gaussians.Model`, without a trainer."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from splat.outputs import atomic_save_image, atomic_write_text, image_stem, save_comparisons, to_uint8
from splat.scene.views import ViewDataset
from splat.training.distributed import SINGLE, DistContext
from splat.training.metrics import psnr, ssim


@torch.no_grad()
def evaluate_views(
    render,
    test_set: ViewDataset,
    device: torch.device,
    step: int,
    *,
    num_gaussians: int,
    out: Path | None = None,
    save_renders: bool = False,
    lpips=None,
    dist: DistContext = SINGLE,
) -> dict:
    """Scores of ``render(K, viewmat, width, height) -> image [H, W, 3]`` over ``test_set``.

    ``lpips``: a loaded LPIPS network, or None / False (then ``"lpips": None``). With ``save_renders`` rank 0
    writes ``out/renders/step_NNNNNN/{stem}_render.png`` and ``_gt.png``, the side-by-side images and a
    contact sheet. Each rank renders its share of the views (``dist``): the scores are gathered on every rank,
    the renders (uint8, a quarter of float32) on rank 0 only. Every rank returns the same dict: the means,
    ``num_gaussians`` (as given), ``num_views`` and ``seconds_per_view``."""
    scores: dict[str, list[float]] = {"psnr": [], "ssim": []}
    if lpips:
        scores["lpips"] = []
    t0 = time.perf_counter()
    views: dict[int, dict] = {}  # test view -> its scores
    renders: dict[int, Tensor] = {}  # test view -> render [H, W, 3] uint8 (with save_renders)
    for i in range(dist.rank, len(test_set), dist.world_size):  # this rank's share
        f = test_set[i]
        gt = f.image.to(device)
        img = render(f.K.to(device), f.viewmat.to(device), f.width, f.height).clamp(0, 1)
        view = {"psnr": psnr(img, gt), "ssim": ssim(img, gt).item()}
        if lpips:
            to = lambda x: x.permute(2, 0, 1)[None] * 2 - 1  # noqa: E731  [1, 3, H, W] in [-1, 1]
            view["lpips"] = lpips(to(img), to(gt)).item()
        views[i] = view
        if save_renders:
            renders[i] = to_uint8(img).cpu()  # gathered to rank 0 to be saved
    for part in dist.all_gather_objects(views):  # every rank's scores, on every rank
        views.update(part)
    if save_renders:
        for part in dist.gather_to_main(renders) or []:  # the images, on rank 0 only
            renders.update(part)
    folder = out / "renders" / f"step_{step:06d}" if out is not None else None
    for i in range(len(test_set)):  # in view order, as one process would
        for k in scores:
            scores[k].append(views[i][k])
        if save_renders and dist.is_main:
            f = test_set[i]
            stem = image_stem(f.name)
            atomic_save_image(folder / f"{stem}_render.png", renders[i])
            atomic_save_image(folder / f"{stem}_gt.png", f.image)
    if save_renders and len(test_set) and dist.is_main:  # side by side + contact sheet, from the files above
        save_comparisons(folder)
    result = {k: float(np.mean(v)) for k, v in scores.items()}
    result.update(
        num_gaussians=num_gaussians,
        num_views=len(test_set),
        seconds_per_view=(time.perf_counter() - t0) / max(len(test_set), 1),
    )
    if not lpips:
        result["lpips"] = None  # weights not available locally
    return result


def write_metrics(out: Path, metrics: dict[str, dict]) -> None:
    """``out/metrics.json``: step (as str) -> scores."""
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
