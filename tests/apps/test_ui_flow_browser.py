"""The Gradio UI on a tiny offline SD3 pipeline, driven in headless Chromium: the flow family's tabs, one
FlowEdit edit of an uploaded photo, live FlowEdit progress and Cancel (as tests/apps/test_ui_browser.py does for
Stable Diffusion)."""

from __future__ import annotations

import re
import time

import pytest

from tests.apps.test_ui_browser import (
    TIMEOUT_MS,
    expect_text,
    fill,
    free_port,
    load_app,
    make_photo,
    new_tab,
    run_and_expect,
    set_number,
    upload,
)

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def served(chromium, tmp_path_factory):
    from apps.ui import build_app
    from editkit.testing import save_tiny_pipeline

    model = save_tiny_pipeline(tmp_path_factory.mktemp("tiny-sd3-ui") / "sd3", "sd3")
    app = build_app(str(model), device="cpu", default_steps=2)
    assert app.editkit_model.pipe is not None, app.editkit_model.error
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/", app
    app.close()


@pytest.fixture(scope="module")
def page(served, browser_profile):
    """The app in a tab of the shared browser (tests/apps/conftest.py), one session for this file's tests."""
    page = load_app(new_tab(browser_profile), served[0], ready="#flow-run")
    yield page
    page.close()


def flowedit_steps(page) -> list[tuple[int, int]]:
    texts = page.locator(".progress-level-inner").all_inner_texts()
    return [(int(m[1]), int(m[2])) for t in texts if (m := re.search(r"FlowEdit: step (\d+) of (\d+)", t))]


def test_flow_model_offers_its_methods_only(page):
    info = page.locator("#model-info").inner_text()
    assert "StableDiffusion3Pipeline" in info and "SD3" in info and "float32" in info
    tabs = page.get_by_role("tab").all_inner_texts()
    assert any("FlowEdit" in t for t in tabs) and not any("P2P" in t or "PnP" in t for t in tabs), tabs


def test_flowedit_edit_of_a_photo(page, tmp_path):
    """Mutation caught: the flow tabs' run not wired to the engine (no images), or the UNet tabs built for an
    SD3 model (no #flow-run)."""
    from playwright.sync_api import expect

    upload(page, "flow", make_photo(tmp_path / "photo.png"), note="edited at")
    fill(page, "flow-source", "a photo of a cat")
    fill(page, "flow-target", "a photo of a dog")
    run_and_expect(page, "flow", "Done")
    expect(page.locator("#flow-result img")).to_have_count(2)  # source and edited
    link = page.locator("#flow-files a[href$='target_0.png']")
    expect(link).to_have_count(1)
    download = page.request.get(link.get_attribute("href"))
    assert download.ok and download.body()[:8] == b"\x89PNG\r\n\x1a\n"


def test_flowedit_progress_advances_and_cancel_frees_the_model(page, served):
    lock = served[1].editkit_model.lock
    page.locator("#flow-run").scroll_into_view_if_needed()
    set_number(page, "flow-steps", 100)  # 66 FlowEdit steps of 4 noise draws: long enough to cancel
    set_number(page, "flow-n-avg", 4)
    page.click("#flow-run")
    seen = []
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while len(seen) < 2 and time.monotonic() < deadline:
        for step, _ in flowedit_steps(page):
            if step not in seen:
                seen.append(step)
        page.wait_for_timeout(50)
    assert len(seen) >= 2 and seen == sorted(seen), seen
    assert lock.locked(), "the run ended before it could be cancelled"
    page.click("#flow-cancel")
    expect_text(page, "#flow-status", "Cancelled")
    assert not lock.locked()
    set_number(page, "flow-steps", 2)
    set_number(page, "flow-n-avg", 1)
    run_and_expect(page, "flow", "Done")  # the model is free for the next run
