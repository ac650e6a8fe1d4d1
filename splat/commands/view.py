"""``splat view RUN_OR_CKPT_OR_PLY [--scene SCENE] [--port N]``: look at trained Gaussians in a web browser."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import tyro

from splat.commands._common import background_of, check_port, wait_for_ctrl_c
from splat.config import ConfigError


@dataclass
class ViewCommand:
    """Look at trained Gaussians in a web browser (viser): orbit, jump to training cameras, screenshots."""

    model: tyro.conf.Positional[Path]
    """Run folder (its newest checkpoint or PLY), checkpoint (.pt) or 3DGS PLY."""
    scene: Path | None = None
    """Scene folder the model was trained on: shows its cameras as frustums (click one to jump to it)."""
    port: int = 8080
    """Port of the web server."""
    host: str = "127.0.0.1"
    """Address to listen on ("0.0.0.0": every interface)."""
    device: str = "auto"
    """Torch device ("auto": cuda if available, else cpu, where renders are small and slow)."""
    resolution: int | None = None
    """Long side of the rendered image (default: 1920 on CUDA, 128 on CPU); also a slider in the page."""


def serve(cmd: ViewCommand) -> int:
    """Load the model, start the viewer, serve until Ctrl-C."""
    from splat.device import resolve_device
    from splat.gaussians.model import load_model
    from splat.scene.cameras import scene_cameras
    from splat.view.viewer import Viewer

    check_port(cmd.port)
    if cmd.resolution is not None and cmd.resolution < 16:
        raise ConfigError(f"resolution must be at least 16 pixels, got {cmd.resolution}")
    model = load_model(cmd.model)
    cameras = scene_cameras(cmd.scene, model.config) if cmd.scene is not None else None
    viewer = None
    try:
        viewer = Viewer(
            model.params,
            model.sh_degree,
            cameras,
            host=cmd.host,
            port=cmd.port,
            device=resolve_device(cmd.device),
            resolution=cmd.resolution,
            background=background_of(model),
        )
        print(f"viewing {model.source} ({model.num_gaussians:,} Gaussians) at {viewer.url}  (Ctrl-C to quit)",
              flush=True)  # fmt: skip
        wait_for_ctrl_c()
    except KeyboardInterrupt:  # Ctrl-C while the server was starting
        pass
    finally:
        if viewer is not None:
            viewer.stop()
    return 0


def main(argv: list[str]) -> int:
    return serve(tyro.cli(ViewCommand, args=argv, prog="splat view"))
