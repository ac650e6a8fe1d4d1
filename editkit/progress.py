"""Progress reports and cancellation for long editing runs, without threading arguments through every call.

Every denoising, inversion and optimisation loop in editkit calls :func:`report` once per step with the
stage's name. An application that wants live progress (a progress bar in a UI, an ETA, a Cancel button)
wraps its call in :func:`reporting`::

    def on_step(stage: str, step: int, total: int) -> None:
        print(f"{stage}: {step}/{total}")
        if cancel_requested:
            raise editkit.progress.Cancelled()   # stops the run at this step; hooks are restored

    with editkit.progress.reporting(on_step):
        editkit.edit_image(pipe, "cat.jpg", ...)

The reporter lives in a :class:`contextvars.ContextVar`, so concurrent runs in different threads or
tasks each see their own. ``step`` counts from 1 to ``total`` within a stage.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

__all__ = ["Cancelled", "Reporter", "report", "reporting"]

Reporter = Callable[[str, int, int], None]

# stage names reported by the library
SAMPLING = "sampling"
DDIM_INVERSION = "DDIM inversion"
NULL_TEXT = "null-text optimisation"
PNP = "Plug-and-Play"

_reporter: contextvars.ContextVar[Reporter | None] = contextvars.ContextVar("editkit_reporter", default=None)


class Cancelled(Exception):
    """Raised by a reporter to stop the run in progress at the current step."""


@contextlib.contextmanager
def reporting(fn: Reporter | None) -> Iterator[None]:
    """Send every :func:`report` inside this block to ``fn(stage, step, total)``."""
    token = _reporter.set(fn)
    try:
        yield
    finally:
        _reporter.reset(token)


def report(stage: str, step: int, total: int) -> None:
    """Tell the active reporter (if any) that ``stage`` finished ``step`` of ``total``."""
    fn = _reporter.get()
    if fn is not None:
        fn(stage, step, total)
