"""Fingerprints of splat's outputs, to check that a refactoring changed no result.

    python scripts/golden_outputs.py WORKDIR > before.json   # on the old code
    python scripts/golden_outputs.py WORKDIR2 > after.json   # on the new code
    diff before.json after.json                              # must be empty

Runs the ``splat`` CLI (as a user would) on the shipped demo scene, CPU, fixed seed:
    1. ``splat train`` (60 steps, 64 px, densification and a learned background on): sha256 of the PLY and of
       the checkpoint's parameters, and metrics.json without its timings (``seconds_per_view``);
    2. ``splat render --path orbit`` (12 PNG frames) and ``splat render`` of the held-out views: sha256 of
       every image;
    3. ``splat eval``: its printed metrics without timings; ``splat export``: the PLY's sha256;
    4. ``splat edit`` of the run with a tiny random Stable Diffusion (editkit.testing): sha256 of every
       image it writes (edited training images, renders, before / after pairs).
Takes about 2 minutes on 2 CPU cores.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "assets" / "demo"
TIMINGS = ("seconds_per_view", "elapsed_s", "seconds_per_edit")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def splat(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "splat.cli", *args], capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"splat {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout


def no_timings(obj):
    if isinstance(obj, dict):
        return {k: no_timings(v) for k, v in obj.items() if k not in TIMINGS}
    return obj


def images(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha(p) for p in sorted(folder.rglob("*.png"))}


def main(work: Path) -> dict:
    import torch

    work.mkdir(parents=True, exist_ok=False)
    out: dict = {}
    run = work / "run"
    splat("train", str(DEMO), "--out", str(run), "--steps", "60", "--max-width", "64", "--device", "cpu",
          "--no-progress", "--no-lpips", "--seed", "3", "--eval-steps", "0", "60", "--save-steps", "60",
          "--ckpt-every", "30", "--refine-start", "10", "--refine-stop", "50", "--refine-every", "20",
          "--reset-every", "40", "--sh-degree-interval", "20", "--means-lr-steps", "60")  # fmt: skip
    ply = run / "point_cloud" / "iteration_60" / "point_cloud.ply"
    out["train_ply"] = sha(ply)
    ckpt = torch.load(run / "ckpts" / "ckpt_000060.pt", weights_only=True)
    out["train_ckpt_params"] = {k: hashlib.sha256(v.numpy().tobytes()).hexdigest()[:16] for k, v in ckpt["params"].items()}
    out["train_metrics"] = no_timings(json.loads((run / "metrics.json").read_text()))
    out["train_renders"] = images(run / "renders")

    splat("render", str(run), "--scene", str(DEMO), "--out", str(work / "orbit"), "--path", "orbit",
          "--frames", "12", "--width", "48", "--device", "cpu")  # fmt: skip
    out["orbit_frames"] = images(work / "orbit")
    splat("render", str(run), "--scene", str(DEMO), "--out", str(work / "views"), "--device", "cpu")
    out["render_views"] = images(work / "views")
    splat("render", str(ply), "--scene", str(DEMO), "--out", str(work / "views_ply"), "--device", "cpu")
    out["render_views_from_ply"] = images(work / "views_ply")
    out["eval"] = no_timings(json.loads(splat("eval", str(run), "--scene", str(DEMO), "--device", "cpu")))
    splat("export", str(run / "ckpts" / "ckpt_000060.pt"), "--out", str(work / "export.ply"))
    out["export_ply"] = sha(work / "export.ply")

    from editkit.testing import save_tiny_pipeline

    model = save_tiny_pipeline(work / "tiny-sd", "sd1")
    edit_out = work / "edit"
    summary = splat("edit", str(run), "--scene", str(DEMO), "--source", "a photo of a cat", "--target",
                    "a photo of a dog", "--model", str(model), "--steps", "4", "--guidance", "1",
                    "--strength", "0.5", "--edit-size", "32", "--edit-every", "2", "--iterations", "8",
                    "--cache-dir", str(work / "inv-cache"), "--no-progress", "--device", "cpu",
                    "--out", str(edit_out))  # fmt: skip
    s = json.loads(summary)
    out["edit_summary"] = {k: v for k, v in s.items() if k in ("steps", "views_edited", "psnr_vs_photos_before",
                                                              "psnr_vs_photos_after")}  # fmt: skip
    out["edit_images"] = images(edit_out)
    out["edit_ply"] = sha(Path(s["ply"]))
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    print(json.dumps(main(Path(sys.argv[1])), indent=1, sort_keys=True))
