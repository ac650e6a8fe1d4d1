"""The one place this package learns splat's parameter layout (keys, SH constant, PLY I/O).

Everything else in ``splat.gaussians.formats`` imports these names from here, so a move of ``splat.params`` /
``splat.ply`` changes one line.
"""

from __future__ import annotations

from splat.gaussians.params import PARAM_KEYS, SH_C0
from splat.gaussians.ply import read_ply, write_ply

__all__ = ["PARAM_KEYS", "SH_C0", "read_ply", "write_ply"]
