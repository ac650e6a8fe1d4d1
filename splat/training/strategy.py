"""Densification: gsplat's strategies, plus what they lack for our training.

* ``"default"`` is gsplat's ``DefaultStrategy`` (the original 3DGS clone / split / prune) with the
  original's opacity reset: every ``reset_every`` steps while densifying, opacities become
  ``min(opacity, reset_value)`` (through the inverse sigmoid) and their Adam moments are zeroed, once
  per period. gsplat itself resets to ``2 * prune_opa`` in every version but 1.5.3, where a precedence bug
  disables it (``splat.training._gsplat``). So: under 1.5.3 :class:`Densifier` does the reset; elsewhere gsplat
  does it, and :class:`Densifier` adds a second clamp only when ``reset_value < 2 * prune_opa``
  (``min(min(o, a), b) = min(o, b)`` for ``b <= a``: the same as one reset to ``reset_value``). A
  ``reset_value`` above ``2 * prune_opa`` cannot be honoured there and is refused.
* ``"mcmc"`` is gsplat's ``MCMCStrategy`` (Kheradmand et al. 2024). Its relocation and noise ops call
  CUDA kernels, so on CPU :class:`Densifier` runs PyTorch versions of the same three steps
  (relocate dead Gaussians, add 5% up to ``cap_max``, perturb positions).

The caller owns the parameters and optimizers; :class:`Densifier` owns the strategy and its state and
can save and restore both (``state_dict`` / ``load_state_dict``) for exact resumption.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from splat.config import DensifyConfig
from splat.render._torch_impl import covariance_3d
from splat.training import _gsplat


class Densifier:
    """Owns a gsplat strategy, its running state, and our opacity reset.

    Args:
        cfg: every densification setting (:class:`splat.config.DensifyConfig`, or a ``TrainConfig``,
            which extends it): the strategy (``"default"`` or ``"mcmc"``), when to refine, the original's
            thresholds, the opacity reset and the MCMC hyperparameters. Documented field by field there.
        scene_scale: scene extent (radius of the camera centres x 1.1), the unit for 3D size thresholds.
    """

    def __init__(self, cfg: DensifyConfig, scene_scale: float = 1.0):
        # gsplat imports without touching CUDA; imported lazily (here) to keep `import splat` light
        DefaultStrategy, MCMCStrategy = _gsplat.strategy_classes()
        kind = cfg.strategy
        reset_every = cfg.reset_every
        self.kind = kind
        self.reset_every = reset_every
        self.reset_value = cfg.reset_value
        self.refine_stop = cfg.refine_stop
        self.gsplat_version = _gsplat.installed_version()
        # distributed runs: called as sync(state) right before a refine step of the default strategy, once
        # this rank's views of the step are in the statistics; it sums them over the ranks in place
        # (splat.training.distributed.DistContext.reduce_densify); None on one process
        self.sync = None
        self.gsplat_resets = kind == "default" and _gsplat.gsplat_resets_opacity(self.gsplat_version)
        if self.gsplat_resets and reset_every > 0 and cfg.reset_value > 2 * cfg.prune_opa:
            raise ValueError(
                f"reset_value={cfg.reset_value} cannot be honoured with gsplat {self.gsplat_version}, whose "
                f"DefaultStrategy clamps opacities to 2 x prune_opa = {2 * cfg.prune_opa:g} at each reset: use "
                f"reset_value <= {2 * cfg.prune_opa:g}, raise prune_opa, or install gsplat 1.5.3"
            )
        if kind == "default":
            self.strategy = DefaultStrategy(
                prune_opa=cfg.prune_opa,
                # AbsGS grows on the absolute gradient, whose sums are larger: its own threshold
                grow_grad2d=cfg.absgrad_grow_grad2d if cfg.absgrad else cfg.grow_grad2d,
                grow_scale3d=cfg.grow_scale3d,
                prune_scale3d=cfg.prune_scale3d,
                refine_start_iter=cfg.refine_start,
                refine_stop_iter=cfg.refine_stop,
                refine_every=cfg.refine_every,
                # also used by gsplat to enable pruning of large Gaussians after the first reset;
                # a huge value when resets are disabled
                reset_every=reset_every if reset_every > 0 else 1 << 40,
                absgrad=cfg.absgrad,
                revised_opacity=False,
                verbose=False,
            )
            self.state = self.strategy.initialize_state(scene_scale=scene_scale)
        elif kind == "mcmc":
            self.strategy = MCMCStrategy(
                cap_max=cfg.cap_max,
                noise_lr=cfg.noise_lr,
                refine_start_iter=cfg.refine_start,
                refine_stop_iter=cfg.mcmc_refine_stop,
                refine_every=cfg.refine_every,
                min_opacity=cfg.min_opacity,
                verbose=False,
            )
            self.state = self.strategy.initialize_state()
        else:
            raise ValueError(f"unknown densification strategy {kind!r}; expected 'default' or 'mcmc'")

    # -- hooks ---------------------------------------------------------------------------------------
    def step_pre_backward(self, params, optimizers, step: int, info: dict) -> None:
        if self.kind == "default":
            self.strategy.step_pre_backward(params, optimizers, self.state, step, info)

    def step_post_backward(self, params, optimizers, step: int, info: dict, lr_means: float) -> None:
        if self.kind == "default":
            if self.sync is not None and self.refines_at(step):
                # this rank's own views first, then one reduction over the ranks; gsplat then refines on the
                # reduced statistics and adds nothing more (the step's contribution is already in)
                if info["means2d"].grad is None:  # nothing reached this rank's screens: add zeros
                    info = _gsplat.empty_statistics_info(info)
                _gsplat.update_statistics(self.strategy, params, self.state, info)
                self.sync(self.state)
                info = _gsplat.empty_statistics_info(info)
            self.strategy.step_post_backward(params, optimizers, self.state, step, info, packed=False)
            if self.should_reset_opacity(step):  # after gsplat's own reset, if it did one
                _gsplat.strategy_ops().reset_opa(params, optimizers, state={}, value=self.reset_value)
        elif params["means"].is_cuda:
            self.strategy.step_post_backward(params, optimizers, self.state, step, info, lr=lr_means)
        else:
            self._mcmc_post_backward_cpu(params, optimizers, step, lr_means)

    def refines_at(self, step: int) -> bool:
        """Whether gsplat's ``DefaultStrategy`` clones / splits / prunes (and zeroes its statistics) at
        ``step``: its own condition, read from its settings."""
        s = self.strategy
        return (
            self.kind == "default"
            and step < s.refine_stop_iter
            and step > s.refine_start_iter
            and step % s.refine_every == 0
            and step % s.reset_every >= getattr(s, "pause_refine_after_reset", 0)
        )

    def is_reset_step(self, step: int) -> bool:
        """Steps at which opacities are reset (by gsplat or by us), as the original: every
        ``reset_every`` steps while densifying."""
        return (
            self.kind == "default"
            and self.reset_every > 0
            and step > 0
            and step % self.reset_every == 0
            and step < self.refine_stop
        )

    def should_reset_opacity(self, step: int) -> bool:
        """Whether :class:`Densifier` clamps opacities itself at ``step`` (see the module notes)."""
        if not self.is_reset_step(step):
            return False
        return not self.gsplat_resets or self.reset_value < 2 * self.strategy.prune_opa

    # -- checkpointing -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "state": dict(self.state)}

    def load_state_dict(self, sd: dict[str, Any], device: torch.device | str) -> None:
        if sd["kind"] != self.kind:
            raise ValueError(f"checkpoint used strategy {sd['kind']!r}, this run uses {self.kind!r}")
        self.state = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in sd["state"].items()}

    # -- MCMC on CPU ---------------------------------------------------------------------------------
    @torch.no_grad()
    def _mcmc_post_backward_cpu(self, params, optimizers, step: int, lr_means: float) -> None:
        s = self.strategy
        binoms = self.state["binoms"] = self.state["binoms"].to(params["means"].device)
        if s.refine_start_iter < step < s.refine_stop_iter and step % s.refine_every == 0:
            dead = torch.sigmoid(params["opacities"].flatten()) <= s.min_opacity
            if dead.any():
                _relocate_cpu(params, optimizers, dead, binoms, s.min_opacity)
            n = len(params["means"])
            n_new = max(0, min(s.cap_max, int(1.05 * n)) - n)
            if n_new > 0:
                _sample_add_cpu(params, optimizers, n_new, binoms, s.min_opacity)
        # perturb low-opacity Gaussians along their own covariance
        opacities = torch.sigmoid(params["opacities"].flatten())
        covars = covariance_3d(params["quats"], torch.exp(params["scales"]))  # [N, 3, 3]
        gate = 1.0 / (1.0 + torch.exp(-100.0 * ((1.0 - opacities) - 0.995)))  # [N]
        noise = torch.randn_like(params["means"]) * gate[:, None] * (lr_means * s.noise_lr)
        params["means"].add_(torch.einsum("nij,nj->ni", covars, noise))


def relocation_torch(
    opacities: Tensor, scales: Tensor, ratios: Tensor, binoms: Tensor
) -> tuple[Tensor, Tensor]:
    """Eq. 9 of the 3DGS-MCMC paper: a Gaussian copied ``ratio`` times keeps its rendered footprint.

    opacities [N], scales [N, 3], ratios [N] (copies incl. the original), binoms [n_max, n_max].
    new_o = 1 - (1 - o)^(1/n);  new_s = o / (sum_{i=1..n} sum_{k=0..i-1} C(i-1,k) (-1)^k new_o^(k+1) / sqrt(k+1)) * s
    """
    n_max = binoms.shape[0]
    n = ratios.clamp(1, n_max).long()  # [N]
    new_o = 1.0 - torch.pow(1.0 - opacities, 1.0 / n.to(opacities.dtype))
    i = torch.arange(1, n_max + 1, device=opacities.device)  # [I]
    k = torch.arange(n_max, device=opacities.device)  # [K]
    coeff = binoms[(i - 1)[:, None], k[None, :]] * torch.where(k % 2 == 0, 1.0, -1.0) / torch.sqrt(k + 1.0)
    valid = (k[None, :] <= (i - 1)[:, None]).float()  # [I, K]
    powers = new_o[:, None] ** (k + 1)[None, :].float()  # [N, K]
    per_i = powers @ (coeff * valid).T  # [N, I]
    denom = (per_i * (i[None, :] <= n[:, None]).float()).sum(-1)  # [N]
    return new_o, (opacities / denom)[:, None] * scales


def _relocated_writer(params, opacities: Tensor, sampled: Tensor, binoms: Tensor, min_opacity: float):
    """The MCMC relocation of the ``sampled`` Gaussians (which may repeat): a function writing their new
    opacity and scale into a parameter tensor in place (other parameters are left alone)."""
    new_o, new_s = relocation_torch(
        opacities[sampled], torch.exp(params["scales"])[sampled], torch.bincount(sampled)[sampled] + 1, binoms
    )
    new_o = new_o.clamp(min=min_opacity, max=1.0 - torch.finfo(torch.float32).eps)

    def write(name: str, p: Tensor) -> None:
        if name == "opacities":
            p[sampled] = torch.logit(new_o).reshape(p[sampled].shape)
        elif name == "scales":
            p[sampled] = torch.log(new_s)

    return write


def _relocate_cpu(params, optimizers, dead: Tensor, binoms: Tensor, min_opacity: float) -> None:
    ops = _gsplat.strategy_ops()
    multinomial, update = ops.multinomial_sample, ops.update_param_with_optimizer
    opacities = torch.sigmoid(params["opacities"].flatten())
    dead_idx = dead.nonzero(as_tuple=True)[0]
    alive_idx = (~dead).nonzero(as_tuple=True)[0]
    if len(alive_idx) == 0:
        return
    sampled = alive_idx[multinomial(opacities[alive_idx], len(dead_idx), replacement=True)]
    write = _relocated_writer(params, opacities, sampled, binoms, min_opacity)

    def param_fn(name: str, p: Tensor) -> Tensor:
        write(name, p)
        p[dead_idx] = p[sampled]
        return torch.nn.Parameter(p, requires_grad=p.requires_grad)

    def optimizer_fn(key: str, v: Tensor) -> Tensor:
        v[sampled] = 0
        return v

    update(param_fn, optimizer_fn, params, optimizers)


def _sample_add_cpu(params, optimizers, n: int, binoms: Tensor, min_opacity: float) -> None:
    ops = _gsplat.strategy_ops()
    multinomial, update = ops.multinomial_sample, ops.update_param_with_optimizer
    opacities = torch.sigmoid(params["opacities"].flatten())
    sampled = multinomial(opacities, n, replacement=True)
    write = _relocated_writer(params, opacities, sampled, binoms, min_opacity)

    def param_fn(name: str, p: Tensor) -> Tensor:
        write(name, p)
        return torch.nn.Parameter(torch.cat([p, p[sampled]]), requires_grad=p.requires_grad)

    def optimizer_fn(key: str, v: Tensor) -> Tensor:
        return torch.cat([v, torch.zeros((len(sampled), *v.shape[1:]), dtype=v.dtype, device=v.device)])

    update(param_fn, optimizer_fn, params, optimizers)


__all__ = ["Densifier", "relocation_torch"]
