"""The Gaussians and the model that holds them.

``params`` (pre-activation parameters, keyed as :data:`PARAM_KEYS`, and their optimizers), ``init`` (Gaussians
at the SfM points), ``ply`` (the original 3DGS PLY layout), ``checkpoint`` (our checkpoint files) and
``model``: :class:`Model` (Gaussians + background + settings, which renders) and :func:`load_model`, the one
reader of a run folder, checkpoint or PLY (another format plugs in as a reader in ``model.READERS``).

May import: the base (``splat.config``, ``splat.outputs``, ``splat.device``, ``safeio``), ``splat.render``
and ``splat.scene``; never ``training``, ``view``, ``edit`` or ``commands``.
"""

PARAM_KEYS = ("means", "scales", "quats", "opacities", "sh0", "shN")
"""The Gaussian parameters, stored pre-activation (gsplat's ``simple_trainer`` keys)::

    means      [N, 3]      world-frame centres
    scales     [N, 3]      log of the axis scales            (activation: exp)
    quats      [N, 4]      wxyz rotation, unnormalised       (activation: normalise)
    opacities  [N]         logit of the opacity              (activation: sigmoid)
    sh0        [N, 1, 3]   SH DC coefficient per channel
    shN        [N, K-1, 3] higher-order SH coefficients, K = (degree + 1)**2
"""

__all__ = ["PARAM_KEYS", "READERS", "Model", "load_model"]


def __getattr__(name):  # lazy: the constants above without torch
    if name in ("Model", "load_model", "READERS", "find_model_file"):
        from splat.gaussians import model

        return getattr(model, name)
    raise AttributeError(f"module 'splat.gaussians' has no attribute {name!r}")
