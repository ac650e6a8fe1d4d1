"""The cameras of a scene as a training run saw them: ``scene_cameras(scene, config) -> SceneCameras``."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from splat.config import TrainConfig, apply_overrides


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


def scene_cameras(scene: str | Path, config: dict | TrainConfig | None = None) -> SceneCameras:
    """Read the cameras of ``scene`` with a run's ``config`` (images folder, resizing, test split)."""
    from splat.scene.colmap import load_scene
    from splat.scene.views import ViewDataset, split_indices

    if isinstance(config, TrainConfig):
        cfg = dataclasses.replace(config, resume=None)
    else:
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
