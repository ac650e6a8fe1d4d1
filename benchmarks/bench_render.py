"""Renderers side by side: gsplat's CUDA rasterizer against splat's PyTorch reference, same Gaussians.

    python benchmarks/bench_render.py            # CPU: the reference renderer alone, 20k Gaussians, 256x192
    python benchmarks/bench_render.py --full     # GPU: both, 100k Gaussians, 800x600 (the cup photos' size)
    python benchmarks/bench_render.py --composite  # CPU: the reference's compositing, autograd vs hand-written

One row per backend: the best forward and forward+backward time over ``--repeats`` interleaved rounds
(after a warm-up), peak memory of a forward+backward, and for the reference the largest pixel difference
from gsplat's image (the two must agree up to float round-off) and gsplat's speed-up over it, measured in
this one run. The Gaussians are random but scene-like: centres in a box 2-6 units in front of the camera,
small anisotropic scales, opacities 0.1-0.9, SH degree 3. ``--results FILE`` appends each row as a JSON line.

``--composite`` times the reference renderer twice in one run, at the demo's training scale (4k Gaussians,
64x48) and at 20k Gaussians, 256x192: compositing by plain autograd (``_composite_tiles(_reference=True)``,
the definition) against the default hand-written backward, forward+backward and forward alone, and prints
the speed-up of the second. ``--threads`` sets torch's CPU threads (default 1, as in the measurements of
benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import best_of, commit, device_name  # noqa: E402

from splat.render import _torch_impl  # noqa: E402
from splat.render.rasterization import rasterize  # noqa: E402


def scene(n: int, width: int, height: int, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(n, 3, generator=g) * torch.tensor([4.0, 3.0, 4.0]) - torch.tensor([2.0, 1.5, -2.0])
    quats = torch.randn(n, 4, generator=g)
    scales = torch.exp(torch.randn(n, 3, generator=g) * 0.3 - 4.0)  # ~2 cm, anisotropic
    opac = 0.1 + 0.8 * torch.rand(n, generator=g)
    sh = torch.randn(n, 16, 3, generator=g) * torch.tensor([1.0] + [0.1] * 15)[:, None]
    f = 0.9 * width
    Ks = torch.tensor([[[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]]])
    viewmats = torch.eye(4)[None]
    tensors = [t.to(device) for t in (means, quats, scales, opac, sh, viewmats, Ks)]
    return tensors


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="GPU: 100k Gaussians at 800x600, both backends")
    ap.add_argument("--gaussians", type=int, default=None)
    ap.add_argument("--size", type=int, nargs=2, default=None, metavar=("W", "H"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--results", type=Path, default=None, help="append each row to this file (JSON lines)")
    ap.add_argument("--composite", action="store_true", help="CPU: autograd vs hand-written compositing")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads with --composite")
    args = ap.parse_args(argv)
    if args.composite:
        return composite(args)
    if args.full and not torch.cuda.is_available():
        print("bench_render: --full needs a CUDA GPU", file=sys.stderr)
        return 2
    device = torch.device("cuda" if args.full else "cpu")
    n = args.gaussians or (100_000 if args.full else 20_000)
    width, height = args.size or ((800, 600) if args.full else (256, 192))
    means, quats, scales, opac, sh, viewmats, Ks = scene(n, width, height, device)
    backends = ["gsplat", "torch"] if device.type == "cuda" else ["torch"]
    images = {}

    def forward(backend):
        def run():
            with torch.no_grad():
                img, _, _ = rasterize(means, quats, scales, opac, sh, viewmats, Ks, width, height, sh_degree=3,
                                      backend=backend)  # fmt: skip
            images[backend] = img
        return run

    def forward_backward(backend):
        def run():
            ins = [t.clone().requires_grad_(True) for t in (means, quats, scales, opac, sh)]
            img, _, _ = rasterize(*ins, viewmats, Ks, width, height, sh_degree=3, backend=backend)
            img.sum().backward()
        return run

    runs = {f"{b} forward": forward(b) for b in backends}
    runs |= {f"{b} forward+backward": forward_backward(b) for b in backends}
    res = best_of(runs, args.repeats, device)
    stamp = {"date": datetime.date.today().isoformat(), "commit": commit(), "device": device_name(device)}
    for b in backends:
        row = {
            "bench": "render", **stamp, "backend": b, "gaussians": n, "width": width, "height": height,
            "forward_ms": round(res[f"{b} forward"].seconds * 1e3, 2),
            "forward_backward_ms": round(res[f"{b} forward+backward"].seconds * 1e3, 2),
            "peak_mib": round(res[f"{b} forward+backward"].peak_bytes / 2**20, 1),
        }  # fmt: skip
        if b == "torch" and "gsplat" in images:
            row["max_abs_diff_vs_gsplat"] = float((images["torch"] - images["gsplat"]).abs().max())
            row["gsplat_speedup_forward"] = round(res["torch forward"].seconds / res["gsplat forward"].seconds, 1)
            row["gsplat_speedup_forward_backward"] = round(
                res["torch forward+backward"].seconds / res["gsplat forward+backward"].seconds, 1
            )
        print(json.dumps(row), flush=True)
        if args.results is not None:
            with open(args.results, "a") as f:
                f.write(json.dumps(row) + "\n")
    return 0


def _run(tensors, width: int, height: int, reference: bool, backward: bool):
    """One forward (and backward) of the reference renderer, compositing by autograd if ``reference``."""
    means, quats, scales, opac, sh, viewmats, Ks = tensors
    plain = _torch_impl._composite_tiles

    def fn():
        # rasterize_torch looks _composite_tiles up in its module at each call
        _torch_impl._composite_tiles = functools.partial(plain, _reference=reference)
        try:
            ins = [t.clone().requires_grad_(backward) for t in (means, quats, scales, opac, sh)]
            with torch.set_grad_enabled(backward):
                img, _, _ = _torch_impl.rasterize_torch(*ins, viewmats, Ks, width, height, sh_degree=3)
            if backward:
                img.sum().backward()
        finally:
            _torch_impl._composite_tiles = plain

    return fn


def composite(args) -> int:
    """Reference renderer's forward+backward with autograd compositing vs the hand-written backward."""
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    stamp = {"date": datetime.date.today().isoformat(), "commit": commit(), "device": device_name(device),
             "threads": args.threads}  # fmt: skip
    for n, (width, height) in ((4000, (64, 48)), (20_000, (256, 192))):
        tensors = scene(n, width, height, device)
        runs = {(ref, bwd): _run(tensors, width, height, ref, bwd) for bwd in (True, False) for ref in (True, False)}
        res = best_of(runs, args.repeats, device)
        ms = {k: round(m.seconds * 1e3, 2) for k, m in res.items()}
        row = {
            "bench": "render_composite", **stamp, "gaussians": n, "width": width, "height": height,
            "autograd_forward_backward_ms": ms[True, True], "custom_forward_backward_ms": ms[False, True],
            "speedup_forward_backward": round(ms[True, True] / ms[False, True], 2),
            "autograd_forward_ms": ms[True, False], "custom_forward_ms": ms[False, False],
            "speedup_forward": round(ms[True, False] / ms[False, False], 2),
        }  # fmt: skip
        print(json.dumps(row), flush=True)
        if args.results is not None:
            with open(args.results, "a") as f:
                f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
