"""The ``splat`` command line, one module per command: each holds its options (a dataclass that tyro turns
into flags and ``--help``) and ``main(argv) -> exit code``. :mod:`splat.cli` only dispatches, so ``splat X
--help`` imports only command X's module and what its options need (never torch).

May import every other part of ``splat`` (it is the top of the arrows), lazily inside ``main`` where the
import is heavy; nothing in ``splat`` imports it.

Exit codes: 0 ok, 1 internal error (a bug: please report it with the traceback), 2 bad input or usage
(configuration, scene, checkpoint, an output that cannot be written or a full disk; one line on stderr
naming the problem), 3 training diverged (the last good checkpoint is kept), 130 interrupted by Ctrl-C, 143
training stopped by SIGTERM (128 + the signal, as shells report it; both write a checkpoint of the last
finished step and print how to resume).
"""

from __future__ import annotations

COMMANDS = {
    "train": ("splat.commands.train", "train Gaussians on a COLMAP scene (runs SfM first if needed)"),
    "render": ("splat.commands.render", "render a trained model's views, or a video along a camera path"),
    "eval": ("splat.commands.eval", "PSNR / SSIM (/ LPIPS) of a trained model on the held-out views"),
    "view": ("splat.commands.view", "live web viewer (viser) of a run, checkpoint or PLY"),
    "export": ("splat.commands.export", "write a model's Gaussians as a 3DGS PLY, .splat, SPZ, SOG, ..."),
    "prepare": ("splat.commands.prepare", "COLMAP structure-from-motion from SCENE/images"),
    "edit": ("splat.commands.edit", "edit a trained scene with a text prompt (Iterative Dataset Update)"),
}
"""Command name -> (module, one line of help)."""

EXIT_INPUT = 2  # bad input or usage
EXIT_DIVERGED = 3  # training stopped on a non-finite loss or parameter (last good checkpoint kept)
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it


def input_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input (a one-line message, exit 2); anything else is a bug (exit 1)."""
    from safeio import OwnershipError, WriteError
    from splat.config import ConfigError
    from splat.gaussians.checkpoint import CheckpointError
    from splat.gaussians.formats import FormatError
    from splat.outputs import OutputError
    from splat.scene.colmap import SceneError
    from splat.scene.sfm import SfmError
    from splat.training.distributed import LaunchError

    return (ConfigError, SceneError, SfmError, CheckpointError, FormatError, OutputError, WriteError,
            OwnershipError, LaunchError)  # fmt: skip
