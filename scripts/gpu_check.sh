#!/usr/bin/env bash
# The first command to run on a machine with an NVIDIA GPU: installs the GPU path, runs the GPU tests and
# the full-size benchmarks, one stage at a time (each stage is sized to finish within 10 minutes on one
# H100 / H200), and appends every figure to one results file.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: scripts/gpu_check.sh STAGE [STAGE ...]
       scripts/gpu_check.sh all

Stages (run in the order given; each finishes within 10 minutes on one H100 / H200):
  install        pip install the project with the CUDA torch already on the machine (never replaces
                 torch), plus fused-ssim (CUDA SSIM kernel) when it can be built; prints versions
  tests          pytest -m gpu: the GPU-marked tests (gsplat vs the PyTorch reference renderer, forward
                 and backward incl. means2d gradients; MCMC relocation vs gsplat's CUDA kernel; ...)
  splat-cup      benchmarks/bench_splat.py --full on ../shared/scenes/cup: 30k steps at standard
                 resolution; PSNR, SSIM, LPIPS (when its weights are on disk), wall time, peak GPU
                 memory, number of Gaussians, SfM-initialisation time, checkpoint bytes per Gaussian
  splat-beercan  the same on ../shared/scenes/beercan
  editkit        benchmarks/bench_p2p.py --full and benchmarks/bench_real_edit.py --full (the full SD 1.5
                 architecture with random weights: no download needed)
  scene-edit     benchmarks/bench_scene_edit.py --full --configs idu: `splat edit` on ../shared/scenes/cup
                 with a full-size SD-1.5-shaped UNet (random weights), fp16: time per edited view, whole
                 edit, inversion-cache saving, peak GPU memory
  all            every stage above, in this order

Environment:
  PYTHON              interpreter to use (default: python3)
  GPU_CHECK_RESULTS   results file, appended to (default: benchmarks/gpu_check_results.txt): each stage
                      starts with a {"stage": ...} JSON line (date, commit, GPU); benchmark rows are JSON
                      lines; the test stage adds pytest's summary line

Without a CUDA device the script stops with "no CUDA device" and exit code 2 (after --help, before
anything is installed or run).
EOF
}

STAGES=(install tests splat-cup splat-beercan editkit scene-edit)
if [ $# -eq 0 ]; then
  usage >&2
  exit 2
fi
case "$1" in -h | --help) usage; exit 0 ;; esac

requested=()
for arg in "$@"; do
  if [ "$arg" = all ]; then
    requested+=("${STAGES[@]}")
  elif [[ " ${STAGES[*]} " == *" $arg "* ]]; then
    requested+=("$arg")
  else
    echo "gpu_check: unknown stage '$arg'; choose from: ${STAGES[*]} all" >&2
    exit 2
  fi
done

cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
RESULTS="${GPU_CHECK_RESULTS:-benchmarks/gpu_check_results.txt}"

# -- refuse without a GPU (nothing installed or written yet) ----------------------------------------------
if ! "$PY" - <<'EOF' 2>/dev/null
import sys
try:
    import torch
except ImportError:
    sys.exit(1)
sys.exit(0 if torch.cuda.is_available() else 1)
EOF
then
  if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_check: no CUDA device (torch.cuda.is_available() is false and nvidia-smi finds no GPU);" \
      "run this on a machine with an NVIDIA GPU" >&2
    exit 2
  fi
  echo "gpu_check: nvidia-smi sees a GPU but this Python's torch has no CUDA; install a CUDA build of torch" \
    "first (https://pytorch.org/get-started/locally/), then run the install stage" >&2
  exit 2
fi

header() {  # one JSON line naming the stage, date, commit and GPU
  "$PY" - "$1" >>"$RESULTS" <<'EOF'
import datetime, json, subprocess, sys
import torch
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
print(json.dumps({"stage": sys.argv[1], "utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "commit": commit or None, "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}))
EOF
}

run_stage() {
  local stage="$1"
  echo "== gpu_check: $stage" >&2
  mkdir -p "$(dirname "$RESULTS")"
  case "$stage" in
    install)
      # torch is already the CUDA build: pin it so pip cannot swap it, then the project and its test tools
      local torch_pin
      torch_pin="torch==$("$PY" -c 'import torch; print(torch.__version__)')"
      "$PY" -m pip install -q "$torch_pin" -e ".[test]"
      "$PY" -m pip install -q --no-build-isolation "git+https://github.com/rahul-goel/fused-ssim" "$torch_pin" \
        || echo "gpu_check: fused-ssim could not be built; SSIM falls back to pytorch-msssim" >&2
      header install
      "$PY" - >>"$RESULTS" <<'EOF'
import json
import gsplat, torch
try:
    import fused_ssim  # noqa: F401
    fused = True
except ImportError:
    fused = False
print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda, "gsplat": gsplat.__version__,
                  "fused_ssim": fused, "gpu": torch.cuda.get_device_name(0)}))
EOF
      ;;
    tests)
      header tests
      local log rc=0
      log="$(mktemp)"
      "$PY" -m pytest -q -rs -m gpu -p no:cacheprovider tests >"$log" 2>&1 || rc=$?
      tail -n 30 "$log" >&2
      tail -n 1 "$log" >>"$RESULTS"
      rm -f "$log"
      [ "$rc" -eq 0 ] || { echo "gpu_check: GPU tests failed (exit $rc)" >&2; exit "$rc"; }
      ;;
    splat-cup | splat-beercan)
      header "$stage"
      "$PY" benchmarks/bench_splat.py --full --no-brute-force --scenes "${stage#splat-}" --results "$RESULTS"
      ;;
    editkit)
      header editkit
      "$PY" benchmarks/bench_p2p.py --full | tee -a "$RESULTS"
      "$PY" benchmarks/bench_real_edit.py --full | tee -a "$RESULTS"
      ;;
    scene-edit)
      header scene-edit
      "$PY" benchmarks/bench_scene_edit.py --full --configs idu | tee -a "$RESULTS"
      ;;
  esac
}

for stage in "${requested[@]}"; do
  run_stage "$stage"
done
echo "gpu_check: results appended to $RESULTS" >&2
