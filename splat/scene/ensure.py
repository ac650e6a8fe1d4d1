"""``ensure_model(scene)``: run SfM when a scene has photos but no COLMAP model yet; refuse a broken model folder."""

from __future__ import annotations

from pathlib import Path

from splat.scene.colmap import SceneError, check_scene_folder, find_model_dir


def ensure_model(scene: Path, sfm=None) -> None:
    """Run SfM (``splat.scene.sfm.prepare`` with ``sfm``, a ``PrepareConfig``) when the scene has images but no
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
        from splat.scene.sfm import PrepareConfig, prepare
    except ImportError as e:
        raise SceneError(
            f"scene {scene} has no COLMAP model ({scene / 'sparse' / '0'}) and SfM is unavailable: {e}"
        ) from e
    prepare(scene, sfm if sfm is not None else PrepareConfig())
    if find_model_dir(scene) is None:
        raise SceneError(f"SfM on {scene} produced no model in {scene / 'sparse' / '0'}")
