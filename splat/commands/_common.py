"""Small pieces several commands share (no torch at import)."""

from __future__ import annotations

import time

from splat.config import ConfigError


def check_port(port: int) -> None:
    if not 1 <= port <= 65535:
        raise ConfigError(f"port must be in 1..65535, got {port}")


def wait_for_ctrl_c() -> None:
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass


def background_of(model) -> tuple[float, float, float]:
    """The colour a model renders over, as plain floats (what the viewer and the video take)."""
    return tuple(float(c) for c in model.current_background().detach().cpu().clamp(0, 1))  # type: ignore[return-value]
