"""The divergence guard: notices a non-finite loss or parameter without making the device wait every step.

The first step at which the loss and each parameter became non-finite is tracked on the device
(:meth:`DivergenceGuard.track`, no host synchronisation); :meth:`DivergenceGuard.check` reads it (one sync)
and raises :class:`TrainingDiverged` naming the culprit and the learning-rate flag to lower.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from splat.gaussians.params import PARAM_KEYS
from splat.training.errors import TrainingDiverged

# The setting to lower when a parameter diverges (flags as ``splat train --help`` spells them).
LR_SETTING = {
    "means": "--means-lr",
    "scales": "--scales-lr",
    "quats": "--quats-lr",
    "opacities": "--opacities-lr",
    "sh0": "--sh0-lr",
    "shN": "--shN-lr",
}


@torch.no_grad()
def finite_flags(params: dict[str, Tensor]) -> Tensor:
    """[len(PARAM_KEYS)] bool: each parameter finite after activation (a log-scale of 1e6 is finite,
    its scale is not). One reduction per parameter, no host synchronisation."""
    flags = []
    for k in PARAM_KEYS:
        p = params[k]
        flags.append(torch.isfinite(torch.exp(p) if k == "scales" else p).all())
    return torch.stack(flags)


class DivergenceGuard:
    """Tracks when the loss / each parameter first became non-finite; ``ckpt_dir`` holds the run's
    checkpoints (the last good one is named in the error)."""

    def __init__(self, ckpt_dir: Path):
        self.ckpt_dir = ckpt_dir
        self.first_bad: Tensor | None = None  # [1 + P] step (0: never), on the device

    def start(self, device: torch.device) -> None:
        self.first_bad = torch.zeros(1 + len(PARAM_KEYS), dtype=torch.long, device=device)

    @torch.no_grad()
    def track(self, step: int, loss: Tensor, params: dict[str, Tensor]) -> None:
        bad = ~torch.cat([torch.isfinite(loss.detach()).reshape(1), finite_flags(params)])  # [1 + P]
        self.first_bad = torch.where((self.first_bad == 0) & bad, step, self.first_bad)

    def check(self, step: int, params: dict[str, Tensor], recheck: bool = False) -> None:
        """Raise :class:`TrainingDiverged` if the loss or a parameter has been non-finite (one sync).
        ``recheck``: the parameters as they are now (densification ran after the last tracking)."""
        if recheck:
            bad_now = ~finite_flags(params)
            self.first_bad[1:] = torch.where((self.first_bad[1:] == 0) & bad_now, step, self.first_bad[1:])
        first = self.first_bad.tolist()
        if not any(first):
            return
        loss_step, param_steps = first[0], dict(zip(PARAM_KEYS, first[1:], strict=True))
        bad = {k: s for k, s in param_steps.items() if s}
        earliest = min(bad.values(), default=0)
        if bad and (loss_step == 0 or earliest < loss_step):
            # a parameter overflowed before the loss did: that update is the culprit
            names = [k for k, s in bad.items() if s == earliest]
            raise self.diverged(
                earliest, names[0], f"{' and '.join(names)} became non-finite at step {earliest}", names
            )
        # the loss first: every parameter it reaches turns non-finite in the same update
        raise self.diverged(
            loss_step, "loss", f"the loss became non-finite at step {loss_step}", list(PARAM_KEYS)
        )

    def diverged(self, step: int, what: str, detail: str, names: list[str] | None = None) -> TrainingDiverged:
        names = names or [what]
        flags = [LR_SETTING[n] for n in names if n in LR_SETTING]
        ckpts = sorted(self.ckpt_dir.glob("ckpt_*.pt"))
        good = ckpts[-1] if ckpts else None
        kept = f"the last good checkpoint is {good}" if good else "no checkpoint had been written yet"
        message = (
            f"training diverged: {detail}; lower {' / '.join(flags)}. Nothing non-finite was written; {kept}."
        )
        return TrainingDiverged(message, step, what, good)
