"""Benchmark: wall time of a batch edit on 1 process vs 2 processes (``accelerate launch``), CPU.

    python benchmarks/bench_batch_edit.py                 # the test's job: 4 photos, 2 pairs, 2 steps
    python benchmarks/bench_batch_edit.py --steps 20      # more work per photo

Each configuration runs the real command (``python -m editkit.cli edit`` or ``accelerate launch --multi_gpu
--num_processes 2 -m editkit.cli edit`` with ``--device cpu``) on the tiny test model, start-up and model
loading included, interleaved over ``--repeats`` rounds; the best time of each is kept. The output files of
every run are compared with the first 1-process run at the same thread count (they must be identical).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from editkit.testing import save_tiny_pipeline  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def digest(folder: Path) -> str:
    h = hashlib.sha1()
    for p in sorted(folder.glob("*.png")):
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = save_tiny_pipeline(tmp / "model", "sd1")
        y, x = np.mgrid[0:48, 0:64]
        photos = []
        for i in range(args.photos):
            rgb = np.stack([(x * (4 + i)) % 256, (y * 5 + 40 * i) % 256, (x + y) * 2], -1).astype(np.uint8)
            photos.append(tmp / f"photo{i}.png")
            Image.fromarray(rgb).save(photos[-1])
        pairs = tmp / "pairs.tsv"
        pairs.write_text("a cat on a table\ta dog on a table\na cat on a table\ta lion on a table\n")
        job = [
            *map(str, photos),
            "--model",
            str(model),
            "--pairs",
            str(pairs),
            "--inversion",
            "direct",
            "--steps",
            str(args.steps),
            "--device",
            "cpu",
            "--quiet",
        ]
        launch = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
        ]
        configs = {
            "1 process, 1 thread": ([sys.executable, "-m", "editkit.cli"], "1"),
            "1 process, 2 threads": ([sys.executable, "-m", "editkit.cli"], "2"),
            "2 processes x 1 thread (accelerate launch)": ([*launch, "--num_processes", "2"], "1"),
        }
        best: dict[str, float] = {}
        reference: dict[str, str] = {}
        for r in range(args.repeats):
            for name, (cmd, threads) in configs.items():
                out = tmp / f"out-{r}-{len(best)}-{threads}-{name[0]}"
                if "launch" in name:
                    cmd = [*cmd, "--main_process_port", str(free_port()), "-m", "editkit.cli"]
                env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=threads, PYTHONPATH=str(REPO))
                t0 = time.perf_counter()
                proc = subprocess.run(
                    [*cmd, "edit", *job, "--output", str(out)], env=env, capture_output=True, text=True
                )
                seconds = time.perf_counter() - t0
                if proc.returncode != 0:
                    sys.exit(f"{name} failed:\n{proc.stderr[-2000:]}")
                reference.setdefault(threads, digest(out))
                same = digest(out) == reference[threads]
                best[name] = min(best.get(name, float("inf")), seconds)
                print(
                    f"round {r + 1}: {name}: {seconds:.1f} s, files identical to 1 process: {same}",
                    flush=True,
                )
        base = best["1 process, 1 thread"]
        print(
            f"\n{args.photos} photos x 2 pairs, {args.steps} steps, best of {args.repeats}, wall time incl. start-up:"
        )
        for name, seconds in best.items():
            print(f"  {name:<45} {seconds:6.1f} s  ({base / seconds:.2f}x the 1-process, 1-thread speed)")


if __name__ == "__main__":
    main()
