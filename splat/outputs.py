"""Output files of a run: atomic text / image writes and the writable-folder checks."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from safeio import atomic_write_bytes, atomic_write_text

__all__ = [
    "OutputError",
    "atomic_save_image",
    "atomic_write_text",
    "check_output_dir",
    "image_stem",
    "save_comparisons",
    "would_be_writable",
]

CONTACT_SHEET_NAME = "contact_sheet.png"


class OutputError(ValueError):
    """The output folder cannot be created or written."""


def atomic_save_image(path: Path, image: Tensor) -> None:
    """Save an [H, W, 3] float image in [0, 1] (or uint8, as :func:`to_uint8` makes) as PNG, atomically."""
    arr = to_uint8(image).cpu().numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def to_uint8(image: Tensor) -> Tensor:
    """A float image in [0, 1] as uint8 (rounded to nearest, as PNGs are written); uint8 is returned as is."""
    if image.dtype == torch.uint8:
        return image
    return (image.detach().clamp(0, 1) * 255.0 + 0.5).to(torch.uint8)


def image_stem(name: str) -> str:
    """The file stem of a view's outputs: its image name without extension, sub-folders joined by ``__``."""
    return Path(name).with_suffix("").as_posix().replace("/", "__")


def check_output_dir(out: Path) -> None:
    """Create ``out`` and prove it is writable, or raise :class:`OutputError`."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"output folder {out} cannot be written: {e.strerror or e}") from e


def would_be_writable(out: Path) -> bool:
    """True if ``out`` exists as a writable folder or could be created (without creating it)."""
    p = out
    while not p.exists():
        if p.parent == p:
            return False
        p = p.parent
    return p.is_dir() and os.access(p, os.W_OK | os.X_OK)


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def save_comparisons(
    folder: Path,
    columns: int = 2,
    gap: int = 4,
    left: str = "gt",
    right: str = "render",
    caption: str = "left: ground truth, right: render",
) -> Path | None:
    """Side-by-side images of one evaluation's renders, and a contact sheet of all of them.

    Reads the ``NAME_gt.png`` / ``NAME_render.png`` pairs in ``folder`` (as written by the trainer's
    evaluation; other suffixes with ``left`` / ``right``), writes ``NAME_compare.png`` (left image left)
    for each pair and ``contact_sheet.png``: every pair in a grid of ``columns`` pairs per row, each under
    its name, ``caption`` on top. Returns the contact sheet's path, or None when ``folder`` holds no pair.
    """
    from PIL import ImageDraw

    folder = Path(folder)
    pairs = []
    for gt_path in sorted(folder.glob(f"*_{left}.png")):
        stem = gt_path.name[: -len(f"_{left}.png")]
        render_path = folder / f"{stem}_{right}.png"
        if render_path.is_file():
            with Image.open(gt_path) as gt, Image.open(render_path) as render:
                pairs.append((stem, gt.convert("RGB"), render.convert("RGB")))
    if not pairs:
        return None
    tiles = []
    for stem, gt, render in pairs:
        w, h = gt.width + gap + render.width, max(gt.height, render.height)
        tile = Image.new("RGB", (w, h), (255, 255, 255))
        tile.paste(gt, (0, 0))
        tile.paste(render, (gt.width + gap, 0))
        atomic_write_bytes(folder / f"{stem}_compare.png", _png_bytes(tile))
        tiles.append((stem, tile))

    label_h = 14  # one line of PIL's default font
    cell_w = max(t.width for _, t in tiles)
    cell_h = max(t.height for _, t in tiles) + label_h
    cols = max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // cols)
    size = (cols * cell_w + (cols + 1) * gap, label_h + rows * cell_h + (rows + 1) * gap)
    sheet = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    draw.text((gap, gap), caption, fill=(0, 0, 0))
    for i, (stem, tile) in enumerate(tiles):
        x = gap + (i % cols) * (cell_w + gap)
        y = label_h + gap + (i // cols) * (cell_h + gap)
        draw.text((x, y), stem, fill=(0, 0, 0))
        sheet.paste(tile, (x, y + label_h))
    path = folder / CONTACT_SHEET_NAME
    atomic_write_bytes(path, _png_bytes(sheet))
    return path
