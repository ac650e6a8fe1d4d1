"""Screenshots of the editing UI in each mode, for the README: ``python docs/make_screenshots.py``.

Starts the app on localhost (by default on a tiny random-weight model built offline, so the pictures show the
controls and the layout, not image quality; pass ``--model`` for real weights and more ``--steps``), drives
Debian's headless chromium with Playwright through the three tabs, and writes ``docs/ui_*.png``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def demo_photo(path: Path, size: int = 256) -> Path:
    """A simple synthetic 'photo': sky, hills and a red ball."""
    y = np.linspace(0, 1, size)[:, None, None]
    sky = (np.array([120, 170, 235]) * (1 - y) + np.array([230, 240, 250]) * y).astype(np.uint8)
    img = Image.fromarray(np.broadcast_to(sky, (size, size, 3)).copy())
    draw = ImageDraw.Draw(img)
    draw.ellipse((-60, size * 0.6, size * 0.8, size * 1.4), fill=(70, 140, 60))
    draw.ellipse((size * 0.3, size * 0.55, size * 1.3, size * 1.5), fill=(90, 160, 70))
    draw.ellipse((size * 0.38, size * 0.42, size * 0.62, size * 0.66), fill=(210, 40, 40))
    img.save(path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fill(page, elem_id: str, text: str):
    page.locator(f"#{elem_id} textarea, #{elem_id} input").first.fill(text)


def run(page, prefix: str):
    from playwright.sync_api import expect

    page.click(f"#{prefix}-run")
    expect(page.locator(f"#{prefix}-status")).to_contain_text("Done", timeout=600_000)
    page.wait_for_timeout(500)  # let the images finish painting


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model to load (default: a tiny offline model)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("chromium is not installed: apt-get install chromium")

    from playwright.sync_api import expect, sync_playwright

    from apps.ui import build_app
    from editkit.testing import save_tiny_pipeline

    work = Path(tempfile.mkdtemp(prefix="editkit-shots-"))
    model = args.model or str(save_tiny_pipeline(work / "tiny-sd1", "sd1"))
    photo = demo_photo(work / "photo.png")
    app = build_app(model, default_steps=args.steps, title="editkit")
    port = free_port()
    app.queue()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, footer_links=[])
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#gen-run")

            # 1. Generate & edit, with a re-weighted word and local blend
            fill(page, "gen-source", "a cat riding a bicycle")
            fill(page, "gen-target", "a dog riding a bicycle")
            fill(page, "gen-blend-src", "cat")
            fill(page, "gen-blend-tgt", "dog")
            page.get_by_text("Re-weight words (attention strength)").first.click()
            fill(page, "gen-rw-word-0", "dog")
            page.locator("#gen-rw-strength-0 input[type=number]").fill("2")
            page.locator("#gen-rw-strength-0 input[type=number]").press("Enter")
            run(page, "gen")
            page.screenshot(path=str(args.out / "ui_generate.png"), full_page=True)

            # 2. A photo with Prompt-to-Prompt after inversion
            page.get_by_role("tab", name="Edit a photo (P2P)").click()
            page.locator("#p2p-image input[type=file]").set_input_files(str(photo))
            expect(page.locator("#p2p-photo-note")).to_contain_text("px")
            fill(page, "p2p-source", "a red apple on a green mountain")
            fill(page, "p2p-target", "a red cake on a green mountain")
            page.locator("#p2p-inversion").get_by_text("negative-prompt", exact=True).click()
            run(page, "p2p")
            page.screenshot(path=str(args.out / "ui_photo_p2p.png"), full_page=True)

            # 3. A photo with Plug-and-Play
            page.get_by_role("tab", name="Edit a photo (PnP)").click()
            page.locator("#pnp-image input[type=file]").set_input_files(str(photo))
            expect(page.locator("#pnp-photo-note")).to_contain_text("px")
            fill(page, "pnp-target", "a watercolor painting of a snowy mountain")
            run(page, "pnp")
            page.screenshot(path=str(args.out / "ui_photo_pnp.png"), full_page=True)
            browser.close()
    finally:
        app.close()
        shutil.rmtree(work, ignore_errors=True)
    for name in ("ui_generate.png", "ui_photo_p2p.png", "ui_photo_pnp.png"):
        path = args.out / name
        Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)  # a third of the size
        print(path)


if __name__ == "__main__":
    main()
