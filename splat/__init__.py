"""splat: train 3D Gaussian Splatting models from COLMAP scenes.

Python API (mirrors the CLI)::

    import splat
    cfg = splat.default_config("scene/", preset="default")   # preset + scene/splat.json
    result = splat.train("scene/", cfg)                       # -> TrainResult (out, ply, metrics, ...)
    model = splat.load_model(result.out)                      # run folder, checkpoint or PLY -> Model
    image, alpha, _ = model.render(K, viewmat, width, height)

One concept per folder; imports point down this list only (``tests/apps/test_layering.py`` checks it)::

    commands/   one module per ``splat`` command (cli.py dispatches)       may import everything below
    edit/       text edits of a trained scene (Iterative Dataset Update)   training, gaussians, scene, render
    view/       web viewer, camera paths, video                            gaussians, scene, render
    training/   trainer, densification, appearance / depth losses, eval    gaussians, scene, render
    gaussians/  parameters, PLY, checkpoints, Model + load_model           scene, render
    scene/      COLMAP, SfM, views and cameras                              (base only)
    render/     rasterize (gsplat or the PyTorch twin), render modes       (base only)
    base        config.py, outputs.py, device.py; safeio                   (nothing of splat above)

Importing this package never initialises CUDA; heavy modules load lazily.
"""

from splat.config import PRESETS, TrainConfig

__all__ = ["PRESETS", "Model", "TrainConfig", "TrainResult", "Trainer", "default_config", "load_model", "rasterize",
           "train"]  # fmt: skip


def __getattr__(name):
    if name in ("train", "Trainer", "TrainResult", "default_config"):
        from splat.training import trainer

        return getattr(trainer, name)
    if name in ("Model", "load_model"):
        from splat.gaussians import model

        return getattr(model, name)
    if name == "rasterize":
        from splat.render.rasterization import rasterize

        return rasterize
    raise AttributeError(f"module 'splat' has no attribute {name!r}")
