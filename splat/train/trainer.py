"""Train 3D Gaussians on a COLMAP scene: ``train(scene, config) -> TrainResult``.

The run, in order:
    1. resolve the scene (run ``splat.sfm.prepare`` when there is no model yet), validate all inputs
    2. check the output folder is writable, then write ``config.json``
    3. initialise Gaussians from the SfM points (or restore a checkpoint)
    4. optimise: 0.8 * L1 + 0.2 * (1 - SSIM), the original's learning rates, densification
    5. evaluate held-out views at ``eval_steps`` (PSNR, SSIM, LPIPS when available) -> ``metrics.json``
    6. write checkpoints and PLY files (every file through a temp file + ``os.replace``)

Randomness: all of it (view order, gsplat's densification sampling) is driven by ``config.seed``
inside ``torch.random.fork_rng``, so the caller's global RNG state is untouched, and checkpoints store
the forked RNG state so that a resumed run ends bit-identical to an uninterrupted one (on CPU).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shlex
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from safeio import remove_stale_temps
from splat.checkpoint import (
    FORMAT,
    CheckpointError,
    check_scene,
    checkpoint_name,
    prune_checkpoints,
    read_checkpoint,
    scene_fingerprint,
    write_checkpoint,
)
from splat.colmap import SceneError, SceneModel, check_scene_folder, find_model_dir, load_scene
from splat.config import (
    RESUME_SAFE_FIELDS,
    ConfigError,
    TrainConfig,
    apply_overrides,
    config_to_dict,
    scene_config,
    validate,
)
from splat.data import ViewDataset, camera_extent, split_indices
from splat.distributed import SINGLE, DistContext
from splat.metrics import _load_lpips, psnr, ssim
from splat.outputs import (
    OutputError,
    atomic_save_image,
    atomic_write_text,
    check_output_dir,
    image_stem,
    save_comparisons,
    would_be_writable,
)
from splat.params import PARAM_KEYS, make_optimizers, make_params, rgb_to_sh, set_lr
from splat.ply import write_ply
from splat.rendering import rasterize
from splat.strategy import Densifier


@dataclass
class TrainResult:
    out: Path  # output folder
    ply: Path  # final Gaussians in the 3DGS PLY layout
    checkpoint: Path  # final checkpoint
    metrics: dict[str, dict] = field(default_factory=dict)  # step (as str) -> {"psnr", "ssim", ...}
    num_gaussians: int = 0
    steps: int = 0
    elapsed_s: float = 0.0


LOG_EVERY = 10
"""Steps between host synchronisations: the progress display and the divergence check (the GPU is
never made to wait on every step). Refinement steps and every write are checked as well."""

# The setting to lower when a parameter diverges (flags as ``splat train --help`` spells them).
LR_SETTING = {
    "means": "--means-lr",
    "scales": "--scales-lr",
    "quats": "--quats-lr",
    "opacities": "--opacities-lr",
    "sh0": "--sh0-lr",
    "shN": "--shN-lr",
}


class TrainingDiverged(RuntimeError):
    """A loss or parameter became non-finite (or every Gaussian left the view). Nothing non-finite was
    written; ``checkpoint`` is the last good one on disk (None if the run wrote none)."""

    def __init__(self, message: str, step: int, what: str, checkpoint: Path | None):
        super().__init__(message)
        self.step = step
        self.what = what
        self.checkpoint = checkpoint


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: a checkpoint of the last finished step was written; ``resume_command``
    continues the run (it ends bit-identical to an uninterrupted one on CPU)."""

    def __init__(self, step: int, checkpoint: Path, resume_command: str):
        super().__init__(f"interrupted at step {step}; wrote {checkpoint}\nresume with: {resume_command}")
        self.step = step
        self.checkpoint = checkpoint
        self.resume_command = resume_command

    def __str__(self) -> str:
        return str(self.args[0])


# ------------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"device must be \"auto\", \"cpu\", \"cuda\", \"cuda:N\" or \"mps\", got {name!r}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {name!r} requested but MPS is not available; use --device cpu")
    return dev


def expon_lr(step: int, lr_init: float, lr_final: float, max_steps: int) -> float:
    """Log-linear interpolation from lr_init (step 0) to lr_final (max_steps), as the original."""
    t = min(max(step / max(max_steps, 1), 0.0), 1.0)
    return math.exp(math.log(lr_init) * (1 - t) + math.log(lr_final) * t)


def knn_sq_dist(points: Tensor, k: int = 3) -> Tensor:
    """Mean squared distance of each point [P, 3] to its k nearest other points -> [P] (float32).

    A KD-tree (``scipy.spatial.cKDTree``): O(P log P), about a second for 200k points, where the
    all-pairs distances it replaces took 50 s at 40k. Duplicated points count as neighbours at distance 0,
    as in the brute-force definition; with fewer than ``k + 1`` points the available neighbours are used,
    and a lone point gets 1.
    """
    from scipy.spatial import cKDTree

    pts = points.detach().cpu().double().numpy()  # [P, 3]
    n = len(pts)
    kk = min(k, n - 1)
    if kk <= 0:
        return torch.ones(n, dtype=torch.float32, device=points.device)
    dist, _ = cKDTree(pts).query(pts, k=kk + 1, workers=-1)  # [P, kk + 1], column 0 is the point itself
    d2 = np.square(dist[:, 1:]).mean(1)  # [P]
    return torch.from_numpy(d2).float().to(points.device)


def init_gaussians(points: np.ndarray, colors: np.ndarray, cfg: TrainConfig) -> torch.nn.ParameterDict:
    """Gaussians at the SfM points: SH DC from the colours, isotropic scales from the 3 nearest
    neighbours (sqrt of their mean squared distance, as the original), identity rotations, opacity
    ``init_opacity`` stored as its logit."""
    bad = ~np.isfinite(points).all(axis=1) | ~np.isfinite(colors).all(axis=1)  # [N]
    if bad.any():
        first = np.flatnonzero(bad)[:5].tolist()
        raise SceneError(
            f"{int(bad.sum())} of {len(points)} SfM points have non-finite coordinates or colours "
            f"(indices {first}{' ...' if bad.sum() > 5 else ''}); the COLMAP model is damaged: re-run SfM"
        )
    if len(points) == 0:
        raise SceneError("the COLMAP model has no 3D points to start from")
    means = torch.from_numpy(points).float()  # [N, 3]
    n = len(means)
    if not torch.isfinite(means).all():  # finite in float64 but beyond float32
        raise SceneError("SfM points lie beyond float32 range; the COLMAP model is damaged: re-run SfM")
    dist2 = knn_sq_dist(means).clamp_min(1e-7)  # [N]
    scales = torch.log(torch.sqrt(dist2) * cfg.init_scale)[:, None].repeat(1, 3)  # [N, 3]
    quats = torch.zeros(n, 4)
    quats[:, 0] = 1.0  # identity, wxyz
    opacities = torch.logit(torch.full((n,), cfg.init_opacity))  # [N]
    sh0 = rgb_to_sh(torch.from_numpy(colors).float() / 255.0)[:, None, :]  # [N, 1, 3]
    shN = torch.zeros(n, (cfg.sh_degree + 1) ** 2 - 1, 3)  # [N, K-1, 3]
    return make_params(means, scales, quats, opacities, sh0, shN)


def ensure_model(scene: Path, sfm=None) -> None:
    """Run SfM (``splat.sfm.prepare`` with ``sfm``, a ``PrepareConfig``) when the scene has images but no
    COLMAP model yet. A ``sparse/0`` folder that exists but lacks model files is reported, never replaced."""
    check_scene_folder(scene)
    if find_model_dir(scene) is not None:
        return
    model_dir = scene / "sparse" / "0"
    if model_dir.exists():
        present = sorted(p.name for p in model_dir.iterdir()) if model_dir.is_dir() else []
        missing = [f"{n}.bin" for n in ("cameras", "images", "points3D") if not (model_dir / f"{n}.bin").exists()]
        raise SceneError(
            f"{model_dir} exists but holds no complete COLMAP model (missing {', '.join(missing)}"
            + (f"; it holds {', '.join(present[:5])}" if present else "; it is empty")
            + "). Restore the missing files, or move the folder away to run SfM on the photos again."
        )
    if not (scene / "images").is_dir():
        raise SceneError(f"scene {scene} has no images folder ({scene / 'images'} is missing)")
    try:
        from splat.sfm import PrepareConfig, prepare
    except ImportError as e:
        raise SceneError(
            f"scene {scene} has no COLMAP model ({scene / 'sparse' / '0'}) and SfM is unavailable: {e}"
        ) from e
    prepare(scene, sfm if sfm is not None else PrepareConfig())
    if find_model_dir(scene) is None:
        raise SceneError(f"SfM on {scene} produced no model in {scene / 'sparse' / '0'}")


def default_config(scene: Path, preset: str = "default") -> TrainConfig:
    """The preset with the scene's ``splat.json`` applied (a ``splat.json`` may not set paths)."""
    return scene_config(Path(scene), preset)


def read_model(path: str | Path) -> tuple[dict, Path]:
    """``(checkpoint dict, file)`` for a run folder (its newest model), a checkpoint or a 3DGS PLY. A PLY
    becomes ``{"params", "step", "config"}``: its run's ``config.json`` when it sits in a run folder (else
    the defaults), at the degree of its SH coefficients; no optimizer state, no learned background."""
    from splat.model_io import find_model_file, load_gaussians

    file = find_model_file(path)
    if file.suffix.lower() != ".ply":
        return read_checkpoint(file), file
    params, sh_degree, meta = load_gaussians(file)
    cfg = dataclasses.replace(config_from_checkpoint({"config": meta["config"] or {}}, meta["source"]), sh_degree=sh_degree)
    step = meta["step"] if meta["step"] is not None else cfg.steps  # unknown: a finished run
    return {"params": params, "step": step, "config": config_to_dict(cfg)}, file


def config_from_checkpoint(ckpt: dict, source: str) -> TrainConfig:
    """The configuration a checkpoint was trained with, validated; its paths are ignored (defaults)."""
    return apply_overrides(TrainConfig(), ckpt["config"], source=f"{source} (saved config)", paths="ignore")


def check_resume_config(saved: TrainConfig, cfg: TrainConfig, checkpoint: Path, step: int) -> None:
    """Refuse a resumed run whose settings differ from the checkpoint's beyond ``RESUME_SAFE_FIELDS``."""
    changed = [
        f"{f.name} (checkpoint: {getattr(saved, f.name)!r}, now: {getattr(cfg, f.name)!r})"
        for f in dataclasses.fields(TrainConfig)
        if f.name not in RESUME_SAFE_FIELDS and getattr(saved, f.name) != getattr(cfg, f.name)
    ]
    if changed:
        raise ConfigError(
            f"--resume {checkpoint}: these settings differ from the checkpoint's and cannot change on resume: "
            + "; ".join(changed)
            + ". Only "
            + ", ".join(k for k in RESUME_SAFE_FIELDS if k != "resume")
            + " may change (`splat train --resume` alone restores the checkpoint's settings)."
        )
    if cfg.steps < step:
        raise ConfigError(f"--resume {checkpoint}: the checkpoint is at step {step}, beyond steps={cfg.steps}")


# ------------------------------------------------------------------------------------------------------
# the trainer
# ------------------------------------------------------------------------------------------------------
class Trainer:
    """Holds the scene, the Gaussians, their optimizers and the densifier for one run."""

    def __init__(
        self,
        scene: str | Path,
        cfg: TrainConfig,
        *,
        checkpoint: dict | None = None,
        checkpoint_path: str | Path = "the checkpoint",
        sfm=None,
        dist: DistContext | None = None,
    ):
        """Set up a run: the scene's views, then the Gaussians.

        Args:
            scene: scene folder (``images/`` and ``sparse/0``; SfM runs first when the model is missing,
                with ``sfm``, a :class:`splat.sfm.PrepareConfig`).
            cfg: the run's configuration (validated here). With ``cfg.resume`` the checkpoint is read now
                (its settings must match, see :func:`check_resume_config`) and restored by :meth:`train`.
            checkpoint: a checkpoint dict (``read_checkpoint``) whose Gaussians to use as they are, for
                ``render`` / ``eval``: no SfM, and no initialisation from the SfM points.
                ``checkpoint_path`` names it in messages.
            sfm: how SfM runs when the scene has no model yet (a :class:`splat.sfm.PrepareConfig`).
            dist: this process's place in a data-parallel run (:mod:`splat.distributed`); one process
                when None.
        """
        # 1. Check inputs (nothing is written before they all pass, except the undistortion cache)
        validate(cfg)
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
        self._resume: dict | None = None
        if cfg.resume is not None:
            self._resume = read_checkpoint(cfg.resume)
            saved = config_from_checkpoint(self._resume, str(cfg.resume))
            check_resume_config(saved, cfg, Path(cfg.resume), int(self._resume["step"]))
            saved_batch = int(self._resume.get("global_batch", 1))
            if saved_batch != self.global_batch:
                raise ConfigError(
                    f"--resume {cfg.resume}: the checkpoint was trained with {saved_batch} view(s) per step "
                    f"(processes x batch_size), this run has {self.global_batch} "
                    f"({self.dist.world_size} x {cfg.batch_size}); launch as many processes as it had"
                )
        if checkpoint is None and self.dist.enabled and find_model_dir(self.scene) is None:
            raise SceneError(
                f"scene {self.scene} has no COLMAP model yet: run `splat prepare {self.scene}` once before a "
                "distributed run (every rank would run SfM into the same folder)"
            )
        if checkpoint is None:
            ensure_model(self.scene, sfm)
        # rank 0 reads the scene first (writing the undistortion cache if one is needed), the others then
        # find the cache ready: no two processes build it at once
        if not self.dist.is_main:
            self.dist.barrier()
        self._setup_scene()
        if self.dist.is_main:
            self.dist.barrier()
        for ck, path in ((self._resume, cfg.resume), (checkpoint, checkpoint_path)):
            if ck is not None:
                check_scene(ck, self.fingerprint, path, self.scene)

        # 2. Gaussians (from the SfM points, or a checkpoint's as they are), optimizers, densification
        source = checkpoint if checkpoint is not None else self._resume
        if source is not None:
            name = checkpoint_path if checkpoint is not None else cfg.resume
            self.params = params_from_checkpoint(source, self.device, name)
        else:
            self.params = init_gaussians(self.model.points, self.model.colors, cfg).to(self.device)
        self.optimizers = self._make_optimizers()
        self.densifier = self._make_densifier()
        self.step = int(checkpoint["step"]) if checkpoint is not None else 0
        self.metrics: dict[str, dict] = {}
        self._lpips = None
        self.background = torch.tensor(cfg.background, dtype=torch.float32, device=self.device)
        self.background_logit: torch.nn.Parameter | None = None  # cfg.learn_background: the learned colour
        if cfg.learn_background:
            saved = source.get("background_logit") if source is not None else None
            if isinstance(saved, Tensor) and saved.shape == (3,):
                start = saved.to(self.device, torch.float32)
            else:  # the configured colour, kept off 0 and 1 where the logit is infinite
                start = torch.logit(self.background.clamp(1e-3, 1 - 1e-3))
            self.background_logit = torch.nn.Parameter(start)
            self.background_optimizer = torch.optim.Adam([self.background_logit], lr=cfg.background_lr, eps=cfg.adam_eps)
        # saved under "extras" in every checkpoint (plain data and tensors): what a caller driving the
        # training needs to resume it (splat.edit keeps its edited training images here)
        self.checkpoint_extras: dict = {}
        # called as cb(trainer, step, loss, psnr) after every step, loss / psnr of that step as 0-dim tensors
        # (e.g. splat.viewer.Viewer.on_train_step)
        self.step_callbacks: list = []

    def _setup_scene(self) -> None:
        """Read the scene's views (no Gaussians): ``model``, ``train_set``, ``test_set``, ``extent``."""
        cfg = self.cfg
        cache = cfg.cache_dir if cfg.cache_dir is not None else self.out / ".cache"  # never inside the scene
        self.model: SceneModel = load_scene(self.scene, images=cfg.images, cache_dir=cache)
        train_idx, test_idx = split_indices(len(self.model.views), cfg.test_every)
        if not train_idx:
            raise SceneError(f"scene {self.scene} has no training views left after holding out test views")
        self.train_set = ViewDataset([self.model.views[i] for i in train_idx], cfg.downscale, cfg.max_width)
        self.test_set = ViewDataset([self.model.views[i] for i in test_idx], cfg.downscale, cfg.max_width)
        for ds in (self.train_set, self.test_set):
            ds.preload()  # decode every image now: a broken file fails before step 1
        sizes = {self.train_set.size(i) for i in range(len(self.train_set))}
        if len(sizes) > 1 and cfg.batch_size * self.dist.world_size > 1:
            shown = ", ".join(f"{w}x{h}" for w, h in sorted(sizes)[:4])
            raise SceneError(
                f"batch_size={cfg.batch_size} on {self.dist.world_size} process(es) renders several training "
                f"views per step, which needs images of one size; scene {self.scene} has {len(sizes)} sizes "
                f"({shown}{' ...' if len(sizes) > 4 else ''}) after scaling. Train with --batch-size 1 on "
                "one process, or resize the images to one size"
            )
        self.extent = camera_extent(self.model, train_idx)
        self.fingerprint = scene_fingerprint(self.model.views)

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

    def _make_optimizers(self) -> dict:
        """Adam per parameter; with ``batch_scaling`` scaled for the global batch B (see the config field)."""
        c = self.cfg
        if not c.batch_scaling:
            return make_optimizers(self.params, self._lrs(), eps=c.adam_eps)
        b = self.global_batch
        return make_optimizers(self.params, self._lrs(), eps=c.adam_eps / math.sqrt(b), betas=(0.9**b, 0.999**b))

    def _make_densifier(self) -> Densifier:
        densifier = Densifier(self.cfg.densify_config(), scene_scale=self.extent)
        if self.dist.enabled:
            densifier.sync = self.dist.sync_densify
        return densifier

    # -- rendering -----------------------------------------------------------------------------------
    def current_background(self) -> Tensor:
        """The background colour [3] renders use now: the learned one with ``learn_background``."""
        if self.background_logit is None:
            return self.background
        return torch.sigmoid(self.background_logit)

    def render(self, K: Tensor, viewmat: Tensor, width: int, height: int, sh_degree: int):
        """Render one view -> (image [H, W, 3], alpha [H, W, 1], meta)."""
        img, alpha, meta = self.render_views(K[None], viewmat[None], width, height, sh_degree)
        return img[0], alpha[0], meta

    def render_views(self, Ks: Tensor, viewmats: Tensor, width: int, height: int, sh_degree: int):
        """Render C views in one call -> (images [C, H, W, 3], alpha [C, H, W, 1], meta).

        Sets ``_gaussians_in_view``: False when every Gaussian was culled (nothing of them reaches a loss,
        though a learned background still does)."""
        p = self.params
        learned = self.background_logit is not None
        colors = torch.cat([p["sh0"], p["shN"]], dim=1)  # [N, K, 3]
        img, alpha, meta = rasterize(
            p["means"],
            p["quats"],
            torch.exp(p["scales"]),
            torch.sigmoid(p["opacities"]),
            colors,
            viewmats,
            Ks,
            width,
            height,
            sh_degree=sh_degree,
            backgrounds=None if learned else self.background[None].expand(len(viewmats), -1),
            backend=self.cfg.backend,
        )
        self._gaussians_in_view = img.requires_grad
        if learned:  # composited here, the same formula on every backend, with a gradient to the colour
            img = img + (1 - alpha) * self.current_background()
        return img, alpha, meta

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
            atomic_write_text(self.out / "config.json", json.dumps(config_to_dict(cfg), indent=2))
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        t0 = time.perf_counter()
        # The seed below applies inside this fork only; the caller's RNG state is restored on exit.
        with torch.random.fork_rng(devices=devices), self._ctrl_c_at_step_end():
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
            checkpoint=self.out / "ckpts" / checkpoint_name(self.step),
            metrics=self.metrics,
            num_gaussians=len(self.params["means"]),
            steps=self.step,
            elapsed_s=elapsed,
        )

    @contextlib.contextmanager
    def _ctrl_c_at_step_end(self):
        """In the main thread, the first Ctrl-C only sets a flag: the loop finishes its step, writes a
        checkpoint and raises :class:`TrainingInterrupted`. A second Ctrl-C interrupts at once."""
        self._stop_requested = False
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_sigint(signum, frame):
            if self._stop_requested:
                raise KeyboardInterrupt
            self._stop_requested = True

        # torchrun stops its workers with SIGTERM: a distributed run checkpoints then as well
        signals = [signal.SIGINT, signal.SIGTERM] if self.dist.enabled else [signal.SIGINT]
        previous = {sig: signal.signal(sig, on_sigint) for sig in signals}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _stop_now(self, step: int) -> bool:
        """Whether to stop before ``step``: at once on one process; on several, every rank agrees at the
        same step (checked every ``LOG_EVERY`` steps, one small all-reduce), so all write one checkpoint."""
        if not self.dist.enabled:
            return self._stop_requested
        if (step - 1) % LOG_EVERY != 0:
            return False
        return self.dist.any(self._stop_requested, self.device)

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
        # first step at which the loss / each parameter was non-finite (0: never), kept on the device
        self._first_bad = torch.zeros(1 + len(PARAM_KEYS), dtype=torch.long, device=self.device)
        window = torch.zeros(2, device=self.device)  # sums of loss and PSNR since the last display
        for step in bar:
            if self._stop_now(step):
                self._write_interrupt_checkpoint()
            views = self.views_for_step(step)
            gt, K, viewmat, width, height = self._train_views(views)  # [C, H, W, 3], [C, 3, 3], [C, 4, 4]
            lr_means = expon_lr(step, cfg.means_lr, cfg.means_lr_final, cfg.means_lr_steps) * self.extent
            lr_means *= self.lr_scale
            set_lr(self.optimizers, "means", lr_means)

            img, _, info = self.render_views(K, viewmat, width, height, self.active_sh_degree(step))
            self.densifier.step_pre_backward(self.params, self.optimizers, step, info)
            losses = [self._photo_loss(img[i], gt[i]) for i in range(len(views))]
            loss = losses[0] if len(losses) == 1 else torch.stack(losses).mean()  # mean over the views
            if cfg.strategy == "mcmc":
                loss = loss + cfg.opacity_reg * torch.sigmoid(self.params["opacities"]).mean()
                loss = loss + cfg.scale_reg * torch.exp(self.params["scales"]).mean()
            if not self._gaussians_in_view:  # every Gaussian was culled (the loss may still reach a learned background)
                self._raise_if_diverged(step)
                raise self._diverged(
                    step,
                    "means",
                    f"no Gaussian is in front of training view(s) "
                    f"{', '.join(self.train_set.views[v].name for v in views)} "
                    f"at step {step} (the positions diverged)",
                )
            loss.backward()
            # all-reduce: the mean over the ranks (the learned background's gradient in the same buffer)
            self.dist.average_gradients(self._trained_tensors())

            for opt in self.optimizers.values():
                opt.step()
                opt.zero_grad(set_to_none=True)
            if self.background_logit is not None:
                self.background_optimizer.step()
                self.background_optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                self._track_finite(step, loss)
                mse = (img.detach().clamp(0, 1) - gt).square().mean()
                stats = torch.stack([loss.detach(), -10.0 * torch.log10(mse)])  # [loss, PSNR] of this step
                window += stats
            refine_step = cfg.refine_every > 0 and step % cfg.refine_every == 0
            if refine_step or step % LOG_EVERY == 0:
                self._raise_if_diverged(step)  # before densification samples from NaN opacities
            self.densifier.step_post_backward(self.params, self.optimizers, step, info, lr_means)
            if refine_step:
                self.dist.check_same_count(len(self.params["means"]), step, self.device)
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
                self._raise_if_diverged(step, recheck=True)  # nothing non-finite is ever written
            if evaluate:
                self.evaluate(step)
            if ckpt:
                self.save_step(step, with_ply=keep)
        bar.close()

    def set_train_image(self, i: int, image: Tensor) -> None:
        """Train on ``image`` (uint8 ``[H, W, 3]``) for training view ``i`` from the next step on (the
        Iterative Dataset Update of :mod:`splat.edit`)."""
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

    def _photo_loss(self, img: Tensor, gt: Tensor) -> Tensor:
        """(1 - ssim_lambda) * L1 + ssim_lambda * (1 - SSIM) of one view [H, W, 3]."""
        lam = self.cfg.ssim_lambda
        return (1 - lam) * (img - gt).abs().mean() + lam * (1 - ssim(img, gt))

    # -- divergence and interruption -----------------------------------------------------------------
    @torch.no_grad()
    def _finite_flags(self) -> Tensor:
        """[len(PARAM_KEYS)] bool: each parameter finite after activation (a log-scale of 1e6 is finite,
        its scale is not). One reduction per parameter, no host synchronisation."""
        flags = []
        for k in PARAM_KEYS:
            p = self.params[k]
            flags.append(torch.isfinite(torch.exp(p) if k == "scales" else p).all())
        return torch.stack(flags)

    @torch.no_grad()
    def _track_finite(self, step: int, loss: Tensor) -> None:
        bad = ~torch.cat([torch.isfinite(loss.detach()).reshape(1), self._finite_flags()])  # [1 + P]
        self._first_bad = torch.where((self._first_bad == 0) & bad, step, self._first_bad)

    def _raise_if_diverged(self, step: int, recheck: bool = False) -> None:
        """Raise :class:`TrainingDiverged` if the loss or a parameter has been non-finite (one sync)."""
        if recheck:  # the parameters as they are now (densification ran after the last tracking)
            bad_now = ~self._finite_flags()
            self._first_bad[1:] = torch.where((self._first_bad[1:] == 0) & bad_now, step, self._first_bad[1:])
        first = self._first_bad.tolist()
        if not any(first):
            return
        loss_step, param_steps = first[0], dict(zip(PARAM_KEYS, first[1:], strict=True))
        bad = {k: s for k, s in param_steps.items() if s}
        earliest = min(bad.values(), default=0)
        if bad and (loss_step == 0 or earliest < loss_step):
            # a parameter overflowed before the loss did: that update is the culprit
            names = [k for k, s in bad.items() if s == earliest]
            raise self._diverged(
                earliest, names[0], f"{' and '.join(names)} became non-finite at step {earliest}", names
            )
        # the loss first: every parameter it reaches turns non-finite in the same update
        raise self._diverged(
            loss_step, "loss", f"the loss became non-finite at step {loss_step}", list(PARAM_KEYS)
        )

    def _diverged(
        self, step: int, what: str, detail: str, names: list[str] | None = None
    ) -> TrainingDiverged:
        names = names or [what]
        flags = [LR_SETTING[n] for n in names if n in LR_SETTING]
        ckpts = sorted((self.out / "ckpts").glob("ckpt_*.pt"))
        good = ckpts[-1] if ckpts else None
        kept = f"the last good checkpoint is {good}" if good else "no checkpoint had been written yet"
        message = (
            f"training diverged: {detail}; lower {' / '.join(flags)}. Nothing non-finite was written; {kept}."
        )
        return TrainingDiverged(message, step, what, good)

    def _write_interrupt_checkpoint(self) -> None:
        """After Ctrl-C: checkpoint the last finished step and raise :class:`TrainingInterrupted`."""
        self._raise_if_diverged(self.step, recheck=True)
        path = self.out / "ckpts" / checkpoint_name(self.step)
        self.save_checkpoint(path)
        self.dist.barrier()  # every rank reports a checkpoint that exists
        launcher = ["splat"]
        if self.dist.enabled:  # as many processes again (the step's global batch must match)
            launcher = ["torchrun", "--nproc_per_node", str(self.dist.world_size), "-m", "splat.cli"]
        command = shlex.join([*launcher, "train", str(self.scene), "--out", str(self.out), "--resume", str(path)])
        raise TrainingInterrupted(self.step, path, command)

    # -- evaluation ----------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, step: int) -> dict:
        """PSNR / SSIM (/ LPIPS) over the held-out views; renders saved beside ground truth."""
        cfg = self.cfg
        if cfg.lpips and self._lpips is None:
            self._lpips = _load_lpips(self.device) or False
        sh_degree = self.active_sh_degree(max(step, 1))
        scores: dict[str, list[float]] = {"psnr": [], "ssim": []}
        if self._lpips:
            scores["lpips"] = []
        t0 = time.perf_counter()
        renders: dict[int, tuple[Tensor | None, dict]] = {}  # test view -> (render [H, W, 3], scores)
        for i in range(self.dist.rank, len(self.test_set), self.dist.world_size):  # this rank's share
            f = self.test_set[i]
            gt = f.image.to(self.device)
            img, _, _ = self.render(
                f.K.to(self.device), f.viewmat.to(self.device), f.width, f.height, sh_degree
            )
            img = img.clamp(0, 1)
            view = {"psnr": psnr(img, gt), "ssim": ssim(img, gt).item()}
            if self._lpips:
                to = lambda x: x.permute(2, 0, 1)[None] * 2 - 1  # [1, 3, H, W] in [-1, 1]
                view["lpips"] = self._lpips(to(img), to(gt)).item()
            renders[i] = (img.cpu() if cfg.save_renders else None, view)  # gathered to rank 0 to be saved
        for part in self.dist.all_gather_objects(renders):  # every rank's share, on every rank
            renders.update(part)
        for i in range(len(self.test_set)):  # in view order, as one process would
            for k in scores:
                scores[k].append(renders[i][1][k])
            if cfg.save_renders and self.dist.is_main:
                f = self.test_set[i]
                stem = image_stem(f.name)
                folder = self.out / "renders" / f"step_{step:06d}"
                atomic_save_image(folder / f"{stem}_render.png", renders[i][0])
                atomic_save_image(folder / f"{stem}_gt.png", f.image)
        if cfg.save_renders and len(self.test_set) and self.dist.is_main:  # side by side + contact sheet, from the files above
            save_comparisons(self.out / "renders" / f"step_{step:06d}")
        result = {k: float(np.mean(v)) for k, v in scores.items()}
        result.update(
            num_gaussians=len(self.params["means"]),
            num_views=len(self.test_set),
            seconds_per_view=(time.perf_counter() - t0) / max(len(self.test_set), 1),
        )
        if not self._lpips:
            result["lpips"] = None  # weights not available locally
        self.metrics[str(step)] = result
        if self.dist.is_main:
            atomic_write_text(self.out / "metrics.json", json.dumps(self.metrics, indent=2))
        return result

    # -- checkpoints ---------------------------------------------------------------------------------
    def save_step(self, step: int, with_ply: bool) -> None:
        """The checkpoint of ``step`` (and its PLY, written first, so that a checkpoint that exists always
        has its PLY), then drop periodic checkpoints beyond the newest ``keep_ckpts``. Every rank calls
        this; rank 0 writes."""
        if with_ply and self.dist.is_main:
            write_ply(self.out / "point_cloud" / f"iteration_{step}" / "point_cloud.ply", self.params)
        self.save_checkpoint(self.out / "ckpts" / checkpoint_name(step))
        if self.dist.is_main:
            prune_checkpoints(self.out / "ckpts", self.cfg.keep_ckpts, self.cfg.save_steps)

    def save_checkpoint(self, path: Path) -> None:
        """Every rank calls this (the densification statistics are summed onto rank 0); rank 0 writes."""
        self.dist.gather_densify_state(self.densifier.state)
        if not self.dist.is_main:
            return
        ckpt = {
            "format": FORMAT,
            "step": self.step,
            "params": {k: v.detach().cpu() for k, v in self.params.items()},
            "optimizers": {k: opt.state_dict() for k, opt in self.optimizers.items()},
            "strategy": self.densifier.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            },
            "config": config_to_dict(self.cfg),
            "metrics": json.dumps(self.metrics),
            "scene_extent": self.extent,
            "scene_fingerprint": self.fingerprint,
            "background": self.current_background().detach().cpu(),  # [3], the colour renders use
            "global_batch": self.global_batch,
        }
        if self.checkpoint_extras:
            ckpt["extras"] = dict(self.checkpoint_extras)
        if self.background_logit is not None:
            ckpt["background_logit"] = self.background_logit.detach().cpu()
            ckpt["background_optimizer"] = self.background_optimizer.state_dict()
        write_checkpoint(path, ckpt)

    def load_checkpoint(self, ckpt: dict | str | Path) -> None:
        """Restore a checkpoint's Gaussians, optimizer and densifier state, RNG and metrics (exact resume)."""
        source = "the checkpoint" if isinstance(ckpt, dict) else str(ckpt)
        if not isinstance(ckpt, dict):
            ckpt = read_checkpoint(ckpt)
        try:
            self.params = params_from_checkpoint(ckpt, self.device)
            self.optimizers = self._make_optimizers()
            for k, opt in self.optimizers.items():
                opt.load_state_dict(ckpt["optimizers"][k])
            self.densifier.load_state_dict(ckpt["strategy"], self.device)
            self.dist.localize_loaded_state(self.densifier.state)  # the saved sums stay on rank 0 only
            if self.background_logit is not None:
                self.background_logit = torch.nn.Parameter(ckpt["background_logit"].to(self.device, torch.float32))
                self.background_optimizer = torch.optim.Adam([self.background_logit], lr=self.cfg.background_lr,
                                                             eps=self.cfg.adam_eps)
                self.background_optimizer.load_state_dict(ckpt["background_optimizer"])
            torch.set_rng_state(ckpt["rng"]["torch"])
            if ckpt["rng"]["cuda"] is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state(ckpt["rng"]["cuda"], self.device)
            self.metrics = json.loads(ckpt["metrics"])
        except (KeyError, TypeError) as e:
            raise CheckpointError(f"{source} is not a complete splat checkpoint (bad or missing {e})") from e
        self.step = int(ckpt["step"])
        if self.step > self.cfg.steps:
            raise ConfigError(f"checkpoint {source} is at step {self.step}, beyond steps={self.cfg.steps}")


def params_from_checkpoint(
    ckpt: dict, device: torch.device, source: str | Path = "the checkpoint"
) -> torch.nn.ParameterDict:
    """The checkpoint's Gaussians as parameters on ``device``, shapes checked against each other."""
    params = ckpt["params"]
    missing = [k for k in PARAM_KEYS if not isinstance(params.get(k), Tensor)]
    if missing:
        raise CheckpointError(f"{source} has no Gaussian parameter(s) {missing}")
    n = {len(params[k]) if params[k].dim() else -1 for k in PARAM_KEYS}
    if len(n) != 1:
        raise CheckpointError(f"{source}: its Gaussian parameters disagree on the number of Gaussians")
    return torch.nn.ParameterDict({k: torch.nn.Parameter(params[k].to(device)) for k in PARAM_KEYS})


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

    ``sfm`` (a :class:`splat.sfm.PrepareConfig`) sets how SfM runs when the scene has no model yet.
    ``dist`` is this process's place in a data-parallel run (an initialised process group; see
    :mod:`splat.distributed`); one process when None.
    """
    scene = Path(scene)
    cfg = config if config is not None else default_config(scene)
    return Trainer(scene, cfg, sfm=sfm, dist=dist).train()
