"""SfM benchmark: `splat.scene.sfm.prepare` on the photos (only) of the shared real scenes.

    python benchmarks/bench_sfm.py                 # cup and beercan: exhaustive vs the automatic choice
    python benchmarks/bench_sfm.py --scenes cup --max-size 400 --matchers auto

For each scene the images are copied (downscaled to `--max-size` on the long side when larger) into a
temporary folder and SfM runs from scratch with a cold cache, once per matcher, in the same process (so
the times compare on the same machine load). Reported: the matcher (after resolving auto), pairs matched,
wall time per stage, images registered / total, points, mean reprojection error, and the camera centres'
error against the scene's shipped COLMAP model after a similarity alignment (in % of the extent of the
shipped camera centres).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pycolmap
import tyro
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from splat.scene.sfm import PrepareConfig, prepare  # noqa: E402

_REPO = Path(__file__).resolve().parents[1]
# ../shared/scenes beside the checkout (two levels up from a worktree under ../wt/NAME)
SCENES = next(
    (
        p
        for p in (_REPO.parent / "shared" / "scenes", _REPO.parent.parent / "shared" / "scenes")
        if p.is_dir()
    ),
    _REPO.parent / "shared" / "scenes",
)


@dataclass
class Args:
    scenes: tuple[str, ...] = ("cup", "beercan")
    """Scenes under ../shared/scenes to run."""
    matchers: tuple[str, ...] = ("exhaustive", "auto")
    """Matchers to compare on each scene (each run from a cold cache)."""
    max_size: int = 1600
    """Copies larger than this on their long side are downscaled (the shared photos are all smaller)."""
    sfm: PrepareConfig = field(default_factory=lambda: PrepareConfig(progress=False))
    """SfM options (progress bars off by default here)."""


def copy_images(src: Path, dst: Path, max_size: int) -> None:
    dst.mkdir(parents=True)
    for path in sorted(src.iterdir()):
        with Image.open(path) as im:
            if max(im.size) > max_size:
                im.thumbnail((max_size, max_size), Image.LANCZOS)
            im.save(dst / path.name, quality=95)


def centre_error(rec: pycolmap.Reconstruction, ref: pycolmap.Reconstruction) -> tuple[float, float]:
    """Median and max camera-centre error after a similarity alignment, in % of the reference extent."""
    ref_centres = {im.name: im.projection_center() for im in ref.images.values() if im.has_pose}
    extent = np.linalg.norm(np.ptp(np.stack(list(ref_centres.values())), axis=0))
    images = [rec.image(i) for i in rec.reg_image_ids() if rec.image(i).name in ref_centres]
    ours = np.stack([im.projection_center() for im in images])
    theirs = np.stack([ref_centres[im.name] for im in images])
    sim = pycolmap.estimate_sim3d(ours, theirs)  # least squares over all registered cameras
    if sim is None:
        return float("nan"), float("nan")
    errors = np.linalg.norm(np.stack([sim * c for c in ours]) - theirs, axis=1) / extent * 100
    return float(np.median(errors)), float(errors.max())


def main(args: Args) -> None:
    print(
        f"# SfM benchmark: pycolmap {pycolmap.__version__}, CUDA {pycolmap.has_cuda}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    )
    print(
        "| scene | matcher | pairs | images | size | registered | points | reproj. px | read s | extract s | match s | map s | total s | centre err. median / max % |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.scenes:
        with tempfile.TemporaryDirectory() as tmp:
            scene = Path(tmp) / name
            copy_images(SCENES / name / "images", scene / "images", args.max_size)
            size = "x".join(map(str, Image.open(next((scene / "images").iterdir())).size))
            for matcher in args.matchers:
                cfg = dataclasses.replace(
                    args.sfm, matcher=matcher, overwrite=True, cache_dir=Path(tmp) / f"cache-{matcher}"
                )
                s = prepare(scene, cfg)
                rec = pycolmap.Reconstruction(scene / "sparse" / "0")
                median, worst = centre_error(rec, pycolmap.Reconstruction(SCENES / name / "sparse" / "0"))
                report(
                    name,
                    f"{matcher} -> {s.matcher}" if matcher == "auto" else matcher,
                    size,
                    s,
                    median,
                    worst,
                )
    print(
        f"camera mode {args.sfm.camera_mode}, model {args.sfm.camera_model}, max_image_size "
        f"{args.sfm.max_image_size}, exhaustive_max_images {args.sfm.exhaustive_max_images}, "
        f"retrieval_num_images {args.sfm.retrieval_num_images}, num_threads {args.sfm.num_threads}"
    )


def report(name: str, matcher: str, size: str, s, median: float, worst: float) -> None:
    t = s.seconds
    print(
        f"| {name} | {matcher} | {s.num_pairs} | {s.num_images} | {size} | {s.num_registered}/{s.num_images} "
        f"({s.num_registered / s.num_images:.0%}) | {s.num_points} | {s.mean_reprojection_error:.2f} | "
        f"{t['read']:.1f} | {t['extract']:.1f} | {t['match']:.1f} | {t['map']:.1f} | {sum(t.values()):.1f} | "
        f"{median:.2f} / {worst:.2f} |",
        flush=True,
    )


if __name__ == "__main__":
    main(tyro.cli(Args))
