"""Camera conventions checked on a real capture (../shared/scenes/cup), which a synthetic scene rendered by
our own renderer cannot catch: projected means agree with pycolmap, the initial point cloud looks like the
photo, and upright copies of EXIF-rotated photos are what gets loaded."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from splat.render._torch_impl import covariance_3d, project
from splat.scene.colmap import default_cache_dir, load_scene, read_reconstruction
from splat.scene.views import ViewDataset
from tests.splat.helpers import SHARED_SCENES, small_config

CUP = SHARED_SCENES / "cup"
needs_cup = pytest.mark.skipif(not CUP.is_dir(), reason="../shared/scenes/cup not available")
TRAIN_WIDTH = 128


@pytest.fixture(scope="module")
def cup(tmp_path_factory):
    return load_scene(CUP, cache_dir=tmp_path_factory.mktemp("cup-cache"))


@needs_cup
@pytest.mark.parametrize("view_index", [0, 33, 70])
def test_projected_sfm_points_match_pycolmap_at_training_resolution(cup, view_index):
    rec = read_reconstruction(CUP / "sparse" / "0")
    by_name = {im.name: im for im in rec.images.values()}
    ds = ViewDataset(cup.views, downscale=1.0, max_width=TRAIN_WIDTH)
    view, frame = cup.views[view_index], ds[view_index]
    image = by_name[view.name]
    camera = rec.cameras[image.camera_id]
    sx, sy = frame.width / camera.width, frame.height / camera.height

    ids = list(rec.point3D_ids())
    index = {pid: i for i, pid in enumerate(ids)}
    observed = [p.point3D_id for p in image.points2D if p.has_point3D()]
    assert len(observed) > 50
    pts = torch.from_numpy(cup.points).float()
    covars = covariance_3d(torch.tensor([[1.0, 0, 0, 0]]).expand(len(pts), 4), torch.full((len(pts), 3), 1e-3))
    means2d, _, depths, _ = project(
        pts, covars, frame.viewmat[None], frame.K[None], frame.width, frame.height, 0.3, 0.01, 1e10
    )
    ours = means2d[0, [index[p] for p in observed]].double().numpy()  # [M, 2] training pixels
    theirs = []
    for pid in observed:
        xyz = rec.points3D[pid].xyz
        uv = image.project_point(xyz)  # full-resolution pixels, COLMAP convention (pixel centres at +0.5)
        cam = image.cam_from_world() * xyz
        np.testing.assert_allclose(camera.img_from_cam(cam), uv, atol=1e-6)
        theirs.append([uv[0] * sx, uv[1] * sy])
    err = np.abs(ours - np.asarray(theirs)).max()
    assert err < 1.0, f"max projection disagreement {err:.3f} px at {frame.width}x{frame.height}"
    assert (depths[0, [index[p] for p in observed]] > 0).all()


@needs_cup
def test_initial_point_cloud_looks_like_the_photo(cup, tmp_path):
    """The SfM points rendered as the trainer initialises them correlate clearly with the ground truth."""
    from splat.training.trainer import Trainer

    cfg = small_config(tmp_path / "o", max_width=TRAIN_WIDTH, cache_dir=tmp_path / "cache", sh_degree=0)
    trainer = Trainer(CUP, cfg)
    # the views of the test split and a training view
    frames = [trainer.train_set[0], trainer.test_set[0]]
    for f in frames:
        with torch.no_grad():
            img, _, _ = trainer.render(f.K, f.viewmat, f.width, f.height, 0)
        corr = np.corrcoef(img.flatten().numpy(), f.image.flatten().numpy())[0, 1]
        assert corr > 0.4, (f.name, corr)
        # a mirrored or transposed camera would correlate much worse
        flipped = np.corrcoef(img.flip(1).flatten().numpy(), f.image.flatten().numpy())[0, 1]
        assert corr > flipped + 0.1, (f.name, corr, flipped)


def test_upright_copies_of_exif_rotated_photos_are_loaded(synthetic_scene, tmp_path):
    """`splat prepare` ran SfM on its cache's upright copies (default_cache_dir(SCENE)/sfm/upright); training
    must read those pixels too."""
    from PIL import Image

    scene = tmp_path / "scene"
    shutil.copytree(synthetic_scene, scene)
    upright = default_cache_dir(scene) / "sfm" / "upright"
    shutil.copytree(scene / "images", upright)
    # the raw photos: sideways with an EXIF rotation tag, as a phone writes them
    for path in sorted((scene / "images").iterdir()):
        with Image.open(upright / path.name) as im:
            sideways = im.transpose(Image.Transpose.ROTATE_90)
        exif = Image.Exif()
        exif[0x0112] = 6
        sideways.save(path, exif=exif)
        (upright / path.name).touch()  # copies newer than their sources, as prepare leaves them
    model = load_scene(scene)
    assert all(v.image_path.parent == upright and not v.exif_transpose for v in model.views)
    frame = ViewDataset(model.views)[0]
    with Image.open(upright / model.views[0].name) as im:
        np.testing.assert_array_equal(frame.image.mul(255).round().byte().numpy(), np.asarray(im.convert("RGB")))
    # without the cache, the raw files are read (and EXIF-rotated on load)
    shutil.rmtree(upright)
    raw = load_scene(scene)
    assert all(v.image_path.parent == scene / "images" and v.exif_transpose for v in raw.views)
