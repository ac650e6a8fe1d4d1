"""The trainer's checkpoints: what a checkpoint holds, writing one per save step (its PLY first), pruning old
ones, and restoring every piece of state for an exact resume. The file format is
:mod:`splat.gaussians.checkpoint`'s.

One run per folder: every run has a ``run_id`` (a resumed run keeps its checkpoint's), written into each of
its checkpoints and into ``config.json``. A fresh run refuses a folder that holds another run
(:func:`check_fresh_out`) unless told to replace it (``--overwrite``: :func:`clear_previous_run`), and
retention only ever deletes checkpoints that carry the run's own id."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from splat.config import RESUME_SAFE_FIELDS, ConfigError, TrainConfig, config_from_checkpoint, config_to_dict
from splat.gaussians.checkpoint import (
    FORMAT,
    CheckpointError,
    checkpoint_name,
    prune_checkpoints,
    read_checkpoint,
    write_checkpoint,
)
from splat.gaussians.model import checked_params
from splat.gaussians.ply import write_ply
from splat.outputs import OutputError

if TYPE_CHECKING:
    from splat.training.trainer import Trainer


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


def read_resume(cfg: TrainConfig, global_batch: int, world_size: int) -> dict:
    """The checkpoint ``cfg.resume`` names, checked against ``cfg`` and the run's global batch.

    The global batch (processes x ``batch_size``) must be the checkpoint's; how it is split may change
    (2 processes x 1 view -> 1 process x 2 views): the views of every step are the same, and so is what the
    step computes (the loss is the mean over the global batch; the densification statistics are summed)."""
    ckpt = read_checkpoint(cfg.resume)
    saved = config_from_checkpoint(ckpt, str(cfg.resume))
    saved_batch = int(ckpt.get("global_batch", 1))
    if saved_batch != global_batch:
        raise ConfigError(
            f"--resume {cfg.resume}: the checkpoint was trained with {saved_batch} view(s) per step "
            f"(processes x batch_size), this run has {global_batch} "
            f"({world_size} x {cfg.batch_size}); launch processes x --batch-size = {saved_batch}"
        )
    # same global batch: batch_size may differ with the process count
    check_resume_config(dataclasses.replace(saved, batch_size=cfg.batch_size), cfg, Path(cfg.resume), int(ckpt["step"]))
    return ckpt


def new_run_id() -> str:
    return uuid.uuid4().hex[:16]


def previous_run(out: Path) -> list[str]:
    """What in ``out`` shows that a run wrote there (empty: no run)."""
    found = [name for name in ("config.json", "metrics.json") if (out / name).is_file()]
    if any((out / "ckpts").glob("ckpt_*.pt")):
        found.append("ckpts/")
    if any((out / "point_cloud").glob("iteration_*")):
        found.append("point_cloud/")
    return found


def check_fresh_out(out: Path, overwrite: bool) -> None:
    """A fresh run (no --resume) refuses a folder holding another run unless ``overwrite``."""
    found = previous_run(out)
    if found and not overwrite:
        raise OutputError(
            f"output folder {out} holds another run ({', '.join(found)}); pass --overwrite to replace it, "
            f"--resume {out / 'ckpts' / 'ckpt_NNNNNN.pt'} to continue it, or another --out"
        )


def clear_previous_run(out: Path) -> None:
    """With --overwrite: remove what a previous run wrote in ``out`` (only files and folders named as a run
    names them: ``config.json``, ``metrics.json``, ``ckpts/ckpt_*.pt``, ``point_cloud/iteration_*``,
    ``renders/step_*``); anything else in the folder is left alone."""
    for name in ("config.json", "metrics.json"):
        (out / name).unlink(missing_ok=True)
    for p in (out / "ckpts").glob("ckpt_*.pt"):
        if re.fullmatch(r"ckpt_\d{6,}\.pt", p.name) and p.is_file():
            p.unlink()
    for parent, pattern in (("point_cloud", r"iteration_\d+"), ("renders", r"step_\d+")):
        for p in (out / parent).glob("*"):
            if re.fullmatch(pattern, p.name) and p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)


def _run_id_of(path: Path) -> str | None:
    """The run id a checkpoint file carries (None: unreadable or written before runs had ids)."""
    try:  # memory-mapped: only the small entries are read, not the tensors
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 (not a checkpoint of ours: never deleted)
        return None
    return ckpt.get("run_id") if isinstance(ckpt, dict) else None


class Checkpointer:
    """Writes and restores the checkpoints of one trainer (``trainer.out / "ckpts"``)."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer

    @property
    def folder(self) -> Path:
        return self.trainer.out / "ckpts"

    def path(self, step: int) -> Path:
        return self.folder / checkpoint_name(step)

    def save_step(self, step: int, with_ply: bool) -> None:
        """The checkpoint of ``step`` (and its PLY, written first, so that a checkpoint that exists always
        has its PLY), then drop periodic checkpoints beyond the newest ``keep_ckpts``. Every rank calls
        this; rank 0 writes."""
        t = self.trainer
        if with_ply and t.dist.is_main:
            write_ply(t.out / "point_cloud" / f"iteration_{step}" / "point_cloud.ply", t.params)
        self.save(self.path(step))
        if t.dist.is_main:  # only this run's checkpoints (another run's in the folder are never deleted)
            prune_checkpoints(self.folder, t.cfg.keep_ckpts, t.cfg.save_steps,
                              owned=lambda p: _run_id_of(p) == t.run_id)  # fmt: skip

    def save(self, path: Path) -> None:
        """Every rank calls this (the densification statistics are summed onto rank 0); rank 0 writes."""
        t = self.trainer
        t.dist.gather_densify_state(t.densifier.state)
        if not t.dist.is_main:
            return
        ckpt = {
            "format": FORMAT,
            "run_id": t.run_id,
            "step": t.step,
            "params": {k: v.detach().cpu() for k, v in t.params.items()},
            "optimizers": {k: opt.state_dict() for k, opt in t.optimizers.items()},
            "strategy": t.densifier.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(t.device) if t.device.type == "cuda" else None,
            },
            "config": config_to_dict(t.cfg),
            "metrics": json.dumps(t.metrics),
            "scene_extent": t.extent,
            "scene_fingerprint": t.fingerprint,
            "background": t.current_background().detach().cpu(),  # [3], the colour renders use
            "global_batch": t.global_batch,
        }
        if t.checkpoint_extras:
            ckpt["extras"] = dict(t.checkpoint_extras)
        if t.background_logit is not None:
            ckpt["background_logit"] = t.background_logit.detach().cpu()
            ckpt["background_optimizer"] = t.background_optimizer.state_dict()
        if t.appearance is not None:  # the training photos' grids: checkpoints only, never exported files
            ckpt["appearance"] = t.appearance.grids.detach().cpu()
            ckpt["appearance_optimizer"] = t.appearance_optimizer.state_dict()
        write_checkpoint(path, ckpt)

    def restore(self, ckpt: dict | str | Path) -> None:
        """Restore a checkpoint's Gaussians, optimizer and densifier state, RNG and metrics (exact resume)."""
        t = self.trainer
        source = "the checkpoint" if isinstance(ckpt, dict) else str(ckpt)
        if not isinstance(ckpt, dict):
            ckpt = read_checkpoint(ckpt)
        try:
            t.params = torch.nn.ParameterDict(
                {k: torch.nn.Parameter(v.to(t.device)) for k, v in checked_params(ckpt, source).items()}
            )
            t.optimizers = t.make_optimizers()
            for k, opt in t.optimizers.items():
                opt.load_state_dict(ckpt["optimizers"][k])
            t.densifier.load_state_dict(ckpt["strategy"], t.device)
            t.dist.localize_loaded_state(t.densifier.state)  # the saved sums stay on rank 0 only
            if t.background_logit is not None:
                t.background_logit = torch.nn.Parameter(ckpt["background_logit"].to(t.device, torch.float32))
                t.background_optimizer = t.make_background_optimizer()
                t.background_optimizer.load_state_dict(ckpt["background_optimizer"])
            if t.appearance is not None:
                with torch.no_grad():
                    t.appearance.grids.copy_(ckpt["appearance"].to(t.device))
                t.appearance_optimizer.load_state_dict(ckpt["appearance_optimizer"])
            torch.set_rng_state(ckpt["rng"]["torch"])
            if ckpt["rng"]["cuda"] is not None and t.device.type == "cuda":
                torch.cuda.set_rng_state(ckpt["rng"]["cuda"], t.device)
            t.metrics = json.loads(ckpt["metrics"])
        except (KeyError, TypeError) as e:
            raise CheckpointError(f"{source} is not a complete splat checkpoint (bad or missing {e})") from e
        t.step = int(ckpt["step"])
        if t.step > t.cfg.steps:
            raise ConfigError(f"checkpoint {source} is at step {t.step}, beyond steps={t.cfg.steps}")

    def load_optimizer_moments(self, ckpt: dict) -> None:
        """Adam's moments from ``ckpt`` when it has them (a PLY has not): with fresh moments Adam's first
        steps move every parameter by about the learning rate whatever its gradient; with the run's moments a
        small gradient makes a small step. For training on from a model with other settings."""
        t = self.trainer
        saved = ckpt.get("optimizers")
        if not isinstance(saved, dict):
            return
        for name, opt in t.optimizers.items():
            if name in saved:
                opt.load_state_dict(saved[name])
        if t.background_logit is not None and isinstance(ckpt.get("background_optimizer"), dict):
            t.background_optimizer.load_state_dict(ckpt["background_optimizer"])
