"""File size and held-out PSNR of each shared splat format (splat.gaussians.formats) against the PLY.

    python benchmarks/bench_formats.py                               # train short CPU runs, then measure
    python benchmarks/bench_formats.py --model RUN_OR_CKPT_OR_PLY --scene SCENE   # a model you have

For every scene: a trained model (the default mode trains a short CPU run per scene with
bench_splat.py's CPU settings; ``--model`` takes a run folder, checkpoint or PLY instead), written in every
format, read back, and rendered on the scene's held-out views. Each row: bytes, PLY size / size, held-out
PSNR of the decoded Gaussians and its difference to the original Gaussians' PSNR (same renderer, same
views), encode and decode seconds. Scenes: ../shared/scenes/{cup,beercan} and assets/demo.
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

from splat.config import PRESETS  # noqa: E402
from splat.gaussians.formats import FORMATS, SUFFIXES, load_gaussians_file, save_gaussians  # noqa: E402
from splat.gaussians.model import load_model  # noqa: E402
from splat.training.trainer import Trainer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SCENES = next(
    (p for p in (REPO.parent / "shared" / "scenes", REPO.parent.parent / "shared" / "scenes") if p.is_dir()),
    REPO.parent / "shared" / "scenes",
)


def scene_path(name: str) -> Path:
    return REPO / "assets" / "demo" if name == "demo" else SCENES / name


def train_short(scene: Path, out: Path, steps: int, max_width: int) -> Trainer:
    """bench_splat.py's CPU run (densify until half-way, at most one opacity reset)."""
    s = steps
    cfg = dataclasses.replace(
        PRESETS["cpu-small"], out=out, device="cpu", steps=s, max_width=max_width, init_scale=1.0,
        means_lr_steps=s, sh_degree_interval=max(s // 4, 1), refine_start=s // 10, refine_stop=s // 2,
        refine_every=max(s // 10, 1), reset_every=s // 3 if s >= 450 else 0, eval_steps=(s,), save_steps=(s,),
        ckpt_every=0, save_renders=False, lpips=False, progress=False, schedule_steps=0,  # as written
    )  # fmt: skip
    trainer = Trainer(scene, cfg)
    trainer.train()
    return trainer


def load_for_eval(model: Path, scene: Path, out: Path, max_width: int | None) -> Trainer:
    loaded = load_model(model)
    changes = dict(device="cpu", out=out, resume=None, progress=False, save_renders=False, lpips=False)
    if max_width is not None:
        changes["max_width"] = max_width
    return Trainer.from_model(scene, loaded, dataclasses.replace(loaded.config, **changes))


def held_out_psnr(trainer: Trainer, params: dict) -> float:
    """PSNR of ``params`` on the held-out views; a file with fewer SH coefficients (``.splat``: none)
    renders at the run's degree with the missing ones zero."""
    saved = trainer.params
    k = saved["shN"].shape[1]
    if params["shN"].shape[1] < k:
        pad = torch.zeros(len(params["shN"]), k - params["shN"].shape[1], 3)
        params = dict(params, shN=torch.cat([params["shN"], pad], dim=1))
    trainer.params = {k: v.to(trainer.device) for k, v in params.items()}
    try:
        with torch.no_grad():
            return trainer.evaluate(trainer.cfg.steps)["psnr"]
    finally:
        trainer.params = saved


def measure(trainer: Trainer, name: str, folder: Path, formats: list[str]) -> list[dict]:
    params = {k: v.detach().cpu().float() for k, v in trainer.params.items()}
    degree = trainer.cfg.sh_degree
    base = held_out_psnr(trainer, params)
    rows, ply_bytes = [], None
    for fmt in formats:
        path = folder / f"{name}{SUFFIXES[fmt]}"
        t0 = time.perf_counter()
        save_gaussians(params, degree, path, format=fmt)
        t_enc = time.perf_counter() - t0
        t0 = time.perf_counter()
        decoded, _ = load_gaussians_file(path, format=fmt)
        t_dec = time.perf_counter() - t0
        size = path.stat().st_size
        ply_bytes = size if fmt == "ply" else ply_bytes
        p = held_out_psnr(trainer, decoded)
        rows.append({
            "scene": name, "format": fmt, "gaussians": len(params["means"]), "sh_degree": degree, "bytes": size,
            "ply_ratio": round(ply_bytes / size, 2) if ply_bytes else None, "psnr": round(p, 3),
            "psnr_original": round(base, 3), "psnr_delta": round(p - base, 3),
            "encode_s": round(t_enc, 2), "decode_s": round(t_dec, 2),
        })  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| scene | format | Gaussians | bytes | PLY / size | held-out PSNR | vs original | encode s | decode s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['scene']} | {r['format']} | {r['gaussians']} | {r['bytes']:,} | {r['ply_ratio']} | "
            f"{r['psnr']:.2f} | {r['psnr_delta']:+.3f} | {r['encode_s']} | {r['decode_s']} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", nargs="+", default=["cup", "beercan", "demo"])
    ap.add_argument("--model", type=Path, default=None, help="a run folder, checkpoint or PLY (with one --scene)")
    ap.add_argument("--steps", type=int, default=300, help="CPU training steps per scene (default mode)")
    ap.add_argument("--max-width", type=int, default=128, help="CPU image width")
    ap.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="output root (default: a temp folder)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    formats = ["ply"] + [f for f in args.formats if f != "ply"]  # the PLY first: the ratios' baseline
    root = args.out or Path(tempfile.mkdtemp(prefix="bench-formats-"))
    rows = []
    if args.model is not None:
        if len(args.scenes) != 1:
            raise SystemExit("--model needs exactly one --scenes SCENE (the scene the model was trained on)")
        name = args.scenes[0]
        trainer = load_for_eval(args.model, scene_path(name), root / name, args.max_width)
        rows += measure(trainer, name, root / name, formats)
    else:
        for name in args.scenes:
            t0 = time.perf_counter()
            trainer = train_short(scene_path(name), root / name, args.steps, args.max_width)
            print(f"# trained {name}: {args.steps} steps in {time.perf_counter() - t0:.0f} s", flush=True)
            rows += measure(trainer, name, root / name, formats)
    print(table(rows))
    print(f"outputs in {root}")


if __name__ == "__main__":
    main()
