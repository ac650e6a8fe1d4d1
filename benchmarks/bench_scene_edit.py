"""`splat edit` timing: time per edited view and for a whole edit, and what the inversion cache saves.

    python benchmarks/bench_scene_edit.py            # CPU: the demo scene at 64 px, tiny SD model (random weights)
    python benchmarks/bench_scene_edit.py --full     # GPU: ../shared/scenes/cup at 512 px width, a full-size
                                                     # SD-1.5-shaped UNet (random weights), fp16, 50 DDIM steps

Each configuration runs twice on one trained run, in one process: first with an empty inversion cache
(every view's photo is inverted once), then again with the cache the first run left (no inversion). The
rows give the whole edit's wall time, the mean time of one view edit (render, diffusion, compositing; the
first run's too: a first-time inversion is not counted), and two measures of multi-view consistency: how
closely the edited scene renders the last edited image of each training view (``render_psnr``; a scene that
reconciles its per-view edits renders them back), and ``consistency_psnr``, `splat edit`'s own figure: each
edited training image warped into its two nearest training views with the edited scene's depth, masked PSNR
against theirs (``photos_consistency_psnr``: the same for the original photos, the ceiling the scene's depth
allows). Configurations: plain IDU at fixed strength, annealed strength (0.9 -> 0.5), random noise level per
edit (uniform in [0.02, 0.98], Instruct-NeRF2NeRF's), without the residual, and a local blend. With random weights the edits themselves mean nothing: the times are what
this measures; the consistency figures compare the configurations only with one another.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import commit, device_name, sd15_pipeline  # noqa: E402

from splat.config import TrainConfig  # noqa: E402
from splat.edit.dataset_update import EditConfig, edit_scene  # noqa: E402
from splat.gaussians import load_model  # noqa: E402
from splat.outputs import image_stem  # noqa: E402
from splat.training.trainer import Trainer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "assets" / "demo"
SHARED = next((p for p in (REPO.parent / "shared" / "scenes", REPO.parent.parent / "shared" / "scenes") if p.is_dir()),
              REPO.parent / "shared" / "scenes")  # fmt: skip


CONFIGS = ("idu", "idu-anneal", "idu-random", "idu-no-residual", "idu-blend")


def train_run(scene: Path, out: Path, device: str, full: bool) -> Path:
    if full:
        cfg = TrainConfig(out=out, device=device, progress=False, max_width=512, steps=3000, eval_steps=(3000,),
                          save_steps=(3000,), ckpt_every=0, refine_stop=1500, save_renders=False, lpips=False)  # fmt: skip
    else:
        cfg = TrainConfig(
            out=out, device=device, progress=False, max_width=64, lpips=False, steps=300, sh_degree_interval=100,
            refine_start=50, refine_stop=150, refine_every=50, reset_every=0, eval_steps=(300,), save_steps=(300,),
            ckpt_every=0, learn_background=True, means_lr_steps=300, init_scale=1.0, save_renders=False,
        )  # fmt: skip
    Trainer(scene, cfg).train()
    return out


def consistency(scene: Path, out: Path, device: str) -> float:
    """Mean PSNR of the edited scene's renders against the last edited image of each edited training view."""
    model = load_model(out)
    t = Trainer.from_model(scene, model, dataclasses.replace(model.config, out=out / ".probe", device=device))
    scores = []
    for i, v in enumerate(t.train_set.views):
        edited = out / "edited_images" / f"{image_stem(v.name)}.png"
        if not edited.is_file():
            continue
        f = t.train_set[i]
        with torch.no_grad():
            img = t.render(f.K.to(t.device), f.viewmat.to(t.device), f.width, f.height, t.active_sh_degree(t.step))[0]
        target = torch.from_numpy(np.array(Image.open(edited))).float().to(t.device) / 255.0
        scores.append(float(-10 * torch.log10(((img.clamp(0, 1) - target) ** 2).mean())))
    return float(np.mean(scores))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="GPU: the cup scene and a full-size SD-1.5-shaped UNet")
    ap.add_argument("--rounds", type=int, default=1, help="times each training view is edited")
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS),
                    help="which configurations to run")
    ap.add_argument("--cold-only", action="store_true", help="run each configuration once (empty cache)")
    args = ap.parse_args(argv)
    if args.full and not torch.cuda.is_available():
        raise SystemExit("--full needs a CUDA GPU")
    device = "cuda" if args.full else "cpu"
    if not args.full:
        torch.set_num_threads(2)
    scene = SHARED / "cup" if args.full else DEMO
    steps, edit_size = (50, 512) if args.full else (10, 32)
    with tempfile.TemporaryDirectory(prefix="bench-scene-edit-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        run = train_run(scene, tmp / "run", device, args.full)
        train_s = time.perf_counter() - t0
        if args.full:
            pipe = sd15_pipeline(torch.device("cuda"), torch.float16, full=True)
        else:
            from editkit.models import load_pipeline
            from editkit.testing import save_tiny_pipeline

            pipe = load_pipeline(save_tiny_pipeline(tmp / "model"), device="cpu")
        source, target = ("a photo of a cat on a table", "a photo of a dog on a table")
        base = EditConfig(source=source, target=target, steps=steps, edit_size=edit_size, progress=False, device=device)
        configs = {
            "idu": base,
            "idu-anneal": dataclasses.replace(base, strength=0.9, strength_end=0.5),
            "idu-random": dataclasses.replace(base, lower_bound=0.02, upper_bound=0.98),
            "idu-no-residual": dataclasses.replace(base, residual=False),
            "idu-blend": dataclasses.replace(base, blend_words=("cat",), blend_target_words=("dog",)),
        }
        configs = {k: v for k, v in configs.items() if k in args.configs}
        iterations = base.edit_every * _n_train(run, scene, device) * args.rounds
        for name, cfg in configs.items():
            cache = tmp / f"cache-{name}"
            for attempt in ("cold",) if args.cold_only else ("cold", "cached"):
                out = tmp / f"{name}-{attempt}"
                if args.full:
                    torch.cuda.reset_peak_memory_stats()
                t0 = time.perf_counter()
                res = edit_scene(run, scene, dataclasses.replace(cfg, cache_dir=cache, iterations=iterations), out, pipe=pipe)
                wall = time.perf_counter() - t0
                row = {
                    "bench": "scene_edit", "config": name, "cache": attempt, "device": device_name(torch.device(device)),
                    "commit": commit(), "date": datetime.date.today().isoformat(), "training_steps": res.steps,
                    "views_edited": res.views_edited, "inversions_computed": res.inversions_computed,
                    "s_per_view_edit": round(res.seconds_per_edit, 3), "edit_wall_s": round(wall, 1),
                    "run_train_s": round(train_s, 1), "render_psnr": round(consistency(scene, out, device), 2),
                    "consistency_psnr": round(res.consistency["psnr"], 2),
                    "photos_consistency_psnr": round(res.consistency["photos_psnr"], 2),
                    "consistency_coverage": round(res.consistency["coverage"], 3), "lpips_term": res.lpips_term,
                    "psnr_vs_photos_before": round(res.before["psnr"], 2), "psnr_vs_photos_after": round(res.after["psnr"], 2),
                }  # fmt: skip
                if args.full:
                    row["peak_gpu_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
                print(json.dumps(row), flush=True)


def _n_train(run: Path, scene: Path, device: str) -> int:
    model = load_model(run)
    return len(Trainer.from_model(scene, model, dataclasses.replace(model.config, out=run / ".probe", device=device)).train_set)


if __name__ == "__main__":
    main()
