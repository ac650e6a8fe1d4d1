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

import io
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from safeio import atomic_write_bytes
from splat.checkpoint import read_checkpoint
from splat.colmap import SceneError, SceneModel, find_model_dir, load_scene
from splat.config import PRESETS, TrainConfig, apply_overrides, config_to_dict, load_scene_overrides
from splat.data import ViewDataset, camera_extent, split_indices
from splat.metrics import _load_lpips, psnr, ssim
from splat.outputs import (
    OutputError,
    atomic_save_image,
    atomic_write_text,
    check_output_dir,
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


# ------------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    return dev


def expon_lr(step: int, lr_init: float, lr_final: float, max_steps: int) -> float:
    """Log-linear interpolation from lr_init (step 0) to lr_final (max_steps), as the original."""
    t = min(max(step / max(max_steps, 1), 0.0), 1.0)
    return math.exp(math.log(lr_init) * (1 - t) + math.log(lr_final) * t)


def knn_sq_dist(points: Tensor, k: int = 3, chunk: int = 2048) -> Tensor:
    """Mean squared distance of each point [P, 3] to its k nearest other points -> [P]."""
    out = []
    for start in range(0, len(points), chunk):
        d2 = torch.cdist(points[start : start + chunk], points).square()  # [B, P]
        kk = min(k + 1, len(points))
        nearest = d2.topk(kk, dim=1, largest=False).values[:, 1:]  # drop the point itself
        out.append(nearest.mean(1) if nearest.shape[1] else torch.ones(len(d2)))
    return torch.cat(out)


def init_gaussians(points: np.ndarray, colors: np.ndarray, cfg: TrainConfig) -> torch.nn.ParameterDict:
    """Gaussians at the SfM points: SH DC from the colours, isotropic scales from the 3 nearest
    neighbours (sqrt of their mean squared distance, as the original), identity rotations, opacity
    ``init_opacity`` stored as its logit."""
    means = torch.from_numpy(points).float()  # [N, 3]
    n = len(means)
    dist2 = knn_sq_dist(means).clamp_min(1e-7)  # [N]
    scales = torch.log(torch.sqrt(dist2) * cfg.init_scale)[:, None].repeat(1, 3)  # [N, 3]
    quats = torch.zeros(n, 4)
    quats[:, 0] = 1.0  # identity, wxyz
    opacities = torch.logit(torch.full((n,), cfg.init_opacity))  # [N]
    sh0 = rgb_to_sh(torch.from_numpy(colors).float() / 255.0)[:, None, :]  # [N, 1, 3]
    shN = torch.zeros(n, (cfg.sh_degree + 1) ** 2 - 1, 3)  # [N, K-1, 3]
    return make_params(means, scales, quats, opacities, sh0, shN)


def ensure_model(scene: Path) -> None:
    """Run SfM (``splat.sfm.prepare``) when the scene has images but no COLMAP model yet."""
    if find_model_dir(scene) is not None:
        return
    if not (scene / "images").is_dir():
        raise SceneError(f"scene {scene} has no images folder ({scene / 'images'} is missing)")
    try:
        from splat.sfm import PrepareConfig, prepare
    except ImportError as e:
        raise SceneError(
            f"scene {scene} has no COLMAP model ({scene / 'sparse' / '0'}) and SfM is unavailable: {e}"
        ) from e
    prepare(scene, PrepareConfig())
    if find_model_dir(scene) is None:
        raise SceneError(f"SfM on {scene} produced no model in {scene / 'sparse' / '0'}")


def default_config(scene: Path, preset: str = "default") -> TrainConfig:
    """The preset with the scene's ``splat.json`` applied."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    path = Path(scene) / "splat.json"
    return apply_overrides(PRESETS[preset], load_scene_overrides(scene), source=str(path))


# ------------------------------------------------------------------------------------------------------
# the trainer
# ------------------------------------------------------------------------------------------------------
class Trainer:
    """Holds the scene, the Gaussians, their optimizers and the densifier for one run."""

    def __init__(self, scene: str | Path, cfg: TrainConfig):
        # 1. Check inputs (nothing is written before they all pass, except the undistortion cache)
        cfg.validate()
        self.scene = Path(scene)
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.device = resolve_device(cfg.device)
        if self.out.exists() and not self.out.is_dir():
            raise OutputError(f"output folder {self.out} exists and is not a folder")
        if not would_be_writable(self.out):
            raise OutputError(f"output folder {self.out} cannot be written (permission denied)")
        ensure_model(self.scene)
        cache = cfg.cache_dir
        if cache is None and not os.access(self.scene, os.W_OK):
            cache = self.out / ".splat_cache"
        self.model: SceneModel = load_scene(self.scene, images=cfg.images, cache_dir=cache)
        train_idx, test_idx = split_indices(len(self.model.views), cfg.test_every)
        if not train_idx:
            raise SceneError(f"scene {self.scene} has no training views left after holding out test views")
        self.train_set = ViewDataset([self.model.views[i] for i in train_idx], cfg.downscale, cfg.max_width)
        self.test_set = ViewDataset([self.model.views[i] for i in test_idx], cfg.downscale, cfg.max_width)
        self.extent = camera_extent(self.model, train_idx)

        # 2. Gaussians, optimizers, densification
        self.params = init_gaussians(self.model.points, self.model.colors, cfg).to(self.device)
        self.optimizers = make_optimizers(self.params, self._lrs(), eps=cfg.adam_eps)
        self.densifier = self._make_densifier()
        self.step = 0
        self.metrics: dict[str, dict] = {}
        self._lpips = None
        self.background = torch.tensor(cfg.background, dtype=torch.float32, device=self.device)

    def _lrs(self) -> dict[str, float]:
        c = self.cfg
        return {
            "means": c.means_lr * self.extent,
            "scales": c.scales_lr,
            "quats": c.quats_lr,
            "opacities": c.opacities_lr,
            "sh0": c.sh0_lr,
            "shN": c.shN_lr,
        }

    def _make_densifier(self) -> Densifier:
        c = self.cfg
        return Densifier(
            kind=c.strategy,
            scene_scale=self.extent,
            refine_start=c.refine_start,
            refine_stop=c.refine_stop,
            refine_every=c.refine_every,
            reset_every=c.reset_every,
            reset_value=c.reset_value,
            grow_grad2d=c.grow_grad2d,
            grow_scale3d=c.grow_scale3d,
            prune_opa=c.prune_opa,
            prune_scale3d=c.prune_scale3d,
            cap_max=c.cap_max,
            noise_lr=c.noise_lr,
        )

    # -- rendering -----------------------------------------------------------------------------------
    def render(self, K: Tensor, viewmat: Tensor, width: int, height: int, sh_degree: int):
        """Render one view -> (image [H, W, 3], alpha [H, W, 1], meta)."""
        p = self.params
        colors = torch.cat([p["sh0"], p["shN"]], dim=1)  # [N, K, 3]
        img, alpha, meta = rasterize(
            p["means"],
            p["quats"],
            torch.exp(p["scales"]),
            torch.sigmoid(p["opacities"]),
            colors,
            viewmat[None],
            K[None],
            width,
            height,
            sh_degree=sh_degree,
            backgrounds=self.background[None],
            backend=self.cfg.backend,
        )
        return img[0], alpha[0], meta

    def active_sh_degree(self, step: int) -> int:
        """Degree used at ``step`` (1-based): raised by one after every ``sh_degree_interval`` steps."""
        return min(self.cfg.sh_degree, (step - 1) // max(self.cfg.sh_degree_interval, 1))

    def view_for_step(self, step: int) -> int:
        """Training view of ``step`` (1-based): a fresh permutation per epoch, a pure function of the seed."""
        n = len(self.train_set)
        epoch, pos = divmod(step - 1, n)
        gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
        return int(torch.randperm(n, generator=gen)[pos])

    # -- training ------------------------------------------------------------------------------------
    def train(self) -> TrainResult:
        cfg = self.cfg
        check_output_dir(self.out)
        atomic_write_text(self.out / "config.json", json.dumps(config_to_dict(cfg), indent=2))
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        t0 = time.perf_counter()
        # The seed below applies inside this fork only; the caller's RNG state is restored on exit.
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(cfg.seed)
            if cfg.resume is not None:
                self.load_checkpoint(cfg.resume)
            elif 0 in cfg.eval_steps and self.test_set:
                self.evaluate(0)
            self._loop()
        elapsed = time.perf_counter() - t0
        ply = self.out / "point_cloud" / f"iteration_{self.step}" / "point_cloud.ply"
        return TrainResult(
            out=self.out,
            ply=ply,
            checkpoint=self.out / "ckpts" / f"ckpt_{self.step:06d}.pt",
            metrics=self.metrics,
            num_gaussians=len(self.params["means"]),
            steps=self.step,
            elapsed_s=elapsed,
        )

    def _loop(self) -> None:
        cfg = self.cfg
        from tqdm import tqdm

        bar = tqdm(
            range(self.step + 1, cfg.steps + 1),
            initial=self.step,
            total=cfg.steps,
            disable=not cfg.progress,
            desc="train",
            dynamic_ncols=True,
        )
        ema_loss, ema_psnr = None, None
        for step in bar:
            frame = self.train_set[self.view_for_step(step)]
            gt = frame.image.to(self.device)  # [H, W, 3]
            lr_means = expon_lr(step, cfg.means_lr, cfg.means_lr_final, cfg.means_lr_steps) * self.extent
            set_lr(self.optimizers, "means", lr_means)

            img, _, info = self.render(
                frame.K.to(self.device),
                frame.viewmat.to(self.device),
                frame.width,
                frame.height,
                self.active_sh_degree(step),
            )
            self.densifier.step_pre_backward(self.params, self.optimizers, step, info)
            l1 = (img - gt).abs().mean()
            loss = (1 - cfg.ssim_lambda) * l1 + cfg.ssim_lambda * (1 - ssim(img, gt))
            if cfg.strategy == "mcmc":
                loss = loss + cfg.opacity_reg * torch.sigmoid(self.params["opacities"]).mean()
                loss = loss + cfg.scale_reg * torch.exp(self.params["scales"]).mean()
            loss.backward()

            for opt in self.optimizers.values():
                opt.step()
                opt.zero_grad(set_to_none=True)
            self.densifier.step_post_backward(self.params, self.optimizers, step, info, lr_means)
            self.step = step

            with torch.no_grad():
                cur_psnr = psnr(img.detach(), gt)
            ema_loss = loss.item() if ema_loss is None else 0.9 * ema_loss + 0.1 * loss.item()
            ema_psnr = cur_psnr if ema_psnr is None else 0.9 * ema_psnr + 0.1 * cur_psnr
            if cfg.progress and (step % 10 == 0 or step == cfg.steps):
                bar.set_postfix(loss=f"{ema_loss:.4f}", psnr=f"{ema_psnr:.2f}", n=len(self.params["means"]))

            last = step == cfg.steps
            if (step in cfg.eval_steps or last) and self.test_set:
                self.evaluate(step)
            keep = step in cfg.save_steps or last
            if keep or (cfg.ckpt_every > 0 and step % cfg.ckpt_every == 0):
                self.save_checkpoint(self.out / "ckpts" / f"ckpt_{step:06d}.pt")
            if keep:
                write_ply(self.out / "point_cloud" / f"iteration_{step}" / "point_cloud.ply", self.params)
        bar.close()

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
        for i in range(len(self.test_set)):
            f = self.test_set[i]
            gt = f.image.to(self.device)
            img, _, _ = self.render(
                f.K.to(self.device), f.viewmat.to(self.device), f.width, f.height, sh_degree
            )
            img = img.clamp(0, 1)
            scores["psnr"].append(psnr(img, gt))
            scores["ssim"].append(ssim(img, gt).item())
            if self._lpips:
                to = lambda x: x.permute(2, 0, 1)[None] * 2 - 1  # [1, 3, H, W] in [-1, 1]
                scores["lpips"].append(self._lpips(to(img), to(gt)).item())
            if cfg.save_renders:
                stem = Path(f.name).with_suffix("").as_posix().replace("/", "__")
                folder = self.out / "renders" / f"step_{step:06d}"
                atomic_save_image(folder / f"{stem}_render.png", img)
                atomic_save_image(folder / f"{stem}_gt.png", gt)
        if cfg.save_renders and len(self.test_set):  # side by side + contact sheet, from the files above
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
        atomic_write_text(self.out / "metrics.json", json.dumps(self.metrics, indent=2))
        return result

    # -- checkpoints ---------------------------------------------------------------------------------
    def save_checkpoint(self, path: Path) -> None:
        ckpt = {
            "format": "splat-ckpt-1",
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
        }
        buf = io.BytesIO()
        torch.save(ckpt, buf)
        atomic_write_bytes(path, buf.getvalue())

    def load_checkpoint(self, path: str | Path) -> None:
        ckpt = read_checkpoint(path)
        self.params = torch.nn.ParameterDict(
            {k: torch.nn.Parameter(ckpt["params"][k].to(self.device)) for k in PARAM_KEYS}
        )
        self.optimizers = make_optimizers(self.params, self._lrs(), eps=self.cfg.adam_eps)
        for k, opt in self.optimizers.items():
            opt.load_state_dict(ckpt["optimizers"][k])
        self.densifier.load_state_dict(ckpt["strategy"], self.device)
        torch.set_rng_state(ckpt["rng"]["torch"])
        if ckpt["rng"]["cuda"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"], self.device)
        self.step = int(ckpt["step"])
        self.metrics = json.loads(ckpt["metrics"])
        if self.step > self.cfg.steps:
            raise ValueError(f"checkpoint {path} is at step {self.step}, beyond steps={self.cfg.steps}")


# ------------------------------------------------------------------------------------------------------
# Python API
# ------------------------------------------------------------------------------------------------------
def train(scene: str | Path, config: TrainConfig | None = None) -> TrainResult:
    """Train Gaussians on ``scene`` (a folder with ``images/`` and optionally ``sparse/0``).

    Examples:
        >>> import splat
        >>> cfg = splat.default_config("assets/demo", preset="cpu-small")  # preset + splat.json
        >>> result = splat.train("assets/demo", cfg)
        >>> result.metrics[str(result.steps)]["psnr"]
    """
    scene = Path(scene)
    cfg = config if config is not None else default_config(scene)
    return Trainer(scene, cfg).train()
