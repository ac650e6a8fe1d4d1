#!/usr/bin/env bash
# Runs the linter and the whole test suite (CI runs this through .ci/run).
#
#   bash scripts/test.sh [pytest options, e.g. -x or tests/splat]
#
# The first run builds the project's virtual environment .venv/ in the repository root and installs the
# project with its test extras into it (see scripts/setup_env.sh: torch is kept when present, otherwise a
# CPU build is chosen on a machine without an NVIDIA GPU); later runs reuse it. As root on Debian / Ubuntu it
# also installs the chromium package for the browser test of the UI; without chromium that test is skipped
# (pytest says so). Measured on 2 CPU cores: see benchmarks/RESULTS.md, "Set-up, demo and test suite times".
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
setup_env "test"

# Headless Chromium for the browser test of the Gradio UI (Debian's package; Playwright drives it).
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "warning: could not install chromium; the browser test will be skipped" >&2
  else
    echo "note: chromium is not installed (needs root: sudo apt install chromium); the browser test will be skipped" >&2
  fi
fi
"$PY" -m ruff check editkit splat apps safeio tests benchmarks scripts
# pytest exits 5 when it collected no test: that is a failure here too (set -e), never a silent pass.
"$PY" -m pytest -q "$@"
