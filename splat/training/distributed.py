"""Data-parallel training on ``torch.distributed``: every rank holds the same Gaussians.

Launched by ``torchrun`` (``WORLD_SIZE > 1`` in the environment), ``splat train`` runs one process per
device. Each rank

* builds the same Gaussians from the same seed, and draws the same random numbers (densification's split
  sampling, MCMC relocation and noise all use the generator seeded by ``config.seed``);
* renders its own slice of the step's global batch (``world_size x batch_size`` views);
* averages its gradients with the others' (:meth:`DistContext.average_gradients`, one all-reduce per step),
  so every rank's Adam step is the same;
* accumulates the densification statistics of its own views only (gsplat's update, on its own cameras);
  before every refine step one all-reduce sums them (:meth:`DistContext.reduce_densify`). Every rank then
  holds the same bits by construction (each element of an all-reduce's result is computed once and sent to
  every rank), so every rank makes the same clone / split / prune decisions and the Gaussians stay
  identical without ever being broadcast;
* compares a checksum of its parameters with the others' after every refine step and every
  :data:`CHECK_EVERY` steps (:meth:`DistContext.check_params_agree`, one all-reduce of one integer per
  tensor): a disagreement stops the run naming the first tensor that differs.

Only rank 0 writes (config, checkpoints, PLY, metrics, renders) and shows the progress bar; evaluation is
split across ranks: the scores are gathered on every rank, the renders (uint8) on rank 0 only. A single
process uses :data:`SINGLE`, whose methods do nothing, so the single-process path is unchanged.

If one rank raises (divergence, a bad file), the others would wait for it forever inside a collective:
``torchrun`` tears every worker down when one exits with an error, and the process group's ``timeout``
bounds the wait otherwise (``splat train --dist-timeout``, 2 hours by default: rank 0 may read and
undistort the scene while the others wait; ``splat prepare --train-cache-dir`` does that beforehand).
Ctrl-C is agreed on by all ranks (:meth:`DistContext.any`) so that they stop at the same step and write
one checkpoint.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

CHECK_EVERY = 100
"""Steps between two parameter checksums across ranks (and after every refine step)."""

DEFAULT_TIMEOUT_S = 7200.0
"""The process group's default timeout: how long a collective waits for the slowest rank."""


class RanksDisagree(RuntimeError):
    """The ranks' Gaussians are no longer identical (a bug or a non-deterministic reduction)."""


class LaunchError(ValueError):
    """The torchrun environment or the device settings do not fit a distributed run."""


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the run: ``rank`` of ``world_size``, on ``cuda:local_rank`` or the CPU."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 0  # processes on this node (torchrun's LOCAL_WORLD_SIZE); 0: all of them

    @property
    def nodes(self) -> int:
        """Number of nodes (machines) of the run."""
        per_node = self.local_world_size or self.world_size
        return max(1, self.world_size // per_node)

    @property
    def procs_per_node(self) -> int:
        return self.local_world_size or self.world_size

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
            raise RanksDisagree(
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

    @torch.no_grad()
    def check_params_agree(self, tensors: dict[str, Tensor], step: int, device: torch.device) -> None:
        """Raise :class:`RanksDisagree` naming the first of ``tensors`` whose bits differ between ranks.

        Each tensor becomes one int64 checksum of its bits (a position-weighted integer sum: exact, so
        its order of summation does not matter); one all-reduce of [checksums, -checksums] with MAX gives
        every rank the largest and the smallest of each, which differ when any rank's bits differ."""
        if not self.enabled:
            return
        names = list(tensors)
        sums = torch.stack([param_checksum(tensors[k]).to(device) for k in names])
        both = torch.cat([sums, -sums])
        dist.all_reduce(both, op=dist.ReduceOp.MAX)
        differ = (both[: len(names)] != -both[len(names) :]).nonzero()
        if len(differ):
            name = names[int(differ[0])]
            raise RanksDisagree(
                f"ranks disagree at step {step}: parameter {name!r} differs between ranks (checksums "
                f"{-int(both[len(names) + int(differ[0])])} .. {int(both[int(differ[0])])}; this rank's is "
                f"{int(sums[int(differ[0])])}); the run is stopped before the ranks drift further apart"
            )

    # -- densification statistics -------------------------------------------------------------------
    @torch.no_grad()
    def reduce_densify(self, state: dict) -> None:
        """Before a refine step (gsplat's ``DefaultStrategy``), after this rank added its own views of the
        step: every rank's running statistics become the sums over all ranks, in one all-reduce of the
        summed tensors (``grad2d`` and ``count``; ``radii``, kept by gsplat only for 2D-scale refinement,
        takes a second one with MAX).

        Each rank's statistics are what a single process adds for the same views: gsplat multiplies the
        screen-space gradients by the number of cameras of the (local) mean loss, so the sum over the
        ranks is what one process rendering the whole global batch holds. The all-reduce's result is
        the same bits on every rank, whatever order each rank summed its own views in."""
        if not self.enabled:
            return
        self._sum_state(state, keep_on_all=True)

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
        # gsplat creates its statistics lazily, at the first step: every rank has them by then
        summed = [state[k] for k in ("grad2d", "count") if isinstance(state.get(k), Tensor)]
        if summed:
            flat = torch.cat([t.reshape(-1).float() for t in summed])
            dist.all_reduce(flat)
            offset = 0
            for t in summed:
                n = t.numel()
                part = flat[offset : offset + n].view_as(t)
                t.copy_(part if keep_on_all or self.is_main else torch.zeros_like(part))
                offset += n
        radii = state.get("radii")
        if isinstance(radii, Tensor):
            dist.all_reduce(radii, op=dist.ReduceOp.MAX)

    def gather_to_main(self, obj) -> list | None:
        """Every rank's ``obj`` (picklable), in rank order, on rank 0; None on the other ranks."""
        if not self.enabled:
            return [obj]
        out: list | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out


@torch.no_grad()
def param_checksum(t: Tensor) -> Tensor:
    """An int64 checksum [] of ``t``'s bits: equal for equal bits; any changed element (or two swapped
    ones) changes it. Exact integer arithmetic (wrapping), so the same on every device and order."""
    flat = t.detach().reshape(-1)
    if flat.dtype == torch.float64:
        bits = flat.view(torch.int64)
    elif flat.element_size() == 4 and flat.is_floating_point():
        bits = flat.view(torch.int32).long()
    else:
        bits = flat.long()
    weights = torch.arange(1, len(bits) + 1, device=bits.device, dtype=torch.int64) % 1_000_003 + 1
    return (bits * weights).sum() + len(bits)


SINGLE = DistContext()
"""A single process: every collective is a no-op."""


def from_env() -> DistContext:
    """The context ``torchrun`` describes in the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``);
    :data:`SINGLE` when ``WORLD_SIZE`` is unset or 1."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    except ValueError as e:
        raise LaunchError(f"WORLD_SIZE, RANK and LOCAL_RANK must be integers ({e})") from e
    if world <= 1:
        return SINGLE
    if not 0 <= rank < world:
        raise LaunchError(f"RANK={rank} is outside 0..{world - 1} (WORLD_SIZE={world})")
    return DistContext(rank=rank, world_size=world, local_rank=local, local_world_size=local_world)


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
def process_group(ctx: DistContext, device: str, timeout_s: float = DEFAULT_TIMEOUT_S):
    """Initialise the default process group for ``ctx`` (nccl on CUDA, gloo on CPU) from torchrun's
    environment (``MASTER_ADDR`` / ``MASTER_PORT``), and destroy it on exit. Nothing on one process.
    ``timeout_s``: how long a collective (or the barrier behind which rank 0 reads the scene) waits."""
    if not timeout_s > 0:
        raise LaunchError(f"the process-group timeout must be a positive number of seconds, got {timeout_s}")
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


def resume_command(ctx: DistContext, scene, out, checkpoint) -> list[str]:
    """The command line that resumes a run from ``checkpoint``, as many processes as this one had: on one
    node ``torchrun --nproc_per_node P``; on several, ``--nnodes N --nproc_per_node P`` (P per node),
    to be run on every node with the rendezvous options of the first launch."""
    scene_args = ["train", str(scene), "--out", str(out), "--resume", str(checkpoint)]
    if not ctx.enabled:
        return ["splat", *scene_args]
    launcher = ["torchrun"]
    if ctx.nodes > 1:
        launcher += ["--nnodes", str(ctx.nodes)]
    launcher += ["--nproc_per_node", str(ctx.procs_per_node), "-m", "splat.cli"]
    return [*launcher, *scene_args]


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


__all__ = [
    "CHECK_EVERY",
    "DEFAULT_TIMEOUT_S",
    "SINGLE",
    "DistContext",
    "LaunchError",
    "RanksDisagree",
    "param_checksum",
    "resume_command",
    "from_env",
    "process_group",
    "rank_device",
    "end_worker",
]
