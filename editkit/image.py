"""Loading real images for editing: any file PIL reads, in any mode, to an RGB image of a size the model takes.

Size policy (:func:`load_image`):

* ``size=S`` (an int, the default 512) and ``keep_aspect=False``: center-crop to a square on the shorter
  side, then resize to ``S x S`` (what the Prompt-to-Prompt / null-text notebooks' ``load_512`` and
  pnp-diffusers do).
* ``size=(h, w)`` and ``keep_aspect=False``: center-crop to the aspect ratio ``h / w``, then resize to
  ``h x w``.
* ``size=S`` and ``keep_aspect=True``: resize so the *longer* side is ``S``, then center-crop both sides
  down to a multiple of ``multiple`` (no distortion; at most ``multiple - 1`` pixels lost per side).
* ``size=None``: keep the image's own size, center-cropped down to multiples of ``multiple``.

``multiple`` is what the model needs: :func:`model_multiple` gives ``vae_scale_factor * 2**(levels - 1)``
(64 px for SD 1.x/2.x, 32 px for SDXL) so every UNet level sees whole pixels. Images whose shorter side is
below ``min_size`` (default ``multiple``) are refused rather than blown up from a few pixels.

Size limit: images with more than :data:`MAX_PIXELS` pixels (width x height, 8192 x 8192 = 67.1 million)
are refused with a ``ValueError`` before their pixels are decoded (the size comes from the file's header),
so a crafted or huge file costs neither the time nor the memory of decoding it. The limit is a module
constant (``editkit.image.MAX_PIXELS = ...`` changes it for the process) and a ``max_pixels`` argument of
:func:`load_image`. Pillow's own decompression-bomb guard and truncated or corrupt files end in a
``ValueError`` naming the file as well.

Mode conversions: EXIF orientation is applied first (``ImageOps.exif_transpose``); transparent images
(``RGBA``, ``LA``, ``PA`` and ``P`` with a transparency key) are composited on white; 16-bit grayscale
(``I;16*``, and ``I`` holding values above 255) is scaled to 8 bits by ``1 / 257``; float images (``F``)
in ``[0, 1]`` are scaled by 255; everything else goes through ``Image.convert("RGB")``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["MAX_PIXELS", "load_image", "image_to_tensor", "model_multiple", "to_rgb"]

MAX_PIXELS = 8192 * 8192  # largest image (width x height) load_image decodes; see the module docstring


def model_multiple(pipe) -> int:
    """Pixel multiple a pipeline's UNet takes without padding: ``vae_scale_factor * 2**(levels - 1)``."""
    levels = len(pipe.unet.config.block_out_channels)
    return int(pipe.vae_scale_factor) * 2 ** (levels - 1)


def _check_pixels(image: Image.Image, name: str, max_pixels: int) -> None:
    if image.width * image.height > max_pixels:
        raise ValueError(
            f"{name} is {image.width}x{image.height} px (width x height), {image.width * image.height:,} pixels: "
            f"more than the limit of {max_pixels:,} (editkit.image.MAX_PIXELS); downscale it first"
        )


def open_header(source, max_pixels: int = MAX_PIXELS) -> tuple[Image.Image, str]:
    """``(image, name)`` for a path (only its header read, nothing decoded) or a PIL image, refused with a
    ValueError naming the file when it is not a readable image or has more than ``max_pixels`` pixels."""
    if isinstance(source, Image.Image):
        _check_pixels(source, "the image", max_pixels)
        return source, "<PIL image>"
    if not isinstance(source, str | os.PathLike):
        raise TypeError(f"image must be a file path or a PIL.Image, got {type(source).__name__}")
    path = Path(source).expanduser()
    name = str(path)
    if not path.exists():
        raise FileNotFoundError(f"no image file at {name}")
    if path.is_dir():
        raise ValueError(f"{name} is a folder, not an image file")
    try:
        with warnings.catch_warnings():  # our own limit, checked next, says it more plainly than PIL's warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)  # reads the header only
    except Image.DecompressionBombError as e:
        raise ValueError(f"{name} is refused as a decompression bomb ({e}); the limit is {max_pixels:,} pixels") from e
    except UnidentifiedImageError as e:
        raise ValueError(f"{name} is not an image file PIL can read") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"could not read the image {name}: {e}") from e
    try:
        _check_pixels(image, name, max_pixels)  # before decoding a single pixel
    except ValueError:
        image.close()
        raise
    return image, name


def _open(source, max_pixels: int) -> tuple[Image.Image, str]:
    image, name = open_header(source, max_pixels)
    if name == "<PIL image>":
        return image, name
    try:
        image.load()  # decode now: truncated or corrupt files fail here, not later
    except Image.DecompressionBombError as e:
        raise ValueError(f"{name} is refused as a decompression bomb ({e}); the limit is {max_pixels:,} pixels") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"could not read the image {name}: {e}") from e
    return image, name


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert a PIL image of any mode to 8-bit RGB (see the module docstring for the policy)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(image, dtype=np.float64)
        if mode.startswith("I;16") or a.max(initial=0) > 255:
            a = a / 257.0
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8)).convert("RGB")  # uint8 [H, W]: mode L
    if mode == "F":
        a = np.asarray(image, dtype=np.float64)
        if a.size and np.nanmax(a) <= 1.0:
            a = a * 255.0
        a = np.nan_to_num(a)
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8)).convert("RGB")  # uint8 [H, W]: mode L
    return image.convert("RGB")


def _center_crop(image: Image.Image, w: int, h: int) -> Image.Image:
    left = (image.width - w) // 2
    top = (image.height - h) // 2
    return image.crop((left, top, left + w, top + h))


def load_image(
    image,
    size: int | tuple[int, int] | None = 512,
    keep_aspect: bool = False,
    multiple: int = 8,
    min_size: int | None = None,
    max_pixels: int | None = None,
) -> Image.Image:
    """Load ``image`` (a path or a PIL image) as an RGB PIL image of a size the model takes.

    Args:
        image: a file path or a ``PIL.Image`` in any mode.
        size: ``S`` (square ``S x S``, or the longer side with ``keep_aspect``), ``(height, width)``, or
            ``None`` to keep the image's size. See the module docstring.
        keep_aspect: keep the aspect ratio (only with an int ``size`` or ``None``).
        multiple: both output sides are multiples of this (see :func:`model_multiple`).
        min_size: refuse images whose shorter side is smaller (default: ``multiple``).
        max_pixels: refuse images with more pixels, before decoding them (default: :data:`MAX_PIXELS`).

    Raises:
        FileNotFoundError: no file at the path.
        ValueError: not an image, unreadable or truncated, more than ``max_pixels`` pixels, too small, or a
            size the model cannot take.

    Examples:
        >>> img = load_image("cat.jpg")                    # 512 x 512, center-cropped
        >>> img = load_image("cat.jpg", 768, keep_aspect=True)
    """
    pil, name = _open(image, MAX_PIXELS if max_pixels is None else max_pixels)
    pil = to_rgb(ImageOps.exif_transpose(pil))
    if multiple <= 0:
        raise ValueError(f"multiple must be positive, got {multiple}")
    min_size = multiple if min_size is None else min_size
    if min(pil.size) < min_size:
        raise ValueError(
            f"{name} is {pil.width}x{pil.height} px (width x height), too small for this model: the shorter "
            f"side must be at least {min_size} px"
        )

    if size is None:
        w, h = pil.width // multiple * multiple, pil.height // multiple * multiple
        return _center_crop(pil, w, h)

    if keep_aspect:
        if not isinstance(size, int):
            raise ValueError(f"keep_aspect=True takes an int size (the longer side), got {size!r}")
        if size < multiple:
            raise ValueError(f"size must be at least {multiple} px, got {size}")
        scale = size / max(pil.size)
        rw, rh = max(multiple, round(pil.width * scale)), max(multiple, round(pil.height * scale))
        pil = pil.resize((rw, rh), Image.Resampling.LANCZOS)
        return _center_crop(pil, rw // multiple * multiple, rh // multiple * multiple)

    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if h <= 0 or w <= 0 or h % multiple or w % multiple:
        raise ValueError(f"size must be positive multiples of {multiple} px for this model, got {h}x{w} (height x width)")
    # Center-crop to the target aspect ratio, then resize.
    if pil.width * h > pil.height * w:  # too wide
        crop_w, crop_h = max(1, round(pil.height * w / h)), pil.height
    else:
        crop_w, crop_h = pil.width, max(1, round(pil.width * h / w))
    pil = _center_crop(pil, crop_w, crop_h)
    if pil.size != (w, h):
        pil = pil.resize((w, h), Image.Resampling.LANCZOS)
    return pil


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image to a float32 tensor ``[1, 3, H, W]`` in ``[-1, 1]``."""
    a = np.asarray(to_rgb(image), dtype=np.float32) / 127.5 - 1.0  # [H, W, 3]
    return torch.from_numpy(a).permute(2, 0, 1)[None].contiguous()
