"""``splat export MODEL --out FILE.ply``: a model's Gaussians as a PLY in the original 3DGS layout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import tyro


@dataclass
class ExportCommand:
    """Export a checkpoint as a PLY in the original 3DGS layout (readable by splat viewers)."""

    checkpoint: tyro.conf.Positional[Path]
    """Checkpoint (.pt) written by `splat train` (or a run folder: its newest model)."""
    out: Path = Path("point_cloud.ply")
    """Output PLY file."""


def main(argv: list[str]) -> int:
    cmd = tyro.cli(ExportCommand, args=argv, prog="splat export")
    from splat.gaussians.model import load_model
    from splat.gaussians.ply import write_ply

    write_ply(cmd.out, load_model(cmd.checkpoint).params)
    print(f"wrote {cmd.out}")
    return 0
