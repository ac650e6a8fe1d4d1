"""splat: train 3D Gaussian Splatting models from COLMAP scenes.

Python API (mirrors the CLI)::

    import splat
    cfg = splat.default_config("scene/", preset="default")   # preset + scene/splat.json
    result = splat.train("scene/", cfg)                       # -> TrainResult (out, ply, metrics, ...)

Importing this package never initialises CUDA; heavy modules load lazily.
"""

from splat.config import PRESETS, TrainConfig

__all__ = ["PRESETS", "TrainConfig", "TrainResult", "Trainer", "default_config", "rasterize", "train"]


def __getattr__(name):
    if name in ("train", "Trainer", "TrainResult", "default_config"):
        from splat import trainer

        return getattr(trainer, name)
    if name == "rasterize":
        from splat.rendering import rasterize

        return rasterize
    raise AttributeError(f"module 'splat' has no attribute {name!r}")
