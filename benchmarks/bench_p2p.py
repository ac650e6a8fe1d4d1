"""Prompt-to-Prompt overhead: a P2P edit (source + one target) against plain diffusers sampling of the
same two-prompt batch, timed in one run on the same pipeline.

    python benchmarks/bench_p2p.py                 # CPU, small SD-1.5-shaped UNet, 64x64 latent, 10 steps
    python benchmarks/bench_p2p.py --full          # GPU: full SD 1.5 UNet (random weights), 512 px, fp16, 50 steps

Goal: the P2P edit at most 1.10x the plain sampling time.
"""

from __future__ import annotations

import argparse
import datetime
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
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if (args.full and device.type == "cuda") else torch.float32
    steps = args.steps or (50 if args.full else 10)
    size = 512 if args.full else 128
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

    runs = {"plain diffusers": plain, "p2p replace": edit, "p2p replace + local blend": edit_blend}
    results = best_of(runs, args.repeats, device)

    base = results["plain diffusers"].seconds
    print(f"# bench_p2p  {datetime.date.today()}  commit {commit()}  device {device_name(device)}")
    print(f"# config: {'full SD 1.5 UNet' if args.full else 'small SD-1.5-shaped UNet'}, {size} px, {dtype}, {steps} steps, batch = source + 1 target")
    print(f"{'run':28s} {'time (s)':>9s} {'ratio':>6s} {'peak mem':>10s}")
    for name, m in results.items():
        print(f"{name:28s} {m.seconds:9.2f} {m.seconds / base:6.2f} {fmt_mb(m.peak_bytes):>10s}")


if __name__ == "__main__":
    main()
