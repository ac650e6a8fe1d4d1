"""The antimatter15 ``.splat`` file: 32 bytes per Gaussian, no header, degree-0 colour only.

Per Gaussian, little-endian:
    position     float32 x 3
    scale        float32 x 3       activated (exp of splat's log scales)
    colour       uint8 x 4         RGB = SH DC colour (0.5 + SH_C0 * dc) * 255, A = sigmoid(opacity) * 255
    rotation     uint8 x 4         unit wxyz quaternion, q * 128 + 128 clamped to 0..255

Gaussians are sorted by decreasing ``exp(sum of log scales) * sigmoid(opacity)`` (volume times opacity),
the order the original viewer writes and web viewers expect for progressive loading. Higher-order SH
coefficients are dropped (the format has none).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from safeio import atomic_write_bytes
from splat.gaussians.formats._common import (
    MAX_GAUSSIANS,
    FormatError,
    Gaussians,
    check_count,
    dc_to_rgb,
    from_params,
    logit,
    read_bytes,
    rgb_to_dc,
    sigmoid,
    to_u8,
)

BYTES_PER_GAUSSIAN = 32
RECORD = np.dtype([("pos", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)])
assert RECORD.itemsize == BYTES_PER_GAUSSIAN


def encode(g: Gaussians) -> tuple[bytes, np.ndarray]:
    """``(file bytes, order)``: ``order[i]`` is the input row stored as record ``i``."""
    importance = np.exp(g.scales.astype(np.float64).sum(1)) * sigmoid(g.opacities)
    order = np.argsort(-importance, kind="stable")
    g = g.take(order)
    rec = np.zeros(g.n, RECORD)
    rec["pos"] = g.means
    rec["scale"] = np.exp(g.scales)
    rec["rgba"][:, :3] = to_u8(np.clip(dc_to_rgb(g.sh0), 0, 1) * 255)
    rec["rgba"][:, 3] = to_u8(sigmoid(g.opacities) * 255)
    rec["rot"] = to_u8(g.quats * 128 + 128)
    return rec.tobytes(), order


def decode(raw: bytes, source: str) -> Gaussians:
    if len(raw) % BYTES_PER_GAUSSIAN:
        raise FormatError(
            f"{source}: {len(raw)} bytes is not a whole number of 32-byte .splat records (truncated?)"
        )
    n = check_count(len(raw) // BYTES_PER_GAUSSIAN, source)
    rec = np.frombuffer(raw, RECORD, count=n)
    scale = rec["scale"].astype(np.float64)
    if not np.isfinite(rec["pos"]).all() or not (np.isfinite(scale) & (scale > 0)).all():
        raise FormatError(
            f"{source}: positions or scales are not finite positive numbers (not a .splat file?)"
        )
    q = (rec["rot"].astype(np.float32) - 128) / 128
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    q = np.where(norm > 0, q / np.maximum(norm, 1e-12), np.array([1, 0, 0, 0], np.float32))
    return Gaussians(
        means=rec["pos"].astype(np.float32),
        scales=np.log(scale).astype(np.float32),
        quats=q.astype(np.float32),
        opacities=logit(rec["rgba"][:, 3] / 255.0),
        sh0=rgb_to_dc(rec["rgba"][:, :3] / 255.0),
        shN=np.zeros((n, 0, 3), np.float32),
    )


def write(params: dict, sh_degree: int, path: str | Path) -> np.ndarray:
    """Write ``params`` (splat's layout) to ``path``; returns the stored order (input row per record)."""
    blob, order = encode(from_params(params, sh_degree, path))
    atomic_write_bytes(path, blob)
    return order


def read(path: str | Path) -> tuple[dict, int]:
    path = Path(path)
    g = decode(read_bytes(path, MAX_GAUSSIANS * BYTES_PER_GAUSSIAN, ".splat"), str(path))
    return g.to_params(), 0
