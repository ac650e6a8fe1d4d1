#!/usr/bin/env bash
# Installs the project on a fresh CPU machine and trains the shipped demo scene (a few minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q torch==2.13.0 -e .
splat train assets/demo --out outputs/demo "$@"
