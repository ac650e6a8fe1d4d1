"""Gaussian parameters (a ``ParameterDict``) and their optimizers (a dict with the same keys).

Keys and pre-activation storage follow gsplat's ``simple_trainer``:
    means      [N, 3]      world-frame centres
    scales     [N, 3]      log of the axis scales            (activation: exp)
    quats      [N, 4]      wxyz rotation, unnormalised       (activation: normalise)
    opacities  [N]         logit of the opacity              (activation: sigmoid)
    sh0        [N, 1, 3]   SH DC coefficient per channel
    shN        [N, 15, 3]  higher-order SH coefficients (degree 3)
"""

from __future__ import annotations

import torch
from torch import Tensor

from splat.gaussians import PARAM_KEYS  # noqa: F401  (defined torch-free in the package)
from splat.render._torch_impl import SH_C0


def rgb_to_sh(rgb: Tensor) -> Tensor:
    """Colours in [0, 1] -> SH DC coefficients (inverse of ``c = SH_C0 * dc + 0.5``)."""
    return (rgb - 0.5) / SH_C0


def sh_to_rgb(sh: Tensor) -> Tensor:
    return sh * SH_C0 + 0.5


def make_params(
    means: Tensor,  # [N, 3]
    scales: Tensor,  # [N, 3] log scales
    quats: Tensor,  # [N, 4]
    opacities: Tensor,  # [N] logits
    sh0: Tensor,  # [N, 1, 3]
    shN: Tensor,  # [N, K-1, 3]
) -> torch.nn.ParameterDict:
    values = dict(means=means, scales=scales, quats=quats, opacities=opacities, sh0=sh0, shN=shN)
    return torch.nn.ParameterDict(
        {k: torch.nn.Parameter(v.detach().clone().float().contiguous()) for k, v in values.items()}
    )


def make_optimizers(
    params: torch.nn.ParameterDict,
    lrs: dict[str, float],
    eps: float = 1e-15,
    betas: tuple[float, float] = (0.9, 0.999),
) -> dict:
    """One Adam per parameter, keyed like ``params`` (what gsplat's strategies expect)."""
    missing = set(params.keys()) - set(lrs)
    if missing:
        raise ValueError(f"no learning rate for parameters {sorted(missing)}")
    return {
        name: torch.optim.Adam([{"params": [p], "lr": lrs[name], "name": name}], eps=eps, betas=betas)
        for name, p in params.items()
    }


def set_lr(optimizers: dict, name: str, lr: float) -> None:
    for group in optimizers[name].param_groups:
        group["lr"] = lr
