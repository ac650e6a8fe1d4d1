#!/usr/bin/env bash
# Installs what the test suite needs on a fresh CPU machine (Python 3.11, registries only) and runs it.
# The CPU build of torch is pinned first so that no CUDA wheels are pulled onto a machine without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q torch==2.13.0 -e ".[test]"
# Headless Chromium for the browser test of the Gradio UI (Debian's package; Playwright drives it).
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "warning: could not install chromium; the browser test will be skipped" >&2
fi
python3 -m ruff check editkit splat apps safeio tests benchmarks
python3 -m pytest -q "$@"
