"""Benchmark: end-to-end real-image editing (inversion + edit) per inversion method and Plug-and-Play,
against one plain generation with the same number of steps, timed in one run with peak memory.

    python benchmarks/bench_real_edit.py             # CPU: small SD-1.5-shaped UNet, 128 px (64x64 latent), 10 steps
    python benchmarks/bench_real_edit.py --steps 20
    python benchmarks/bench_real_edit.py --full      # GPU: full SD 1.5 UNet architecture, random weights,
                                                     # fp16, 512 px, 50 steps (no weights needed)

    python benchmarks/bench_real_edit.py --pnp-inversion   # Plug-and-Play's inversion: 50 vs 999 steps
                                                          # on the tiny test model (editkit.testing)

Runs are interleaved over ``--repeats`` rounds and each keeps its best time, so a busy machine slows all
of them alike. With random weights null-text inversion never reaches its early-stop loss, so it always runs
all of its inner iterations: its figure is the worst case. Goals on the GPU: fast-inversion P2P and PnP at
most 3x one plain generation; the null-text edit under 15 s on an H200.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import best_of, commit, device_name, fmt_mb, sd15_pipeline  # noqa: E402

from editkit.editing import edit_image  # noqa: E402
from editkit.inversion import invert, reconstruct  # noqa: E402
from editkit.p2p import Replace, generate  # noqa: E402
from editkit.pnp import pnp_edit  # noqa: E402

SOURCE, TARGET = "a photo of a cat", "a photo of a dog"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="full SD 1.5 UNet on CUDA, fp16, 512 px")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default 10 on CPU, 50 with --full)")
    parser.add_argument("--inner-steps", type=int, default=10, help="null-text Adam iterations per step")
    parser.add_argument("--size", type=int, default=None, help="image size in px (default 128 on CPU, 512 with --full)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved timed rounds (the best is kept)")
    parser.add_argument("--pnp-inversion", action="store_true",
                        help="compare Plug-and-Play's inversion with 50 and 999 DDIM steps on the tiny test model")
    parser.add_argument("--fine-steps", type=int, default=999, help="--pnp-inversion: the finer inversion (999 = reference)")
    args = parser.parse_args(argv)
    if args.pnp_inversion:
        return pnp_inversion(args)
    if args.full and not torch.cuda.is_available():
        parser.error("--full needs a CUDA device")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if args.full else torch.float32
    steps = args.steps or (50 if args.full else 10)
    size = args.size or (512 if args.full else 128)
    pipe = sd15_pipeline(device, dtype, full=args.full)

    rng = np.random.default_rng(0)
    photo = Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC)
    edit = Replace(cross_replace_steps=0.8, self_replace_steps=0.4)

    def plain():
        return generate(pipe, SOURCE, [], num_inference_steps=steps, height=size, width=size,
                        generator=torch.Generator().manual_seed(0), progress=False)

    def p2p_real(method):
        def run():
            inv = invert(pipe, photo, SOURCE, method, steps, num_inner_steps=args.inner_steps, size=size, progress=False)
            return edit_image(pipe, inv, SOURCE, [TARGET], edit=edit, progress=False)

        return run

    def pnp():
        return pnp_edit(pipe, photo, TARGET, num_inference_steps=steps, size=size, progress=False)

    runs = {"plain generation (1 prompt)": plain}
    runs.update({f"P2P real edit, {m} inversion": p2p_real(m) for m in ("ddim", "null-text", "negative-prompt", "direct")})
    runs["Plug-and-Play real edit"] = pnp
    results = best_of(runs, args.repeats, device)

    base = results["plain generation (1 prompt)"].seconds
    print(f"# bench_real_edit  {datetime.date.today()}  commit {commit()}  device {device_name(device)}")
    print(f"# config: {'full SD 1.5 UNet' if args.full else 'small SD-1.5-shaped UNet'}, {size} px, {dtype}, "
          f"{steps} steps, null-text {args.inner_steps} inner steps")
    print(f"{'run':36s} {'time (s)':>9s} {'x plain':>8s} {'peak mem':>10s}")
    for name, m in results.items():
        print(f"{name:36s} {m.seconds:9.2f} {m.seconds / base:8.2f} {fmt_mb(m.peak_bytes):>10s}")


def pnp_inversion(args):
    """Plug-and-Play's inversion, ours (as many steps as sampling) against the reference's 999 steps, on the
    tiny SD1 test model: inversion time, the DDIM round trip (sampling back at guidance 1) and a PnP edit with
    the source prompt as target (guidance 7.5, injection on), both as latent MSE against the image latent."""
    import time

    from editkit.testing import tiny_pipeline

    pipe = tiny_pipeline("sd1")
    steps, size = args.steps or 50, args.size or 32
    rng = np.random.default_rng(0)
    photo = Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC)
    print(f"# bench_real_edit --pnp-inversion  {datetime.date.today()}  commit {commit()}  device {device_name(torch.device('cpu'))}")
    print(f"# tiny SD1 test model, {size} px, {steps} sampling steps, inversion prompt ''")
    print(f"{'inversion steps':>16s} {'invert (s)':>11s} {'round-trip MSE':>15s} {'PnP MSE':>10s}")
    for n in (steps, args.fine_steps):
        t0 = time.perf_counter()
        inv = invert(pipe, photo, "", "ddim", steps, size=size, progress=False, inversion_steps=n)
        seconds = time.perf_counter() - t0
        z0 = inv.z0
        rt = reconstruct(pipe, inv, guidance_scale=1.0, output_type="latent", progress=False)
        pnp = pnp_edit(pipe, inv, "", progress=False).latents
        print(f"{n:16d} {seconds:11.2f} {float(((rt - z0) ** 2).mean()):15.4g} {float(((pnp - z0) ** 2).mean()):10.4g}")


if __name__ == "__main__":
    main()
