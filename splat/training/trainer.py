"""Train 3D Gaussians on a COLMAP scene: ``train(scene, config) -> TrainResult``.

The run, in order:
    1. resolve the scene (run ``splat.scene.sfm.prepare`` when there is no model yet), validate all inputs
    2. check the output folder is writable, then write ``config.json``
    3. initialise Gaussians from the SfM points (or restore a checkpoint, or start from a loaded model)
    4. optimise: 0.8 * L1 + 0.2 * (1 - SSIM), the original's learning rates, densification
    5. evaluate held-out views at ``eval_steps`` (PSNR, SSIM, LPIPS when available) -> ``metrics.json``
    6. write checkpoints and PLY files (every file through ``safeio``: a temp file, then a rename)

The :class:`Trainer` holds a :class:`splat.gaussians.Model` (the Gaussians and the background, which render
on their own) and composes it with the optimizers, the densification strategy and three named helpers: the
:class:`~splat.training.guard.DivergenceGuard`, the :class:`~splat.training.interrupt.InterruptHandler` (Ctrl-C)
and the :class:`~splat.training.checkpointing.Checkpointer`. :meth:`Trainer.continue_training` goes on from the
current Gaussians with other settings (``splat edit`` trains on this way).

Randomness: all of it (view order, gsplat's densification sampling) is driven by ``config.seed``
inside ``torch.random.fork_rng``, so the caller's global RNG state is untouched, and checkpoints store
the forked RNG state so that a resumed run ends bit-identical to an uninterrupted one (on CPU).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from safeio import remove_stale_temps
from splat.config import (
    ConfigError,
    TrainConfig,
    config_to_dict,
    scaled_schedule,
    scene_config,
    schedule_warnings,
    validate,
)
from splat.device import resolve_device
from splat.gaussians.init import init_gaussians
from splat.gaussians.model import Model, checked_params, start_background_logit
from splat.gaussians.params import make_optimizers, set_lr
from splat.outputs import OutputError, atomic_write_text, check_output_dir, would_be_writable
from splat.scene.colmap import SceneError, find_model_dir
from splat.scene.ensure import ensure_model
from splat.scene.views import load_split
from splat.training import appearance
from splat.training.checkpointing import (
    Checkpointer,
    check_fresh_out,
    clear_previous_run,
    new_run_id,
    read_resume,
)
from splat.training.depth import disparity_l1, sample_depth, sparse_depths
from splat.training.distributed import CHECK_EVERY, SINGLE, DistContext, resume_command
from splat.training.errors import TrainingDiverged, TrainingInterrupted
from splat.training.evaluation import evaluate_views, write_metrics
from splat.training.guard import DivergenceGuard
from splat.training.interrupt import InterruptHandler
from splat.training.metrics import load_lpips, ssim
from splat.training.strategy import Densifier

__all__ = ["TrainResult", "Trainer", "TrainingDiverged", "TrainingInterrupted", "batch_views", "default_config",
           "expon_lr", "train"]  # fmt: skip


@dataclass
class TrainResult:
    out: Path  # output folder
    ply: Path  # final Gaussians in the 3DGS PLY layout
    checkpoint: Path  # final checkpoint
    metrics: dict[str, dict] = field(default_factory=dict)  # step (as str) -> {"psnr", "ssim", ...}
    num_gaussians: int = 0
    steps: int = 0
    elapsed_s: float = 0.0


log = logging.getLogger(__name__)

LOG_EVERY = 10
"""Steps between host synchronisations: the progress display and the divergence check (the GPU is
never made to wait on every step). Refinement steps and every write are checked as well."""


# ------------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------------
def expon_lr(step: int, lr_init: float, lr_final: float, max_steps: int) -> float:
    """Log-linear interpolation from lr_init (step 0) to lr_final (max_steps), as the original."""
    t = min(max(step / max(max_steps, 1), 0.0), 1.0)
    return math.exp(math.log(lr_init) * (1 - t) + math.log(lr_final) * t)


def default_config(scene: Path, preset: str = "default") -> TrainConfig:
    """The preset with the scene's ``splat.json`` applied (a ``splat.json`` may not set paths)."""
    return scene_config(Path(scene), preset)


# ------------------------------------------------------------------------------------------------------
# the trainer
# ------------------------------------------------------------------------------------------------------
class Trainer:
    """Holds the scene, a :class:`Model`, its optimizers, the densifier and the run's helpers for one run."""

    def __init__(
        self,
        scene: str | Path,
        cfg: TrainConfig,
        *,
        model: Model | None = None,
        sfm=None,
        dist: DistContext | None = None,
    ):
        """Set up a run: the scene's views, then the Gaussians.

        Args:
            scene: scene folder (``images/`` and ``sparse/0``; SfM runs first when the model is missing,
                with ``sfm``, a :class:`splat.scene.sfm.PrepareConfig`).
            cfg: the run's configuration (validated here). With ``cfg.resume`` the checkpoint is read now
                (its settings must match, see :func:`splat.training.checkpointing.check_resume_config`) and
                restored by :meth:`train`.
            model: a loaded model (:func:`splat.gaussians.load_model`) to train on from: its Gaussians, step
                and learned background, and its Adam moments when it is a checkpoint. No SfM, and no
                initialisation from the SfM points. See also :meth:`continue_training`.
            sfm: how SfM runs when the scene has no model yet (a :class:`splat.scene.sfm.PrepareConfig`).
            dist: this process's place in a data-parallel run (:mod:`splat.training.distributed`); one process
                when None.
        """
        # 1. Check inputs (nothing is written before they all pass, except the undistortion cache)
        validate(cfg)
        if cfg.resume is None and model is None:  # a resumed run keeps its checkpoint's schedule
            cfg = scaled_schedule(cfg)
            for note in schedule_warnings(cfg):
                log.warning(note)
        self.scene = Path(scene)
        self.cfg = cfg
        self.dist = dist if dist is not None else SINGLE
        self.global_batch = cfg.batch_size * self.dist.world_size  # views per step, over all ranks
        self.out = Path(cfg.out)
        self.device = resolve_device(cfg.device)
        if self.out.exists() and not self.out.is_dir():
            raise OutputError(f"output folder {self.out} exists and is not a folder")
        if not would_be_writable(self.out):
            raise OutputError(f"output folder {self.out} cannot be written (permission denied)")
        self.checkpointer = Checkpointer(self)
        self.guard = DivergenceGuard(self.out / "ckpts")
        self.interrupt = InterruptHandler()
        self._resume: dict | None = None
        if cfg.resume is not None:
            self._resume = read_resume(cfg, self.global_batch, self.dist.world_size)
        elif model is None:  # one run per folder: a fresh run never mixes its files with another run's
            check_fresh_out(self.out, cfg.overwrite)
        # written into every checkpoint and config.json; retention deletes only this run's checkpoints
        self.run_id = str((self._resume or {}).get("run_id") or new_run_id())
        if model is None and self.dist.enabled and find_model_dir(self.scene) is None:
            raise SceneError(
                f"scene {self.scene} has no COLMAP model yet: run `splat prepare {self.scene}` once before a "
                "distributed run (every rank would run SfM into the same folder)"
            )
        if model is None:
            ensure_model(self.scene, sfm)
        # rank 0 reads the scene first (writing the undistortion cache if one is needed), the others then
        # find the cache ready: no two processes build it at once
        if not self.dist.is_main:
            self.dist.barrier()
        self._setup_scene()
        if self.dist.is_main:
            self.dist.barrier()
        if self._resume is not None:
            Model(self._resume["params"], checkpoint=self._resume, source=cfg.resume).check_scene(
                self.fingerprint, self.scene
            )
        if model is not None:
            model.check_scene(self.fingerprint, self.scene)

        # 2. Gaussians (from the SfM points, a resumed checkpoint's, or the model's), optimizers, densification
        record = model.checkpoint if model is not None else self._resume
        if model is not None:
            params = model.params
        elif self._resume is not None:
            params = checked_params(self._resume, cfg.resume)
        else:
            params = init_gaussians(self.split.model.points, self.split.model.colors, cfg)
        background = torch.tensor(cfg.background, dtype=torch.float32, device=self.device)
        logit = None
        if cfg.learn_background:  # cfg.learn_background: the learned colour
            logit = torch.nn.Parameter(start_background_logit(record or {}, background))
        self.model = Model(
            torch.nn.ParameterDict({k: torch.nn.Parameter(v.detach().to(self.device)) for k, v in params.items()}),
            config=cfg,
            step=model.step if model is not None else 0,
            background=background,
            background_logit=logit,
            source=model.source if model is not None else None,
            kind="checkpoint",
        )
        self.optimizers = self.make_optimizers()
        self.densifier = self._make_densifier()
        if logit is not None:
            self.background_optimizer = self.make_background_optimizer()
        if model is not None and model.checkpoint is not None:
            self.checkpointer.load_optimizer_moments(model.checkpoint)
        # cfg.bilateral_grid: one grid per training image (splat.training.appearance), trained with the Gaussians
        self.appearance: appearance.BilateralGrids | None = None
        if cfg.bilateral_grid:
            if self.dist.enabled:
                raise ConfigError("bilateral_grid needs a single-process run (the grids' gradients are not "
                                  "averaged across ranks, as in gsplat); drop bilateral_grid or run one process")
            self.appearance = appearance.BilateralGrids(len(self.train_set)).to(self.device)
            self.appearance_optimizer = torch.optim.Adam(self.appearance.parameters(), lr=appearance.LR, eps=1e-15)
            saved = (record or {}).get("appearance")  # training on from a checkpoint of a grid run
            if isinstance(saved, Tensor) and saved.shape == self.appearance.grids.shape:
                with torch.no_grad():
                    self.appearance.grids.copy_(saved.to(self.device))
        self._depth_targets: dict[int, tuple[Tensor, Tensor]] = {}  # cfg.depth_loss: view -> (pixels, depths)
        self.step = model.step if model is not None else 0
        self.metrics: dict[str, dict] = {}
        self._lpips = None
        # saved under "extras" in every checkpoint (plain data and tensors): what a caller driving the
        # training needs to resume it (splat.edit keeps its edited training images here)
        self.checkpoint_extras: dict = {}
        # called as cb(trainer, step, loss, psnr) after every step, loss / psnr of that step as 0-dim tensors
        # (e.g. splat.view.viewer.Viewer.on_train_step)
        self.step_callbacks: list = []
        # extra terms of each view's photometric loss, term(render, image) -> 0-dim tensor (scene edits add LPIPS)
        self.view_loss_terms: list = []

    @classmethod
    def from_model(cls, scene: str | Path, model: Model, cfg: TrainConfig | None = None, **kw) -> Trainer:
        """A trainer that goes on from ``model`` (see ``model=`` of :class:`Trainer`), with ``cfg`` (default:
        the model's own settings)."""
        return cls(scene, cfg if cfg is not None else model.config, model=model, **kw)

    def continue_training(self, source: str = "settings", **changes) -> TrainConfig:
        """Go on from the current Gaussians with other settings: ``changes`` are ``TrainConfig`` fields (e.g.
        ``steps``, ``eval_steps``, ``refine_stop``, ``seed``, or ``resume`` to restore a checkpoint of this
        continuation in :meth:`train`). The Gaussians, their Adam moments and the step are kept; the settings
        are validated (errors name ``source``) and the densification strategy starts afresh under them.
        Returns the new settings."""
        cfg = dataclasses.replace(self.cfg, **changes)
        validate(cfg, source)
        if cfg.resume is not None:
            self._resume = read_resume(cfg, self.global_batch, self.dist.world_size)
            Model(self._resume["params"], checkpoint=self._resume, source=cfg.resume).check_scene(
                self.fingerprint, self.scene
            )
        self.cfg = cfg
        self.model.config = cfg
        self.densifier = self._make_densifier()
        return cfg

    def _setup_scene(self) -> None:
        """Read the scene's views (no Gaussians): ``split`` (``train_set``, ``test_set``, ``extent``, ...)."""
        cfg = self.cfg
        cache = cfg.cache_dir if cfg.cache_dir is not None else self.out / ".cache"  # never inside the scene
        self.split = load_split(self.scene, images=cfg.images, cache_dir=cache, downscale=cfg.downscale,
                                max_width=cfg.max_width, test_every=cfg.test_every)  # fmt: skip
        self.train_set, self.test_set = self.split.train_set, self.split.test_set
        sizes = {self.train_set.size(i) for i in range(len(self.train_set))}
        if len(sizes) > 1 and cfg.batch_size * self.dist.world_size > 1:
            shown = ", ".join(f"{w}x{h}" for w, h in sorted(sizes)[:4])
            raise SceneError(
                f"batch_size={cfg.batch_size} on {self.dist.world_size} process(es) renders several training "
                f"views per step, which needs images of one size; scene {self.scene} has {len(sizes)} sizes "
                f"({shown}{' ...' if len(sizes) > 4 else ''}) after scaling. Train with --batch-size 1 on "
                "one process, or resize the images to one size"
            )
        self.extent = self.split.extent
        self.fingerprint = self.split.fingerprint

    # -- the model's parts, as the loop names them ----------------------------------------------------
    @property
    def params(self) -> torch.nn.ParameterDict:
        return self.model.params

    @params.setter
    def params(self, value: torch.nn.ParameterDict) -> None:
        self.model.params = value

    @property
    def background(self) -> Tensor:
        return self.model.background

    @property
    def background_logit(self) -> torch.nn.Parameter | None:
        return self.model.background_logit

    @background_logit.setter
    def background_logit(self, value: torch.nn.Parameter | None) -> None:
        self.model.background_logit = value

    @property
    def lr_scale(self) -> float:
        """Multiplier on every learning rate: sqrt(global batch) with ``batch_scaling``, else 1."""
        return math.sqrt(self.global_batch) if self.cfg.batch_scaling else 1.0

    def _lrs(self) -> dict[str, float]:
        c = self.cfg
        lrs = {
            "means": c.means_lr * self.extent,
            "scales": c.scales_lr,
            "quats": c.quats_lr,
            "opacities": c.opacities_lr,
            "sh0": c.sh0_lr,
            "shN": c.shN_lr,
        }
        if c.batch_scaling:
            lrs = {k: v * self.lr_scale for k, v in lrs.items()}
        return lrs

    def make_optimizers(self) -> dict:
        """Adam per parameter; with ``batch_scaling`` scaled for the global batch B (see the config field)."""
        c = self.cfg
        if not c.batch_scaling:
            return make_optimizers(self.params, self._lrs(), eps=c.adam_eps)
        b = self.global_batch
        return make_optimizers(self.params, self._lrs(), eps=c.adam_eps / math.sqrt(b), betas=(0.9**b, 0.999**b))

    def make_background_optimizer(self) -> torch.optim.Adam:
        """Adam for the learned background colour, scaled with ``batch_scaling`` as the Gaussians' are."""
        c = self.cfg
        if not c.batch_scaling:
            return torch.optim.Adam([self.background_logit], lr=c.background_lr, eps=c.adam_eps)
        b = self.global_batch
        return torch.optim.Adam([self.background_logit], lr=c.background_lr * self.lr_scale,
                                eps=c.adam_eps / math.sqrt(b), betas=(0.9**b, 0.999**b))  # fmt: skip

    def _make_densifier(self) -> Densifier:
        densifier = Densifier(self.cfg.densify_config(), scene_scale=self.extent)
        if self.dist.enabled:
            densifier.sync = self.dist.reduce_densify
        return densifier

    # -- rendering -----------------------------------------------------------------------------------
    def current_background(self) -> Tensor:
        """The background colour [3] renders use now: the learned one with ``learn_background``."""
        return self.model.current_background()

    def render(self, K: Tensor, viewmat: Tensor, width: int, height: int, sh_degree: int):
        """Render one view -> (image [H, W, 3], alpha [H, W, 1], meta)."""
        return self.model.render(K, viewmat, width, height, sh_degree)

    def render_views(self, Ks: Tensor, viewmats: Tensor, width: int, height: int, sh_degree: int):
        """Render C views in one call -> (images [C, H, W, 3], alpha [C, H, W, 1], meta)."""
        return self.model.render_views(Ks, viewmats, width, height, sh_degree)

    def active_sh_degree(self, step: int) -> int:
        """Degree used at ``step`` (1-based): raised by one after every ``sh_degree_interval`` steps."""
        return min(self.cfg.sh_degree, (step - 1) // max(self.cfg.sh_degree_interval, 1))

    def views_for_step(self, step: int) -> list[int]:
        """This rank's training views at ``step`` (1-based): its slice of the step's global batch
        (:func:`batch_views`)."""
        return batch_views(
            self.cfg.seed, step, len(self.train_set), self.cfg.batch_size, self.dist.rank, self.dist.world_size
        )

    def view_for_step(self, step: int) -> int:
        """The first of :meth:`views_for_step` (the only one with batch 1 on one process)."""
        return self.views_for_step(step)[0]

    # -- training ------------------------------------------------------------------------------------
    def train(self) -> TrainResult:
        cfg = self.cfg
        if self.dist.is_main:  # only rank 0 writes
            check_output_dir(self.out)
            remove_stale_temps(self.out)  # left by a run killed in the middle of a write
            if cfg.overwrite and cfg.resume is None:
                clear_previous_run(self.out)
            record = {"run_id": self.run_id, **config_to_dict(cfg)}
            atomic_write_text(self.out / "config.json", json.dumps(record, indent=2))
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        t0 = time.perf_counter()
        # The seed below applies inside this fork only; the caller's RNG state is restored on exit.
        with torch.random.fork_rng(devices=devices), self.interrupt.armed(self.dist.enabled):
            torch.manual_seed(cfg.seed)
            if self._resume is not None:
                self.load_checkpoint(self._resume)
                self._resume = None
            elif 0 in cfg.eval_steps and self.test_set:
                self.evaluate(0)
            self._loop()
        elapsed = time.perf_counter() - t0
        ply = self.out / "point_cloud" / f"iteration_{self.step}" / "point_cloud.ply"
        return TrainResult(
            out=self.out,
            ply=ply,
            checkpoint=self.checkpointer.path(self.step),
            metrics=self.metrics,
            num_gaussians=len(self.params["means"]),
            steps=self.step,
            elapsed_s=elapsed,
        )

    def request_stop(self) -> None:
        """Stop at the end of the current step as Ctrl-C does: a checkpoint, then :class:`TrainingInterrupted`."""
        self.interrupt.requested = True

    def _stop_now(self, step: int) -> bool:
        """Whether to stop before ``step``: at once on one process; on several, every rank agrees at the
        same step (checked every ``LOG_EVERY`` steps, one small all-reduce), so all write one checkpoint."""
        if not self.dist.enabled:
            return self.interrupt.requested
        if (step - 1) % LOG_EVERY != 0:
            return False
        return self.dist.any(self.interrupt.requested, self.device)

    def _train_view(self, i: int) -> tuple[Tensor, Tensor, Tensor, int, int]:
        """Training view ``i`` on the device -> (image [H, W, 3] float in [0, 1], K [3, 3], viewmat [4, 4],
        width, height). Off the CPU the images stay on the device as uint8 (a quarter of float32's
        memory, no host-to-device copy per step); the float image is the same either way."""
        if self.device.type == "cpu":
            f = self.train_set[i]
            return f.image, f.K, f.viewmat, f.width, f.height
        cache = self.__dict__.setdefault("_device_views", {})
        if i not in cache:
            f = self.train_set[i]
            u8 = (f.image * 255.0).round().to(torch.uint8)  # exact: the image is uint8 / 255
            cache[i] = (u8.to(self.device), f.K.to(self.device), f.viewmat.to(self.device), f.width, f.height)
        u8, K, viewmat, w, h = cache[i]
        return u8.float() / 255.0, K, viewmat, w, h

    def _loop(self) -> None:
        cfg = self.cfg
        from tqdm import tqdm

        bar = tqdm(
            range(self.step + 1, cfg.steps + 1),
            initial=self.step,
            total=cfg.steps,
            disable=not (cfg.progress and self.dist.is_main),
            desc="train",
            dynamic_ncols=True,
        )
        self.guard.start(self.device)  # first step at which the loss / each parameter was non-finite
        window = torch.zeros(2, device=self.device)  # sums of loss and PSNR since the last display
        for step in bar:
            if self._stop_now(step):
                self._write_interrupt_checkpoint()
            views = self.views_for_step(step)
            gt, K, viewmat, width, height = self._train_views(views)  # [C, H, W, 3], [C, 3, 3], [C, 4, 4]
            lr_means = expon_lr(step, cfg.means_lr, cfg.means_lr_final, cfg.means_lr_steps) * self.extent
            lr_means *= self.lr_scale
            set_lr(self.optimizers, "means", lr_means)

            img, _, info = self.model.render_views(
                K, viewmat, width, height, self.active_sh_degree(step), depth=cfg.depth_loss
            )
            self.densifier.step_pre_backward(self.params, self.optimizers, step, info)
            depth_maps = img[..., 3] if cfg.depth_loss else None  # [C, H, W]
            img = img[..., :3]
            if self.appearance is not None:  # training views only: each through its own image's grid
                img = self.appearance(img, torch.tensor(views, device=self.device))
            losses = [self._photo_loss(img[i], gt[i]) for i in range(len(views))]
            loss = losses[0] if len(losses) == 1 else torch.stack(losses).mean()  # mean over the views
            if self.appearance is not None:
                loss = loss + appearance.TV_WEIGHT * self.appearance.tv_loss()
                warmup = max(1, round(appearance.WARMUP_STEPS * min(1.0, cfg.steps / 30_000)))  # 30k: gsplat's
                for group in self.appearance_optimizer.param_groups:
                    group["lr"] = appearance.LR * appearance.lr_factor(step, cfg.steps, warmup)
            if depth_maps is not None:
                loss = loss + cfg.depth_lambda * self._depth_loss(depth_maps, views, K, viewmat, width, height)
            if cfg.strategy == "mcmc":
                loss = loss + cfg.opacity_reg * torch.sigmoid(self.params["opacities"]).mean()
                loss = loss + cfg.scale_reg * torch.exp(self.params["scales"]).mean()
            if not self.model.gaussians_in_view:  # every Gaussian was culled (the loss may still reach a learned background)
                self.guard.check(step, self.params)
                raise self.guard.diverged(
                    step,
                    "means",
                    f"no Gaussian is in front of training view(s) "
                    f"{', '.join(self.train_set.views[v].name for v in views)} "
                    f"at step {step} (the positions diverged)",
                )
            loss.backward()
            # all-reduce: the mean over the ranks (the learned background's gradient in the same buffer)
            self.dist.average_gradients(self._trained_tensors())

            for name, opt in self.optimizers.items():
                try:
                    opt.step()
                except RuntimeError as e:  # Adam's step size itself beyond float32 (a huge learning rate)
                    if "overflow" not in str(e):
                        raise
                    self.guard.check(step - 1, self.params)
                    raise self.guard.diverged(step, name, f"the {name} update overflowed at step {step}") from None
                opt.zero_grad(set_to_none=True)
            if self.background_logit is not None:
                self.background_optimizer.step()
                self.background_optimizer.zero_grad(set_to_none=True)
            if self.appearance is not None:
                self.appearance_optimizer.step()
                self.appearance_optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                self.guard.track(step, loss, self.params)
                mse = (img.detach().clamp(0, 1) - gt).square().mean()
                stats = torch.stack([loss.detach(), -10.0 * torch.log10(mse)])  # [loss, PSNR] of this step
                window += stats
            refine_step = cfg.refine_every > 0 and step % cfg.refine_every == 0
            if refine_step or step % LOG_EVERY == 0:
                self.guard.check(step, self.params)  # before densification samples from NaN opacities
            self.densifier.step_post_backward(self.params, self.optimizers, step, info, lr_means)
            if refine_step:
                self.dist.check_same_count(len(self.params["means"]), step, self.device)
            if refine_step or step % CHECK_EVERY == 0 or step == cfg.steps:  # one small all-reduce
                self.dist.check_params_agree(self._trained_tensors(), step, self.device)
            self.step = step

            for callback in self.step_callbacks:  # 0-dim tensors: no host sync unless a callback reads them
                callback(self, step, stats[0], stats[1])
            last = step == cfg.steps
            if cfg.progress and self.dist.is_main and (step % LOG_EVERY == 0 or last):
                n_window = (step - 1) % LOG_EVERY + 1
                mean_loss, mean_psnr = (window / n_window).tolist()
                bar.set_postfix(loss=f"{mean_loss:.4f}", psnr=f"{mean_psnr:.2f}", n=len(self.params["means"]))
            if step % LOG_EVERY == 0:
                window.zero_()

            evaluate = (step in cfg.eval_steps or last) and self.test_set
            keep = step in cfg.save_steps or last
            ckpt = keep or (cfg.ckpt_every > 0 and step % cfg.ckpt_every == 0)
            if evaluate or ckpt:
                self.guard.check(step, self.params, recheck=True)  # nothing non-finite is ever written
            if evaluate:
                self.evaluate(step)
            if ckpt:
                self.save_step(step, with_ply=keep)
        bar.close()

    def set_train_image(self, i: int, image: Tensor) -> None:
        """Train on ``image`` (uint8 ``[H, W, 3]``) for training view ``i`` from the next step on (the
        Iterative Dataset Update of :mod:`splat.edit.dataset_update`)."""
        self.train_set.replace_image(i, image)
        self.__dict__.get("_device_views", {}).pop(i, None)  # the device copy is made again on next use

    def _train_views(self, views: list[int]) -> tuple[Tensor, Tensor, Tensor, int, int]:
        """Training views ``views`` stacked -> (images [C, H, W, 3], Ks [C, 3, 3], viewmats [C, 4, 4],
        width, height); one size for all (one rasterisation renders them together)."""
        frames = [self._train_view(i) for i in views]
        width, height = frames[0][3], frames[0][4]  # one size for all (checked in _setup_scene)
        return (
            torch.stack([f[0] for f in frames]),
            torch.stack([f[1] for f in frames]),
            torch.stack([f[2] for f in frames]),
            width,
            height,
        )

    def _trained_tensors(self) -> dict[str, Tensor]:
        """Everything the step's gradients update: the Gaussians, and the learned background if any."""
        if self.background_logit is None:
            return self.params
        return {**dict(self.params.items()), "background": self.background_logit}

    def _depth_loss(
        self, depth_maps: Tensor, views: list[int], Ks: Tensor, viewmats: Tensor, width: int, height: int
    ) -> Tensor:
        """gsplat's depth loss, mean over the step's views: disparity L1 at the SfM points of each view."""
        if "_sfm_points" not in self.__dict__:
            self._sfm_points = torch.from_numpy(self.split.model.points).float().to(self.device)  # [P, 3]
        terms = []
        for c, v in enumerate(views):
            if v not in self._depth_targets:
                self._depth_targets[v] = sparse_depths(self._sfm_points, viewmats[c], Ks[c], width, height)
            uv, target = self._depth_targets[v]
            if len(target):
                terms.append(disparity_l1(sample_depth(depth_maps[c], uv), target, self.extent))
        return torch.stack(terms).mean() if terms else depth_maps.sum() * 0.0

    def _photo_loss(self, img: Tensor, gt: Tensor) -> Tensor:
        """(1 - ssim_lambda) * L1 + ssim_lambda * (1 - SSIM) of one view [H, W, 3], plus ``view_loss_terms``."""
        lam = self.cfg.ssim_lambda
        loss = (1 - lam) * (img - gt).abs().mean() + lam * (1 - ssim(img, gt))
        for term in self.view_loss_terms:
            loss = loss + term(img, gt)
        return loss

    # -- interruption --------------------------------------------------------------------------------
    def _write_interrupt_checkpoint(self) -> None:
        """After Ctrl-C: checkpoint the last finished step and raise :class:`TrainingInterrupted`."""
        self.guard.check(self.step, self.params, recheck=True)
        path = self.checkpointer.path(self.step)
        self.save_checkpoint(path)
        self.dist.barrier()  # every rank reports a checkpoint that exists
        # as many processes again (or another count with the same global batch, via --batch-size)
        command = shlex.join(resume_command(self.dist, self.scene, self.out, path))
        raise TrainingInterrupted(self.step, path, command, int(self.interrupt.signum))

    # -- evaluation ----------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, step: int) -> dict:
        """PSNR / SSIM (/ LPIPS) over the held-out views (:func:`splat.training.evaluation.evaluate_views`);
        renders saved beside ground truth; ``metrics.json`` rewritten."""
        cfg = self.cfg
        if cfg.lpips and self._lpips is None:
            self._lpips = load_lpips(self.device) or False
            # LPIPS only where every rank has its weights: the ranks report the same metric keys
            if self.dist.any(self._lpips is False, self.device):
                self._lpips = False
        sh_degree = self.active_sh_degree(max(step, 1))
        result = evaluate_views(
            lambda K, viewmat, w, h: self.render(K, viewmat, w, h, sh_degree)[0],
            self.test_set,
            self.device,
            step,
            num_gaussians=len(self.params["means"]),
            out=self.out,
            save_renders=cfg.save_renders,
            lpips=self._lpips,
            dist=self.dist,
        )
        self.metrics[str(step)] = result
        if self.dist.is_main:
            write_metrics(self.out, self.metrics)
        return result

    # -- checkpoints (splat.training.checkpointing) ----------------------------------------------------------
    def save_step(self, step: int, with_ply: bool) -> None:
        self.checkpointer.save_step(step, with_ply)

    def save_checkpoint(self, path: Path) -> None:
        self.checkpointer.save(path)

    def load_checkpoint(self, ckpt: dict | str | Path) -> None:
        self.checkpointer.restore(ckpt)


def batch_views(seed: int, step: int, n: int, batch_size: int = 1, rank: int = 0, world_size: int = 1) -> list[int]:
    """Training views of one rank at ``step`` (1-based), a pure function of its arguments.

    The views form one stream, a fresh permutation of the ``n`` training views per epoch (seeded by
    ``seed`` and the epoch); step ``s`` takes the global batch of ``B = world_size * batch_size`` views
    at stream positions ``(s - 1) * B ... s * B - 1``, and rank ``r`` the ``batch_size`` of them from
    ``r * batch_size``. With ``B = 1`` this is the single-view order of earlier versions.
    """
    first = (step - 1) * batch_size * world_size + rank * batch_size
    views = []
    for k in range(first, first + batch_size):
        epoch, pos = divmod(k, n)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        views.append(int(torch.randperm(n, generator=gen)[pos]))
    return views


# ------------------------------------------------------------------------------------------------------
# Python API
# ------------------------------------------------------------------------------------------------------
def train(
    scene: str | Path, config: TrainConfig | None = None, sfm=None, dist: DistContext | None = None
) -> TrainResult:
    """Train Gaussians on ``scene`` (a folder with ``images/`` and optionally ``sparse/0``).

    Examples:
        >>> import splat
        >>> cfg = splat.default_config("assets/demo", preset="cpu-small")  # preset + splat.json
        >>> result = splat.train("assets/demo", cfg)
        >>> result.metrics[str(result.steps)]["psnr"]

    ``sfm`` (a :class:`splat.scene.sfm.PrepareConfig`) sets how SfM runs when the scene has no model yet.
    ``dist`` is this process's place in a data-parallel run (an initialised process group; see
    :mod:`splat.training.distributed`); one process when None.
    """
    scene = Path(scene)
    cfg = config if config is not None else default_config(scene)
    return Trainer(scene, cfg, sfm=sfm, dist=dist).train()
