"""Output files of a run: atomic text / image writes and the writable-folder checks."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from torch import Tensor

from safeio import atomic_write_bytes, atomic_write_text

__all__ = ["OutputError", "atomic_save_image", "atomic_write_text", "check_output_dir", "would_be_writable"]


class OutputError(ValueError):
    """The output folder cannot be created or written."""


def atomic_save_image(path: Path, image: Tensor) -> None:
    """Save an [H, W, 3] float image in [0, 1] as PNG, atomically."""
    arr = (image.detach().clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


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
