"""Every bad input gives a clear error naming the problem, and nothing is written."""

from __future__ import annotations

import shutil

import pytest
from PIL import Image

from splat.colmap import SceneError, read_reconstruction
from splat.outputs import OutputError
from splat.trainer import train

from .conftest import small_config


@pytest.fixture
def scene(synthetic_scene, tmp_path):
    dst = tmp_path / "scene"
    shutil.copytree(synthetic_scene, dst)
    return dst


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def _expect_error(scene, tmp_path, exc, match):
    before = _files(scene)
    out = tmp_path / "out"
    with pytest.raises(exc, match=match):
        train(scene, small_config(out, steps=2))
    assert not out.exists(), "nothing may be written on bad input"
    assert _files(scene) == before


def test_missing_images_folder(scene, tmp_path):
    shutil.rmtree(scene / "images")
    _expect_error(scene, tmp_path, SceneError, "no images folder")


def test_missing_model_file(scene, tmp_path):
    (scene / "sparse" / "0" / "points3D.bin").unlink()
    _expect_error(scene, tmp_path, SceneError, "missing points3D.bin")


def test_corrupt_model_file(scene, tmp_path):
    (scene / "sparse" / "0" / "images.bin").write_bytes(b"this is not a COLMAP file")
    _expect_error(scene, tmp_path, SceneError, r"images\.bin .*truncated or corrupt")


def test_image_size_disagrees_with_camera(scene, tmp_path):
    path = scene / "images" / "003.png"
    Image.open(path).resize((32, 24)).save(path)
    _expect_error(scene, tmp_path, SceneError, r"003.png is 32x24 pixels but its COLMAP camera is 64x48")


def test_missing_image_file(scene, tmp_path):
    (scene / "images" / "005.png").unlink()
    _expect_error(scene, tmp_path, SceneError, "005.png is listed in the COLMAP model but missing")


def test_model_without_points(scene, tmp_path):
    model = scene / "sparse" / "0"
    rec = read_reconstruction(model)
    for pid in list(rec.point3D_ids()):
        rec.delete_point3D(pid)
    rec.write_binary(str(model))
    _expect_error(scene, tmp_path, SceneError, "no 3D points")


def test_output_folder_cannot_be_written(scene, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    before = _files(scene)
    with pytest.raises(OutputError, match="cannot be written|is not a folder"):
        train(scene, small_config(blocker / "out", steps=2))
    with pytest.raises(OutputError, match="is not a folder"):
        train(scene, small_config(blocker, steps=2))
    assert blocker.read_text() == "x" and _files(scene) == before


def test_bad_scene_config(scene, tmp_path):
    from splat.trainer import default_config

    (scene / "splat.json").write_text('{"stepz": 3}')
    with pytest.raises(ValueError, match="unknown option.*stepz"):
        default_config(scene)
    (scene / "splat.json").write_text('{"steps": "many"}')
    with pytest.raises(ValueError, match="steps must be an integer"):
        default_config(scene)
