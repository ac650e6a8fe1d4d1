"""Do the ranks of a distributed `splat train` stay bit-identical on this machine?

    python benchmarks/check_rank_agreement.py [--device auto|cpu|cuda] [--gaussians N] [--cameras C]

Two checks, one line each:

(a) update: gsplat's densification statistics update (``DefaultStrategy``'s, as splat calls it) run twice on
    the same inputs on the device. On CUDA it sums with ``index_add_``, whose order with repeated indices is
    not fixed: the bits may differ between two calls. Reported, not required: splat's ranks do not depend on
    it (each rank sums its own views, then one all-reduce gives every rank the same bits).
(b) ranks: 2 processes (NCCL on 2 GPUs when ``--device`` is cuda or auto and two are present, else gloo on
    the CPU, reported as "cpu") each add different views to the statistics, reduce them as a training step
    does (``DistContext.reduce_densify``) and compare checksums of the statistics and the parameters across
    the ranks (``DistContext.check_params_agree``). Then rank 1 changes one element of one tensor by one ulp:
    the check must stop naming that tensor. Required: the exit status is 1 when either part fails.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _inputs(n: int, cameras: int, seed: int, device: torch.device):
    """Parameters and one step's rasterizer meta for ``cameras`` views of ``n`` Gaussians (seeded)."""
    gen = torch.Generator().manual_seed(seed)
    params = {
        "means": torch.randn(n, 3, generator=gen),
        "scales": torch.randn(n, 3, generator=gen) * 0.1 - 3,
        "opacities": torch.randn(n, generator=gen),
    }
    params = {k: v.to(device) for k, v in params.items()}
    from splat.training import _gsplat

    radii_shape = (
        (cameras, n, 2) if _gsplat._release(_gsplat.installed_version()) >= (1, 5, 0) else (cameras, n)
    )
    # most Gaussians seen by every camera: many repeated indices in the update's index_add_
    seen = torch.rand(cameras, n, generator=gen) < 0.9
    radii = (torch.rand(radii_shape, generator=gen) * 20 + 1).int()
    radii = radii * (seen[..., None] if len(radii_shape) == 3 else seen)
    means2d = torch.zeros(cameras, n, 2, device=device, requires_grad=True)
    means2d.grad = (torch.randn(cameras, n, 2, generator=gen) * 1e-3).to(device)
    info = {"means2d": means2d, "radii": radii.to(device), "width": 64, "height": 48, "n_cameras": cameras,
            "gaussian_ids": None}  # fmt: skip
    return params, info


def _densifier():
    from splat.config import DensifyConfig
    from splat.training.strategy import Densifier

    return Densifier(DensifyConfig(strategy="default", refine_start=0, refine_stop=10, refine_every=1))


def update_twice(n: int, cameras: int, device: torch.device) -> tuple[bool, float]:
    """(bits equal, largest difference) of two statistics updates on the same inputs."""
    from splat.training import _gsplat

    results = []
    for _ in range(2):
        d = _densifier()
        params, info = _inputs(n, cameras, 0, device)
        _gsplat.update_statistics(d.strategy, params, d.state, info)
        results.append(torch.cat([d.state["grad2d"], d.state["count"]]).cpu())
    a, b = results
    return torch.equal(a, b), float((a - b).abs().max())


def _rank(rank: int, world: int, backend: str, store: str, n: int, cameras: int, result: str) -> None:
    from splat.training import _gsplat
    from splat.training.distributed import DistContext, RanksDisagree

    device = torch.device(f"cuda:{rank}") if backend == "nccl" else torch.device("cpu")
    if backend == "nccl":
        torch.cuda.set_device(device)
    torch.distributed.init_process_group(backend, init_method=f"file://{store}", rank=rank, world_size=world)
    ctx = DistContext(rank=rank, world_size=world, local_rank=rank)
    lines = []
    try:
        d = _densifier()
        params, _ = _inputs(n, cameras, 0, device)  # the same Gaussians on every rank
        _, info = _inputs(n, cameras, 1 + rank, device)  # each rank's own views
        _gsplat.update_statistics(d.strategy, params, d.state, info)
        ctx.reduce_densify(d.state)
        tensors = {**params, "grad2d": d.state["grad2d"], "count": d.state["count"]}
        try:
            ctx.check_params_agree(tensors, 1, device)
            lines.append("ranks: checksums equal after the reduction")
        except RanksDisagree as e:
            lines.append(f"ranks: FAIL {e}")
        if rank == 1:  # one ulp of one element
            s = tensors["scales"]
            s.view(-1)[7] = torch.nextafter(s.view(-1)[7], torch.tensor(float("inf"), device=device))
        try:
            ctx.check_params_agree(tensors, 2, device)
            lines.append("ranks: FAIL a one-ulp difference in 'scales' was not seen")
        except RanksDisagree as e:
            ok = "'scales'" in str(e)
            lines.append(
                f"ranks: {'a one-ulp difference is named' if ok else 'FAIL wrong tensor named'}: {e}"
            )
    finally:
        torch.distributed.destroy_process_group()
    if rank == 0:
        Path(result).write_text("\n".join(lines))
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(0)  # as splat.training.distributed.end_worker (gloo's thread and interpreter finalisation)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--gaussians", type=int, default=200_000)
    ap.add_argument("--cameras", type=int, default=4)
    args = ap.parse_args(argv)
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if cuda and not torch.cuda.is_available():
        print("--device cuda: CUDA is not available", file=sys.stderr)
        return 2
    device = torch.device("cuda" if cuda else "cpu")
    name = f"cuda ({torch.cuda.get_device_name(0)})" if cuda else "cpu"
    equal, diff = update_twice(args.gaussians, args.cameras, device)
    print(f"update on {name}: {'bits equal' if equal else f'bits differ (largest difference {diff:.3g})'} "
          f"({args.gaussians} Gaussians x {args.cameras} cameras, twice)")  # fmt: skip
    backend = "nccl" if cuda and torch.cuda.device_count() >= 2 else "gloo"
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.txt"
        torch.multiprocessing.spawn(
            _rank,
            args=(2, backend, str(Path(tmp) / "store"), args.gaussians, args.cameras, str(result)),
            nprocs=2,
            join=True,
        )
        lines = result.read_text().splitlines()
    where = "2 GPUs (nccl)" if backend == "nccl" else "cpu (gloo)"
    for line in lines:
        print(f"{line} [2 ranks on {where}]")
    return 1 if any("FAIL" in line for line in lines) else 0


if __name__ == "__main__":
    sys.exit(main())
