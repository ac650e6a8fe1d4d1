"""Data-parallel training on ``torch.distributed``: every rank holds the same Gaussians.

Launched by ``torchrun`` (``WORLD_SIZE > 1`` in the environment), ``splat train`` runs one process per
device. Each rank

* builds the same Gaussians from the same seed, and draws the same random numbers (densification's split
  sampling, MCMC relocation and noise all use the generator seeded by ``config.seed``);
* renders its own slice of the step's global batch (``world_size x batch_size`` views);
* averages its gradients with the others' (:meth:`DistContext.average_gradients`, one all-reduce per step),
  so every rank's Adam step is the same;
* before every refine step, sums the densification statistics of all ranks and the step's screen-space
  gradients (:meth:`DistContext.sync_densify`), so every rank makes the same clone / split / prune
  decisions and the Gaussians stay identical without ever being broadcast.

Only rank 0 writes (config, checkpoints, PLY, metrics, renders) and shows the progress bar; evaluation is
split across ranks and gathered on rank 0. A single process uses :data:`SINGLE`, whose methods do nothing,
so the single-process path is unchanged.

If one rank raises (divergence, a bad file), the others would wait for it forever inside a collective:
``torchrun`` tears every worker down when one exits with an error, and the process group's ``timeout``
bounds the wait otherwise. Ctrl-C is agreed on by all ranks (:meth:`DistContext.any`) so that they stop
at the same step and write one checkpoint.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


class LaunchError(ValueError):
    """The torchrun environment or the device settings do not fit a distributed run."""


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the run: ``rank`` of ``world_size``, on ``cuda:local_rank`` or the CPU."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only one that writes files and shows progress."""
        return self.rank == 0

    # -- collectives (no-ops on one process) ---------------------------------------------------------
    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    @torch.no_grad()
    def average_gradients(self, params: torch.nn.ParameterDict) -> None:
        """Replace every gradient by its mean over the ranks (one flat all-reduce). A missing gradient
        counts as zeros, so that every rank reduces the same buffer."""
        if not self.enabled:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params.values()]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for p in params.values():
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when ``flag`` is true on any rank (one small all-reduce)."""
        if not self.enabled:
            return flag
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def check_same_count(self, n: int, step: int, device: torch.device) -> None:
        """Raise if the ranks hold different numbers of Gaussians (they made different densification
        decisions: a bug, reported here rather than as a crash in the next all-reduce)."""
        if not self.enabled:
            return
        t = torch.tensor([n, -n], dtype=torch.int64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        if t[0].item() != -t[1].item():
            raise RuntimeError(
                f"ranks disagree after densification at step {step}: between {-t[1].item()} and "
                f"{t[0].item()} Gaussians (this rank: {n}); their statistics were not reduced the same way"
            )

    def all_gather_objects(self, obj) -> list:
        """Every rank's ``obj`` (picklable), in rank order."""
        if not self.enabled:
            return [obj]
        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    # -- densification statistics -------------------------------------------------------------------
    @torch.no_grad()
    def sync_densify(self, state: dict, info: dict) -> dict:
        """Before a refine step (gsplat's ``DefaultStrategy``): make every rank's running statistics the
        sums over all ranks, and return the step's meta with every rank's cameras in it.

        gsplat updates its statistics with the step's screen-space gradients and refines in one call,
        so this step's contribution cannot be summed afterwards. Instead the returned meta holds all
        ranks' ``means2d`` gradients [W*C, N, 2] and ``radii`` [W*C, N, 2] with ``n_cameras = W*C``; the
        gradients are divided by W because gsplat multiplies them by ``n_cameras`` (they came from each
        rank's mean loss, while the global loss is the mean over all W*C views). Every rank then adds
        exactly what a single process rendering the whole global batch would have added.
        """
        if not self.enabled:
            return info
        self._sum_state(state, keep_on_all=True)
        grads = info["means2d"].grad
        if grads is None:  # nothing reached the screen this step
            grads = torch.zeros_like(info["means2d"])
        grads = torch.cat(self._all_gather(grads.contiguous())) / self.world_size
        radii = torch.cat(self._all_gather(info["radii"].contiguous()))
        means2d = torch.zeros_like(grads)
        means2d.grad = grads
        return {
            "means2d": means2d,
            "radii": radii,
            "width": info["width"],
            "height": info["height"],
            "n_cameras": info["n_cameras"] * self.world_size,
            "gaussian_ids": None,
        }

    @torch.no_grad()
    def gather_densify_state(self, state: dict) -> None:
        """Before a checkpoint: rank 0's statistics become the sums over all ranks (what a single process
        would hold) and the other ranks' become zero, so the next sum is unchanged and rank 0's state is
        the one to save."""
        if self.enabled:
            self._sum_state(state, keep_on_all=False)

    def localize_loaded_state(self, state: dict) -> None:
        """After every rank loaded the same (summed) checkpoint state: only rank 0 keeps the sums."""
        if self.enabled and not self.is_main:
            for key in ("grad2d", "count"):
                if isinstance(state.get(key), Tensor):
                    state[key].zero_()

    def _sum_state(self, state: dict, keep_on_all: bool) -> None:
        for key, op in (
            ("grad2d", dist.ReduceOp.SUM),
            ("count", dist.ReduceOp.SUM),
            ("radii", dist.ReduceOp.MAX),
        ):
            t = state.get(key)
            # gsplat creates its statistics lazily, at the first step: every rank has them by then
            if not isinstance(t, Tensor):
                continue
            dist.all_reduce(t, op=op)
            if op == dist.ReduceOp.SUM and not keep_on_all and not self.is_main:
                t.zero_()

    def _all_gather(self, t: Tensor) -> list[Tensor]:
        out = [torch.empty_like(t) for _ in range(self.world_size)]
        dist.all_gather(out, t)
        return out


SINGLE = DistContext()
"""A single process: every collective is a no-op."""


def from_env() -> DistContext:
    """The context ``torchrun`` describes in the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``);
    :data:`SINGLE` when ``WORLD_SIZE`` is unset or 1."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as e:
        raise LaunchError(f"WORLD_SIZE, RANK and LOCAL_RANK must be integers ({e})") from e
    if world <= 1:
        return SINGLE
    if not 0 <= rank < world:
        raise LaunchError(f"RANK={rank} is outside 0..{world - 1} (WORLD_SIZE={world})")
    return DistContext(rank=rank, world_size=world, local_rank=local)


def rank_device(ctx: DistContext, device: str) -> str:
    """The device string for this rank: ``cuda:LOCAL_RANK`` for "auto" (with CUDA) and "cuda"; a fixed
    "cuda:N" is refused (every rank would share one GPU)."""
    if not ctx.enabled:
        return device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        return f"cuda:{ctx.local_rank}"
    if device.startswith("cuda:"):
        raise LaunchError(
            f"--device {device} names one GPU for all {ctx.world_size} ranks; under torchrun use "
            "--device cuda (or auto): rank r then runs on cuda:LOCAL_RANK"
        )
    if device == "mps":
        raise LaunchError("distributed training runs on CUDA (nccl) or the CPU (gloo), not on mps")
    return device


@contextlib.contextmanager
def process_group(ctx: DistContext, device: str, timeout_s: float = 1800.0):
    """Initialise the default process group for ``ctx`` (nccl on CUDA, gloo on CPU) from torchrun's
    environment (``MASTER_ADDR`` / ``MASTER_PORT``), and destroy it on exit. Nothing on one process."""
    if not ctx.enabled or dist.is_initialized():
        yield
        return
    backend = "nccl" if device.startswith("cuda") else "gloo"
    kwargs = {}
    if backend == "nccl":
        torch.cuda.set_device(torch.device(device))
        kwargs["device_id"] = torch.device(device)
    dist.init_process_group(
        backend,
        rank=ctx.rank,
        world_size=ctx.world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
        **kwargs,
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def end_worker(code: int) -> None:
    """End a distributed worker process now with ``code``, without the interpreter's finalisation.

    After a run, gloo's background thread may still be releasing the tensors of finished collectives when
    the main thread finalises the interpreter; it then cannot take the GIL and the process aborts (SIGABRT,
    "terminate called without an active exception"; seen with torch 2.13 on CPU, after every file had been
    written). Everything the run writes is written atomically and closed by now: flush the streams and exit.
    Does nothing (returns) outside a distributed launch."""
    if not from_env().enabled:
        return
    import sys

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


__all__ = ["SINGLE", "DistContext", "LaunchError", "from_env", "process_group", "rank_device", "end_worker"]
