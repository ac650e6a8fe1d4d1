"""Gaussians in the files people share: the 3DGS PLY, the antimatter15 ``.splat``, PlayCanvas'
compressed PLY and SOG, Niantic's SPZ, and gsplat's PNG compression as one archive.

    save_gaussians(params, sh_degree, path, format=None)   # format from the suffix when None
    params, sh_degree = load_gaussians_file(path)

``params`` are splat's pre-activation parameters (``means [N, 3]``, ``scales [N, 3]`` log, ``quats
[N, 4]`` wxyz, ``opacities [N]`` logit, ``sh0 [N, 1, 3]``, ``shN [N, K, 3]``) as torch tensors;
``sh_degree`` the degree to store (formats without higher-order SH store degree 0). Every codec module
has ``write(params, sh_degree, path) -> order`` (``order[i]``: the input row stored as Gaussian ``i``,
since most formats reorder) and ``read(path) -> (params, sh_degree)``. Bad files raise
:class:`FormatError` with a one-line message naming the file; writes are atomic (``safeio``).

============== ======================== ========================================= ===========
format         suffix                   stores                                    SH degrees
============== ======================== ========================================= ===========
ply            .ply                     float32, exact                            0-3
splat          .splat                   float32 position / scale, 8-bit the rest  0
compressed-ply .compressed.ply          11/10-bit in chunks of 256, 8-bit SH      0-3
spz            .spz                     24-bit positions, 8-bit the rest, gzip    0-3
sog            .sog, meta.json          WebP textures, 256-entry codebooks        0-3
png            .png.zip                 gsplat's PNG images + k-means SH (zip)    0-3
============== ======================== ========================================= ===========
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from splat.gaussians.formats import antimatter, compressed_ply, png, sog, spz
from splat.gaussians.formats._common import ZIP_ERRORS, FormatError, from_params
from splat.gaussians.formats._layout import read_ply, write_ply

__all__ = ["FORMATS", "FormatError", "format_for_path", "load_gaussians_file", "save_gaussians"]

FORMATS = ("ply", "splat", "compressed-ply", "spz", "sog", "png")
SUFFIXES = {
    "ply": ".ply",
    "splat": ".splat",
    "compressed-ply": ".compressed.ply",
    "spz": ".spz",
    "sog": ".sog",
    "png": ".png.zip",
}


def format_for_path(path: str | Path) -> str | None:
    """The format a path's name says (a ``.zip`` or folder is looked into), or None."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(".compressed.ply"):
        return "compressed-ply"
    if name.endswith(".png.zip"):
        return "png"
    if name == "meta.json" or (path.is_dir() and (path / "meta.json").is_file()):
        return "sog"
    for fmt in ("ply", "splat", "spz", "sog"):
        if name.endswith(SUFFIXES[fmt]):
            return fmt
    if name.endswith(".zip") and path.is_file():
        try:
            with zipfile.ZipFile(path) as z:
                names = set(z.namelist())
                if "splat.json" in names or "means_l.png" in names:
                    return "png"
                if "meta.json" in names and sog.is_sog_meta(json.loads(z.read("meta.json")[: 1 << 24])):
                    return "sog"
        except (*ZIP_ERRORS, KeyError):
            return None
    return None


def _writer(fmt: str):
    return {
        "ply": _write_ply,
        "splat": antimatter.write,
        "compressed-ply": compressed_ply.write,
        "spz": spz.write,
        "sog": sog.write,
        "png": png.write,
    }[fmt]


def _write_ply(params: dict, sh_degree: int, path: str | Path) -> np.ndarray:
    g = from_params(params, sh_degree, path)
    p = g.to_params()
    p["quats"] = params["quats"].detach().cpu().float()  # the PLY keeps the raw (unnormalised) values
    write_ply(path, p)
    return np.arange(g.n)


def save_gaussians(params: dict, sh_degree: int, path: str | Path, format: str | None = None) -> np.ndarray:
    """Write ``params`` to ``path`` in ``format`` (by default the one its suffix names); returns the
    stored order (input row of each stored Gaussian)."""
    fmt = format or format_for_path(path)
    if fmt is None:
        raise FormatError(
            f"cannot tell the format of {path} from its name: use one of "
            + ", ".join(f"{SUFFIXES[f]} ({f})" for f in FORMATS)
            + " or pass format="
        )
    if fmt not in FORMATS:
        raise FormatError(f"unknown format {fmt!r} for {path}: expected one of {', '.join(FORMATS)}")
    return _writer(fmt)(params, sh_degree, path)


def load_gaussians_file(path: str | Path, format: str | None = None) -> tuple[dict, int]:
    """``(params, sh_degree)`` from a file in any of :data:`FORMATS` (chosen by its name unless given)."""
    path = Path(path)
    if not path.exists():
        raise FormatError(f"{path} does not exist")
    fmt = format or format_for_path(path)
    if fmt is None:
        raise FormatError(f"{path}: not a Gaussian file this program reads ({', '.join(SUFFIXES.values())})")
    if fmt == "ply":
        return _read_ply(path)
    reader = {
        "splat": antimatter.read,
        "compressed-ply": compressed_ply.read,
        "spz": spz.read,
        "sog": sog.read,
        "png": png.read,
    }.get(fmt)
    if reader is None:
        raise FormatError(f"unknown format {fmt!r} for {path}: expected one of {', '.join(FORMATS)}")
    return reader(path)


def _read_ply(path: Path) -> tuple[dict, int]:
    """A 3DGS PLY, or a compressed PLY under a plain ``.ply`` name (told apart by its elements)."""
    with open(path, "rb") as f:
        head = f.read(compressed_ply.MAX_HEADER)
    if b"element chunk " in head and b"packed_position" in head:
        return compressed_ply.read(path)
    try:
        params = read_ply(path)
    except (ValueError, UnicodeDecodeError, StopIteration, IndexError) as e:
        raise FormatError(f"{path}: not a readable 3DGS PLY ({e})") from None
    from splat.gaussians.formats._common import degree_for_rest

    return params, degree_for_rest(params["shN"].shape[1], str(path))
