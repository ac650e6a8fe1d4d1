"""``splat`` command line: one module per command in :mod:`splat.commands`; this file only dispatches.

    splat train SCENE [--out DIR] [--preset NAME] [options]   train Gaussians (runs SfM first if needed)
    splat render CKPT --scene SCENE --out DIR [--split test]  render views of a trained model
    splat render CKPT --scene SCENE --path orbit --video o.mp4  a video along an orbit / spiral / interpolation
    splat eval CKPT --scene SCENE                             PSNR / SSIM (/ LPIPS) on held-out views
    splat view RUN_OR_CKPT_OR_PLY [--scene SCENE] [--port N]  live web viewer (viser)
    splat export CKPT --out FILE.spz                          the Gaussians as .ply / .splat / .spz / .sog / ...
    splat prepare SCENE [--overwrite] [--matcher ...]         COLMAP SfM from SCENE/images
    splat edit RUN --scene SCENE --source "..." --target "..."  edit a trained scene with a prompt (splat.edit)

CKPT may be a checkpoint (.pt), a 3DGS PLY (ours or the original implementation's), a run folder, or a file
`splat export` writes (.splat, .compressed.ply, .spz, .sog, .png.zip).
Every option is documented in ``splat <command> --help``. Options for ``train`` come from a preset,
then ``SCENE/splat.json`` (a JSON object of option names, with underscores, to values), then the flags.
Paths (``--out``, ``--resume``, ``--cache-dir``, ``--images``) come from the flags only: ``splat.json``
may not set them and a checkpoint's are ignored. ``train --resume CKPT`` restores the checkpoint's
settings; only steps, eval/save steps, checkpointing, output, progress and device may change.
``train`` also takes ``prepare``'s SfM options, prefixed: ``--sfm.matcher sequential``.

Exit codes: 0 ok, 1 internal error (a bug: please report it with the traceback), 2 bad input or usage
(configuration, scene, checkpoint, an output that cannot be written or a full disk; one line on stderr
naming the problem), 3 training diverged, 130 interrupted by Ctrl-C, 143 training stopped by SIGTERM (both
write a checkpoint of the last finished step and print the command that resumes the run).
"""

from __future__ import annotations

import importlib
import os
import sys

from splat.commands import COMMANDS, EXIT_DIVERGED, EXIT_INPUT, EXIT_INTERRUPTED


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"splat: unknown command {name!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    command = importlib.import_module(COMMANDS[name][0])
    try:
        return command.main(rest)
    except Exception as e:  # what the error means is looked up only when there is one (no torch for --help)
        from splat.commands import input_errors
        from splat.training.errors import TrainingDiverged

        if isinstance(e, input_errors()):  # bad configuration, scene, checkpoint, or an unwritable output
            print(f"splat {name}: error: {e}", file=sys.stderr)
            return EXIT_INPUT
        if isinstance(e, TrainingDiverged):
            print(f"splat {name}: error: {e}", file=sys.stderr)
            return EXIT_DIVERGED
        raise
    except KeyboardInterrupt as e:
        from splat.training.errors import TrainingInterrupted

        if isinstance(e, TrainingInterrupted):
            print(f"splat {name}: {e}", file=sys.stderr)
            return 128 + e.signum  # as a shell reports the signal: 130 Ctrl-C, 143 SIGTERM
        print(f"splat {name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def entry() -> int:
    """The ``splat`` console script: :func:`main`, and under torchrun an immediate exit afterwards (see
    :func:`splat.training.distributed.end_worker`). Output into a closed pipe (``splat --help | head``) ends
    quietly."""
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:  # the reader went away: nothing more to say, and nothing to say it to
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    if "WORLD_SIZE" in os.environ:  # a torchrun launch (the module imports torch)
        from splat.training.distributed import end_worker

        end_worker(code)
    return code


if __name__ == "__main__":
    raise SystemExit(entry())
