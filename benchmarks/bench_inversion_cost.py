"""Benchmark: what each inversion choice of the UI costs, inversion + one edit, relative to DDIM inversion.

    python benchmarks/bench_inversion_cost.py            # tiny test model (editkit.testing), 10 steps, CPU

The figures shown next to the UI's inversion choice (``editkit.jobs.INVERSION_COST``) come from this script.
Runs are interleaved over ``--repeats`` rounds and each keeps its best time, so a busy machine slows all of
them alike. On the tiny model null-text inversion rarely reaches its early-stop loss, so its figure is close
to the worst case (all inner iterations at every step).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from editkit import load_pipeline  # noqa: E402
from editkit.editing import edit_image  # noqa: E402
from editkit.inversion import METHODS  # noqa: E402
from editkit.p2p import Replace  # noqa: E402
from editkit.testing import save_tiny_pipeline  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        pipe = load_pipeline(save_tiny_pipeline(Path(tmp) / "sd1", "sd1"), device="cpu")
    rgb = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    image = Image.fromarray(rgb)
    best: dict[str, float] = {}
    for _ in range(args.repeats):
        for method in METHODS:
            start = time.perf_counter()
            edit_image(pipe, image, "a cat on a table", ["a dog on a table"], Replace(), inversion=method,
                       num_inference_steps=args.steps, progress=False)
            best[method] = min(best.get(method, float("inf")), time.perf_counter() - start)
    print(f"tiny SD1 test model, CPU, {args.threads} thread(s), {args.steps} steps, best of {args.repeats}")
    print("| inversion | time (s) | x DDIM |\n|---|---:|---:|")
    for method in METHODS:
        print(f"| {method} | {best[method]:.2f} | {best[method] / best['ddim']:.1f} |")


if __name__ == "__main__":
    main()
