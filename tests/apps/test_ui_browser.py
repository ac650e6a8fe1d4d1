"""The Gradio editing UI on a tiny offline model, driven in headless Chromium with Playwright.

The app runs in this process (a server thread on a free localhost port), built once for the file. The browser
and its profile are shared (tests/apps/conftest.py); each test opens the app afresh in this file's tab, which
makes it a new Gradio session (the page draws a new session hash on every load), so no test sees another's
inputs, results or inversion cache. Skipped only when no chromium binary is installed (``scripts/test.sh``
installs it).
"""

from __future__ import annotations

import importlib.util
import re
import socket
import struct
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.browser

TIMEOUT_MS = 120_000  # one edit is a few seconds on the tiny model; 2 shared CPU cores can be slow
EXPECT_MS = 5_000  # how long Playwright's expect waits by default: for what the page answers without an edit
needs_inversion = pytest.mark.skipif(importlib.util.find_spec("editkit.inversion") is None,
                                     reason="editkit.inversion not available")
needs_pnp = pytest.mark.skipif(importlib.util.find_spec("editkit.pnp") is None, reason="editkit.pnp not available")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(chromium, tiny_model_dirs):
    from apps.ui import build_app

    app = build_app(str(tiny_model_dirs["sd1"]), device="cpu", default_steps=2)
    assert app.editkit_model.pipe is not None, app.editkit_model.error
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/", app
    app.close()


@pytest.fixture(scope="module")
def server(served):
    return served[0]


def new_tab(profile):
    tab = profile.new_page()
    tab.set_default_timeout(TIMEOUT_MS)
    return tab


def wait_in_page(page, predicate: str, arg=None, timeout: float = TIMEOUT_MS):
    """Wait until the JavaScript ``predicate(arg)`` holds, checked by the page itself at every animation frame,
    and say whether it did (the caller's assertion then says what the page shows). Playwright's own waits
    (expect, wait_for_selector) poll from the driver with a backoff that reaches 0.5 s once a wait has lasted
    0.3 s: measured here, the status of an edit was seen 0.2 s after it changed on average (up to 0.46 s), and
    0.04 s after with this wait; the tests wait so for about thirty edits, uploads and page loads."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(predicate, arg=arg, timeout=timeout)
        return True
    except PlaywrightTimeout:
        return False


HAS_TEXT = "([sel, text]) => (document.querySelector(sel)?.textContent ?? '').replace(/\\s+/g, ' ').includes(text)"
IS_SHOWN = "sel => !!document.querySelector(sel)?.checkVisibility()"
# While a run is going, Gradio keeps the previous status text in the element, under its status tracker (shown:
# the tracker's class is without "hide"), so the text alone cannot tell this run's status from the last one.
# Watched from before the click, the run has ended once a tracker in the element was busy and none is now.
WATCH_RUN = """sel => {
  const el = document.querySelector(sel), watch = {busy: false};
  const busy = t => !t.classList.contains('hide');
  const trackers = () => [...el.querySelectorAll('[data-testid=status-tracker]')];
  new MutationObserver(records => {
    for (const r of records)
      if (r.type === 'attributes' && r.target.matches('[data-testid=status-tracker]')
          && (!(r.oldValue || '').split(/\\s+/).includes('hide') || busy(r.target)))
        watch.busy = true;
    if (trackers().some(busy))
      watch.busy = true;
  }).observe(el, {subtree: true, childList: true, attributes: true, attributeFilter: ['class'],
                  attributeOldValue: true});
  (window.__runWatch = window.__runWatch || {})[sel] = watch;
}"""
RUN_ENDED = """([sel, text]) => {
  const el = document.querySelector(sel);
  const idle = [...el.querySelectorAll('[data-testid=status-tracker]')].every(t => t.classList.contains('hide'));
  return !!window.__runWatch?.[sel]?.busy && idle && el.textContent.replace(/\\s+/g, ' ').includes(text);
}"""


def expect_text(page, selector: str, text: str, timeout: float = EXPECT_MS):
    """The element's text comes to contain ``text`` within ``timeout`` ms (waited for in the page, then asserted
    by Playwright)."""
    from playwright.sync_api import expect

    wait_in_page(page, HAS_TEXT, [selector, text], timeout)
    expect(page.locator(selector)).to_contain_text(text, timeout=1_000)


def load_app(tab, server, ready: str = "#gen-run"):
    """Load the app in ``tab``: a new Gradio session, every input at its default."""
    tab.goto(server)
    wait_in_page(tab, IS_SHOWN, ready)
    tab.wait_for_selector(ready)
    return tab


def open_page(profile, server):
    """The app in a tab of its own (closed by the caller)."""
    return load_app(new_tab(profile), server)


@pytest.fixture(scope="module")
def tab(browser_profile, served):
    """This file's tab, opened again if a test closed it."""
    tabs = []

    def current():
        if not tabs or tabs[-1].is_closed():
            tabs.append(new_tab(browser_profile))
        return tabs[-1]

    yield current
    if tabs and not tabs[-1].is_closed():
        tabs[-1].close()


@pytest.fixture
def page(tab, server):
    """The app loaded afresh in this file's tab (a new session; loading it again in a warm tab is cheaper
    than a new tab or a new browser profile)."""
    return load_app(tab(), server)


def make_photo(path, w=56, h=40):
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 4, y * 6, (x + y) * 2], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(path)
    return path


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    return make_photo(tmp_path_factory.mktemp("photos") / "photo.png")


def huge_png(path, side=16_000):
    """A valid 16k x 16k grayscale PNG (268 megapixels) that is small on disk (250 kB). Every row is a zero
    filter byte and zero pixels, so the image data is one compressed run of 500 rows written 32 times: the run
    ends in a full flush (after it the compressor refers to nothing it saw before, so each copy stands alone),
    and the stream's Adler-32 of n zero bytes is (n mod 65521) << 16 | 1. Compressing all 16k rows took 0.66 s
    of CPU here, this 0.05 s."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = 500
    assert side % rows == 0
    block = b"\x00" * ((side + 1) * rows)
    comp = zlib.compressobj(9)
    first = comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH)  # starts with the zlib header
    again = comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH)
    last = comp.flush()[:-4]  # the final (empty) block, without the checksum of the two runs seen
    n = (side + 1) * side
    data = first + again * (side // rows - 1) + last + struct.pack(">I", (n % 65521) << 16 | 1)
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def fill(page, elem_id: str, text: str):
    page.locator(f"#{elem_id} textarea, #{elem_id} input").first.fill(text)


def set_number(page, elem_id: str, value):
    """Type a number into a slider's box and make sure the slider's value (what a run sends) is the number.
    A slider inside an accordion is mounted when the accordion opens, and one typed into while it was still
    mounting kept its default (seen once in CI: 40 was typed, the server received the default 2). The
    slider's range input shows the component's value, not the text typed, so wait for it to show the number,
    and type again if it does not."""
    from playwright.sync_api import expect

    box = page.locator(f"#{elem_id} input[type=number]")
    track = page.locator(f"#{elem_id} input[type=range]")
    box.wait_for(state="visible")
    for _ in range(5):
        box.fill(str(value))
        box.press("Enter")
        box.blur()
        try:
            expect(track).to_have_value(str(value), timeout=2_000)
            expect(box).to_have_value(str(value), timeout=2_000)
            return
        except AssertionError:
            continue
    raise AssertionError(f"#{elem_id} did not keep the value {value} (shows {box.input_value()!r}, "
                         f"slider at {track.input_value()!r})")


def run_and_expect(page, prefix: str, text: str):
    """Run the tab and wait for this run's status (not the one left by the run before) to contain ``text``."""
    from playwright.sync_api import expect

    status = f"#{prefix}-status"
    page.evaluate(WATCH_RUN, status)
    page.click(f"#{prefix}-run")
    ended = wait_in_page(page, RUN_ENDED, [status, text], TIMEOUT_MS)
    expect(page.locator(status)).to_contain_text(text, timeout=1_000)
    assert ended, f"{status} shows {text!r} from the run before: this run did not end in {TIMEOUT_MS // 1000} s"


def open_tab(page, name: str):
    page.get_by_role("tab", name=name).click()


def upload(page, prefix: str, path, note: str = "px"):
    page.locator(f"#{prefix}-image input[type=file]").set_input_files(str(path))
    expect_text(page, f"#{prefix}-photo-note", note)


def test_model_and_device_are_shown(page):
    info = page.locator("#model-info").inner_text()
    assert "StableDiffusionPipeline" in info and "cpu" in info and "float32" in info


def test_generate_and_edit_then_bad_input_keeps_the_result(page):
    from playwright.sync_api import expect

    fill(page, "gen-source", "a cat riding a bicycle")
    fill(page, "gen-target", "a dog riding a bicycle")
    fill(page, "gen-blend-src", "cat")
    fill(page, "gen-blend-tgt", "dog")
    run_and_expect(page, "gen", "Done")
    expect(page.locator("#gen-result img")).to_have_count(2)  # source and edited, side by side
    link = page.locator("#gen-files a[href$='target_0.png']")
    expect(link).to_have_count(1)
    download = page.request.get(link.get_attribute("href"))  # the edited image is downloadable
    assert download.ok and download.body()[:8] == b"\x89PNG\r\n\x1a\n"
    expect(page.locator("#gen-files a[href$='heatmaps_source.png']")).to_have_count(1)  # the full grid
    sources = page.locator("#gen-result img").evaluate_all("els => els.map(e => e.src)")

    fill(page, "gen-target", "a big dog riding a bicycle")  # word swap with one word more
    run_and_expect(page, "gen", "same number of words")
    # the failed edit leaves the previous images in place
    expect(page.locator("#gen-result img")).to_have_count(2)
    assert page.locator("#gen-result img").evaluate_all("els => els.map(e => e.src)") == sources

    fill(page, "gen-target", "a dog riding a bicycle")
    fill(page, "gen-blend-tgt", "zebra")  # not in the target prompt
    run_and_expect(page, "gen", "zebra")
    expect(page.locator("#gen-result img")).to_have_count(2)

    fill(page, "gen-blend-tgt", "dog")
    page.locator("#gen-kind").get_by_text("refine", exact=True).click()
    run_and_expect(page, "gen", "Done")  # the app keeps working after bad input
    expect(page.locator("#gen-result img")).to_have_count(2)


def test_token_heatmap_is_shown_large_for_the_chosen_token(page):
    from playwright.sync_api import expect

    fill(page, "gen-source", "a cat riding a bicycle")
    fill(page, "gen-target", "a dog riding a bicycle")
    run_and_expect(page, "gen", "Done")
    image = page.locator("#gen-token-map img")
    expect(image).to_have_count(1)
    before = image.get_attribute("src")
    # the <img> is laid out at a placeholder size until its picture loads; the size is asserted (and shown) below
    wait_in_page(page, "() => document.querySelector('#gen-token-map img').getBoundingClientRect().width >= 300",
                 None, 15_000)
    box = image.bounding_box()
    assert box["width"] >= 300 and box["height"] >= 300, box  # readable in the page, not a 6 px label
    page.locator("#gen-map-token input").click()
    page.get_by_role("option", name="5: bicycle").click()  # the target's tokens: start, a, dog, riding, a, ...
    wait_in_page(page, "src => document.querySelector('#gen-token-map img')?.getAttribute('src') !== src", before,
                 EXPECT_MS)
    expect(image).not_to_have_attribute("src", before)
    page.locator("#gen-map-prompt input").click()
    page.get_by_role("option", name="source").click()
    wait_in_page(page, "() => document.querySelector('#gen-map-token input')?.value === '1: a'", None, EXPECT_MS)
    expect(page.locator("#gen-map-token input")).to_have_value("1: a")


def test_two_targets_with_their_own_blend_words(page):
    from playwright.sync_api import expect

    fill(page, "gen-source", "a cat riding a bicycle")
    fill(page, "gen-target", "a dog riding a bicycle\na lion riding a bicycle")
    fill(page, "gen-blend-src", "cat")
    fill(page, "gen-blend-tgt", "dog\nlion")  # one line per target
    page.get_by_text("Re-weight words (attention strength)").first.click()
    fill(page, "gen-rw-word-0", "lion")
    set_number(page, "gen-rw-strength-0", 2)
    page.locator("#gen-rw-target-0 input").click()
    page.get_by_role("option", name="target 2").click()
    run_and_expect(page, "gen", "Done")
    expect(page.locator("#gen-result img")).to_have_count(3)


def progress_steps(page) -> list[tuple[int, int]]:
    texts = page.locator(".progress-level-inner").all_inner_texts()
    return [(int(m[1]), int(m[2])) for t in texts if (m := re.search(r"sampling: step (\d+) of (\d+)", t))]


def test_progress_advances_and_cancel_frees_the_lock_within_a_step(page, served):
    app = served[1]
    lock = app.editkit_model.lock
    page.locator("#gen-run").scroll_into_view_if_needed()
    page.get_by_text("Sampling").first.click()
    # the slider's most steps: a run of 40 steps took 1.8 s on the tiny model here, and once in 18 tries on
    # a busy machine it ended before the page's Cancel reached the server (the status said Done, not
    # Cancelled); cancelled after a few steps, a longer run costs nothing
    set_number(page, "gen-steps", 100)
    page.click("#gen-run")
    seen, stamps = [], []
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while len(seen) < 3 and time.monotonic() < deadline:  # three distinct steps reported in the page
        for step, total in progress_steps(page):
            assert total == 100
            if step not in seen:
                seen.append(step)
                stamps.append(time.monotonic())
        page.wait_for_timeout(50)
    assert len(seen) >= 3 and seen == sorted(seen), seen  # the progress value advances
    step_time = (stamps[-1] - stamps[0]) / (seen[-1] - seen[0])
    assert lock.locked()
    cancelled_at = time.monotonic()
    page.click("#gen-cancel")
    while lock.locked() and time.monotonic() - cancelled_at < 60:
        time.sleep(0.02)
    freed_after = time.monotonic() - cancelled_at
    # freed at the next denoising step (plus the page round trip), not after the remaining ~95 steps
    assert not lock.locked() and freed_after < 2 * step_time + 2.0, (freed_after, step_time)
    expect_text(page, "#gen-status", "Cancelled")
    set_number(page, "gen-steps", 2)
    run_and_expect(page, "gen", "Done")  # the model is free for the next run


@needs_inversion
def test_unreadable_and_oversized_uploads_are_named(page, tmp_path):
    open_tab(page, "Edit a photo (P2P)")
    text = tmp_path / "notes.png"
    text.write_text("this is a text file, not a picture")
    upload(page, "p2p", text, "not an image file")
    fill(page, "p2p-source", "a cat sitting on a table")
    fill(page, "p2p-target", "a dog sitting on a table")
    run_and_expect(page, "p2p", "not an image file")
    page.locator("#p2p-image").get_by_role("button", name="Clear").click()  # a filled box shows the file, not the input
    upload(page, "p2p", huge_png(tmp_path / "huge.png"), "too large")
    expect_text(page, "#p2p-photo-note", "megapixels")
    run_and_expect(page, "p2p", "megapixels")


@needs_inversion
def test_photo_p2p_reuses_inversion_and_sessions_are_separate(browser_profile, server, page, photo):
    from playwright.sync_api import expect

    open_tab(page, "Edit a photo (P2P)")
    fill(page, "p2p-source", "a cat sitting on a table")
    fill(page, "p2p-target", "a dog sitting on a table")
    run_and_expect(page, "p2p", "Upload a photo")  # no image yet

    upload(page, "p2p", photo, "centre-cropped")  # 56x40: the note says it will be cropped
    page.locator("#p2p-keep-aspect input").check()
    expect_text(page, "#p2p-photo-note", "aspect ratio kept")
    page.locator("#p2p-inversion").get_by_text("negative-prompt", exact=True).click()
    run_and_expect(page, "p2p", "Inversion computed")
    expect(page.locator("#p2p-result img")).to_have_count(2)
    expect(page.locator("#p2p-token-map img")).to_have_count(1)

    fill(page, "p2p-target", "a lion sitting on a table")  # only the target changes: inversion reused
    run_and_expect(page, "p2p", "Inversion reused")

    # a second session, in a second tab of the same browser: its own cache and outputs (nothing the two tabs
    # share, cookies or storage, may join them)
    other = open_page(browser_profile, server)
    try:
        open_tab(other, "Edit a photo (P2P)")
        upload(other, "p2p", photo)
        fill(other, "p2p-source", "a cat sitting on a table")
        fill(other, "p2p-target", "a dog sitting on a table")
        other.locator("#p2p-keep-aspect input").check()
        other.locator("#p2p-inversion").get_by_text("negative-prompt", exact=True).click()
        run_and_expect(other, "p2p", "Inversion computed")
        expect(other.locator("#gen-result img")).to_have_count(0)
    finally:
        other.close()
    run_and_expect(page, "p2p", "Done")
    expect_text(page, "#p2p-status", "Inversion reused")


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


def test_no_download_folder_is_left_after_the_tab_closes(page):
    """Last of the tests in this file's tab (it closes the tab; a test after it would open a new one)."""
    root = Path(tempfile.gettempdir())
    before = set(root.glob("editkit-ui-*"))
    try:
        run_and_expect(page, "gen", "Done")
        created = set(root.glob("editkit-ui-*")) - before
        assert len(created) == 1  # this session's download folder
    finally:
        page.close()  # the tab closes
    deadline = time.monotonic() + 60
    while any(p.exists() for p in created) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(p.exists() for p in created)


def test_missing_model_is_explained_in_the_page(tmp_path):
    from apps.ui import build_app

    app = build_app(str(tmp_path / "no-model"), device="cpu")
    info = next(b for b in app.blocks.values() if getattr(b, "elem_id", None) == "model-info")
    assert "No model loaded" in info.value and "Point editkit at a Stable Diffusion model" in info.value
