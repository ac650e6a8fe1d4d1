"""Load trained Gaussians without a scene: ``load_gaussians(path) -> (params, sh_degree, meta)``.

``path`` may be
    - a checkpoint ``.pt`` written by ``splat train`` (read with ``weights_only=True``),
    - a PLY in the original 3DGS layout (ours or the original implementation's),
    - a run folder (``splat train --out``): its newest checkpoint in ``ckpts/``, else its newest
      ``point_cloud/iteration_*/point_cloud.ply``.

The parameters come back pre-activation, keyed as ``splat.params`` (``means [N, 3]``, ``scales [N, 3]``
log, ``quats [N, 4]`` wxyz, ``opacities [N]`` logit, ``sh0 [N, 1, 3]``, ``shN [N, K-1, 3]``), on the CPU.
``meta`` holds ``source`` (the file read), ``kind`` ("checkpoint" | "ply"), ``step`` (None when unknown)
and ``config`` (the training run's options as a dict, or None when unknown: a PLY from elsewhere).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from splat.checkpoint import CheckpointError, read_checkpoint
from splat.params import PARAM_KEYS
from splat.ply import read_ply


def find_model_file(path: str | Path) -> Path:
    """The file to load for ``path`` (a file itself, or the newest model in a run folder)."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise CheckpointError(f"{path} does not exist (expected a run folder, a checkpoint .pt or a .ply)")
    ckpts = sorted((path / "ckpts").glob("ckpt_*.pt"), key=_number_in_name)
    if ckpts:
        return ckpts[-1]
    plys = sorted(
        (path / "point_cloud").glob("iteration_*/point_cloud.ply"), key=lambda p: _number_in_name(p.parent)
    )
    if plys:
        return plys[-1]
    raise CheckpointError(
        f"{path} holds no model: expected ckpts/ckpt_*.pt or point_cloud/iteration_*/point_cloud.ply inside"
    )


def _number_in_name(p: Path) -> int:
    m = re.search(r"(\d+)", p.name)
    return int(m.group(1)) if m else -1


def sh_degree_for(num_coeffs: int, source: str = "model") -> int:
    """SH degree whose ``(d + 1)**2`` coefficients per channel equal ``num_coeffs``."""
    d = round(math.sqrt(num_coeffs)) - 1
    if d < 0 or (d + 1) ** 2 != num_coeffs or d > 3:
        raise CheckpointError(
            f"{source}: {num_coeffs} SH coefficients per channel is not (d+1)^2 for a degree 0..3"
        )
    return d


def load_gaussians(path: str | Path) -> tuple[dict[str, Tensor], int, dict]:
    """Read Gaussians from a checkpoint, a 3DGS PLY or a run folder (see the module docstring).

    Returns:
        params: pre-activation tensors keyed by ``splat.params.PARAM_KEYS``, on the CPU.
        sh_degree: the degree the model was trained to (from the number of SH coefficients).
        meta: ``source``, ``kind``, ``step`` and ``config``; from a checkpoint also ``background``, the
            colour the run rendered with (its learned colour with ``learn_background``; a PLY carries none,
            and its run's ``config.json`` gives the configured one).
    """
    file = find_model_file(path)
    if file.suffix.lower() == ".ply":
        params = read_ply(file)
        meta = {"source": str(file), "kind": "ply", "step": _ply_step(file), "config": _run_config_near(file)}
    else:
        ckpt = read_checkpoint(file)
        missing = [k for k in PARAM_KEYS if k not in ckpt.get("params", {})]
        if missing:
            raise CheckpointError(f"checkpoint {file} lacks Gaussian parameters {missing}")
        params = {k: ckpt["params"][k] for k in PARAM_KEYS}
        meta = {
            "source": str(file),
            "kind": "checkpoint",
            "step": int(ckpt["step"]),
            "config": ckpt["config"],
        }
        bg = ckpt.get("background")  # the colour the run rendered with (learned with learn_background)
        if isinstance(bg, Tensor) and bg.shape == (3,) and bool(torch.isfinite(bg).all()):
            meta["background"] = tuple(float(c) for c in bg.clamp(0, 1))
    params = {k: v.detach().float().cpu().contiguous() for k, v in params.items()}
    n = params["means"].shape[0]
    if n == 0:
        raise CheckpointError(f"{file} holds no Gaussians")
    for key, tail in (("means", (3,)), ("scales", (3,)), ("quats", (4,)), ("opacities", ())):
        if tuple(params[key].shape) != (n, *tail):
            raise CheckpointError(f"{file}: {key} has shape {tuple(params[key].shape)}, expected {(n, *tail)}")
    sh_degree = sh_degree_for(1 + params["shN"].shape[1], str(file))
    return params, sh_degree, meta


def _ply_step(file: Path) -> int | None:
    m = re.fullmatch(r"iteration_(\d+)", file.parent.name)
    return int(m.group(1)) if m else None


def _run_config_near(file: Path) -> dict | None:
    """The ``config.json`` of the run a PLY belongs to (``RUN/point_cloud/iteration_N/point_cloud.ply``)."""
    candidate = file.parent.parent.parent / "config.json"
    if file.parent.parent.name != "point_cloud" or not candidate.is_file():
        return None
    try:
        data = json.loads(candidate.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # not ours, or damaged: treat the PLY as one from elsewhere
    return data if isinstance(data, dict) else None


def activated(params: dict[str, Tensor]) -> dict[str, Tensor]:
    """The tensors ``splat.rendering.rasterize`` takes: means, quats, scales (exp), opacities (sigmoid),
    colors (SH, [N, K, 3])."""
    return {
        "means": params["means"],
        "quats": params["quats"],
        "scales": torch.exp(params["scales"]),
        "opacities": torch.sigmoid(params["opacities"]),
        "colors": torch.cat([params["sh0"], params["shN"]], dim=1),
    }


@dataclass
class SceneCameras:
    """The cameras of a scene as a training run saw them (sizes and intrinsics after its resizing)."""

    names: list[str]  # image names, in capture (name) order
    viewmats: np.ndarray  # [V, 4, 4] world-to-camera, OpenCV axes
    Ks: np.ndarray  # [V, 3, 3] for images of `sizes`
    sizes: list[tuple[int, int]]  # (width, height) per view
    train: np.ndarray  # [V] bool: in the training split (False: held out)

    def __len__(self) -> int:
        return len(self.names)


def scene_cameras(scene: str | Path, config: dict | None = None) -> SceneCameras:
    """Read the cameras of ``scene`` with a run's ``config`` (images folder, resizing, test split)."""
    from splat.colmap import load_scene
    from splat.config import TrainConfig, apply_overrides
    from splat.data import ViewDataset, split_indices

    known = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = apply_overrides(
        TrainConfig(), {k: v for k, v in (config or {}).items() if k in known and k != "resume"}
    )
    scene = Path(scene)
    cache = cfg.cache_dir
    if cache is None and not os.access(scene, os.W_OK):
        cache = (
            Path(tempfile.gettempdir())
            / "splat-view-cache"
            / scene.resolve().as_posix().strip("/").replace("/", "_")
        )
    model = load_scene(scene, images=cfg.images, cache_dir=cache)
    ds = ViewDataset(model.views, cfg.downscale, cfg.max_width)
    train_idx, _ = split_indices(len(model.views), cfg.test_every)
    train = np.zeros(len(model.views), bool)
    train[train_idx] = True
    return SceneCameras(
        names=[v.name for v in model.views],
        viewmats=np.stack([v.cam_from_world for v in model.views]).astype(np.float64),
        Ks=np.stack([ds.intrinsics(i) for i in range(len(ds))]).astype(np.float64),
        sizes=[ds.size(i) for i in range(len(ds))],
        train=train,
    )
