"""Checkpoints: one ``.pt`` file per save, a dict with named keys (format ``splat-ckpt-1``).

* Read with ``torch.load(weights_only=True)`` so that a crafted file cannot run code; anything that is
  not a checkpoint of ours raises :class:`CheckpointError` naming the file.
* Written streaming: ``torch.save`` goes straight into :func:`safeio.atomic_path`'s temporary file (no copy
  in memory), so a reader sees the previous checkpoint or the new one, never half of one.
* A checkpoint records its scene's fingerprint (:func:`scene_fingerprint`: image names, sizes, intrinsics
  and poses); resuming, rendering or evaluating it on another scene is refused.
* Cost: the parameters (59 floats per Gaussian at SH degree 3), their two Adam moments and the densifier's
  running statistics: 720 bytes per Gaussian measured (200k Gaussians), 0.72 GB per million
  (``tests/splat/training/test_config.py`` checks the figure).
* :func:`prune_checkpoints` keeps the newest few ``ckpt_NNNNNN.pt`` files and the ones at ``save_steps``.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from safeio import atomic_path
from splat.scene.views import scene_fingerprint  # noqa: F401  (re-exported: what a checkpoint records)

FORMAT = "splat-ckpt-1"
BYTES_PER_GAUSSIAN_SH3 = 720  # measured: see the module docstring
_NAME = re.compile(r"ckpt_(\d{6,})\.pt")


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, not ours, or does not fit the scene / settings it is used with."""


def checkpoint_name(step: int) -> str:
    return f"ckpt_{step:06d}.pt"


def read_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # weights_only refused something: never loaded
        raise CheckpointError(
            f"cannot read checkpoint {path}: it holds objects other than tensors and plain data, which are "
            "refused (loading them could run code); it was not written by splat"
        ) from e
    except EOFError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: the file is empty or truncated") from e
    except (OSError, RuntimeError, ValueError) as e:  # torch.load on a corrupt or foreign file
        raise CheckpointError(
            f"cannot read checkpoint {path}: not a valid checkpoint archive (corrupt or truncated?)"
        ) from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a splat checkpoint")
    for key, kind in (("config", dict), ("params", dict), ("step", int)):
        if not isinstance(ckpt.get(key), kind):
            raise CheckpointError(f"{path} is not a complete splat checkpoint (bad or missing {key!r})")
    return ckpt


def write_checkpoint(path: str | Path, ckpt: dict) -> None:
    """``torch.save`` straight into a temporary file beside ``path``, then rename (see ``safeio``)."""
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)


def check_scene(ckpt: dict, fingerprint: str, checkpoint: str | Path, scene: Path) -> None:
    saved = ckpt.get("scene_fingerprint")
    if saved is not None and saved != fingerprint:
        raise CheckpointError(
            f"checkpoint {checkpoint} was trained on another scene than {scene} (its images or cameras differ); "
            "pass the scene it was trained on"
        )


def prune_checkpoints(
    folder: Path, keep_last: int, keep_steps: Iterable[int], owned: Callable[[Path], bool] | None = None
) -> list[Path]:
    """Remove ``folder/ckpt_NNNNNN.pt`` files except the newest ``keep_last`` (0: all) and those at
    ``keep_steps``. Only files named like our checkpoints are touched, and with ``owned`` only those for
    which it is true (a run's own: another run's checkpoints are neither counted nor removed). Returns the
    removed paths."""
    if keep_last <= 0 or not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _NAME.fullmatch(p.name)
        if m and p.is_file() and not p.is_symlink():
            found.append((int(m.group(1)), p))
    found.sort()
    keep = set(keep_steps)
    candidates = [(step, p) for step, p in found[:-keep_last] if step not in keep] if owned is None else found
    removed = []
    if owned is not None:  # the newest keep_last of the run's own files stay
        mine = [(step, p) for step, p in candidates if owned(p)] if len(candidates) > keep_last else []
        candidates = [(step, p) for step, p in mine[:-keep_last] if step not in keep]
    for _, p in candidates:
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed
