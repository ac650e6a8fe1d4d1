"""Training / test views with their images, resized on load.

Sizes: an image of width ``w`` is divided by ``downscale``; if it is then still wider than ``max_width``
(1600 by default, the original's rule) it is scaled down to exactly ``max_width``. Each image keeps its
own size and intrinsics, so mixed sizes and portrait/landscape orientations are fine.
Decoding: :meth:`ViewDataset.preload` decodes every image once, in a thread pool, before training starts,
so a broken file (e.g. a JPEG with a cut body) fails up front as a :class:`SceneError` naming it.
Split: with ``test_every = k > 0`` every k-th view (sorted by name, starting at 0) is held out, as the
original's ``llffhold = 8``; ``test_every = 0`` trains on everything.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from splat.scene.colmap import SceneError, SceneModel, View, load_scene, photo_pixel_limit


@dataclass
class Frame:
    name: str
    image: Tensor  # [H, W, 3] float32 in [0, 1]
    K: Tensor  # [3, 3] float32
    viewmat: Tensor  # [4, 4] float32 world-to-camera
    width: int
    height: int


def target_size(width: int, height: int, downscale: float, max_width: int) -> tuple[int, int]:
    scale = 1.0 / downscale
    if max_width > 0 and width * scale > max_width:
        scale = max_width / width
    return max(1, round(width * scale)), max(1, round(height * scale))


def split_indices(n: int, test_every: int) -> tuple[list[int], list[int]]:
    if test_every <= 0:
        return list(range(n)), []
    test = [i for i in range(n) if i % test_every == 0]
    return [i for i in range(n) if i % test_every != 0], test


class ViewDataset:
    """Frames of one split; images are decoded on first use and kept in memory as uint8."""

    def __init__(self, views: list[View], downscale: float = 1.0, max_width: int = 1600):
        if downscale <= 0:
            raise ValueError(f"downscale must be positive, got {downscale}")
        self.views = views
        self.downscale = downscale
        self.max_width = max_width
        self._cache: dict[int, Tensor] = {}

    def __len__(self) -> int:
        return len(self.views)

    def size(self, i: int) -> tuple[int, int]:
        v = self.views[i]
        return target_size(v.width, v.height, self.downscale, self.max_width)

    def intrinsics(self, i: int) -> np.ndarray:
        v = self.views[i]
        w, h = self.size(i)
        K = v.K.copy()
        K[0] *= w / v.width
        K[1] *= h / v.height
        return K

    def _decode(self, i: int) -> Tensor:
        """Read, orient, convert and resize view ``i`` -> [H, W, 3] uint8; a broken file is a SceneError."""
        v = self.views[i]
        try:
            with Image.open(v.image_path) as im:
                im = ImageOps.exif_transpose(im) if v.exif_transpose else im
                im = im.convert("RGB")  # decodes the whole file: a cut body fails here
                size = self.size(i)
                if im.size != size:
                    im = im.resize(size, Image.Resampling.LANCZOS)
                return torch.from_numpy(np.asarray(im).copy())  # [H, W, 3] uint8
        except FileNotFoundError:
            raise SceneError(f"image {v.image_path} disappeared after the scene was loaded") from None
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise SceneError(f"cannot decode image {v.image_path} (truncated or corrupt?): {e}") from e

    def _image(self, i: int) -> Tensor:
        if i not in self._cache:
            with photo_pixel_limit():
                self._cache[i] = self._decode(i)
        return self._cache[i]

    def image_u8(self, i: int) -> Tensor:
        """View ``i``'s image as held: uint8 ``[H, W, 3]`` (decoded on first use)."""
        return self._image(i)

    def replace_image(self, i: int, image: Tensor) -> None:
        """Hold ``image`` (uint8 ``[H, W, 3]`` of the view's size) for view ``i`` instead of its photo (the
        dataset update of :mod:`splat.edit.dataset_update`); the file on disk is untouched."""
        w, h = self.size(i)
        if image.dtype != torch.uint8 or tuple(image.shape) != (h, w, 3):
            raise ValueError(f"view {i} needs a uint8 image of shape ({h}, {w}, 3), got {image.dtype} {tuple(image.shape)}")
        self._cache[i] = image.detach().cpu().clone()

    def preload(self, num_threads: int | None = None) -> None:
        """Decode every image not decoded yet, in parallel; the first broken file raises a SceneError."""
        todo = [i for i in range(len(self.views)) if i not in self._cache]
        if not todo:
            return
        workers = num_threads or min(8, os.cpu_count() or 1)
        with photo_pixel_limit(), ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # PIL releases the GIL
            for i, image in zip(todo, pool.map(self._decode, todo), strict=True):
                self._cache[i] = image

    def __getitem__(self, i: int) -> Frame:
        v = self.views[i]
        w, h = self.size(i)
        return Frame(
            name=v.name,
            image=self._image(i).float() / 255.0,
            K=torch.from_numpy(self.intrinsics(i)).float(),
            viewmat=torch.from_numpy(v.cam_from_world).float(),
            width=w,
            height=h,
        )


def camera_extent(model: SceneModel, indices: list[int]) -> float:
    """The original's scene radius: 1.1 x the largest distance of a camera centre from their mean."""
    centres = []
    for i in indices:
        w2c = model.views[i].cam_from_world
        centres.append(-w2c[:3, :3].T @ w2c[:3, 3])
    c = np.stack(centres)
    radius = float(np.linalg.norm(c - c.mean(0), axis=1).max()) * 1.1
    return radius if radius > 0 else 1.0


def scene_fingerprint(views: Iterable) -> str:
    """SHA-256 of every view's name, size, intrinsics and pose (rounded to 1e-6): what a checkpoint was
    trained on. ``views`` are :class:`splat.scene.colmap.View` objects (``name, K, width, height, cam_from_world``)."""
    h = hashlib.sha256()
    for v in sorted(views, key=lambda v: v.name):
        h.update(f"{v.name}\0{v.width}x{v.height}\0".encode())
        h.update(np.round(np.asarray(v.K, dtype=np.float64), 6).tobytes())
        h.update(np.round(np.asarray(v.cam_from_world, dtype=np.float64), 6).tobytes())
    return h.hexdigest()


@dataclass
class SceneSplit:
    """A scene read for a run: its COLMAP model, training and held-out views, extent and fingerprint."""

    model: SceneModel
    train_set: ViewDataset
    test_set: ViewDataset
    extent: float  # the original's scene radius over the training cameras
    fingerprint: str  # what a checkpoint records (scene_fingerprint)


def load_split(
    scene: str | Path,
    *,
    images: str = "images",
    cache_dir: str | Path | None = None,
    downscale: float = 1.0,
    max_width: int = 1600,
    test_every: int = 8,
) -> SceneSplit:
    """Read ``scene`` (``load_scene``), split it (every ``test_every``-th view held out) and decode every image
    now, so that a broken file fails before anything runs. The settings are a run's (``TrainConfig``)."""
    scene = Path(scene)
    model = load_scene(scene, images=images, cache_dir=cache_dir)
    train_idx, test_idx = split_indices(len(model.views), test_every)
    if not train_idx:
        raise SceneError(f"scene {scene} has no training views left after holding out test views")
    train_set = ViewDataset([model.views[i] for i in train_idx], downscale, max_width)
    test_set = ViewDataset([model.views[i] for i in test_idx], downscale, max_width)
    for ds in (train_set, test_set):
        ds.preload()  # decode every image now: a broken file fails before step 1
    return SceneSplit(model, train_set, test_set, camera_extent(model, train_idx), scene_fingerprint(model.views))
