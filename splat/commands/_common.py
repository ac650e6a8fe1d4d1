"""Small pieces several commands share (no torch at import)."""

from __future__ import annotations

import signal
import threading

from splat.config import ConfigError


def check_port(port: int) -> None:
    if not 1 <= port <= 65535:
        raise ConfigError(f"port must be in 1..65535, got {port}")


def wait_for_ctrl_c() -> None:
    """Block until Ctrl-C (SIGINT) or SIGTERM, then return so that the caller shuts its server down.

    Both signals get a handler for the wait, whatever was installed before: a process started in the
    background of a shell script inherits SIGINT *ignored* (and Python then installs no KeyboardInterrupt for
    it), so ``kill -INT`` would be lost, and a scheduler's SIGTERM would end the process without closing the
    server. The previous handlers are put back afterwards.
    """
    stop = threading.Event()
    signals = [signal.SIGINT, signal.SIGTERM]
    previous = {sig: signal.signal(sig, lambda signum, frame: stop.set()) for sig in signals}
    try:
        while not stop.wait(1.0):  # a timed wait, so that the handler runs promptly on every platform
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def background_of(model) -> tuple[float, float, float]:
    """The colour a model renders over, as plain floats (what the viewer and the video take)."""
    return tuple(float(c) for c in model.current_background().detach().cpu().clamp(0, 1))  # type: ignore[return-value]
