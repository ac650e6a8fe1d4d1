"""``splat eval MODEL --scene SCENE [--out DIR]``: PSNR / SSIM (/ LPIPS) of a trained model on the held-out
views; with ``--out`` also ``metrics.json`` and the renders beside the photos."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import tyro


@dataclass
class EvalCommand:
    """Evaluate a trained model on the held-out views (PSNR, SSIM, LPIPS when available)."""

    checkpoint: tyro.conf.Positional[Path]
    """Checkpoint (.pt) written by `splat train`, a 3DGS PLY, or a run folder (its newest model)."""
    scene: Path
    """Scene folder the model was trained on."""
    out: Path | None = None
    """Write metrics.json and renders here (default: print only, write nothing)."""
    images: str = "images"
    """Name of the images folder inside the scene (as given to `splat train --images`)."""
    device: str = "auto"
    """Torch device ("auto": cuda if available, else cpu)."""


def main(argv: list[str]) -> int:
    cmd = tyro.cli(EvalCommand, args=argv, prog="splat eval")
    from splat.commands.render import load_for_scene
    from splat.outputs import check_output_dir
    from splat.training.evaluation import evaluate_views, write_metrics
    from splat.training.metrics import load_lpips

    model, split = load_for_scene(cmd.checkpoint, cmd.scene, cmd.device, cmd.images, cmd.out)
    if cmd.out is not None:
        check_output_dir(cmd.out)
    lpips = (load_lpips(model.device) or False) if model.config.lpips else None
    sh_degree = model.active_sh_degree()
    result = evaluate_views(
        lambda K, viewmat, w, h: model.render(K, viewmat, w, h, sh_degree)[0],
        split.test_set,
        model.device,
        model.step,
        num_gaussians=model.num_gaussians,
        out=cmd.out,
        save_renders=model.config.save_renders and cmd.out is not None,
        lpips=lpips,
    )
    if cmd.out is not None:
        write_metrics(cmd.out, {str(model.step): result})
    print(json.dumps(result, indent=2))
    return 0
