"""editkit.image: every PIL mode to RGB at a size the model takes, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from editkit.image import image_to_tensor, load_image, model_multiple


def _gradient(w=40, h=30):
    x = np.linspace(0, 255, w)[None, :, None] * np.ones((h, 1, 1))
    y = np.linspace(0, 255, h)[:, None, None] * np.ones((1, w, 1))
    return np.concatenate([x, y, 255 - x], axis=2).astype(np.uint8)  # [h, w, 3]


def test_exif_orientation_is_applied(tmp_path):
    img = Image.fromarray(_gradient(40, 20))  # landscape 40x20
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": upright image is portrait 20x40
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif)
    out = load_image(path, size=None, multiple=4)
    assert out.mode == "RGB"
    assert out.size == (20, 40)


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "I;16", "I", "LA", "CMYK", "1", "F"])
def test_modes_become_rgb_of_the_right_size(tmp_path, mode):
    rgb = Image.fromarray(_gradient())
    if mode == "RGBA":
        img = rgb.convert("RGBA")
        img.putalpha(0)  # fully transparent: must composite to white
    elif mode == "I;16":
        # the dtype gives the mode (Pillow 13 refuses a mode argument that the dtype does not imply)
        img = Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)
    elif mode == "I":
        img = Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.int32) * 257)
    elif mode == "F":
        img = Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.float32) / 255.0)
    else:
        img = rgb.convert(mode)
    assert img.mode == mode
    out = load_image(img, size=32, multiple=8)
    assert out.mode == "RGB" and out.size == (32, 32)
    a = np.asarray(out)
    if mode == "RGBA":
        assert a.min() == 255  # white background
    if mode in ("I;16", "I", "F", "L"):
        # 16-bit / float images are scaled to 8 bits, not clipped to white
        assert 40 < a.mean() < 215 and a.max() > 200 and a.min() < 60


def test_size_policies():
    img = Image.fromarray(_gradient(100, 60))
    assert load_image(img, size=48, multiple=16).size == (48, 48)
    assert load_image(img, size=(32, 64), multiple=16).size == (64, 32)
    out = load_image(img, size=70, keep_aspect=True, multiple=16)  # 70x42 -> 64x32
    assert out.size == (64, 32)
    assert load_image(img, size=None, multiple=16).size == (96, 48)


def test_image_to_tensor_range():
    t = image_to_tensor(Image.fromarray(_gradient()))
    assert t.shape == (1, 3, 30, 40) and t.dtype == torch.float32
    assert t.min() >= -1 and t.max() <= 1 and t.min() < -0.9 and t.max() > 0.9


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ValueError, match="notes.png"):
        load_image(text)
    truncated = tmp_path / "cut.png"
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.png"):
        load_image(truncated)
    with pytest.raises(ValueError, match="folder"):
        load_image(tmp_path)


def test_too_small_for_the_model(tmp_path, sd1):
    multiple = model_multiple(sd1)
    path = tmp_path / "tiny.png"
    Image.fromarray(_gradient(multiple - 1, multiple + 5)).save(path)
    with pytest.raises(ValueError, match=rf"tiny.png.*{multiple - 1}x{multiple + 5}.*too small"):
        load_image(path, size=32, multiple=multiple)
    with pytest.raises(ValueError, match="multiples of"):
        load_image(Image.fromarray(_gradient(64, 64)), size=30, multiple=multiple)
