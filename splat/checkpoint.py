"""Checkpoints: one ``.pt`` file per save, a dict with named keys (format ``splat-ckpt-1``), read with
``torch.load(weights_only=True)`` so that a crafted file cannot run code."""

from __future__ import annotations

from pathlib import Path

import torch


def read_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot read checkpoint {path}: {e}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != "splat-ckpt-1":
        raise ValueError(f"{path} is not a splat checkpoint")
    return ckpt
