"""Prompt-to-Prompt overhead: a P2P edit (source + one target) against plain diffusers sampling of the
same two-prompt batch, timed in one run on the same pipeline.

    python benchmarks/bench_p2p.py                 # CPU, small SD-1.5-shaped UNet, 64x64 latent, 10 steps
    python benchmarks/bench_p2p.py --full          # GPU: full SD 1.5 UNet (random weights), 512 px, fp16, 50 steps

Goal: the P2P edit at most 1.10x the plain sampling time.

Heatmaps: peak memory of an edit with attention heatmaps, storing every map the attention store used to
keep (``return_attention="all"``: cross- and self-attention at latent / 2 and below) against what
``return_attention=True`` keeps now (cross-attention only, all the heatmap grid draws), in the same run. On
a GPU: CUDA peak allocated above the pipeline's weights. On the CPU each heatmap run goes to a fresh
process (freed memory stays in a process's RSS), which reports its peak RSS above a warm plain edit.
"""

from __future__ import annotations

import argparse
import datetime
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import best_of, commit, device_name, fmt_mb, sd15_pipeline  # noqa: E402

from editkit import p2p  # noqa: E402

SOURCE, TARGET = "a cat riding a bicycle", "a cat riding a car"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="full SD 1.5 UNet, 512 px, fp16, 50 steps (GPU)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved timed repeats of each (the best is kept)")
    ap.add_argument("--size", type=int, default=None, help="image size in px (default 128 on CPU, 512 with --full)")
    ap.add_argument("--results", type=Path, default=None, help="append each row to this file (JSON lines)")
    ap.add_argument("--heatmap-child", choices=["all", "cross"], default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.heatmap_child:
        return heatmap_child(args)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if (args.full and device.type == "cuda") else torch.float32
    steps = args.steps or (50 if args.full else 10)
    size = args.size or (512 if args.full else 128)
    pipe = sd15_pipeline(device, dtype, full=args.full)
    latent = torch.randn(1, 4, size // pipe.vae_scale_factor, size // pipe.vae_scale_factor,
                         generator=torch.Generator().manual_seed(0)).to(device, dtype)

    def plain():
        return pipe([SOURCE, TARGET], num_inference_steps=steps, height=size, width=size,
                    latents=latent.expand(2, -1, -1, -1), guidance_scale=7.5, output_type="pil").images

    def edit():
        return p2p.generate(pipe, SOURCE, [TARGET], p2p.Replace(cross_replace_steps=0.8, self_replace_steps=0.4),
                            num_inference_steps=steps, height=size, width=size, latents=latent, progress=False).images

    def edit_blend():
        return p2p.generate(pipe, SOURCE, [TARGET], p2p.Replace(), local_blend=p2p.LocalBlend(["bicycle", "car"]),
                            num_inference_steps=steps, height=size, width=size, latents=latent, progress=False).images

    def heatmaps(kind):
        return lambda: p2p.generate(pipe, SOURCE, [TARGET], p2p.Replace(), num_inference_steps=steps, height=size,
                                    width=size, latents=latent, progress=False,
                                    return_attention=True if kind == "cross" else "all").images

    runs = {"plain diffusers": plain, "p2p replace": edit, "p2p replace + local blend": edit_blend}
    if device.type == "cuda":
        runs["heatmaps, full store (before)"] = heatmaps("all")
        runs["heatmaps, cross only (after)"] = heatmaps("cross")
    results = best_of(runs, args.repeats, device)
    heat_rows = {}
    if device.type != "cuda":
        for kind, label in (("all", "full store (before)"), ("cross", "cross only (after)")):
            cmd = [sys.executable, __file__, "--heatmap-child", kind, "--steps", str(steps), "--size", str(size)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()
            heat_rows[label] = (float(out[0]), int(out[1]))

    base = results["plain diffusers"].seconds
    print(f"# bench_p2p  {datetime.date.today()}  commit {commit()}  device {device_name(device)}")
    print(f"# config: {'full SD 1.5 UNet' if args.full else 'small SD-1.5-shaped UNet'}, {size} px, {dtype}, {steps} steps, batch = source + 1 target")
    print(f"{'run':28s} {'time (s)':>9s} {'ratio':>6s} {'peak mem':>10s}")
    for name, m in results.items():
        print(f"{name:28s} {m.seconds:9.2f} {m.seconds / base:6.2f} {fmt_mb(m.peak_bytes):>10s}")
    if args.results is not None:
        stamp = {"bench": "p2p", "date": datetime.date.today().isoformat(), "commit": commit(),
                 "device": device_name(device), "size": size, "dtype": str(dtype), "steps": steps,
                 "unet": "full SD 1.5" if args.full else "small"}  # fmt: skip
        with open(args.results, "a") as f:
            for name, m in results.items():
                f.write(json.dumps({**stamp, "run": name, "seconds": round(m.seconds, 3),
                                    "ratio_to_plain": round(m.seconds / base, 3),
                                    "peak_mib": round(m.peak_bytes / 2**20, 1)}) + "\n")  # fmt: skip
    if heat_rows:
        print("# heatmaps (p2p replace + return_attention), one fresh process each: peak RSS above a warm edit")
        for label, (seconds, extra) in heat_rows.items():
            print(f"heatmaps, {label:20s} {seconds:9.2f} {seconds / base:6.2f} {fmt_mb(extra):>10s}")


def heatmap_child(args):
    """One heatmap run in a fresh process: prints its time and its peak RSS above a warm plain P2P edit."""
    import time

    device = torch.device("cpu")
    pipe = sd15_pipeline(device, torch.float32, full=False)
    size, steps = args.size or 128, args.steps or 10
    latent = torch.randn(1, 4, size // pipe.vae_scale_factor, size // pipe.vae_scale_factor,
                         generator=torch.Generator().manual_seed(0))
    kw = dict(num_inference_steps=steps, height=size, width=size, latents=latent, progress=False)
    p2p.generate(pipe, SOURCE, [TARGET], p2p.Replace(), **kw)  # warm: the high-water mark of an edit alone
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    p2p.generate(pipe, SOURCE, [TARGET], p2p.Replace(), return_attention=True if args.heatmap_child == "cross" else "all", **kw)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(seconds, peak - base)


if __name__ == "__main__":
    main()
