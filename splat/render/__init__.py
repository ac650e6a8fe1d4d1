"""Rendering Gaussians: ``rasterization.rasterize``, the one entry every renderer goes through (gsplat's CUDA
rasterizer, or ``_torch_impl``, its pure-PyTorch twin, on the CPU), and ``modes``, a viewer's render modes
(rgb, depth, alpha, centres) as uint8 pictures.

May import: the base (``splat.config``, ``splat.outputs``, ``safeio``) and gsplat, never another ``splat``
folder: it knows tensors, not models, scenes or runs.
"""


def __getattr__(name):  # lazy: importing the package does not import torch
    if name == "rasterize":
        from splat.render.rasterization import rasterize

        return rasterize
    raise AttributeError(f"module 'splat.render' has no attribute {name!r}")
