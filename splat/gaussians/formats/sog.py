"""PlayCanvas SOG (version 2): lossless WebP textures plus ``meta.json``, bundled in a zip (``.sog``)
or side by side in a folder (``meta.json`` is the file to open).

One texel per Gaussian, textures ``W x H`` with ``W = ceil(sqrt(N) / 4) * 4``, ``H = ceil(N / W / 4) * 4``,
Gaussians in Morton order of their positions, row-major:

    means_l.webp / means_u.webp  low / high byte of 16-bit fractions of sign(x) * log(1 + |x|)
                                  between ``means.mins`` and ``means.maxs`` (per axis)
    quats.webp                    "smallest three" of the wxyz quaternion: RGB = component * sqrt(2)
                                  mapped from [-1, 1] to 0..255, A = 252 + index of the largest
    scales.webp                   RGB = index into ``scales.codebook`` (256 log scales)
    sh0.webp                      RGB = index into ``sh0.codebook`` (256 DC coefficients),
                                  A = sigmoid(opacity) * 255
    shN_labels.webp               (degree > 0) 16-bit palette index in R (low) and G (high)
    shN_centroids.webp            (degree > 0) the palette: 64 entries a row, ``15`` (or 3, 8) texels
                                  per entry, RGB = indices into ``shN.codebook`` (256 values)

Codebooks are 1D k-means (256 entries) over every value of the attribute; the SH palette is a
k-means over the Gaussians' higher-order coefficient vectors (``shN.count`` entries, PlayCanvas'
rule: 1024 per ~1000 Gaussians, a power of two, at most 64K). PlayCanvas clusters on the GPU; we run
a fixed number of Lloyd iterations on the CPU (the file layout is the same).
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from pathlib import Path

import numpy as np

from safeio import atomic_path, atomic_write_bytes
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
    kmeans_1d,
    log_transform,
    logit,
    morton_order,
    num_rest,
    palette_size,
    rebuild_largest,
    sigmoid,
    smallest_three,
    to_u8,
)

MAX_META = 16 * 1024 * 1024  # meta.json (the codebooks are 256 floats each)
MAX_ARCHIVE_MEMBER = 1024**3
MAX_TEXELS = MAX_GAUSSIANS * 2


def texture_size(n: int) -> tuple[int, int]:
    w = math.ceil(math.sqrt(n) / 4) * 4
    return w, math.ceil(n / w / 4) * 4


def _webp(rgba: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgba, dtype=np.uint8), "RGBA").save(
        buf, "WEBP", lossless=True, quality=100, method=4, exact=True
    )
    return buf.getvalue()


def _texture(n: int, w: int, h: int, columns: list[np.ndarray], alpha: np.ndarray | int = 255) -> bytes:
    tex = np.zeros((w * h, 4), np.uint8)
    for c, col in enumerate(columns):
        tex[:n, c] = col
    tex[:n, 3] = alpha
    return _webp(tex.reshape(h, w, 4))


def encode(g: Gaussians, iterations: int = 10) -> tuple[dict[str, bytes], np.ndarray]:
    """``({file name: bytes}, order)``: the files of a SOG and the input row of each texel."""
    order = morton_order(g.means)
    g = g.take(order)
    n = g.n
    w, h = texture_size(n)
    files = {}

    lm = log_transform(g.means.astype(np.float64))
    mins, maxs = lm.min(0), lm.max(0)
    q16 = np.clip(np.rint(65535 * (lm - mins) / np.where(maxs > mins, maxs - mins, 1)), 0, 65535).astype(
        np.uint32
    )
    files["means_l.webp"] = _texture(n, w, h, [q16[:, i] & 255 for i in range(3)])
    files["means_u.webp"] = _texture(n, w, h, [q16[:, i] >> 8 for i in range(3)])

    largest, rest = smallest_three(g.quats.astype(np.float64))
    qb = to_u8(255 * (rest * math.sqrt(2) * 0.5 + 0.5))
    files["quats.webp"] = _texture(n, w, h, [qb[:, i] for i in range(3)], 252 + largest)

    scale_book, scale_idx = kmeans_1d(g.scales, 256, iterations)
    files["scales.webp"] = _texture(n, w, h, [scale_idx[:, i] for i in range(3)])
    dc_book, dc_idx = kmeans_1d(g.sh0, 256, iterations)
    files["sh0.webp"] = _texture(n, w, h, [dc_idx[:, i] for i in range(3)], to_u8(sigmoid(g.opacities) * 255))

    meta = {
        "version": 2,
        "asset": {"generator": "splat"},
        "count": n,
        "means": {"mins": mins.tolist(), "maxs": maxs.tolist(), "files": ["means_l.webp", "means_u.webp"]},
        "scales": {"codebook": scale_book.tolist(), "files": ["scales.webp"]},
        "quats": {"files": ["quats.webp"]},
        "sh0": {"codebook": dc_book.tolist(), "files": ["sh0.webp"]},
    }
    k = g.shN.shape[1]
    if k:
        vectors = g.shN.transpose(0, 2, 1).reshape(n, 3 * k)  # channel-major, like f_rest_*
        count = palette_size(n)
        centroids, labels = kmeans(vectors, count, iters=iterations)
        count = len(centroids)
        book, idx = kmeans_1d(centroids, 256, iterations)  # idx [count, 3k]
        rows = math.ceil(count / 64)
        cent = np.zeros((rows * 64, k, 4), np.uint8)
        cent[:count, :, :3] = idx.reshape(count, 3, k).transpose(0, 2, 1)
        cent[:, :, 3] = 255
        files["shN_centroids.webp"] = _webp(cent.reshape(rows, 64 * k, 4))
        files["shN_labels.webp"] = _texture(n, w, h, [labels & 255, labels >> 8])
        meta["shN"] = {
            "count": count,
            "bands": g.sh_degree,
            "codebook": book.tolist(),
            "files": ["shN_centroids.webp", "shN_labels.webp"],
        }
    files["meta.json"] = json.dumps(meta).encode("utf-8")
    return files, order


def bundle(files: dict[str, bytes]) -> bytes:
    """A zip of ``files`` (stored: WebP is already compressed), ``meta.json`` first."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name in sorted(files, key=lambda f: f != "meta.json"):
            z.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), files[name])
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------------
# reading


class _Source:
    """The files of a SOG: members of a zip, or files beside ``meta.json``, read with size limits."""

    def __init__(self, path: Path):
        self.path = path
        self.zip = None
        if path.is_dir():
            path = path / "meta.json"
        if path.name == "meta.json" or path.suffix.lower() == ".json":
            self.folder = path.parent
            self.meta_name = path.name
        else:
            self.folder = None
            self.meta_name = "meta.json"
            try:
                self.zip = zipfile.ZipFile(path)
            except ZIP_ERRORS as e:
                raise FormatError(f"{self.path}: not a SOG archive ({e})") from None

    def read(self, name: str, limit: int = MAX_ARCHIVE_MEMBER) -> bytes:
        if not isinstance(name, str) or "/" in name or "\\" in name or name.startswith("."):
            raise FormatError(f"{self.path}: meta.json names a file {name!r} outside the SOG")
        try:
            if self.zip is not None:
                info = self.zip.getinfo(name)
                if info.file_size > limit:
                    raise FormatError(
                        f"{self.path}: {name} is {info.file_size} bytes, over the {limit}-byte limit"
                    )
                return self.zip.read(name)
            file = self.folder / name
            if file.stat().st_size > limit:
                raise FormatError(f"{self.path}: {name} is over the {limit}-byte limit")
            return file.read_bytes()
        except FormatError:
            raise
        except KeyError:
            raise FormatError(f"{self.path}: the SOG lacks {name}") from None
        except FileNotFoundError:
            raise FormatError(f"{self.path}: the SOG lacks {name} beside {self.meta_name}") from None
        except ZIP_ERRORS as e:
            raise FormatError(f"{self.path}: cannot read {name} ({e})") from None


def _image(src: _Source, name: str, min_texels: int) -> np.ndarray:
    """RGBA texels [H * W, 4] of a WebP, its size checked before it is decoded."""
    from PIL import Image, UnidentifiedImageError

    raw = src.read(name)
    try:
        with Image.open(io.BytesIO(raw)) as im:
            w, h = im.size
            if im.format != "WEBP":
                raise FormatError(f"{src.path}: {name} is not a WebP image")
            if w * h > MAX_TEXELS or w * h < min_texels:
                raise FormatError(f"{src.path}: {name} is {w}x{h}, expected at least {min_texels} texels")
            return np.asarray(im.convert("RGBA")).reshape(-1, 4)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        if isinstance(e, FormatError):
            raise
        raise FormatError(f"{src.path}: {name} is not a readable WebP image ({e})") from None


def _floats(meta: dict, key: str, length: int, source: str) -> np.ndarray:
    try:
        v = np.asarray(meta[key], dtype=np.float64).reshape(-1)
    except (KeyError, TypeError, ValueError):
        raise FormatError(f"{source}: meta.json lacks a numeric {key}") from None
    if v.shape != (length,) or not np.isfinite(v).all():
        raise FormatError(f"{source}: meta.json {key} should be {length} finite numbers")
    return v


def decode_source(src: _Source) -> Gaussians:
    source = str(src.path)
    try:
        meta = json.loads(src.read(src.meta_name, MAX_META))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FormatError(f"{source}: meta.json is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise FormatError(f"{source}: meta.json is not a JSON object")
    if meta.get("version") != 2:
        raise FormatError(f"{source}: SOG meta version {meta.get('version')!r} is not supported (2)")
    try:
        n = check_count(int(meta["count"]), source)
        sections = {k: meta[k] for k in ("means", "scales", "quats", "sh0")}
        files = {k: list(v["files"]) for k, v in sections.items()}
    except (KeyError, TypeError, ValueError):
        raise FormatError(
            f"{source}: meta.json lacks count, means, scales, quats or sh0 with their files"
        ) from None
    if len(files["means"]) != 2:
        raise FormatError(f"{source}: meta.json means.files should name 2 textures")

    lo, hi = _image(src, files["means"][0], n), _image(src, files["means"][1], n)
    q16 = lo[:n, :3].astype(np.float64) + 256.0 * hi[:n, :3]
    mins, maxs = _floats(sections["means"], "mins", 3, source), _floats(sections["means"], "maxs", 3, source)
    means = inv_log_transform(mins + (maxs - mins) * q16 / 65535)

    qt = _image(src, files["quats"][0], n)[:n]
    tag = qt[:, 3].astype(np.int64)
    rest = (qt[:, :3] / 255.0 * 2 - 1) / math.sqrt(2)
    quats = rebuild_largest(np.clip(tag - 252, 0, 3), rest)
    quats[(tag < 252)] = np.array([1, 0, 0, 0], np.float32)  # what PlayCanvas does with a bad tag

    scale_book = _floats(sections["scales"], "codebook", 256, source)
    scales = scale_book[_image(src, files["scales"][0], n)[:n, :3]]
    dc_book = _floats(sections["sh0"], "codebook", 256, source)
    c0 = _image(src, files["sh0"][0], n)[:n]
    sh0 = dc_book[c0[:, :3]]
    opac = logit(c0[:, 3] / 255.0)

    shN = np.zeros((n, 0, 3), np.float32)
    if meta.get("shN"):
        sec = meta["shN"]
        try:
            bands, count, sh_files = int(sec["bands"]), int(sec["count"]), list(sec["files"])
        except (KeyError, TypeError, ValueError):
            raise FormatError(f"{source}: meta.json shN lacks bands, count or files") from None
        if not 1 <= bands <= 3 or not 1 <= count <= 65536 or len(sh_files) != 2:
            raise FormatError(
                f"{source}: meta.json shN has bands {bands}, count {count}, {len(sh_files)} files"
            )
        k = num_rest(bands)
        degree_for_rest(k, source)
        book = _floats(sec, "codebook", 256, source)
        rows = math.ceil(count / 64)
        cent = _image(src, sh_files[0], rows * 64 * k)
        if len(cent) != rows * 64 * k:
            raise FormatError(f"{source}: {sh_files[0]} has {len(cent)} texels, expected {rows * 64 * k}")
        palette = book[cent[:, :3].reshape(rows * 64, k, 3)]  # [entries, k, 3]
        lab = _image(src, sh_files[1], n)[:n]
        labels = lab[:, 0].astype(np.int64) | (lab[:, 1].astype(np.int64) << 8)
        if (labels >= count).any():
            raise FormatError(f"{source}: {sh_files[1]} points past the {count}-entry SH palette")
        shN = palette[labels].astype(np.float32)
    return Gaussians(
        means=means.astype(np.float32),
        scales=scales.astype(np.float32),
        quats=quats,
        opacities=opac,
        sh0=sh0.astype(np.float32),
        shN=np.ascontiguousarray(shN),
    )


def is_sog_meta(meta: object) -> bool:
    return isinstance(meta, dict) and meta.get("version") == 2 and "quats" in meta and "sh0" in meta


def write(params: dict, sh_degree: int, path: str | Path, iterations: int = 10) -> np.ndarray:
    """Write a SOG: a zip at ``path`` (``.sog``), or, when ``path`` is a ``meta.json``, its textures
    beside it. Returns the stored order (input row per texel)."""
    path = Path(path)
    files, order = encode(from_params(params, sh_degree, path), iterations)
    if path.name.lower().endswith(".json"):
        for name, blob in files.items():
            if name != "meta.json":
                atomic_write_bytes(path.parent / name, blob)
        atomic_write_bytes(path, files["meta.json"])  # last: a reader never sees meta without textures
    else:
        with atomic_path(path) as tmp:
            tmp.write_bytes(bundle(files))
    return order


def read(path: str | Path) -> tuple[dict, int]:
    path = Path(path)
    if not path.exists():
        raise FormatError(f"{path} does not exist")
    src = _Source(path)
    try:
        g = decode_source(src)
    finally:
        if src.zip is not None:
            src.zip.close()
    return g.to_params(), g.sh_degree
