"""``splat prepare SCENE``: COLMAP structure-from-motion on SCENE/images, written to SCENE/sparse/0."""

from __future__ import annotations

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


def main(argv: list[str]) -> int:
    cmd = tyro.cli(PrepareCommand, args=argv, prog="splat prepare")
    from splat.scene.sfm import prepare

    summary = prepare(cmd.scene, cmd.sfm)
    if not cmd.sfm.progress:  # prepare prints its summary itself when progress is on
        print(summary)
    return 0
