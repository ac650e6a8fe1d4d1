"""``splat prepare SCENE``: COLMAP structure-from-motion on SCENE/images, written to SCENE/sparse/0; with
``--train-cache-dir DIR``, also the undistorted images that ``splat train --cache-dir DIR`` reads (a
distributed run then does not keep its other ranks waiting while rank 0 undistorts the scene)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import tyro

from splat.scene.sfm import PrepareConfig


@dataclass
class PrepareCommand:
    """Run structure-from-motion on SCENE/images and write SCENE/sparse/0."""

    scene: tyro.conf.Positional[Path]
    """Scene folder with an images/ sub-folder."""
    sfm: Annotated[PrepareConfig, tyro.conf.arg(name="")] = field(default_factory=PrepareConfig)
    train_cache_dir: Path | None = None
    """Also build what `splat train --cache-dir DIR` reads (the undistorted images, when the cameras have
    distortion) in DIR; SfM is skipped when SCENE/sparse/0 exists and --overwrite is not given."""
    images: str = "images"
    """With --train-cache-dir: the images sub-folder the training run will use (`splat train --images`)."""


def main(argv: list[str]) -> int:
    cmd = tyro.cli(PrepareCommand, args=argv, prog="splat prepare")
    from splat.scene.colmap import find_model_dir, load_scene
    from splat.scene.sfm import prepare

    if cmd.train_cache_dir is None or cmd.sfm.overwrite or find_model_dir(cmd.scene) is None:
        summary = prepare(cmd.scene, cmd.sfm)
        if not cmd.sfm.progress:  # prepare prints its summary itself when progress is on
            print(summary)
    if cmd.train_cache_dir is not None:
        model = load_scene(cmd.scene, images=cmd.images, cache_dir=cmd.train_cache_dir)
        print(
            f"{len(model.views)} views ready for `splat train --cache-dir {cmd.train_cache_dir}`",
            file=sys.stderr,
        )
    return 0
