"""PlayCanvas' compressed PLY (``.compressed.ply``): Gaussians in chunks of 256, each chunk storing
the min / max of its positions, log scales and colours, each Gaussian four packed uint32 and,
optionally, its higher-order SH as bytes.

    element chunk C      float min_x min_y min_z max_x max_y max_z
                         float min_scale_x .. max_scale_z        (log scales, clamped to [-20, 20])
                         float min_r min_g min_b max_r max_g max_b  (colour = 0.5 + SH_C0 * dc; optional)
    element vertex N     uint packed_position   x:11 y:10 z:11 bits, fraction of the chunk's range
                         uint packed_rotation   2-bit index of the largest |component| of the wxyz
                                                quaternion, then the other three as 10-bit unorm of
                                                q * sqrt(1/2) + 0.5 (the largest made positive)
                         uint packed_scale      11-10-11 like positions, over the chunk's log-scale range
                         uint packed_color      r g b (8 bits each, over the chunk's colour range),
                                                sigmoid(opacity) (8 bits)
    element sh N         uchar f_rest_0..      (only for degree > 0; channel-major like the 3DGS PLY)
                                                byte = trunc((v / 8 + 0.5) * 256) clamped

Gaussians are stored in Morton order of their positions (what PlayCanvas writes), so each chunk is a
small region of space and its ranges are tight.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from safeio import atomic_write_bytes
from splat.gaussians.formats._common import (
    EPS_ALPHA,
    MAX_GAUSSIANS,
    FormatError,
    Gaussians,
    check_count,
    dc_to_rgb,
    degree_for_rest,
    from_params,
    logit,
    morton_order,
    read_bytes,
    rebuild_largest,
    rgb_to_dc,
    sigmoid,
    smallest_three,
)

CHUNK = 256
CHUNK_PROPS = (
    ["min_x", "min_y", "min_z", "max_x", "max_y", "max_z"]
    + ["min_scale_x", "min_scale_y", "min_scale_z", "max_scale_x", "max_scale_y", "max_scale_z"]
    + ["min_r", "min_g", "min_b", "max_r", "max_g", "max_b"]
)
VERTEX_PROPS = ["packed_position", "packed_rotation", "packed_scale", "packed_color"]
PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "<i2", "int16": "<i2",
    "ushort": "<u2", "uint16": "<u2", "int": "<i4", "int32": "<i4", "uint": "<u4", "uint32": "<u4",
    "float": "<f4", "float32": "<f4", "double": "<f8", "float64": "<f8",
}  # fmt: skip
MAX_HEADER = 64 * 1024


def _unorm(x: np.ndarray, bits: int) -> np.ndarray:
    t = (1 << bits) - 1
    return np.clip(np.floor(x * t + 0.5), 0, t).astype(np.uint32)


def _normalise(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(x - lo) / (hi - lo) per chunk ([C, 256, 3] over [C, 1, 3]); 0 where the range is degenerate."""
    span = hi - lo
    return np.where(span < 1e-5, 0.0, np.clip((x - lo) / np.where(span < 1e-5, 1, span), 0, 1))


def _pack_111011(t: np.ndarray) -> np.ndarray:
    return (_unorm(t[..., 0], 11) << 21) | (_unorm(t[..., 1], 10) << 11) | _unorm(t[..., 2], 11)


def _unpack_111011(v: np.ndarray) -> np.ndarray:
    return np.stack([(v >> 21) / 2047.0, ((v >> 11) & 1023) / 1023.0, (v & 2047) / 2047.0], -1)


def encode(g: Gaussians) -> tuple[bytes, np.ndarray]:
    """``(file bytes, order)``: ``order[i]`` is the input row stored as vertex ``i``."""
    order = morton_order(g.means)
    g = g.take(order)
    n, c = g.n, math.ceil(g.n / CHUNK)
    pad = np.concatenate([np.arange(n), np.full(c * CHUNK - n, n - 1)])  # repeat the last Gaussian

    def chunks(x):  # [N, D] -> [C, 256, D]
        return x[pad].reshape(c, CHUNK, -1).astype(np.float64)

    pos, scl, rgb = chunks(g.means), chunks(g.scales), chunks(dc_to_rgb(g.sh0))
    pmin, pmax = pos.min(1, keepdims=True), pos.max(1, keepdims=True)
    smin = np.clip(scl.min(1, keepdims=True), -20, 20)
    smax = np.clip(scl.max(1, keepdims=True), -20, 20)
    cmin, cmax = rgb.min(1, keepdims=True), rgb.max(1, keepdims=True)
    table = np.concatenate([pmin, pmax, smin, smax, cmin, cmax], axis=2).reshape(c, 18).astype("<f4")

    largest, rest = smallest_three(g.quats.astype(np.float64))
    rot = largest.astype(np.uint32)
    for j in range(3):
        rot = (rot << 10) | _unorm(rest[:, j] * math.sqrt(0.5) + 0.5, 10)
    col = _unorm(_normalise(rgb, cmin, cmax), 8).reshape(-1, 3)[:n]
    alpha = _unorm(sigmoid(g.opacities), 8)
    packed = np.stack(
        [
            _pack_111011(_normalise(pos, pmin, pmax)).reshape(-1)[:n],
            rot,
            _pack_111011(_normalise(scl, smin, smax)).reshape(-1)[:n],
            (col[:, 0] << 24) | (col[:, 1] << 16) | (col[:, 2] << 8) | alpha,
        ],
        1,
    ).astype("<u4")
    k = g.shN.shape[1]
    header = ["ply", "format binary_little_endian 1.0", "comment written by splat", f"element chunk {c}"]
    header += [f"property float {p}" for p in CHUNK_PROPS]
    header += [f"element vertex {n}"] + [f"property uint {p}" for p in VERTEX_PROPS]
    blob = [table.tobytes(), packed.tobytes()]
    if k:
        header += [f"element sh {n}"] + [f"property uchar f_rest_{i}" for i in range(3 * k)]
        rest_cm = g.shN.transpose(0, 2, 1).reshape(n, 3 * k).astype(np.float64)  # channel-major
        blob.append(np.clip(np.trunc((rest_cm / 8 + 0.5) * 256), 0, 255).astype(np.uint8).tobytes())
    header.append("end_header")
    return ("\n".join(header) + "\n").encode("ascii") + b"".join(blob), order


def parse_ply_header(raw: bytes, source: str) -> tuple[list[tuple[str, int, np.dtype]], int, list[str]]:
    """``([(element, count, record dtype)], data offset, comments)`` of a binary little-endian PLY,
    checking that the declared elements fit in the file before anything is allocated."""
    end = raw.find(b"end_header\n", 0, MAX_HEADER)
    if not raw.startswith(b"ply\n") or end < 0:
        raise FormatError(f"{source}: not a PLY file (no 'ply' ... 'end_header' header in the first 64 KiB)")
    try:
        lines = raw[:end].decode("ascii").splitlines()[1:]
    except UnicodeDecodeError:
        raise FormatError(f"{source}: the PLY header is not ASCII text") from None
    elements: list[tuple[str, int, list]] = []
    comments = []
    fmt = None
    for line in lines:
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "format":
            fmt = " ".join(parts[1:])
        elif parts[0] in ("comment", "obj_info"):
            comments.append(line)
        elif parts[0] == "element" and len(parts) == 3 and parts[2].isdigit():
            elements.append((parts[1], int(parts[2]), []))
        elif parts[0] == "property" and len(parts) == 3 and parts[1] in PLY_TYPES and elements:
            elements[-1][2].append((parts[2], PLY_TYPES[parts[1]]))
        else:
            raise FormatError(f"{source}: unsupported PLY header line {line!r}")
    if fmt != "binary_little_endian 1.0":
        raise FormatError(f"{source}: PLY format {fmt!r} is not supported (binary_little_endian 1.0 only)")
    offset = end + len(b"end_header\n")
    out, need = [], offset
    for name, count, props in elements:
        try:
            dtype = np.dtype(props)
        except (ValueError, TypeError):
            raise FormatError(f"{source}: element {name} repeats a property name") from None
        need += count * dtype.itemsize
        out.append((name, count, dtype))
    if need > len(raw):
        raise FormatError(
            f"{source}: the header declares {need} bytes of data, the file has {len(raw)} (truncated?)"
        )
    return out, offset, comments


def read_elements(raw: bytes, source: str) -> dict[str, np.ndarray]:
    elements, offset, _ = parse_ply_header(raw, source)
    out = {}
    for name, count, dtype in elements:
        out[name] = np.frombuffer(raw, dtype, count=count, offset=offset)
        offset += count * dtype.itemsize
    return out


def decode(raw: bytes, source: str) -> Gaussians:
    el = read_elements(raw, source)
    chunk, vertex = el.get("chunk"), el.get("vertex")
    if chunk is None or vertex is None or any(p not in (vertex.dtype.names or ()) for p in VERTEX_PROPS):
        raise FormatError(
            f"{source}: not a compressed PLY (needs 'chunk' and 'vertex' elements with {VERTEX_PROPS})"
        )
    names = chunk.dtype.names
    if any(p not in names for p in CHUNK_PROPS[:12]):
        raise FormatError(
            f"{source}: the chunk element lacks {[p for p in CHUNK_PROPS[:12] if p not in names]}"
        )
    n = check_count(len(vertex), source)
    if len(chunk) != math.ceil(n / CHUNK):
        raise FormatError(
            f"{source}: {len(chunk)} chunks for {n} Gaussians (expected {math.ceil(n / CHUNK)})"
        )
    ci = np.arange(n) // CHUNK

    def rng(prefix_lo: list[str], prefix_hi: list[str]):
        lo = np.stack([chunk[p].astype(np.float64) for p in prefix_lo], 1)[ci]
        hi = np.stack([chunk[p].astype(np.float64) for p in prefix_hi], 1)[ci]
        return lo, hi

    pv = vertex["packed_position"].astype(np.uint32)
    lo, hi = rng(CHUNK_PROPS[0:3], CHUNK_PROPS[3:6])
    means = lo + (hi - lo) * _unpack_111011(pv)
    lo, hi = rng(CHUNK_PROPS[6:9], CHUNK_PROPS[9:12])
    scales = lo + (hi - lo) * _unpack_111011(vertex["packed_scale"].astype(np.uint32))
    rv = vertex["packed_rotation"].astype(np.uint32)
    rest = np.stack([((rv >> s) & 1023) / 1023.0 for s in (20, 10, 0)], 1)
    quats = rebuild_largest((rv >> 30).astype(np.int64), (rest - 0.5) / math.sqrt(0.5))
    cv = vertex["packed_color"].astype(np.uint32)
    t = np.stack([(cv >> 24) & 255, (cv >> 16) & 255, (cv >> 8) & 255], 1) / 255.0
    if all(p in names for p in CHUNK_PROPS[12:]):
        lo, hi = rng(CHUNK_PROPS[12:15], CHUNK_PROPS[15:18])
        rgb = lo + (hi - lo) * t
    else:
        rgb = t
    alpha = np.clip((cv & 255) / 255.0, EPS_ALPHA, 1 - EPS_ALPHA)
    shN = np.zeros((n, 0, 3), np.float32)
    if "sh" in el:
        sh = el["sh"]
        if len(sh) != n:
            raise FormatError(f"{source}: the sh element has {len(sh)} rows for {n} Gaussians")
        cols = [f"f_rest_{i}" for i in range(len(sh.dtype.names))]
        if list(sh.dtype.names) != cols:
            raise FormatError(f"{source}: the sh element's properties are not f_rest_0..{len(cols) - 1}")
        if len(cols) % 3:
            raise FormatError(f"{source}: {len(cols)} SH bytes per Gaussian is not a multiple of 3")
        k = len(cols) // 3
        degree_for_rest(k, source)
        b = np.stack([sh[c] for c in cols], 1).astype(np.float64)
        v = np.where(b == 0, 0.0, np.where(b == 255, 1.0, (b + 0.5) / 256))
        shN = ((v - 0.5) * 8).reshape(n, 3, k).transpose(0, 2, 1).astype(np.float32)
    g = Gaussians(
        means=means.astype(np.float32),
        scales=scales.astype(np.float32),
        quats=quats,
        opacities=logit(alpha),
        sh0=rgb_to_dc(rgb),
        shN=np.ascontiguousarray(shN),
    )
    if not all(np.isfinite(getattr(g, f)).all() for f in ("means", "scales", "sh0")):
        raise FormatError(f"{source}: the chunk ranges hold NaN or infinite values")
    return g


def write(params: dict, sh_degree: int, path: str | Path) -> np.ndarray:
    """Write ``params`` (splat's layout) to ``path``; returns the stored order (input row per vertex)."""
    blob, order = encode(from_params(params, sh_degree, path))
    atomic_write_bytes(path, blob)
    return order


def read(path: str | Path) -> tuple[dict, int]:
    path = Path(path)
    # 16 bytes per Gaussian plus 45 SH bytes plus the chunk table: 80 bytes each is a generous bound
    g = decode(read_bytes(path, MAX_GAUSSIANS * 80, "compressed PLY"), str(path))
    return g.to_params(), g.sh_degree
