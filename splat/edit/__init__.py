"""Editing a trained scene with a text prompt (``splat edit``): editkit's per-photo edits carried into 3D with
Instruct-NeRF2NeRF's Iterative Dataset Update.

``config`` (:class:`EditConfig`, :func:`plan_edit`: what is asked, checked before anything loads; no torch),
``view_editor`` (:class:`ViewEditor`: one view's inversion and edit) and ``dataset_update``
(:func:`edit_scene`: the loop that trains on from the model while replacing one training image at a time).
See :mod:`splat.edit.dataset_update` for the method and its deliberate choices.

May import: the base, ``splat.render``, ``splat.scene``, ``splat.gaussians``, ``splat.training`` and ``editkit``;
never ``view`` or ``commands``.
"""

from splat.edit.config import DEFAULT_MODEL, EditConfig, SceneEditError, default_cache_dir, plan_edit

__all__ = ["DEFAULT_MODEL", "EditConfig", "EditResult", "SceneEditError", "ViewEditor", "default_cache_dir",
           "edit_scene", "plan_edit"]  # fmt: skip


def __getattr__(name):  # lazy: the editor and the loop import torch
    if name in ("EditResult", "edit_scene"):
        from splat.edit import dataset_update

        return getattr(dataset_update, name)
    if name == "ViewEditor":
        from splat.edit.view_editor import ViewEditor

        return ViewEditor
    raise AttributeError(f"module 'splat.edit' has no attribute {name!r}")
