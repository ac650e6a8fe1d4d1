"""One headless Chromium and one browser profile for the UI's browser tests (test_ui_browser.py and
test_ui_flow_browser.py): starting the Playwright driver and the browser is paid once, not once per file, and
the browser is closed once the tests of tests/apps are done.

Debian's chromium is driven through Playwright's ``executable_path`` (Playwright's own browser download is not
needed); the tests that ask for it are skipped only when no chromium binary is installed (``scripts/test.sh``
installs it).
"""

from __future__ import annotations

import pytest

from tests.helpers import headless_chromium


@pytest.fixture(scope="package")
def chromium(playwright_driver):
    with headless_chromium(playwright_driver, "--disable-gpu") as browser:
        yield browser


@pytest.fixture(scope="package")
def browser_profile(chromium):
    """A browser profile whose tabs the tests open the app in. A Gradio session is one page load (its
    ``session_hash`` is drawn by the page), so every load of the app, in a new tab or the same one, is a new
    session with its own ``gr.State``. Measured on the 2-core machine (busy): loading the app again in an open
    tab took 0.6-0.9 s, in a new tab of this profile 1.4-1.7 s, in a new profile 2.2-2.7 s (its renderer and
    cache are cold)."""
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    yield context
    context.close()
