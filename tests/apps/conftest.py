"""One headless Chromium and one browser profile for the UI's browser tests (test_ui_browser.py and
test_ui_flow_browser.py): starting the Playwright driver and the browser is paid once per run, not once per file.

Debian's chromium is driven through Playwright's ``executable_path`` (Playwright's own browser download is not
needed); the tests that ask for it are skipped only when no chromium binary is installed (``scripts/test.sh``
installs it).
"""

from __future__ import annotations

import shutil

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="session")
def chromium(playwright_driver):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (scripts/test.sh installs Debian's chromium)")
    browser = playwright_driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@pytest.fixture(scope="session")
def browser_profile(chromium):
    """A browser profile whose tabs the tests open the app in. A Gradio session is one page load (its
    ``session_hash`` is drawn by the page), so every load of the app, in a new tab or the same one, is a new
    session with its own ``gr.State``; a tab of a warm profile loads the app in a fraction of the time a new
    profile takes (its renderer and cache are already there)."""
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    yield context
    context.close()
