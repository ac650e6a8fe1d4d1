"""The viewer screenshot and the orbit GIF for the README: ``python docs/make_viewer_media.py --model RUN``.

RUN is a model of the demo scene (``splat train assets/demo --out RUN``; any checkpoint / PLY / run folder).
Starts ``splat.view.viewer.Viewer`` on it, opens it in Debian's headless chromium (Playwright, SwiftShader for
WebGL), waits for the rendered frame and writes ``docs/viewer_demo.png``; then renders an orbit with
``splat render --path orbit`` into ``docs/orbit_demo.gif``.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import sys
import time
from pathlib import Path

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
sys.path.insert(0, str(REPO))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--use-gl=angle", "--use-angle=swiftshader",
                 "--enable-unsafe-swiftshader", "--disable-background-networking", "--no-first-run"]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def screenshot(model: Path, scene: Path, out: Path, resolution: int) -> None:
    from playwright.sync_api import sync_playwright

    from splat.commands._common import background_of
    from splat.gaussians import load_model
    from splat.scene.cameras import scene_cameras
    from splat.view.viewer import Viewer

    loaded = load_model(model)
    viewer = Viewer(loaded.params, loaded.sh_degree, scene_cameras(scene, loaded.config), port=free_port(),
                    resolution=resolution, transport="png", background=background_of(loaded))  # fmt: skip
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 960, "height": 640})
            page.goto(viewer.url)
            assert viewer.wait_for_frame(0, timeout=600) is not None
            while viewer.wait_for_frame(viewer.frames_sent, timeout=5) is not None:
                pass  # the camera settles on the first training view
            time.sleep(2.0)
            for close in page.locator("button.mantine-Notification-closeButton").all():
                close.click()  # the "software WebGL" notice
            time.sleep(1.0)
            page.screenshot(path=str(out))
            browser.close()
    finally:
        viewer.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--scene", type=Path, default=REPO / "assets" / "demo")
    ap.add_argument("--resolution", type=int, default=256, help="long side of the viewer's render")
    ap.add_argument("--frames", type=int, default=36)
    ap.add_argument("--width", type=int, default=160)
    args = ap.parse_args()
    screenshot(args.model, args.scene, DOCS / "viewer_demo.png", args.resolution)
    from splat.cli import main as splat_main

    rc = splat_main(["render", str(args.model), "--scene", str(args.scene), "--path", "orbit",
                     "--frames", str(args.frames), "--fps", "12", "--width", str(args.width),
                     "--video", str(DOCS / "orbit_demo.gif"), "--device", "cpu"])  # fmt: skip
    raise SystemExit(rc)


if __name__ == "__main__":
    main()
