"""The one place where splat reaches into gsplat's strategy module, and what depends on its version.

gsplat's public API covers rasterization and the strategy classes; the MCMC relocation on CPU also needs
two private helpers of ``gsplat.strategy.ops`` (``_multinomial_sample``, ``_update_param_with_optimizer``).
They are imported here only, so that a gsplat release that moves them fails with one clear message
instead of an ``ImportError`` deep inside a training step.

Opacity reset, by version (read from gsplat's ``strategy/default.py`` at each tag):
    1.1.0 - 1.5.2   ``if step % self.reset_every == 0:`` resets to ``2 * prune_opa``
    1.5.3           ``if step % self.reset_every == 0 & step > 0:`` parses as the chained comparison
                    ``step % reset_every == (0 & step) > 0``, which ends in ``0 > 0``: never resets
    after 1.5.3     ``... == 0 and step > 0`` (commit 6e8c837, "Fix bit-wise and"): resets again
so only 1.5.3 needs splat to reset by itself (:func:`gsplat_resets_opacity`).
"""

from __future__ import annotations

import re
from types import SimpleNamespace

SUPPORTED = "gsplat>=1.4,<2"


class GsplatIncompatible(RuntimeError):
    """The installed gsplat lacks something splat needs."""


def installed_version() -> str:
    try:
        import gsplat
    except ImportError as e:
        raise GsplatIncompatible(f"gsplat is not installed; pip install '{SUPPORTED}'") from e
    return str(getattr(gsplat, "__version__", "0"))


def _release(version: str) -> tuple[int, int, int]:
    """'1.5.3', '1.5.3+pt24cu124', '1.6.0.dev0' -> (1, 5, 3) / (1, 6, 0); missing parts are 0."""
    m = re.match(r"\s*v?(\d+)(?:\.(\d+))?(?:\.(\d+))?", version)
    if m is None:
        raise ValueError(f"cannot read gsplat version {version!r}")
    return tuple(int(g or 0) for g in m.groups())  # type: ignore[return-value]


def gsplat_resets_opacity(version: str) -> bool:
    """Whether ``DefaultStrategy.step_post_backward`` of this gsplat version resets opacities itself
    (every ``reset_every`` steps, to ``2 * prune_opa``). False only for 1.5.3 (see the module notes)."""
    return _release(version) != (1, 5, 3)


def strategy_classes():
    """(DefaultStrategy, MCMCStrategy), public API."""
    try:
        from gsplat.strategy import DefaultStrategy, MCMCStrategy
    except ImportError as e:
        raise GsplatIncompatible(
            f"gsplat {installed_version()} has no gsplat.strategy.DefaultStrategy / MCMCStrategy ({e}); "
            f"splat supports {SUPPORTED}"
        ) from e
    return DefaultStrategy, MCMCStrategy


def strategy_ops() -> SimpleNamespace:
    """gsplat.strategy.ops helpers: ``multinomial_sample`` and ``update_param_with_optimizer`` (private
    in gsplat), ``reset_opa`` (public)."""
    try:
        from gsplat.strategy import ops
    except ImportError as e:
        raise GsplatIncompatible(
            f"cannot import gsplat.strategy.ops ({e}); splat supports {SUPPORTED}"
        ) from e
    names = {
        "multinomial_sample": "_multinomial_sample",
        "update_param_with_optimizer": "_update_param_with_optimizer",
        "reset_opa": "reset_opa",
    }
    missing = [theirs for theirs in names.values() if not hasattr(ops, theirs)]
    if missing:
        raise GsplatIncompatible(
            f"gsplat {installed_version()} no longer provides gsplat.strategy.ops.{', '.join(missing)}, "
            f"which splat's CPU densification uses; install a supported version ({SUPPORTED})"
        )
    return SimpleNamespace(**{ours: getattr(ops, theirs) for ours, theirs in names.items()})


def update_statistics(strategy, params, state: dict, info: dict) -> None:
    """Add one step's screen-space gradients and visibility (``info``, the rasterizer's meta) to ``state``,
    as ``DefaultStrategy.step_post_backward`` does before it refines (its private ``_update_state``): used by
    distributed runs, which must sum the statistics over the ranks between the update and the refinement."""
    update = getattr(strategy, "_update_state", None)
    if update is None:
        raise GsplatIncompatible(
            f"gsplat {installed_version()} has no DefaultStrategy._update_state, which splat's distributed "
            f"training calls before it reduces the densification statistics; install {SUPPORTED}"
        )
    update(params, state, info, packed=False)


def empty_statistics_info(info: dict) -> dict:
    """A copy of the rasterizer's meta ``info`` whose statistics update adds nothing (no Gaussian visible,
    zero gradients): for the refine call after :func:`update_statistics` already added the step."""
    import torch

    means2d = torch.zeros_like(info["means2d"])
    means2d.grad = torch.zeros_like(means2d)
    return {**info, "means2d": means2d, "radii": torch.zeros_like(info["radii"]), "gaussian_ids": None}


__all__ = [
    "GsplatIncompatible",
    "empty_statistics_info",
    "update_statistics",
    "gsplat_resets_opacity",
    "installed_version",
    "strategy_classes",
    "strategy_ops",
]
