"""A model of the demo scene without training: its Trainer's initial Gaussians, perturbed so that every
parameter (rotations, anisotropic scales, higher SH) matters, saved as a run folder (checkpoint + PLY)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

DEMO = Path(__file__).resolve().parents[2] / "assets" / "demo"


def make_demo_run(out: Path, max_width: int = 32) -> Path:
    from splat.config import TrainConfig, config_to_dict
    from splat.ply import write_ply
    from splat.trainer import Trainer

    cfg = TrainConfig(
        out=out, device="cpu", progress=False, max_width=max_width, lpips=False, sh_degree=2, steps=7,
        sh_degree_interval=1, save_renders=False,
    )  # fmt: skip
    trainer = Trainer(DEMO, cfg)
    g = torch.Generator().manual_seed(0)
    keep = torch.arange(0, len(trainer.params["means"]), 3)  # a third of the SfM points: fast CPU renders
    trainer.params = torch.nn.ParameterDict(
        {k: torch.nn.Parameter(v[keep]) for k, v in trainer.params.items()}
    )
    with torch.no_grad():
        p = trainer.params
        p["quats"].copy_(torch.randn(p["quats"].shape, generator=g))
        p["scales"].add_(0.3 * torch.randn(p["scales"].shape, generator=g))
        p["shN"].copy_(0.2 * torch.randn(p["shN"].shape, generator=g))
        p["opacities"].fill_(1.5)
    trainer.step = 7
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config_to_dict(cfg)))
    trainer.save_checkpoint(out / "ckpts" / "ckpt_000007.pt")
    write_ply(out / "point_cloud" / "iteration_7" / "point_cloud.ply", trainer.params)
    return out
