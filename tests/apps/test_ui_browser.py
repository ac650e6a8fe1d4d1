"""The Gradio editing UI on a tiny offline model, driven in headless Chromium with Playwright.

The app runs in this process (a server thread on a free localhost port); Debian's chromium is driven through
Playwright's ``executable_path`` (Playwright's own browser download is not needed). Skipped only when no
chromium binary is installed (``scripts/test.sh`` installs it).
"""

from __future__ import annotations

import importlib.util
import shutil
import socket

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 120_000  # one edit is a few seconds on the tiny model; 2 shared CPU cores can be slow
needs_inversion = pytest.mark.skipif(importlib.util.find_spec("editkit.inversion") is None,
                                     reason="editkit.inversion not available")
needs_pnp = pytest.mark.skipif(importlib.util.find_spec("editkit.pnp") is None, reason="editkit.pnp not available")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_model_dirs):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (scripts/test.sh installs Debian's chromium)")
    from apps.ui import build_app

    app = build_app(str(tiny_model_dirs["sd1"]), device="cpu", default_steps=2)
    assert app.editkit_model.pipe is not None, app.editkit_model.error
    port = free_port()
    app.queue()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    app.close()


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_page(browser, server):
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(server)
    page.wait_for_selector("#gen-run")
    return page


@pytest.fixture
def page(browser, server):
    page = open_page(browser, server)
    yield page
    page.context.close()


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    y, x = np.mgrid[0:40, 0:56]
    rgb = np.stack([x * 4, y * 6, (x + y) * 2], axis=-1).astype(np.uint8)
    path = tmp_path_factory.mktemp("photos") / "photo.png"
    Image.fromarray(rgb).save(path)
    return path


def fill(page, elem_id: str, text: str):
    page.locator(f"#{elem_id} textarea, #{elem_id} input").first.fill(text)


def run_and_expect(page, prefix: str, text: str):
    from playwright.sync_api import expect

    page.click(f"#{prefix}-run")
    expect(page.locator(f"#{prefix}-status")).to_contain_text(text, timeout=TIMEOUT_MS)


def open_tab(page, name: str):
    page.get_by_role("tab", name=name).click()


def upload(page, prefix: str, path):
    page.locator(f"#{prefix}-image input[type=file]").set_input_files(str(path))
    page.wait_for_selector(f"#{prefix}-image img")


def test_model_and_device_are_shown(page):
    info = page.locator("#model-info").inner_text()
    assert "StableDiffusionPipeline" in info and "cpu" in info and "float32" in info


def test_generate_and_edit_then_bad_input_then_good_edit(page):
    from playwright.sync_api import expect

    fill(page, "gen-source", "a cat riding a bicycle")
    fill(page, "gen-target", "a dog riding a bicycle")
    fill(page, "gen-blend-src", "cat")
    fill(page, "gen-blend-tgt", "dog")
    run_and_expect(page, "gen", "Done")
    expect(page.locator("#gen-result img")).to_have_count(2)  # source and edited, side by side
    expect(page.locator("#gen-heatmaps img")).to_have_count(1)
    link = page.locator("#gen-files a[href$='target_0.png']")
    expect(link).to_have_count(1)
    download = page.request.get(link.get_attribute("href"))  # the edited image is downloadable
    assert download.ok and download.body()[:8] == b"\x89PNG\r\n\x1a\n"

    fill(page, "gen-target", "a big dog riding a bicycle")  # word swap with one word more
    run_and_expect(page, "gen", "same number of words")
    expect(page.locator("#gen-result img")).to_have_count(0)

    fill(page, "gen-target", "a dog riding a bicycle")
    fill(page, "gen-blend-tgt", "zebra")  # not in the target prompt
    run_and_expect(page, "gen", "zebra")

    fill(page, "gen-blend-tgt", "dog")
    page.locator("#gen-kind").get_by_text("refine", exact=True).click()
    run_and_expect(page, "gen", "Done")  # the app keeps working after bad input
    expect(page.locator("#gen-result img")).to_have_count(2)


@needs_inversion
def test_photo_p2p_reuses_inversion_and_sessions_are_separate(browser, server, page, photo):
    from playwright.sync_api import expect

    open_tab(page, "Edit a photo (P2P)")
    fill(page, "p2p-source", "a cat sitting on a table")
    fill(page, "p2p-target", "a dog sitting on a table")
    run_and_expect(page, "p2p", "Upload a photo")  # no image yet

    upload(page, "p2p", photo)
    page.locator("#p2p-inversion").get_by_text("negative-prompt", exact=True).click()
    run_and_expect(page, "p2p", "Inversion computed")
    expect(page.locator("#p2p-result img")).to_have_count(2)
    expect(page.locator("#p2p-heatmaps img")).to_have_count(1)

    fill(page, "p2p-target", "a lion sitting on a table")  # only the target changes: inversion reused
    run_and_expect(page, "p2p", "Inversion reused")

    other = open_page(browser, server)  # a second browser session: its own cache and outputs
    try:
        open_tab(other, "Edit a photo (P2P)")
        upload(other, "p2p", photo)
        fill(other, "p2p-source", "a cat sitting on a table")
        fill(other, "p2p-target", "a dog sitting on a table")
        other.locator("#p2p-inversion").get_by_text("negative-prompt", exact=True).click()
        run_and_expect(other, "p2p", "Inversion computed")
        expect(other.locator("#gen-result img")).to_have_count(0)
    finally:
        other.context.close()
    run_and_expect(page, "p2p", "Done")
    expect(page.locator("#p2p-status")).to_contain_text("Inversion reused")


@needs_pnp
def test_photo_pnp(page, photo):
    from playwright.sync_api import expect

    open_tab(page, "Edit a photo (PnP)")
    upload(page, "pnp", photo)
    run_and_expect(page, "pnp", "target prompt")  # empty target prompt
    fill(page, "pnp-target", "a watercolor painting of a cat")
    run_and_expect(page, "pnp", "Done")
    expect(page.locator("#pnp-result img")).to_have_count(2)
    expect(page.locator("#pnp-files a[href$='target_0.png']")).to_have_count(1)


def test_missing_model_is_explained_in_the_page(tmp_path):
    from apps.ui import build_app

    app = build_app(str(tmp_path / "no-model"), device="cpu")
    info = next(b for b in app.blocks.values() if getattr(b, "elem_id", None) == "model-info")
    assert "No model loaded" in info.value and "Point editkit at a Stable Diffusion model" in info.value
