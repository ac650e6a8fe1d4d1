"""SPLAT_MAX_IMAGE_PIXELS is the one pixel limit on photos, wherever splat decodes them: raised, it lets a
photo past PIL's own limit (89.5 Mpx: a 200 MP phone photo is refused by PIL as a decompression bomb, and one
over 89.5 Mpx draws a warning); lowered, nothing over it is decoded even when the header check is bypassed.
PIL's limit is lowered here to 1000 px so that the scenes' 64 x 48 px photos stand for such photos."""

from __future__ import annotations

import pytest
from PIL import Image

from splat.scene.colmap import SceneError, load_scene
from splat.scene.sfm import _read_image_infos
from splat.scene.views import ViewDataset


@pytest.fixture
def pil_limit_1000(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 48 = 3072 px: over twice PIL's limit


def test_photos_our_limit_allows_decode_past_pils_own(synthetic_scene, tmp_path, pil_limit_1000):
    # mutation: without photo_pixel_limit around the decoding, each of these raises PIL's
    # DecompressionBombError ("cannot read image ..." / "cannot decode image ...")
    scene = load_scene(synthetic_scene, cache_dir=tmp_path / "cache")
    views = ViewDataset(scene.views, 1.0, 0)
    assert tuple(views[0].image.shape) == (48, 64, 3)
    views.preload(num_threads=2)  # worker threads see the same limit
    names = sorted(p.name for p in (synthetic_scene / "images").iterdir())
    infos = _read_image_infos(synthetic_scene / "images", names, False)
    assert len(infos) == len(scene.views)
    assert Image.MAX_IMAGE_PIXELS == 1000  # PIL's own limit is back afterwards


def test_a_photo_over_our_limit_is_not_decoded_even_past_the_header_check(synthetic_scene, tmp_path, monkeypatch):
    scene = load_scene(synthetic_scene, cache_dir=tmp_path / "cache")
    views = ViewDataset(scene.views, 1.0, 0)
    # the scene was read under the default limit; now the limit falls below its photos (as if a file had been
    # swapped for a larger one after its header was read): 3072 px is over 2000 but under twice it, where PIL
    # alone would only warn and decode
    monkeypatch.setenv("SPLAT_MAX_IMAGE_PIXELS", "2000")
    with pytest.raises(SceneError, match="cannot decode image .*exceeds limit"):
        views[1]
