"""Train splat on the shared real scenes and print PSNR / SSIM / time.

    python benchmarks/bench_splat.py            # CPU: a short low-resolution run per scene
    python benchmarks/bench_splat.py --full     # GPU: the 30k-step schedule at standard resolution
    python benchmarks/bench_splat.py --full --steps 7000   # GPU: the same schedule, stopped and scored at 7k
    python benchmarks/bench_splat.py --init-only   # SfM-initialisation timing only
    python benchmarks/bench_splat.py --variants base base+absgrad quality --steps 600   # quality options

``--variants`` trains each scene once per variant, at equal steps: ``base`` is the bench's own
configuration (CPU: the cpu-small preset at --max-width; --full: the default preset), ``base+OPT+OPT``
turns quality options on (absgrad, antialiased, bilateral_grid, depth_loss), and ``quality`` is base plus
the quality preset's options. Variants run the preset's schedule scaled to --steps (its schedule_steps),
so that a short run keeps the preset's shape (with --full and --steps below 30k as well).
``--seed N`` trains every variant with another seed, to see how far a scene's scores move between seeds.

Every run first times the SfM initialisation (nearest-neighbour scales + parameters) on random points at
10k and 40k, with the KD-tree and with the all-pairs distances it replaced (``--no-brute-force`` skips the
slow baseline). Training rows report checkpoint bytes per Gaussian (the final checkpoint, Adam state
included). ``--results FILE`` appends every row as a JSON line.

Scenes are read from ../shared/scenes relative to the repository (never copied into it), or from
``--scenes-dir`` (a GPU machine that only gets the checkout reads the copy its bundle carried).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from splat.config import PRESETS, TrainConfig  # noqa: E402
from splat.gaussians.init import init_gaussians, knn_sq_dist  # noqa: E402
from splat.training.trainer import Trainer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# ../shared/scenes beside the checkout (a worktree one level deeper also finds it)
SCENES = next(
    (p for p in (REPO.parent / "shared" / "scenes", REPO.parent.parent / "shared" / "scenes") if p.is_dir()),
    REPO.parent / "shared" / "scenes",
)


def knn_sq_dist_all_pairs(points: torch.Tensor, k: int = 3, chunk: int = 2048) -> torch.Tensor:
    """The O(N^2) nearest-neighbour distances the trainer used before the KD-tree (the baseline)."""
    out = []
    for start in range(0, len(points), chunk):
        d2 = torch.cdist(points[start : start + chunk], points).square()  # [B, P]
        out.append(d2.topk(min(k + 1, len(points)), dim=1, largest=False).values[:, 1:].mean(1))
    return torch.cat(out)


def bench_init(sizes=(10_000, 40_000), brute_force: bool = True) -> list[dict]:
    """SfM initialisation time: KD-tree knn, the whole init_gaussians, and the all-pairs baseline."""
    rows = []
    knn_sq_dist(torch.rand(16, 3))  # import scipy outside the timed calls
    for n in sizes:
        g = torch.Generator().manual_seed(n)
        pts = torch.rand(n, 3, generator=g) * 10  # [N, 3]
        cols = (torch.rand(n, 3, generator=g) * 255).to(torch.uint8).numpy()
        t0 = time.perf_counter()
        d_tree = knn_sq_dist(pts)
        t_tree = time.perf_counter() - t0
        t0 = time.perf_counter()
        init_gaussians(pts.numpy(), cols, PRESETS["default"])
        t_init = time.perf_counter() - t0
        row = {
            "bench": "sfm_init",
            "points": n,
            "knn_kdtree_s": round(t_tree, 3),
            "init_gaussians_s": round(t_init, 3),
        }
        if brute_force:
            t0 = time.perf_counter()
            d_brute = knn_sq_dist_all_pairs(pts)
            row["knn_all_pairs_s"] = round(time.perf_counter() - t0, 2)
            row["speedup"] = round(row["knn_all_pairs_s"] / max(t_tree, 1e-9), 1)
            # the baseline computes in float32, the KD-tree in float64
            row["max_rel_diff"] = float(((d_tree - d_brute).abs() / d_brute.clamp_min(1e-12)).max())
        rows.append(row)
    return rows


QUALITY_OPTIONS = ("absgrad", "antialiased", "bilateral_grid", "depth_loss")


def variant_config(base: TrainConfig, variant: str) -> TrainConfig:
    """``base``, ``base+opt+opt`` or ``quality`` (base with the quality preset's options on)."""
    if variant == "quality":
        q = PRESETS["quality"]
        return dataclasses.replace(base, **{k: getattr(q, k) for k in QUALITY_OPTIONS})
    head, *opts = variant.split("+")
    if head != "base" or any(o not in QUALITY_OPTIONS for o in opts):
        raise SystemExit(f"bad variant {variant!r}: use base, quality or base+OPT[+OPT] with OPT in {QUALITY_OPTIONS}")
    return dataclasses.replace(base, **{o: True for o in opts})


def emit(row: dict, results: Path | None) -> None:
    print(json.dumps(row), flush=True)
    if results is not None:
        with open(results, "a") as f:
            f.write(json.dumps(row) + "\n")


def run_one(args, name: str, cfg: TrainConfig) -> dict:
    """Train ``cfg`` on scene ``name``; one result row."""
    if args.full:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    scene = REPO / "assets" / "demo" if name == "demo" else args.scenes_dir / name  # demo: the repository's
    trainer = Trainer(scene, cfg)
    result = trainer.train()
    wall = time.perf_counter() - t0
    m0, m1 = result.metrics["0"] if "0" in result.metrics else {}, result.metrics[str(result.steps)]
    row = {
        "scene": name,
        "device": "cuda" if args.full else "cpu",
        "steps": result.steps,
        "image_width": trainer.train_set.size(0)[0],
        "psnr_init": m0.get("psnr"),
        "psnr": m1["psnr"],
        "ssim": m1["ssim"],
        "lpips": m1.get("lpips"),
        "num_gaussians": result.num_gaussians,
        "wall_s": round(wall, 1),
        "peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if args.full else None,
        "ckpt_bytes_per_gaussian": round(result.checkpoint.stat().st_size / result.num_gaussians, 1),
    }
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="30k steps at standard resolution (needs a GPU)")
    ap.add_argument("--scenes", nargs="+", default=["cup", "beercan"])
    ap.add_argument("--steps", type=int, default=None,
                    help="run length: CPU default 300; with --full the 30k schedule stopped (and scored) here")
    ap.add_argument("--scenes-dir", type=Path, default=SCENES, help="folder holding the scenes")
    ap.add_argument("--max-width", type=int, default=128, help="CPU image width")
    ap.add_argument("--out", type=Path, default=None, help="output root (default: a temp folder)")
    ap.add_argument(
        "--threads", type=int, default=2, help="CPU threads (1 on a machine shared with other jobs)"
    )
    ap.add_argument("--init-only", action="store_true", help="only the SfM-initialisation timing")
    ap.add_argument("--no-brute-force", action="store_true", help="skip the all-pairs knn baseline (slow)")
    ap.add_argument("--results", type=Path, default=None, help="append every row to this file (JSON lines)")
    ap.add_argument("--progress", action="store_true", help="show the trainer's progress bar (loss, Gaussians)")
    ap.add_argument("--seed", type=int, default=None,
                    help="training seed of --variants runs (default: the preset's); another seed shows the spread")
    ap.add_argument("--variants", nargs="+", default=None,
                    help="base, quality or base+OPT[+OPT] (OPT: absgrad, antialiased, bilateral_grid, depth_loss); "
                         "schedules scaled to --steps")
    args = ap.parse_args()
    torch.set_num_threads(args.threads) if not args.full else None
    if args.full and not torch.cuda.is_available():
        raise SystemExit("--full needs a CUDA GPU")
    for row in bench_init(brute_force=not args.no_brute_force):
        emit(row, args.results)
    if args.init_only:
        return
    root = args.out or Path(tempfile.mkdtemp(prefix="bench-splat-"))
    rows = []
    if args.variants:
        for name in args.scenes:
            for variant in args.variants:
                if args.full:
                    base = dataclasses.replace(PRESETS["default"], device="cuda", steps=args.steps or 30_000)
                else:
                    base = dataclasses.replace(PRESETS["cpu-small"], device="cpu", steps=args.steps or 600,
                                               max_width=args.max_width)
                base = dataclasses.replace(base, out=root / name / variant, progress=args.progress, ckpt_every=0,
                                           save_renders=False, lpips=args.full)
                if args.seed is not None:
                    base = dataclasses.replace(base, seed=args.seed)
                cfg = variant_config(base, variant)
                row = run_one(args, name, cfg)
                row["variant"] = variant
                row["seed"] = cfg.seed
                rows.append(row)
                emit(row, args.results)
        print(f"outputs in {root}")
        return
    for name in args.scenes:
        if args.full:
            # The preset's 30k schedule (learning-rate decay, densification until 15k) as it is: with --steps
            # the run stops there, as the original's 7k figures are its 30k run scored at 7k.
            cfg = dataclasses.replace(PRESETS["default"], out=root / name, device="cuda", progress=args.progress,
                                      schedule_steps=0)  # the 30k schedule as it is, stopped at --steps
            if args.steps is not None:
                cfg = dataclasses.replace(cfg, steps=args.steps, eval_steps=(0, args.steps),
                                          save_steps=(args.steps,), ckpt_every=0)  # fmt: skip
        else:
            s = args.steps or 300
            # The original's proportions (densify until half-way), except the opacity reset: opacities
            # clamped to 0.01 need a few hundred steps to come back, so a short run gets at most one
            # reset, and only with >= 300 steps after it (a reset at 30 of 60 steps costs ~1.3 dB).
            reset = s // 3 if s >= 450 else 0
            cfg = dataclasses.replace(
                PRESETS["cpu-small"], out=root / name, device="cpu", steps=s, max_width=args.max_width,
                init_scale=1.0, means_lr_steps=s, sh_degree_interval=max(s // 4, 1), refine_start=s // 10,
                refine_stop=s // 2, refine_every=max(s // 10, 1), reset_every=reset, eval_steps=(0, s),
                save_steps=(s,), ckpt_every=0, save_renders=False, lpips=False, progress=args.progress,
                schedule_steps=0,  # the schedule above, as written
            )  # fmt: skip
        row = run_one(args, name, cfg)
        rows.append(row)
        emit(row, args.results)
    print(f"outputs in {root}")


if __name__ == "__main__":
    main()
