"""PLY files in the original 3DGS layout, which every splat viewer reads.

Per vertex, float32, in this order: ``x y z nx ny nz f_dc_0..2 f_rest_0..44 opacity scale_0..2 rot_0..3``.
Values are pre-activation (log scales, logit opacity, unnormalised wxyz quaternion), ``f_rest`` is
channel-major (all R coefficients, then G, then B), positions are in the COLMAP world frame, normals 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from safeio import atomic_write_bytes
from splat.gaussians.checkpoint import CheckpointError


def property_names(num_rest: int = 15) -> list[str]:
    """The vertex properties, in file order, for ``num_rest`` higher-order SH coefficients per channel."""
    names = ["x", "y", "z", "nx", "ny", "nz"]
    names += [f"f_dc_{i}" for i in range(3)]
    names += [f"f_rest_{i}" for i in range(3 * num_rest)]
    names += ["opacity"]
    names += [f"scale_{i}" for i in range(3)]
    names += [f"rot_{i}" for i in range(4)]
    return names


def write_ply(path: str | Path, splats: dict[str, Tensor]) -> None:
    """Write ``means, scales, quats, opacities, sh0 [N,1,3], shN [N,K,3]`` atomically to ``path``."""
    path = Path(path)
    means = splats["means"].detach().cpu().float()
    n = means.shape[0]
    sh0 = splats["sh0"].detach().cpu().float().reshape(n, 1, 3)
    shN = splats["shN"].detach().cpu().float().reshape(n, -1, 3)
    num_rest = shN.shape[1]
    columns = [
        means,
        torch.zeros(n, 3),
        sh0.transpose(1, 2).reshape(n, 3),
        shN.transpose(1, 2).reshape(n, 3 * num_rest),  # channel-major
        splats["opacities"].detach().cpu().float().reshape(n, 1),
        splats["scales"].detach().cpu().float().reshape(n, 3),
        splats["quats"].detach().cpu().float().reshape(n, 4),
    ]
    data = torch.cat(columns, dim=1).numpy().astype("<f4")
    if not np.isfinite(data).all():  # a model with NaN / inf is never written (every reader refuses it)
        raise CheckpointError(f"refusing to write {path}: the Gaussians hold non-finite values (NaN or inf)")
    names = property_names(num_rest)
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    header += [f"property float {name}" for name in names]
    header += ["end_header"]
    blob = ("\n".join(header) + "\n").encode("ascii") + np.ascontiguousarray(data).tobytes()
    atomic_write_bytes(path, blob)


def read_ply(path: str | Path) -> dict[str, Tensor]:
    """Read a PLY written in the 3DGS layout (by us or by the original code). A file that is not one, is
    truncated or declares more than it holds raises :class:`~splat.gaussians.checkpoint.CheckpointError`
    naming the file and what is wrong (one line)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read PLY {path}: {e.strerror or e}") from e
    end = raw.find(b"end_header\n", 0, 1 << 20)  # a header is a few kB; never scan a whole large file
    if not raw.startswith(b"ply") or end < 0:
        raise CheckpointError(f"{path} is not a PLY file (no 'ply ... end_header' header)")
    try:
        header = raw[:end].decode("ascii").splitlines()
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: the PLY header is not ASCII text") from None
    if "format binary_little_endian 1.0" not in header:
        raise CheckpointError(f"{path}: only binary_little_endian PLY files are supported")
    counts = [line.split() for line in header if line.startswith("element vertex")]
    if len(counts) != 1 or len(counts[0]) != 3 or not counts[0][2].isdigit():
        raise CheckpointError(f"{path}: the PLY header has no valid 'element vertex N' line")
    n = int(counts[0][2])
    props = [line.split() for line in header if line.startswith("property")]
    if any(len(p) != 3 or p[1] != "float" for p in props):
        raise CheckpointError(f"{path}: every vertex property must be a float32 ('property float NAME')")
    names = [p[2] for p in props]
    body = len(raw) - end - len(b"end_header\n")
    need = n * len(names) * 4
    if n == 0 or not names:
        raise CheckpointError(f"{path} holds no Gaussians")
    if body < need:
        raise CheckpointError(
            f"{path} is truncated: its header declares {n} vertices of {len(names)} floats ({need} bytes), "
            f"the file holds {body} bytes after the header"
        )
    data = np.frombuffer(raw, dtype="<f4", count=n * len(names), offset=end + len(b"end_header\n"))
    table = torch.from_numpy(data.reshape(n, len(names)).copy())
    col = {name: i for i, name in enumerate(names)}

    def take(prefix_names: list[str]) -> Tensor:
        missing = [p for p in prefix_names if p not in col]
        if missing:
            raise CheckpointError(f"{path}: missing vertex properties {missing}")
        return table[:, [col[p] for p in prefix_names]]

    num_rest = sum(name.startswith("f_rest_") for name in names) // 3
    return {
        "means": take(["x", "y", "z"]),
        "sh0": take([f"f_dc_{i}" for i in range(3)]).reshape(n, 3, 1).transpose(1, 2).contiguous(),
        "shN": take([f"f_rest_{i}" for i in range(3 * num_rest)])
        .reshape(n, 3, num_rest)
        .transpose(1, 2)
        .contiguous(),
        "opacities": take(["opacity"]).reshape(n),
        "scales": take([f"scale_{i}" for i in range(3)]),
        "quats": take([f"rot_{i}" for i in range(4)]),
    }
