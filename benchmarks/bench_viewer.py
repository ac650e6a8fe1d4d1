"""Viewer frame time, and what ``splat train --viewer`` costs training when nobody is connected.

    python benchmarks/bench_viewer.py                     # CPU: 256 px frames of the demo scene
    python benchmarks/bench_viewer.py --gpu --model RUN   # GPU: 1920x1080 frames (goal: > 100 fps on cup, 30k steps)

Frame time = one viewer frame as the server produces it: render (``splat.render.modes.render_mode``, so
``rasterize``: the reference renderer on CPU, gsplat on CUDA) + JPEG encoding, the way viser sends it, for
cameras along an orbit of the scene (median over the frames). Without ``--model`` the Gaussians are the
demo scene's initial ones (its SfM points), which is a small model.

Training overhead: the same short training run with and without a viewer's step callback attached (the
viewer serving, no browser connected), interleaved, best of ``--repeats``; the ratio is what matters.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from splat.gaussians.model import activated, load_model  # noqa: E402
from splat.render.modes import render_mode  # noqa: E402
from splat.scene.cameras import scene_cameras  # noqa: E402
from splat.view.camera_path import orbit_path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "assets" / "demo"


def demo_gaussians(tmp: Path):
    from splat.config import TrainConfig
    from splat.training.trainer import Trainer

    trainer = Trainer(DEMO, TrainConfig(out=tmp / "init", device="cpu", progress=False, sh_degree=3))
    return {k: v.detach() for k, v in trainer.params.items()}, 3, None


def frame_times(gaussians, sh_degree, scene, config, width, height, frames, device) -> list[float]:
    from PIL import Image

    cams = scene_cameras(scene, config)
    K = cams.Ks[0].copy()
    w0, h0 = cams.sizes[0]
    K[0] *= width / w0
    K[1] *= height / h0
    path = orbit_path(cams.viewmats[cams.train], K, width, height, frames=frames)
    bg = torch.zeros(3, device=device)
    times, cpu = [], []
    for viewmat, Kf in zip(path.viewmats, path.Ks, strict=True):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        img = render_mode(
            gaussians,
            torch.as_tensor(Kf, dtype=torch.float32, device=device),
            torch.as_tensor(viewmat, dtype=torch.float32, device=device),
            width,
            height,
            sh_degree,
            bg,
            "rgb",
        )
        Image.fromarray(img).save(io.BytesIO(), format="JPEG", quality=90)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return times, cpu


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def training_overhead(steps: int, repeats: int, max_width: int) -> dict[str, float]:
    """Best wall and CPU (process) time of ``steps`` demo training steps without / with a viewer attached
    (no client), and the cost of one call of the idle viewer's step callback."""
    from splat.config import TrainConfig
    from splat.training.trainer import Trainer
    from splat.view.viewer import Viewer

    base = TrainConfig(
        device="cpu", progress=False, steps=steps, max_width=max_width, lpips=False, eval_steps=(),
        save_steps=(), ckpt_every=0, save_renders=False, refine_start=10_000,
    )  # fmt: skip
    best = {k: float("inf") for k in ("plain", "viewer", "plain_cpu", "viewer_cpu")}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            for kind in ("plain", "viewer"):
                cfg = dataclasses.replace(base, out=Path(tmp) / f"{kind}{r}")
                trainer = Trainer(DEMO, cfg)
                viewer = None
                if kind == "viewer":
                    viewer = Viewer(dict(trainer.params.items()), cfg.sh_degree, None, port=free_port())
                    trainer.step_callbacks.append(viewer.on_train_step)
                t0, c0 = time.perf_counter(), time.process_time()
                trainer.train()
                best[kind] = min(best[kind], time.perf_counter() - t0)
                best[kind + "_cpu"] = min(best[kind + "_cpu"], time.process_time() - c0)
                if viewer is not None:
                    calls = 10_000
                    t0 = time.perf_counter()
                    for _ in range(calls):
                        viewer.on_train_step(trainer, steps, 0.1, 20.0)
                    best["callback"] = min(best.get("callback", 1.0), (time.perf_counter() - t0) / calls)
                    viewer.stop()
    return best


def idle_server_cpu(seconds: float = 10.0) -> float:
    """CPU seconds per second that a serving viewer with no client costs the process (its threads)."""
    from splat.view.viewer import Viewer

    params, _, _ = demo_gaussians(Path(tempfile.mkdtemp()))
    viewer = Viewer(params, 3, None, port=free_port())
    time.sleep(2.0)
    c0 = time.process_time()
    time.sleep(seconds)
    used = (time.process_time() - c0) / seconds
    viewer.stop()
    return used


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", action="store_true", help="1920x1080 on CUDA (needs a GPU)")
    ap.add_argument(
        "--model", type=Path, default=None, help="run folder / checkpoint / PLY (default: demo init)"
    )
    ap.add_argument("--scene", type=Path, default=DEMO, help="scene of the model (for the orbit)")
    ap.add_argument("--size", type=int, default=None, help="long side in pixels (default 256 CPU, 1920 GPU)")
    ap.add_argument(
        "--frames", type=int, default=None, help="frames along the orbit (default 4 CPU, 200 GPU)"
    )
    ap.add_argument("--train-steps", type=int, default=20, help="steps of the overhead runs (0: skip)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.gpu and not torch.cuda.is_available():
        raise SystemExit("--gpu needs a CUDA GPU")
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.gpu else "cpu")
    size = args.size or (1920 if args.gpu else 256)
    frames = args.frames or (200 if args.gpu else 4)

    with tempfile.TemporaryDirectory() as tmp:
        if args.model is not None:
            model = load_model(args.model)
            params, sh_degree, config = model.params, model.sh_degree, model.config
        else:
            params, sh_degree, config = demo_gaussians(Path(tmp))
    cams = scene_cameras(args.scene, config)
    w0, h0 = cams.sizes[0]
    width, height = (size, round(size * h0 / w0)) if w0 >= h0 else (round(size * w0 / h0), size)
    if args.gpu:
        width, height = 1920, 1080  # the 1080p configuration of the goal
    g = {k: v.to(device) for k, v in activated(params).items()}
    frame_times(g, sh_degree, args.scene, config, width, height, 1, device)  # warm-up
    times, cpu = frame_times(g, sh_degree, args.scene, config, width, height, frames, device)
    med = statistics.median(times)
    print(f"device={device.type} gaussians={len(params['means'])} size={width}x{height} frames={frames}")
    print(f"frame time: median {med * 1000:.1f} ms ({1 / med:.2f} fps), min {min(times) * 1000:.1f} ms")
    if device.type == "cpu":  # on a shared machine wall time inflates; CPU time (all threads) does not
        print(f"CPU time per frame (all threads): median {statistics.median(cpu) * 1000:.1f} ms")
    if args.train_steps > 0 and not args.gpu:
        b = training_overhead(args.train_steps, args.repeats, max_width=64)
        print(
            f"training {args.train_steps} steps, best of {args.repeats}: plain {b['plain']:.2f} s "
            f"({b['plain_cpu']:.2f} s CPU), with viewer, no client {b['viewer']:.2f} s ({b['viewer_cpu']:.2f} s CPU); "
            f"ratio wall {b['viewer'] / b['plain']:.3f}, CPU {b['viewer_cpu'] / b['plain_cpu']:.3f}"
        )
        per_step = b["plain"] / args.train_steps
        print(
            f"idle viewer callback: {b['callback'] * 1e6:.1f} us per step = "
            f"{100 * b['callback'] / per_step:.4f} % of a {per_step * 1000:.0f} ms training step"
        )
    if not args.gpu:
        print(f"idle viewer server (no client): {idle_server_cpu() * 1000:.2f} ms CPU per second")
    print(np.round(np.array(times) * 1000, 1).tolist())


if __name__ == "__main__":
    main()
