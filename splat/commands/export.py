"""``splat export MODEL --out FILE [--format F]``: a model's Gaussians as a file other programs read: the
original 3DGS PLY, or a compact format web viewers and editors load (antimatter15 ``.splat``, PlayCanvas
compressed PLY and SOG, Niantic SPZ, gsplat's PNG archive); its size and, when the decoded Gaussians differ
from the model's, how much is printed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro

Format = Literal["ply", "splat", "compressed-ply", "spz", "sog", "png"]


@dataclass
class ExportCommand:
    """Export a model as a 3DGS PLY or a compact file for web viewers (.splat, .compressed.ply, .spz, .sog,
    .png.zip)."""

    checkpoint: tyro.conf.Positional[Path]
    """Run folder (its newest model), checkpoint (.pt), PLY or any file this command writes."""
    out: Path = Path("point_cloud.ply")
    """Output file (a SOG may also be a folder)."""
    format: Format | None = None
    """File format; default: the one the name of --out says (.ply, .splat, .compressed.ply, .spz, .sog,
    .png.zip). ply: the original layout, every viewer reads it, ~250 bytes a Gaussian at SH degree 3; splat:
    32 bytes, no view-dependent colour; spz / sog / compressed-ply / png: quantised, 10-20x smaller."""


def main(argv: list[str]) -> int:
    cmd = tyro.cli(ExportCommand, args=argv, prog="splat export")
    from splat.gaussians.formats import FormatError, format_for_path, save_gaussians
    from splat.gaussians.model import load_model

    fmt = cmd.format or format_for_path(cmd.out) or "ply"
    if cmd.format is None and format_for_path(cmd.out) is None:
        raise FormatError(
            f"--out {cmd.out}: its name says no format; name it .ply, .splat, .compressed.ply, .spz, .sog or"
            " .png.zip, or give --format"
        )
    model = load_model(cmd.checkpoint)
    save_gaussians(model.params, model.config.sh_degree, cmd.out, format=fmt)
    size = cmd.out.stat().st_size if cmd.out.is_file() else sum(p.stat().st_size for p in cmd.out.rglob("*"))
    print(f"wrote {cmd.out} ({fmt}, {model.num_gaussians} Gaussians, {size / 2**20:.2f} MiB)")
    return 0
