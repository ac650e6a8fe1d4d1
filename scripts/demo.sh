#!/usr/bin/env bash
# The main job: train 3D Gaussians on the shipped demo scene (assets/demo) and write the results to
# outputs/demo (PLY, held-out renders beside ground truth, side-by-side images, a contact sheet, metrics.json).
#
#   bash scripts/demo.sh [splat train options, e.g. --steps 300 --out outputs/demo2]
#
# The first run builds the project's virtual environment .venv/ in the repository root and installs the
# project into it (see scripts/setup_env.sh: torch is kept when present, otherwise a CPU build is chosen on
# a machine without an NVIDIA GPU); later runs reuse it. Measured on 2 CPU cores: see benchmarks/RESULTS.md, "Set-up, demo and test suite times".
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
setup_env ""

summary="$(mktemp)"
trap 'rm -f "$summary"' EXIT
"$PY" -m splat.cli train assets/demo --out outputs/demo "$@" | tee "$summary"
# Where everything went, read from the summary the trainer printed (options may have moved the output).
"$PY" - "$summary" <<'PYEOF'
import json, sys
from pathlib import Path

text = Path(sys.argv[1]).read_text()
summary = json.loads(text[text.index("{"):])
sheet = Path(summary["out"]) / "renders" / f"step_{summary['steps']:06d}" / "contact_sheet.png"
print(f"\nGaussians (PLY): {summary['ply']}")
print(f"metrics:         {Path(summary['out']) / 'metrics.json'}")
if sheet.is_file():
    print(f"contact sheet:   {sheet}  (held-out views, ground truth left, render right)")
PYEOF
