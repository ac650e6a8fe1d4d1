"""Training: ``trainer`` (:class:`Trainer`, ``train``), which holds a :class:`splat.gaussians.Model` and composes
it with the optimizers, ``strategy`` (densification, behind the gsplat fence ``_gsplat``) and named helpers:
``guard`` (divergence), ``interrupt`` (Ctrl-C), ``checkpointing``; ``evaluation`` and ``metrics`` (held-out
PSNR / SSIM / LPIPS), ``distributed`` (several processes under torchrun), ``errors`` (how a run stops early),
and the optional training losses: ``appearance`` (a bilateral grid per training image, for photos whose
exposure or white balance varies) and ``depth`` (depth targets from the SfM points). Both only shape
training: nothing below ``training`` renders or exports through them.

May import: the base, ``splat.render``, ``splat.scene`` and ``splat.gaussians``; never ``view``, ``edit`` or
``commands``.
"""


def __getattr__(name):  # lazy: importing the package does not import torch
    if name in ("Trainer", "TrainResult", "train", "default_config"):
        from splat.training import trainer

        return getattr(trainer, name)
    if name in ("TrainingDiverged", "TrainingInterrupted"):
        from splat.training import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'splat.training' has no attribute {name!r}")
