"""Niantic's SPZ: gzip (versions 1-3) or ZSTD streams (version 4) of quantised attribute arrays.

Layout of the uncompressed payload (versions 1-3; version 4 stores the same six arrays as separately
ZSTD-compressed streams after a 32-byte header and a table of contents):

    header (16 bytes)   magic 0x5053474e ("NGSP"), version u32, numPoints u32, shDegree u8,
                        fractionalBits u8, flags u8 (0x1 antialiased, 0x2 extensions), reserved u8
    positions           N x 3 x 24-bit signed fixed point, ``fractionalBits`` fractional bits
                        (version 1: N x 3 float16)
    alphas              N x u8     sigmoid(opacity) * 255
    colours             N x 3 u8   dc * (0.15 * 255) + 127.5
    scales              N x 3 u8   (log scale + 10) * 16
    rotations           version 3+: N x u32 "smallest three" of the xyzw quaternion (2-bit index of the
                        largest, then per other component a sign bit and 9 bits of |q| / sqrt(1/2));
                        version 2: N x 3 u8, xyz * 127.5 + 127.5 with w made positive
    sh                  N x (coefficients x 3) u8, colour innermost, (v * 128 + 128) rounded to
                        buckets of 8 (degree 1) or 16 (degrees 2-3) values

SPZ stores its data in the RUB frame (right, up, back); splat's Gaussians live in COLMAP's RDF frame
(what the 3DGS PLY holds), so writing negates y and z of positions, the y and z components of the
quaternions and the SH coefficients that are odd in y and z (reading undoes it). That is a rotation by
180 degrees about x, what the reference library applies between RDF and RUB.

We write version 3 by default (gzip: every SPZ reader loads it, no extra library); ``version=4``
and reading version 4 need ZSTD, from the ``zstandard`` package or the system's libzstd.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from safeio import atomic_write_bytes
from splat.gaussians.formats._common import (
    MAX_GAUSSIANS,
    MAX_SH_DEGREE,
    FormatError,
    Gaussians,
    check_count,
    from_params,
    logit,
    num_rest,
    read_bytes,
    rebuild_largest,
    sigmoid,
    to_u8,
)

MAGIC = 0x5053474E
COLOR_SCALE = 0.15
SH1_BITS, SH_REST_BITS = 5, 4
LEGACY_HEADER = struct.Struct("<IIIBBBB")  # 16 bytes
V4_HEADER = struct.Struct("<IIIBBBBI12s")  # 32 bytes
MAX_FILE = 4 * 1024**3
MIN_BYTES_PER_POINT = 9  # positions alone
MAX_TRAILER = 16 * 1024 * 1024  # extension records after the arrays (versions 1-3)
MAX_COMPRESSION = 1024  # a payload larger than this many times the file is refused (a zip bomb)

# Sign of each SH coefficient (per band, in the order of the real SH basis: m = -l..l) under
# (x, y, z) -> (x, -y, -z): a basis function changes sign when it is odd in y and z together.
_SH_FLIP = np.array(
    [-1, -1, 1]  # y, z, x
    + [-1, 1, 1, -1, 1]  # xy, yz, 3z^2-1, xz, x^2-y^2
    + [-1, 1, -1, -1, 1, -1, 1],  # y(3x^2-y^2), xyz, y(5z^2-1), z(5z^2-3), x(5z^2-1), z(x^2-y^2), x(x^2-3y^2)
    np.float32,
)


def _flip_frame(g: Gaussians) -> Gaussians:
    """RDF <-> RUB (its own inverse): rotate by 180 degrees about x."""
    k = g.shN.shape[1]
    return Gaussians(
        means=g.means * np.array([1, -1, -1], np.float32),
        scales=g.scales,
        quats=g.quats * np.array([1, 1, -1, -1], np.float32),  # wxyz
        opacities=g.opacities,
        sh0=g.sh0,
        shN=g.shN * _SH_FLIP[:k, None],
    )


def _quantise_sh(x: np.ndarray, bits: int) -> np.ndarray:
    bucket = 1 << (8 - bits)
    q = np.rint(x.astype(np.float64) * 128) + 128
    q = np.floor((q + bucket // 2) / bucket) * bucket
    return np.clip(q, 0, 255).astype(np.uint8)


def _arrays(g: Gaussians, version: int) -> tuple[list[bytes], int]:
    """The six attribute arrays of the payload, and the fractional bits chosen for the positions."""
    g = _flip_frame(g)
    n = g.n
    # 12 fractional bits (~0.25 mm), fewer when the scene reaches past +-2^11 units
    extent = float(np.abs(g.means).max())
    frac = 12
    while frac > 0 and extent * (1 << frac) >= (1 << 23) - 1:
        frac -= 1
    if extent * (1 << frac) >= (1 << 23) - 1:
        raise FormatError(f"positions up to {extent:.3g} do not fit SPZ's 24-bit fixed point")
    fixed = np.rint(g.means.astype(np.float64) * (1 << frac)).astype(np.int32)
    pos = np.stack([fixed & 0xFF, (fixed >> 8) & 0xFF, (fixed >> 16) & 0xFF], -1).astype(np.uint8)  # [N,3,3]
    alphas = to_u8(sigmoid(g.opacities) * 255)
    colours = to_u8(g.sh0.astype(np.float64) * (COLOR_SCALE * 255) + 0.5 * 255)
    scales = to_u8((g.scales.astype(np.float64) + 10) * 16)
    xyzw = g.quats[:, [1, 2, 3, 0]].astype(np.float64)
    if version >= 3:
        largest = np.argmax(np.abs(xyzw), axis=1)
        negate = xyzw[np.arange(n), largest] < 0
        comp = largest.astype(np.uint32)
        for i in range(4):
            m = largest != i
            neg = ((xyzw[:, i] < 0) ^ negate).astype(np.uint32)
            mag = np.floor(511 * np.abs(xyzw[:, i]) / math.sqrt(0.5) + 0.5).astype(np.uint32).clip(0, 511)
            comp = np.where(m, (comp << 10) | (neg << 9) | mag, comp)
        rot = comp.astype("<u4").view(np.uint8).reshape(n, 4)
    else:
        q = xyzw * np.where(xyzw[:, 3:] < 0, -127.5, 127.5) + 127.5
        rot = to_u8(q[:, :3])
    k = g.shN.shape[1]
    sh = np.zeros((n, k, 3), np.uint8)
    sh[:, :3] = _quantise_sh(g.shN[:, :3], SH1_BITS)
    sh[:, 3:] = _quantise_sh(g.shN[:, 3:], SH_REST_BITS)
    return [
        pos.tobytes(),
        alphas.tobytes(),
        colours.tobytes(),
        scales.tobytes(),
        rot.tobytes(),
        sh.tobytes(),
    ], frac


def encode(g: Gaussians, version: int = 3) -> bytes:
    if version not in (2, 3, 4):
        raise FormatError(f"SPZ version {version} cannot be written (2, 3 or 4)")
    streams, frac = _arrays(g, version)
    if version < 4:
        header = LEGACY_HEADER.pack(MAGIC, version, g.n, g.sh_degree, frac, 0, 0)
        return gzip.compress(header + b"".join(streams), compresslevel=9, mtime=0)
    compressed = [_zstd().compress(s) for s in streams]
    header = V4_HEADER.pack(MAGIC, 4, g.n, g.sh_degree, frac, 0, len(streams), V4_HEADER.size, bytes(12))
    toc = b"".join(struct.pack("<QQ", len(c), len(s)) for c, s in zip(compressed, streams, strict=True))
    return header + toc + b"".join(compressed)


def _sizes(n: int, version: int, degree: int) -> list[int]:
    return [
        n * 3 * (2 if version == 1 else 3),
        n,
        n * 3,
        n * 3,
        n * (4 if version >= 3 else 3),
        n * num_rest(degree) * 3,
    ]


def _gunzip(raw: bytes, size: int, source: str, whole: bool = True) -> bytes:
    """The first ``size`` bytes of the gzip payload (never more: a bomb cannot grow past its header);
    with ``whole``, the stream must also end within ``MAX_TRAILER`` bytes (extensions) and intact."""
    d = zlib.decompressobj(wbits=31)
    try:
        out = d.decompress(raw, size)
        if whole and len(out) == size:
            d.decompress(d.unconsumed_tail, MAX_TRAILER)
    except zlib.error as e:
        raise FormatError(f"{source}: the gzip data is corrupt ({e})") from None
    if len(out) < size or (whole and not d.eof):
        what = "an SPZ header" if size == LEGACY_HEADER.size else f"the {size} bytes its header declares"
        raise FormatError(f"{source}: truncated (decompresses to too few bytes for {what} or ends early)")
    return out


def decode(raw: bytes, source: str) -> Gaussians:
    if raw[:4] == struct.pack("<I", MAGIC):
        return _decode_v4(raw, source)
    if raw[:2] != b"\x1f\x8b":
        raise FormatError(f"{source}: not an SPZ file (neither gzip nor an 'NGSP' header)")
    # the header first; the rest is bounded by what it declares (extensions after it are skipped)
    magic, version, n, degree, frac, _flags, _ = LEGACY_HEADER.unpack(
        _gunzip(raw, LEGACY_HEADER.size, source)
    )
    _check_header(magic, version, n, degree, source, raw, allowed=(1, 2, 3))
    need = LEGACY_HEADER.size + sum(_sizes(n, version, degree))
    payload = _gunzip(raw, need, source)
    body, streams, at = payload[LEGACY_HEADER.size :], [], 0
    for size in _sizes(n, version, degree):
        streams.append(body[at : at + size])
        at += size
    return _unpack(streams, n, version, degree, frac, source)


def _check_header(magic, version, n, degree, source, raw, allowed):
    if magic != MAGIC:
        raise FormatError(f"{source}: not an SPZ file (magic {magic:#x}, expected {MAGIC:#x})")
    if version not in allowed:
        raise FormatError(f"{source}: SPZ version {version} is not supported (1-4)")
    if degree > MAX_SH_DEGREE:
        raise FormatError(f"{source}: SH degree {degree} is not supported (0-{MAX_SH_DEGREE})")
    check_count(n, source, min(MAX_GAUSSIANS, len(raw) * MAX_COMPRESSION // MIN_BYTES_PER_POINT))


def _decode_v4(raw: bytes, source: str) -> Gaussians:
    if len(raw) < V4_HEADER.size:
        raise FormatError(f"{source}: too short for an SPZ header")
    magic, version, n, degree, frac, flags, nstreams, toc_at, _ = V4_HEADER.unpack_from(raw)
    _check_header(magic, version, n, degree, source, raw, allowed=(4,))
    sizes = _sizes(n, version, degree)
    if nstreams != len(sizes) or toc_at < V4_HEADER.size or toc_at + 16 * nstreams > len(raw):
        raise FormatError(f"{source}: malformed SPZ table of contents ({nstreams} streams at byte {toc_at})")
    at, streams = toc_at + 16 * nstreams, []
    for i, expect in enumerate(sizes):
        csize, usize = struct.unpack_from("<QQ", raw, toc_at + 16 * i)
        if usize != expect or at + csize > len(raw):
            raise FormatError(
                f"{source}: SPZ stream {i} declares {usize} bytes in {csize}, expected {expect} (truncated?)"
            )
        data = _zstd().decompress(raw[at : at + csize], expect, source) if expect else b""
        streams.append(data)
        at += csize
    return _unpack(streams, n, version, degree, frac, source)


def _unpack(streams: list[bytes], n: int, version: int, degree: int, frac: int, source: str) -> Gaussians:
    pos_b, alpha_b, col_b, scale_b, rot_b, sh_b = streams
    if version == 1:
        means = np.frombuffer(pos_b, "<f2").reshape(n, 3).astype(np.float32)
    else:
        p = np.frombuffer(pos_b, np.uint8).reshape(n, 3, 3).astype(np.int32)
        fixed = p[..., 0] | (p[..., 1] << 8) | (p[..., 2] << 16)
        fixed = np.where(fixed & 0x800000, fixed - (1 << 24), fixed)
        means = (fixed / float(1 << frac)).astype(np.float32)
    scales = (np.frombuffer(scale_b, np.uint8).reshape(n, 3) / 16.0 - 10).astype(np.float32)
    opac = logit(np.frombuffer(alpha_b, np.uint8) / 255.0)
    sh0 = ((np.frombuffer(col_b, np.uint8).reshape(n, 3) / 255.0 - 0.5) / COLOR_SCALE).astype(np.float32)
    if version >= 3:
        comp = np.frombuffer(rot_b, "<u4").astype(np.uint32)
        largest = (comp >> 30).astype(np.int64)
        rest = np.zeros((n, 3))
        for j in range(3):  # the first kept component sits highest
            bits = (comp >> (10 * (2 - j))) & 1023
            mag = (bits & 511) / 511.0 * math.sqrt(0.5)
            rest[:, j] = np.where(bits & 512, -mag, mag)
        xyzw = rebuild_largest(largest, rest)
    else:
        xyz = np.frombuffer(rot_b, np.uint8).reshape(n, 3) / 127.5 - 1
        w = np.sqrt(np.clip(1 - (xyz**2).sum(1), 0, None))[:, None]
        xyzw = np.concatenate([xyz, w], 1)
        xyzw = (xyzw / np.linalg.norm(xyzw, axis=1, keepdims=True)).astype(np.float32)
    k = num_rest(degree)
    shN = ((np.frombuffer(sh_b, np.uint8).reshape(n, k, 3) - 128.0) / 128.0).astype(np.float32)
    g = Gaussians(means, scales, xyzw[:, [3, 0, 1, 2]].copy(), opac, sh0, shN)
    return _flip_frame(g)


class _Zstd:
    """ZSTD from the ``zstandard`` package, else the system's libzstd through ctypes."""

    def __init__(self):
        try:
            import zstandard

            self._mod, self._lib = zstandard, None
            return
        except ImportError:
            self._mod = None
        name = ctypes.util.find_library("zstd") or "libzstd.so.1"
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            raise FormatError(
                "SPZ version 4 needs ZSTD: install the 'zstandard' package or the system's libzstd"
            ) from None
        lib.ZSTD_compressBound.restype = ctypes.c_size_t
        lib.ZSTD_compress.restype = ctypes.c_size_t
        lib.ZSTD_decompress.restype = ctypes.c_size_t
        lib.ZSTD_isError.restype = ctypes.c_uint
        lib.ZSTD_compressBound.argtypes = [ctypes.c_size_t]
        lib.ZSTD_compress.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_int,
        ]
        lib.ZSTD_decompress.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t]
        lib.ZSTD_isError.argtypes = [ctypes.c_size_t]
        self._lib = lib

    def compress(self, data: bytes, level: int = 12) -> bytes:
        if self._mod is not None:
            return self._mod.ZstdCompressor(level=level).compress(data)
        cap = self._lib.ZSTD_compressBound(len(data))
        out = ctypes.create_string_buffer(cap)
        got = self._lib.ZSTD_compress(out, cap, data, len(data), level)
        if self._lib.ZSTD_isError(got):
            raise FormatError("ZSTD compression failed")
        return out.raw[:got]

    def decompress(self, data: bytes, size: int, source: str) -> bytes:
        if self._mod is not None:
            try:
                out = self._mod.ZstdDecompressor().decompress(data, max_output_size=size)
            except self._mod.ZstdError as e:
                raise FormatError(f"{source}: corrupt ZSTD stream ({e})") from None
        else:
            buf = ctypes.create_string_buffer(max(size, 1))
            got = self._lib.ZSTD_decompress(buf, size, data, len(data))
            if self._lib.ZSTD_isError(got):
                raise FormatError(f"{source}: corrupt or truncated ZSTD stream")
            out = buf.raw[:got]
        if len(out) != size:
            raise FormatError(f"{source}: a ZSTD stream holds {len(out)} bytes, expected {size}")
        return out


_ZSTD: _Zstd | None = None


def _zstd() -> _Zstd:
    global _ZSTD
    if _ZSTD is None:
        _ZSTD = _Zstd()
    return _ZSTD


def write(params: dict, sh_degree: int, path: str | Path, version: int = 3) -> np.ndarray:
    """Write ``params`` (splat's layout) to ``path``; returns the stored order (the input order)."""
    g = from_params(params, sh_degree, path)
    try:
        blob = encode(g, version)
    except FormatError as e:
        raise FormatError(f"cannot write {path}: {e}") from None
    atomic_write_bytes(path, blob)
    return np.arange(g.n)


def read(path: str | Path) -> tuple[dict, int]:
    path = Path(path)
    g = decode(read_bytes(path, MAX_FILE, "SPZ"), str(path))
    return g.to_params(), g.sh_degree
