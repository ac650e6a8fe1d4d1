"""Data-parallel splat training: 1 vs 2 CPU processes (torchrun, gloo) on a short demo run.

    python benchmarks/bench_distributed.py                 # 200 steps on assets/demo
    python benchmarks/bench_distributed.py --steps 300 --threads 1

Three runs of ``splat train assets/demo`` (the demo scene, built by assets/make_demo.py), each in a fresh
output folder, with the held-out evaluation off (``--test-every 0``) so that only training is timed:

    1 process, batch 1      the baseline (one view per step)
    1 process, batch 2      the same global batch as the next row, in one process
    2 processes, batch 1    torchrun --standalone --nproc_per_node 2 (gloo): one view per rank per step

Printed per run: wall time of the whole command (process start, scene loading, process group), training
time (``elapsed_s`` from the summary rank 0 prints), steps/s and views/s; then the ratios of each run to
the baseline, measured in this one invocation. Each process gets ``--threads`` intra-op threads, so that
2 processes x 1 thread and 1 process x 2 threads use the same cores (the machine's core count is printed:
on 2 shared cores the 2-process row cannot show a GPU cluster's scaling, only the overhead of the
all-reduces and whether two processes use the cores better than one).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(procs: int, batch: int, steps: int, threads: int, out: Path) -> dict:
    train = [
        "train",
        str(REPO / "assets" / "demo"),
        "--out",
        str(out),
        "--steps",
        str(steps),
        "--batch-size",
        str(batch),
        "--device",
        "cpu",
        "--test-every",
        "0",
        "--no-progress",
        "--no-lpips",
        "--no-save-renders",
    ]
    if procs == 1:
        cmd = [sys.executable, "-m", "splat.cli", *train]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs)]
        cmd += ["-m", "splat.cli", *train]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    text = proc.stdout
    summary = json.loads(text[text.index("{") : text.rindex("}") + 1])
    train_s = summary["elapsed_s"]
    return {
        "procs": procs,
        "batch_per_proc": batch,
        "steps": steps,
        "wall_s": round(wall, 2),
        "train_s": train_s,
        "steps_per_s": round(steps / train_s, 2),
        "views_per_s": round(steps * batch * procs / train_s, 2),
        "num_gaussians": summary["num_gaussians"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per process")
    args = ap.parse_args()
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, threads/process={args.threads}"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for procs, batch in ((1, 1), (1, 2), (2, 1)):
            row = run(procs, batch, args.steps, args.threads, Path(tmp) / f"p{procs}b{batch}")
            rows.append(row)
            print(json.dumps(row))
    base = rows[0]
    for row in rows[1:]:
        print(
            f"{row['procs']} proc x batch {row['batch_per_proc']} vs 1 x 1: "
            f"steps/s x{row['steps_per_s'] / base['steps_per_s']:.2f}, "
            f"views/s x{row['views_per_s'] / base['views_per_s']:.2f}, "
            f"wall x{row['wall_s'] / base['wall_s']:.2f}"
        )
    b12, p21 = rows[1], rows[2]
    print(
        f"2 procs x batch 1 vs 1 proc x batch 2 (same global batch): "
        f"steps/s x{p21['steps_per_s'] / b12['steps_per_s']:.2f}, wall x{p21['wall_s'] / b12['wall_s']:.2f}"
    )


if __name__ == "__main__":
    main()
