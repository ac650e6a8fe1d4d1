"""Shared pieces of the codecs: the error type, the checked parameter arrays, bounded reading,
quantisation helpers (sigmoid / logit, smallest-three quaternions, Morton order, k-means).

All arrays are numpy, Gaussians in rows. ``Gaussians`` is the codec-side view of splat's parameters:
    means      [N, 3]      float32 world positions
    scales     [N, 3]      float32 log scales
    quats      [N, 4]      float32 wxyz, normalised here (the files store unit quaternions)
    opacities  [N]         float32 logits
    sh0        [N, 3]      float32 DC coefficients
    shN        [N, K, 3]   float32 higher-order coefficients, K = (degree + 1)^2 - 1
"""

from __future__ import annotations

import math
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from splat.gaussians.formats._layout import PARAM_KEYS, SH_C0

# Upper bound on the number of Gaussians any reader allocates for (about 12 GB of float32
# parameters at degree 3): a header that declares more is refused before anything is allocated.
MAX_GAUSSIANS = 50_000_000
MAX_SH_DEGREE = 3
EPS_ALPHA = 1e-6  # opacities are clamped to [eps, 1 - eps] before the logit


# what ``zipfile`` raises on a damaged archive (RuntimeError: encrypted members; NotImplementedError:
# unknown compression or version fields)
ZIP_ERRORS = (
    zipfile.BadZipFile,
    OSError,
    EOFError,
    NotImplementedError,
    RuntimeError,
    zlib.error,
    ValueError,
)


class FormatError(ValueError):
    """A splat file that cannot be read or written; the message names the file and the problem."""


def num_rest(sh_degree: int) -> int:
    return (sh_degree + 1) ** 2 - 1


def degree_for_rest(k: int, source: str) -> int:
    for d in range(MAX_SH_DEGREE + 1):
        if num_rest(d) == k:
            return d
    raise FormatError(f"{source}: {k} higher-order SH coefficients per channel is not 0, 3, 8 or 15")


def check_count(n: int, source: str, limit: int = MAX_GAUSSIANS) -> int:
    if n <= 0:
        raise FormatError(f"{source}: holds no Gaussians (count {n})")
    if n > limit:
        raise FormatError(
            f"{source}: declares {n} Gaussians, more than this file can hold or the limit {limit}"
        )
    return n


@dataclass
class Gaussians:
    means: np.ndarray  # [N, 3]
    scales: np.ndarray  # [N, 3]
    quats: np.ndarray  # [N, 4]
    opacities: np.ndarray  # [N]
    sh0: np.ndarray  # [N, 3]
    shN: np.ndarray  # [N, K, 3]

    @property
    def n(self) -> int:
        return self.means.shape[0]

    @property
    def sh_degree(self) -> int:
        return degree_for_rest(self.shN.shape[1], "Gaussians")

    def take(self, order: np.ndarray) -> Gaussians:
        return Gaussians(*(getattr(self, f)[order] for f in FIELDS))

    def to_params(self) -> dict:
        """splat's parameter dict (torch tensors, the keys of ``splat.params``)."""
        import torch

        out = {
            "means": self.means,
            "scales": self.scales,
            "quats": self.quats,
            "opacities": self.opacities,
            "sh0": self.sh0.reshape(-1, 1, 3),
            "shN": self.shN.reshape(self.n, -1, 3),
        }
        return {k: torch.from_numpy(np.ascontiguousarray(out[k], dtype=np.float32)) for k in PARAM_KEYS}


FIELDS = ("means", "scales", "quats", "opacities", "sh0", "shN")


def from_params(params: dict, sh_degree: int, dest: str | Path) -> Gaussians:
    """Checked float32 arrays from splat's parameter dict, the SH truncated to ``sh_degree``."""
    missing = [k for k in PARAM_KEYS if k not in params]
    if missing:
        raise FormatError(f"cannot write {dest}: the parameters lack {missing}")
    if not isinstance(sh_degree, int) or not 0 <= sh_degree <= MAX_SH_DEGREE:
        raise FormatError(f"cannot write {dest}: SH degree {sh_degree!r} is not 0..{MAX_SH_DEGREE}")

    def rows(key: str, *tail: int) -> np.ndarray:
        v = params[key]
        v = v.detach().cpu().float().numpy() if hasattr(v, "detach") else np.asarray(v, dtype=np.float32)
        v = np.asarray(v, dtype=np.float32)
        if v.size != n * math.prod(tail):
            raise FormatError(f"cannot write {dest}: {key} has shape {tuple(v.shape)}, expected {(n, *tail)}")
        return v.reshape(n, *tail)

    means = params["means"]
    n = int(means.shape[0]) if getattr(means, "ndim", 0) == 2 else 0
    if n == 0:
        raise FormatError(f"cannot write {dest}: means has shape {tuple(means.shape)}, expected [N > 0, 3]")
    g = Gaussians(
        means=rows("means", 3),
        scales=rows("scales", 3),
        quats=rows("quats", 4),
        opacities=rows("opacities"),
        sh0=rows("sh0", 3),
        shN=np.zeros((n, 0, 3), np.float32),
    )
    k = num_rest(sh_degree)
    shN = params["shN"]
    have = shN.numel() // (3 * n) if hasattr(shN, "numel") else np.size(shN) // (3 * n)
    if have < k:
        raise FormatError(
            f"cannot write {dest}: shN holds {have} coefficients per channel, degree {sh_degree} needs {k}"
        )
    g.shN = np.ascontiguousarray(rows("shN", have, 3)[:, :k])
    for f in FIELDS:
        if not np.isfinite(getattr(g, f)).all():
            raise FormatError(f"cannot write {dest}: {f} holds NaN or infinite values")
    norm = np.linalg.norm(g.quats, axis=1, keepdims=True)
    if (norm == 0).any():
        raise FormatError(f"cannot write {dest}: a quaternion is zero")
    g.quats = (g.quats / norm).astype(np.float32)
    return g


# ----------------------------------------------------------------------------------------------------
# activations


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


def logit(a: np.ndarray) -> np.ndarray:
    a = np.clip(a.astype(np.float64), EPS_ALPHA, 1 - EPS_ALPHA)
    return np.log(a / (1 - a)).astype(np.float32)


def dc_to_rgb(dc: np.ndarray) -> np.ndarray:
    return dc * SH_C0 + 0.5


def rgb_to_dc(rgb: np.ndarray) -> np.ndarray:
    return ((rgb - 0.5) / SH_C0).astype(np.float32)


def to_u8(x: np.ndarray) -> np.ndarray:
    """Round to the nearest integer and clamp to 0..255."""
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def log_transform(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


def inv_log_transform(y: np.ndarray) -> np.ndarray:
    return np.sign(y) * np.expm1(np.abs(y))


# ----------------------------------------------------------------------------------------------------
# quaternions: "smallest three" (the largest component is dropped, made positive, and rebuilt)


def smallest_three(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(largest index [N], the other three components [N, 3] in order)`` of unit quaternions ``q [N, 4]``,
    the sign chosen so that the dropped component is positive."""
    largest = np.argmax(np.abs(q), axis=1)
    sign = np.where(q[np.arange(len(q)), largest] < 0, -1.0, 1.0)[:, None]
    q = q * sign
    keep = np.array([[j for j in range(4) if j != i] for i in range(4)])[largest]  # [N, 3]
    return largest, np.take_along_axis(q, keep, axis=1)


def rebuild_largest(largest: np.ndarray, rest: np.ndarray) -> np.ndarray:
    """Inverse of :func:`smallest_three`: unit quaternions [N, 4] from the index and three components."""
    n = len(largest)
    q = np.zeros((n, 4), np.float64)
    keep = np.array([[j for j in range(4) if j != i] for i in range(4)])[largest]
    np.put_along_axis(q, keep, rest.astype(np.float64), axis=1)
    q[np.arange(n), largest] = np.sqrt(np.clip(1.0 - (rest.astype(np.float64) ** 2).sum(1), 0.0, None))
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


# ----------------------------------------------------------------------------------------------------
# ordering and clustering


def morton_order(means: np.ndarray) -> np.ndarray:
    """Indices sorting ``means [N, 3]`` along a 3D Z-order curve (10 bits per axis)."""
    lo, hi = means.min(0), means.max(0)
    cells = ((means - lo) / np.maximum(hi - lo, 1e-12) * 1023).astype(np.uint64).clip(0, 1023)

    def spread(v):  # 10 bits -> every third bit of 30
        v = (v | (v << np.uint64(16))) & np.uint64(0x030000FF)
        v = (v | (v << np.uint64(8))) & np.uint64(0x0300F00F)
        v = (v | (v << np.uint64(4))) & np.uint64(0x030C30C3)
        v = (v | (v << np.uint64(2))) & np.uint64(0x09249249)
        return v

    code = (spread(cells[:, 0]) << np.uint64(2)) | (spread(cells[:, 1]) << np.uint64(1)) | spread(cells[:, 2])
    return np.argsort(code, kind="stable")


def kmeans_1d(values: np.ndarray, k: int = 256, iters: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """``(codebook [k] ascending float32, labels like values uint8/uint16)``: Lloyd's algorithm in 1D,
    started from the quantiles (exact assignment by the midpoints of the sorted codebook)."""
    flat = values.reshape(-1).astype(np.float64)
    centres = np.quantile(flat, (np.arange(k) + 0.5) / k)
    for _ in range(iters):
        centres = np.unique(centres)
        labels = np.searchsorted((centres[1:] + centres[:-1]) / 2, flat)
        sums = np.bincount(labels, weights=flat, minlength=len(centres))
        counts = np.bincount(labels, minlength=len(centres))
        centres = np.where(counts > 0, sums / np.maximum(counts, 1), centres)
    centres = np.sort(np.unique(centres))
    if len(centres) < k:  # fewer distinct values than entries: pad with the largest (never chosen)
        centres = np.concatenate([centres, np.full(k - len(centres), centres[-1])])
    labels = np.searchsorted((centres[1:] + centres[:-1]) / 2, flat)
    labels = np.minimum(labels, k - 1)
    return centres.astype(np.float32), labels.reshape(values.shape).astype(
        np.uint8 if k <= 256 else np.uint16
    )


def kmeans(x: np.ndarray, k: int, iters: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(centroids [k, D] float32, labels [N] int64)``: Lloyd's algorithm (squared Euclidean distance)
    from ``k`` distinct rows drawn with a fixed seed; assignments in chunks (matmul distances)."""
    import torch

    n = x.shape[0]
    k = min(k, n)
    data = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    g = torch.Generator().manual_seed(seed)
    centroids = data[torch.randperm(n, generator=g)[:k]].clone()
    labels = torch.zeros(n, dtype=torch.int64)
    for it in range(iters + 1):
        c2 = (centroids * centroids).sum(1)  # [k]
        ct = centroids.T.contiguous()
        for s in range(0, n, 1024):
            d = torch.addmm(c2[None, :], data[s : s + 1024], ct, alpha=-2)  # [B, k]: |c|^2 - 2 x.c
            labels[s : s + 1024] = d.argmin(1)
        if it == iters:
            break
        sums = torch.zeros_like(centroids).index_add_(0, labels, data)
        counts = torch.bincount(labels, minlength=k).float()
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]
    return centroids.numpy(), labels.numpy()


def palette_size(n: int) -> int:
    """Number of SH palette entries for ``n`` Gaussians (PlayCanvas' SOG rule: 1024 per ~1024 points,
    powers of two, at most 64K), never more than ``n``."""
    size = int(min(64.0, 2.0 ** math.floor(math.log2(n / 1024))) * 1024)
    return max(1, min(size, n))


# ----------------------------------------------------------------------------------------------------
# bounded reading


def read_bytes(path: Path, limit: int, what: str) -> bytes:
    try:
        size = path.stat().st_size
    except OSError as e:
        raise FormatError(f"cannot read {path}: {e.strerror or e}") from e
    if size > limit:
        raise FormatError(f"{path}: {size} bytes is larger than the {limit}-byte limit for a {what} file")
    try:
        return path.read_bytes()
    except OSError as e:
        raise FormatError(f"cannot read {path}: {e.strerror or e}") from e
