"""gsplat's PNG compression (``gsplat.compression.PngCompression``) as one archive: a zip of the
folder gsplat writes (``meta.json`` + PNG images + ``shN.npz``), plus ``splat.json`` with the count.

gsplat's layout, kept: Gaussians laid out on a square grid; ``means`` as sign(x) * log(1 + |x|) in
16 bits split over ``means_l.png`` / ``means_u.png``; ``scales``, ``quats`` (normalised),
``opacities`` and ``sh0`` as 8-bit images, each channel scaled between the ``mins`` / ``maxs`` of
``meta.json``; ``shN`` as k-means centroids quantised to 6 bits between one min / max, with 16-bit
labels, in ``shN.npz``. gsplat's own ``PngCompression.decompress`` reads the unpacked folder.

Where we differ, and why:
    - gsplat drops the least opaque Gaussians until their number is a square; we pad the grid by
      repeating the last Gaussian and record the true count in ``splat.json``, so nothing is lost.
    - gsplat sorts with PLAS (a self-organising sort of all attributes into the 2D grid, a package
      not on PyPI); we sort by the Morton order of the positions (row-major on the grid), which
      keeps neighbours in space together but compresses the images less well.
    - gsplat's k-means uses 65536 clusters (torchpq, Manhattan distance, GPU); we use the SOG
      palette rule (1024 per ~1000 Gaussians, at most 64K) and Euclidean Lloyd iterations on the CPU.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from pathlib import Path

import numpy as np

from safeio import atomic_path
from splat.gaussians.formats._common import (
    MAX_GAUSSIANS,
    ZIP_ERRORS,
    FormatError,
    Gaussians,
    check_count,
    degree_for_rest,
    from_params,
    inv_log_transform,
    kmeans,
    log_transform,
    morton_order,
    palette_size,
    to_u8,
)

SH_BITS = 6
MAX_MEMBER = 1024**3


def _png(img: np.ndarray) -> bytes:
    from PIL import Image

    img = np.ascontiguousarray(img.astype(np.uint8))
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[img.shape[2]] if img.ndim == 3 else "L"
    buf = io.BytesIO()
    Image.fromarray(img.squeeze(2) if img.ndim == 3 and img.shape[2] == 1 else img, mode).save(
        buf, "PNG", optimize=True
    )
    return buf.getvalue()


def _minmax_8bit(grid: np.ndarray) -> tuple[bytes, dict]:
    mins, maxs = grid.min((0, 1)), grid.max((0, 1))
    norm = (grid - mins) / np.where(maxs > mins, maxs - mins, 1)
    return _png(to_u8(norm * 255)), {"mins": mins.tolist(), "maxs": maxs.tolist()}


def encode(g: Gaussians, iterations: int = 10) -> tuple[dict[str, bytes], np.ndarray]:
    """``({file name: bytes}, order)``: the archive's files and the input row of each grid cell."""
    order = morton_order(g.means)
    g = g.take(order)
    n = g.n
    side = math.ceil(math.sqrt(n))
    pad = np.concatenate([np.arange(n), np.full(side * side - n, n - 1)])
    order_padded = order[pad]
    files, meta = {}, {}

    def grid(x):
        return x[pad].reshape(side, side, -1).astype(np.float64)

    lm = grid(log_transform(g.means.astype(np.float64)))
    mins, maxs = lm.min((0, 1)), lm.max((0, 1))
    q16 = np.clip(np.rint((lm - mins) / np.where(maxs > mins, maxs - mins, 1) * 65535), 0, 65535).astype(
        np.uint32
    )
    files["means_l.png"], files["means_u.png"] = _png(q16 & 255), _png(q16 >> 8)
    meta["means"] = {
        "shape": [side * side, 3],
        "dtype": "float32",
        "mins": mins.tolist(),
        "maxs": maxs.tolist(),
    }
    for key, value, shape in (
        ("scales", g.scales, [3]),
        ("quats", g.quats, [4]),
        ("opacities", g.opacities[:, None], []),
        ("sh0", g.sh0, [1, 3]),
    ):
        files[f"{key}.png"], m = _minmax_8bit(grid(value))
        meta[key] = {"shape": [side * side, *shape], "dtype": "float32", **m}
    k = g.shN.shape[1]
    if k:
        vectors = g.shN[pad].reshape(side * side, k * 3)
        centroids, labels = kmeans(vectors, palette_size(n), iters=iterations)
        lo, hi = float(centroids.min()), float(centroids.max())
        quant = np.rint((centroids - lo) / (hi - lo if hi > lo else 1) * (2**SH_BITS - 1)).astype(np.uint8)
        buf = io.BytesIO()
        np.savez_compressed(buf, centroids=quant.reshape(-1, k, 3), labels=labels.astype(np.uint16))
        files["shN.npz"] = buf.getvalue()
        meta["shN"] = {
            "shape": [side * side, k, 3],
            "dtype": "float32",
            "mins": lo,
            "maxs": hi,
            "quantization": SH_BITS,
        }
    files["meta.json"] = json.dumps(meta).encode("utf-8")
    files["splat.json"] = json.dumps({"format": "gsplat-png", "count": n}).encode("utf-8")
    return files, order_padded[:n]


def _image(z: zipfile.ZipFile, name: str, side: int, channels: int, source: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    raw = _member(z, name, source)
    try:
        with Image.open(io.BytesIO(raw)) as im:
            if im.format != "PNG" or im.size != (side, side):
                raise FormatError(f"{source}: {name} is not a {side}x{side} PNG")
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise FormatError(f"{source}: {name} is not a readable PNG ({e})") from None
    arr = arr.reshape(side, side, -1)
    if arr.shape[2] != channels or arr.dtype != np.uint8:
        raise FormatError(
            f"{source}: {name} has {arr.shape[2]} {arr.dtype} channels, expected {channels} uint8"
        )
    return arr.astype(np.float64)


def _member(z: zipfile.ZipFile, name: str, source: str) -> bytes:
    try:
        info = z.getinfo(name)
        if info.file_size > MAX_MEMBER:
            raise FormatError(f"{source}: {name} is {info.file_size} bytes, over the limit")
        return z.read(name)
    except FormatError:
        raise
    except KeyError:
        raise FormatError(f"{source}: the archive lacks {name}") from None
    except ZIP_ERRORS as e:
        raise FormatError(f"{source}: cannot read {name} ({e})") from None


def _range(meta: dict, key: str, width: int, source: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        lo = np.asarray(meta[key]["mins"], np.float64).reshape(-1)
        hi = np.asarray(meta[key]["maxs"], np.float64).reshape(-1)
    except (KeyError, TypeError, ValueError):
        raise FormatError(f"{source}: meta.json lacks numeric mins / maxs for {key}") from None
    if lo.shape != (width,) or hi.shape != (width,) or not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        raise FormatError(f"{source}: meta.json {key} mins / maxs should be {width} finite numbers each")
    return lo, hi


def decode(z: zipfile.ZipFile, source: str) -> Gaussians:
    try:
        meta = json.loads(_member(z, "meta.json", source))
        extra = json.loads(_member(z, "splat.json", source)) if "splat.json" in z.namelist() else {}
        cells = int(meta["means"]["shape"][0])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, IndexError) as e:
        raise FormatError(f"{source}: meta.json is not gsplat PNG metadata ({e})") from None
    side = math.isqrt(check_count(cells, source, MAX_GAUSSIANS * 2))
    if side * side != cells:
        raise FormatError(f"{source}: {cells} grid cells is not a square")
    try:
        n = int(extra.get("count", cells))
    except (TypeError, ValueError):
        raise FormatError(f"{source}: splat.json count is not a number") from None
    if not 0 < n <= cells:
        raise FormatError(f"{source}: splat.json count {n} is not within the {cells}-cell grid")

    def field(key, channels):
        lo, hi = _range(meta, key, channels, source)
        img = _image(z, f"{key}.png", side, channels, source)
        return (img / 255 * (hi - lo) + lo).reshape(cells, channels)[:n]

    lo_, hi_ = _range(meta, "means", 3, source)
    q16 = _image(z, "means_l.png", side, 3, source) + 256 * _image(z, "means_u.png", side, 3, source)
    means = inv_log_transform(q16.reshape(cells, 3)[:n] / 65535 * (hi_ - lo_) + lo_)
    quats = field("quats", 4)
    norm = np.linalg.norm(quats, axis=1, keepdims=True)
    quats = np.where(norm > 0, quats / np.maximum(norm, 1e-12), np.array([1.0, 0, 0, 0]))
    shN = np.zeros((n, 0, 3), np.float32)
    if "shN" in meta:
        sec = meta["shN"]
        try:
            lo, hi, bits = float(sec["mins"]), float(sec["maxs"]), int(sec["quantization"])
            k = int(sec["shape"][1])
        except (KeyError, TypeError, ValueError, IndexError):
            raise FormatError(f"{source}: meta.json shN lacks mins, maxs, quantization or shape") from None
        degree_for_rest(k, source)
        if not 1 <= bits <= 8:
            raise FormatError(f"{source}: shN quantization {bits} bits is not 1..8")
        try:
            with np.load(io.BytesIO(_member(z, "shN.npz", source)), allow_pickle=False) as npz:
                cent, labels = npz["centroids"], npz["labels"].astype(np.int64).reshape(-1)
        except (*ZIP_ERRORS, KeyError) as e:
            raise FormatError(f"{source}: shN.npz is not readable ({e})") from None
        cent = cent.reshape(len(cent), -1)
        if cent.shape[1] != 3 * k or len(labels) != cells or (labels >= len(cent)).any():
            raise FormatError(
                f"{source}: shN.npz centroids {cent.shape} / labels {labels.shape} do not match"
            )
        shN = (cent[labels[:n]] / (2**bits - 1) * (hi - lo) + lo).reshape(n, k, 3).astype(np.float32)
    return Gaussians(
        means=means.astype(np.float32),
        scales=field("scales", 3).astype(np.float32),
        quats=quats.astype(np.float32),
        opacities=field("opacities", 1).reshape(n).astype(np.float32),
        sh0=field("sh0", 3).astype(np.float32),
        shN=shN,
    )


def write(params: dict, sh_degree: int, path: str | Path, iterations: int = 10) -> np.ndarray:
    """Write the archive (a zip) to ``path``; returns the stored order (input row per Gaussian)."""
    files, order = encode(from_params(params, sh_degree, path), iterations)
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
            for name in sorted(files):
                z.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), files[name])
    return order


def read(path: str | Path) -> tuple[dict, int]:
    path = Path(path)
    try:
        z = zipfile.ZipFile(path)
    except ZIP_ERRORS as e:
        raise FormatError(f"{path}: not a gsplat PNG archive ({e})") from None
    with z:
        g = decode(z, str(path))
    return g.to_params(), g.sh_degree
