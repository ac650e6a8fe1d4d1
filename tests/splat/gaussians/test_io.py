"""COLMAP adapter and PLY round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from splat.gaussians.ply import property_names, read_ply, write_ply
from splat.scene.colmap import load_scene, read_reconstruction
from tests.splat.helpers import SHARED_SCENES

BEERCAN = SHARED_SCENES / "beercan"
needs_beercan = pytest.mark.skipif(not BEERCAN.is_dir(), reason="../shared/scenes/beercan not available")


def _views_equal(a, b):
    assert [v.name for v in a.views] == [v.name for v in b.views]
    for va, vb in zip(a.views, b.views, strict=True):
        np.testing.assert_allclose(va.K, vb.K, rtol=1e-12)
        np.testing.assert_allclose(va.cam_from_world, vb.cam_from_world, atol=1e-9)
        assert (va.width, va.height) == (vb.width, vb.height)
    np.testing.assert_allclose(a.points, b.points, atol=1e-9)
    np.testing.assert_array_equal(a.colors, b.colors)


def test_binary_and_text_models_load_identically(synthetic_scene, tmp_path):
    import shutil

    text_scene = tmp_path / "text"
    shutil.copytree(synthetic_scene / "images", text_scene / "images")
    (text_scene / "sparse" / "0").mkdir(parents=True)
    read_reconstruction(synthetic_scene / "sparse" / "0").write_text(str(text_scene / "sparse" / "0"))
    assert (text_scene / "sparse" / "0" / "images.txt").is_file()
    assert not (text_scene / "sparse" / "0" / "images.bin").exists()
    _views_equal(load_scene(synthetic_scene), load_scene(text_scene))


@needs_beercan
def test_real_binary_and_text_models_load_identically(tmp_path):
    rec = read_reconstruction(BEERCAN / "sparse" / "0")
    rec.write_text(str(tmp_path))
    rec_txt = read_reconstruction(tmp_path)
    assert rec_txt.num_points3D() == rec.num_points3D() == 4414
    for i, im in rec.images.items():
        np.testing.assert_allclose(
            im.cam_from_world().matrix(), rec_txt.images[i].cam_from_world().matrix(), atol=1e-9
        )
        np.testing.assert_allclose(rec.cameras[im.camera_id].params, rec_txt.cameras[im.camera_id].params)


def beercan_subset(root, every: int):
    """The beercan scene restricted to every ``every``-th photo (by name): the other frames deregistered in the
    model (their observations leave the tracks), the photos linked from ../shared, never copied."""
    import os

    rec = read_reconstruction(BEERCAN / "sparse" / "0")
    keep = set(sorted(rec.images[i].name for i in rec.reg_image_ids())[::every])
    for i in list(rec.reg_image_ids()):
        if rec.images[i].name not in keep:
            rec.deregister_frame(rec.images[i].frame_id)
    (root / "sparse" / "0").mkdir(parents=True)
    (root / "images").mkdir()
    rec.write_binary(str(root / "sparse" / "0"))
    for name in keep:
        os.symlink(BEERCAN / "images" / name, root / "images" / name)
    return root


@needs_beercan
def test_undistorted_beercan_reprojects_within_one_pixel(tmp_path):
    """SIMPLE_RADIAL photos become pinhole cameras under which SfM points land on their observations. On every
    6th of the 71 photos (undistorting is per photo): measured 12 views, 3408 observations, mean 0.89 px (all 71
    photos: 30839 observations, mean 0.84 px)."""
    model = load_scene(beercan_subset(tmp_path / "beercan", every=6), cache_dir=tmp_path / "cache")
    assert model.undistorted and len(model.views) == 12
    rec = read_reconstruction(model.model_dir)
    assert {c.model.name for c in rec.cameras.values()} == {"PINHOLE"}
    errors = []
    by_name = {v.name: v for v in model.views}
    for im in rec.images.values():
        v = by_name[im.name]
        for p2d in im.points2D:
            if not p2d.has_point3D():
                continue
            xyz = rec.points3D[p2d.point3D_id].xyz
            xc = v.cam_from_world[:3, :3] @ xyz + v.cam_from_world[:3, 3]
            uv = (v.K @ (xc / xc[2]))[:2]
            errors.append(np.linalg.norm(uv - p2d.xy))
    assert len(errors) > 3000
    assert np.mean(errors) < 1.0, np.mean(errors)
    # and the cached images have the undistorted cameras' sizes (checked in load_scene) and are reused
    stamp = (tmp_path / "cache" / "undistorted" / "source.json").stat().st_mtime_ns
    load_scene(tmp_path / "beercan", cache_dir=tmp_path / "cache")
    assert (tmp_path / "cache" / "undistorted" / "source.json").stat().st_mtime_ns == stamp


def test_ply_round_trip_is_exact_and_has_original_layout(tmp_path):
    g = torch.Generator().manual_seed(0)
    n = 37
    splats = {
        "means": torch.randn(n, 3, generator=g),
        "scales": torch.randn(n, 3, generator=g),
        "quats": torch.randn(n, 4, generator=g),
        "opacities": torch.randn(n, generator=g),
        "sh0": torch.randn(n, 1, 3, generator=g),
        "shN": torch.randn(n, 15, 3, generator=g),
    }
    path = tmp_path / "pc.ply"
    write_ply(path, splats)
    back = read_ply(path)
    for k, v in splats.items():
        assert torch.equal(back[k], v), k

    header = path.read_bytes().split(b"end_header\n")[0].decode().splitlines()
    props = [line.split()[2] for line in header if line.startswith("property")]
    expected = (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(45)]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )
    assert props == expected == property_names()
    assert all(line.startswith("property float ") for line in header if line.startswith("property"))
    # f_rest is channel-major: f_rest_0..14 are the red coefficients of degree 1..3
    raw = np.frombuffer(path.read_bytes().split(b"end_header\n")[1], dtype="<f4").reshape(n, 62)
    np.testing.assert_array_equal(raw[:, 9:24], splats["shN"][:, :, 0].numpy())
    np.testing.assert_array_equal(raw[:, 24:39], splats["shN"][:, :, 1].numpy())
    assert not list(tmp_path.glob("*.tmp"))
