#!/usr/bin/env bash
# The project's checks and headline figures on a lent NVIDIA GPU machine, offline: it installs from the
# bundle that scripts/gpu_bundle.py builds (the machine reaches no package registry), runs the GPU-marked
# tests and the benchmarks, and writes every figure as a JSON line as it goes, so a run cut short still
# returns what it finished. docs/gpu.md has the plan: which call runs what, and the exact device command.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: scripts/gpu_check.sh quick [--dry-run]
       scripts/gpu_check.sh STAGE [STAGE ...] [--dry-run]

Plan:
  quick          one device call under 8 minutes: install, then (while gsplat's CUDA extension builds on
                 every core) the editkit and flow-model figures, then the GPU tests, gsplat vs the reference renderer, rank
                 agreement, and splat on cup at 7k steps; each stage is cut at the time left (QUICK_BUDGET_S, default 450 s)

Stages (each sized for one call of at most 10 minutes; run in the order given):
  install        install the bundle with pip --no-index into GPU_SITE (never touching the image's torch);
                 build gsplat's CUDA extension from its source once (MAX_JOBS = every core, this GPU's
                 architecture only) into a wheel kept in the results folder, unless the bundle has one
  tests          pytest -m gpu on the test files that hold GPU-marked tests
  render         benchmarks/bench_render.py --full: gsplat vs the PyTorch reference renderer (time, agreement)
  editkit        benchmarks/bench_p2p.py --full: a P2P edit against plain generation, full-size SD-1.5-shaped
                 UNet (random weights), fp16, 512 px, 50 steps
  ranks          benchmarks/check_rank_agreement.py --device cuda: gsplat's densification-statistics update
                 run twice on the same inputs (same bits?) and, with two GPUs, a 2-rank NCCL run's parameter
                 checksums (equal?)
  splat-cup-7k   benchmarks/bench_splat.py --full --steps 7000 on cup: the 30k schedule scored at 7k steps
                 (held-out PSNR / SSIM, wall time, peak GPU memory, Gaussians)
  splat-cup      the same to 30k steps
  splat-beercan  30k steps on beercan (needs a bundle built with that scene: see docs/gpu.md)
  splat-quality  benchmarks/bench_splat.py --full --variants ... --steps 30000: the default preset against each
                 quality option (absgrad, antialiased, bilateral_grid, depth_loss) and the quality preset at
                 standard resolution (held-out PSNR / SSIM / LPIPS, Gaussians, wall time); 18 runs of 30k
                 steps in all, so one call runs the scenes in SPLAT_QUALITY_SCENES (default: cup beercan demo)
                 times the variants in SPLAT_QUALITY_VARIANTS (default: all six), cut at 600 s
  flow-quick     benchmarks/bench_flow.py --full --resolution 512 --steps 8: FlowEdit and an inversion edit
                 against plain sampling with SD3.5-medium- and FLUX.1-shaped random transformers (bf16),
                 calls, time, peak memory (the quick plan's flow figure)
  flow           the same at 1024 x 1024 with each method's reference step counts
  real-edit      benchmarks/bench_real_edit.py --full (inversions + edits, full-size UNet)
  scene-edit     benchmarks/bench_scene_edit.py --full --configs idu (splat edit on cup, full-size UNet)
  all            every stage above but the quick plan, in this order

Options:
  --dry-run      print the device `run` command and `carry` list for what is asked, check that the bundle is
                 there and that command and carry fit the device's limits (2,000 characters; 64 MiB with the
                 working tree); runs nothing, needs no GPU

Environment:
  PYTHON           interpreter (default: python3, the device image's, with its CUDA torch)
  GPU_BUNDLE       the bundle folder (default: .gpu_bundle, built by python scripts/gpu_bundle.py)
  GPU_SITE         where the bundle is installed (default: /tmp/gpu_check_site)
  GPU_CHECK_OUT    results folder (default: $OUT on the device machine, else benchmarks/gpu_check):
                   figures.jsonl (a {"stage": ...} line with date, commit and GPU before each stage's rows),
                   log.txt, pytest.txt, gsplat_build.log and the gsplat wheel built here
  GPU_CHECK_COMMIT the commit the tree was copied from (the device copy has no .git; --dry-run prints it)
  QUICK_BUDGET_S   the quick plan's time budget in seconds (default 450)
  SPLAT_QUALITY_SCENES, SPLAT_QUALITY_VARIANTS
                   what splat-quality runs (space-separated; e.g. "cup" and "base quality"); --dry-run puts
                   them in the device command and checks the bundle holds those scenes (demo is in the tree)

Without a CUDA device the script stops with "no CUDA device" and exit code 2 (after --help and --dry-run,
before anything is installed or run).
EOF
}

STAGES=(install tests render ranks editkit flow-quick splat-cup-7k flow splat-cup splat-beercan splat-quality real-edit
  scene-edit)
QUICK=(install editkit flow-quick tests render ranks splat-cup-7k)
if [ $# -eq 0 ]; then
  usage >&2
  exit 2
fi
case "$1" in -h | --help) usage; exit 0 ;; esac

dry_run=0
requested=()
for arg in "$@"; do
  case "$arg" in
    --dry-run) dry_run=1 ;;
    quick) requested+=(quick) ;;
    all) requested+=("${STAGES[@]}") ;;
    *)
      if [[ " ${STAGES[*]} " == *" $arg "* ]]; then
        requested+=("$arg")
      else
        echo "gpu_check: unknown stage '$arg'; choose from: quick ${STAGES[*]} all" >&2
        exit 2
      fi
      ;;
  esac
done
if [ "${#requested[@]}" -eq 0 ]; then
  echo "gpu_check: name the plan or stages to run (see --help)" >&2
  exit 2
fi
if [[ " ${requested[*]} " == *" quick "* ]] && [ "${#requested[@]}" -gt 1 ]; then
  echo "gpu_check: 'quick' is a whole plan; run it alone" >&2
  exit 2
fi

cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
BUNDLE="${GPU_BUNDLE:-.gpu_bundle}"
SITE="${GPU_SITE:-/tmp/gpu_check_site}"

# -- dry run: the device command, its carry list and their sizes (no GPU needed) -----------------------------
if [ "$dry_run" = 1 ]; then
  exec "$PY" - "$BUNDLE" "${requested[@]}" <<'EOF'
import json, os, subprocess, sys
from pathlib import Path

LIMIT, CMD_LIMIT = 64 * 2**20, 2000
bundle, stages = Path(sys.argv[1]), sys.argv[2:]
if not (bundle / "manifest.json").is_file():
    sys.exit(f"gpu_check: no bundle at {bundle} (build it here first: python scripts/gpu_bundle.py)")
def size(p):
    p = Path(p)
    return p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
QUALITY_SCENES = os.environ.get("SPLAT_QUALITY_SCENES", "cup beercan demo").split()
NEEDS = {"quick": ["cup"], "splat-cup-7k": ["cup"], "splat-cup": ["cup"], "scene-edit": ["cup"],
         "splat-beercan": ["beercan"], "splat-quality": [s for s in QUALITY_SCENES if s != "demo"]}
if not Path(bundle, "core").is_dir():
    sys.exit(f"gpu_check: the bundle lacks {bundle}/core (rebuild it: python scripts/gpu_bundle.py)")
for stage in stages:
    for scene in NEEDS.get(stage, []):
        if not Path(bundle, "scenes", scene, "sparse").is_dir():
            sys.exit(f"gpu_check: {stage} needs {bundle}/scenes/{scene} "
                     f"(python scripts/gpu_bundle.py --scenes {scene}; one scene per bundle fits a call)")
carry = [f"{bundle}/core"] + ([f"{bundle}/scenes"] if Path(bundle, "scenes").is_dir() else [])
files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], capture_output=True, check=True).stdout
tree = sum(size(f) for f in files.decode().split("\0") if f and os.path.isfile(f))
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout
commit += "-dirty" if dirty.strip() else ""
quality = ""
if "splat-quality" in stages:  # what the stage runs travels in the command (the device sees no other variable)
    quality = "".join(f"{k}='{os.environ[k]}' " for k in ("SPLAT_QUALITY_SCENES", "SPLAT_QUALITY_VARIANTS")
                      if os.environ.get(k))
command = f"GPU_CHECK_COMMIT={commit} PYTHONUNBUFFERED=1 {quality}bash scripts/gpu_check.sh {' '.join(stages)}"
sizes = {c: size(c) for c in carry}
total = tree + sum(sizes.values())
print("device run command:", command)
print("carry:", json.dumps(carry))
print(f"command: {len(command)} characters (limit {CMD_LIMIT})")
print(f"working tree: {tree / 2**20:.1f} MiB")
for c, s in sizes.items():
    print(f"carry {c}: {s / 2**20:.1f} MiB")
print(f"total: {total / 2**20:.1f} MiB of {LIMIT / 2**20:.0f} MiB")
problems = []
if len(command) >= CMD_LIMIT:
    problems.append(f"the command has {len(command)} characters; the device takes at most {CMD_LIMIT}")
if total > LIMIT:
    problems.append(f"tree and carry are {total / 2**20:.1f} MiB; one call carries at most 64 MiB")
if problems:
    sys.exit("gpu_check: " + "; ".join(problems))
print("fits: yes")
EOF
fi

# -- refuse without a GPU (nothing installed or written yet) ------------------------------------------------
if ! "$PY" - <<'EOF' 2>/dev/null
import sys
from importlib.util import find_spec
from pathlib import Path

# A torch built without CUDA or ROCm (torch/version.py, written when torch was built, says so) never has a CUDA
# device: answer without importing torch (seconds on a CPU machine). Any other build is asked.
spec = find_spec("torch")
if spec is None:
    sys.exit(1)
build = {}
try:
    exec(Path(spec.submodule_search_locations[0], "version.py").read_text(), build)
except Exception:
    build = {}
if "cuda" in build and build.get("cuda") is None and build.get("hip") is None:
    sys.exit(1)
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
  echo "gpu_check: nvidia-smi sees a GPU but this Python's torch has no CUDA; use the interpreter that has" \
    "the CUDA build of torch (PYTHON=...)" >&2
  exit 2
fi
if [ ! -f "$BUNDLE/manifest.json" ]; then
  echo "gpu_check: no bundle at $BUNDLE: build it on a machine with a package registry" \
    "(python scripts/gpu_bundle.py) and carry $BUNDLE/core and $BUNDLE/scenes (see --dry-run)" >&2
  exit 2
fi

RES="${GPU_CHECK_OUT:-${OUT:-benchmarks/gpu_check}}"
mkdir -p "$RES"
FIGURES="$RES/figures.jsonl"
exec > >(tee -a "$RES/log.txt") 2>&1
START=$(date +%s)
SITE="$(realpath -m "$SITE")"
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the bundle, then the checkout itself
SCENES_DIR="../shared/scenes"
[ -d "$SCENES_DIR/cup" ] || SCENES_DIR="$BUNDLE/scenes"

header() {  # one JSON line naming the stage, date, commit and GPU
  "$PY" - "$1" >>"$FIGURES" <<'EOF'
import datetime, json, os, subprocess, sys
import torch
commit = os.environ.get("GPU_CHECK_COMMIT") or subprocess.run(
    ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip() or None
print(json.dumps({"stage": sys.argv[1], "utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "commit": commit, "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
                  "cuda": torch.version.cuda}))
EOF
}

figure() {  # figure NAME KEY=VALUE ...: one JSON line of numbers / strings
  "$PY" - "$@" >>"$FIGURES" <<'EOF'
import json, sys
row = {"figure": sys.argv[1]}
for kv in sys.argv[2:]:
    k, _, v = kv.partition("=")
    try:
        row[k] = json.loads(v)
    except ValueError:
        row[k] = v
print(json.dumps(row))
EOF
}

limited() {  # limited CAP CMD...: run CMD for at most CAP seconds, less if the quick budget runs out first
  local cap="$1" left
  shift
  if [ -n "${DEADLINE:-}" ]; then
    left=$((DEADLINE - $(date +%s)))
    [ "$left" -lt "$cap" ] && cap="$left"
    if [ "$cap" -lt 20 ]; then
      echo "gpu_check: skipped (the quick plan's budget is spent): $*" >&2
      return 124
    fi
  fi
  timeout -k 15 "$cap" "$@"
}

install_bundle() {
  local stamp="$SITE/.installed" want
  want="$(cksum <"$BUNDLE/manifest.json")"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "gpu_check: bundle already installed in $SITE" >&2
    return 0
  fi
  local t0=$SECONDS
  mkdir -p "$SITE"
  # --no-deps: the bundle holds exactly what the image lacks; the image's torch is never touched
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$BUNDLE"/core/*.whl
  if compgen -G "$BUNDLE/viewer/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      "$BUNDLE"/viewer/*.whl
  fi
  echo "$want" >"$stamp"
  figure install seconds=$((SECONDS - t0))
}

build_gsplat() {  # gsplat with its CUDA extension: from the bundle's wheel, or built here once
  if "$PY" -c "from gsplat import csrc" >/dev/null 2>&1; then
    echo "gpu_check: gsplat's CUDA extension is installed" >&2
    return 0
  fi
  local sdist arch t0=$SECONDS wheel
  sdist="$(compgen -G "$BUNDLE/core/gsplat-*.tar.gz" | head -n 1)"
  if [ -z "$sdist" ]; then
    echo "gpu_check: the bundle has neither a built gsplat wheel nor gsplat's source" >&2
    return 1
  fi
  arch="$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability(0))')"
  echo "gpu_check: building gsplat's CUDA extension for sm_${arch/./} with $(nproc) jobs" >&2
  if ! MAX_JOBS="$(nproc)" TORCH_CUDA_ARCH_LIST="$arch" "$PY" -m pip wheel -q --no-index --no-deps \
    --no-build-isolation -w "$RES" "$sdist" >"$RES/gsplat_build.log" 2>&1; then
    echo "gpu_check: building gsplat failed; the end of $RES/gsplat_build.log:" >&2
    tail -n 20 "$RES/gsplat_build.log" >&2
    figure gsplat-build ok=false seconds=$((SECONDS - t0))
    return 1
  fi
  wheel="$(compgen -G "$RES/gsplat-*.whl" | head -n 1)"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$wheel"
  figure gsplat-build ok=true seconds=$((SECONDS - t0)) jobs="$(nproc)" arch="\"$arch\"" \
    wheel="\"$(basename "$wheel")\"" wheel_bytes="$(stat -c %s "$wheel")"
}

run_stage() {
  local stage="$1"
  echo "== gpu_check: $stage ($(($(date +%s) - START)) s in)" >&2
  case "$stage" in
    install)
      header install
      install_bundle
      "$PY" - >>"$FIGURES" <<'EOF'
import json
import diffusers, pycolmap, torch
print(json.dumps({"figure": "versions", "torch": torch.__version__, "cuda": torch.version.cuda,
                  "diffusers": diffusers.__version__, "pycolmap": pycolmap.__version__,
                  "gpu": torch.cuda.get_device_name(0)}))
EOF
      if [ "${BUILD_IN_BACKGROUND:-0}" = 1 ]; then
        build_gsplat &
        BUILD_PID=$!
      else
        build_gsplat
      fi
      ;;
    tests)
      [ -z "${BUILD_PID:-}" ] || { wait "$BUILD_PID" || true; BUILD_PID=""; }
      header tests
      local rc=0 files
      mapfile -t files < <(grep -rl --include='test_*.py' 'mark.gpu' tests | sort)
      limited 240 "$PY" -m pytest -q -rs -m gpu -p no:cacheprovider "${files[@]}" >"$RES/pytest.txt" 2>&1 || rc=$?
      tail -n 30 "$RES/pytest.txt" >&2
      figure tests exit_code="$rc" summary="\"$(tail -n 1 "$RES/pytest.txt" | tr -d '"=')\""
      ;;
    render)
      [ -z "${BUILD_PID:-}" ] || { wait "$BUILD_PID" || true; BUILD_PID=""; }
      header render
      limited 120 "$PY" benchmarks/bench_render.py --full --results "$FIGURES"
      ;;
    ranks)
      [ -z "${BUILD_PID:-}" ] || { wait "$BUILD_PID" || true; BUILD_PID=""; }
      header ranks
      local rc=0
      limited 120 "$PY" benchmarks/check_rank_agreement.py --device cuda >"$RES/ranks.txt" 2>&1 || rc=$?
      cat "$RES/ranks.txt" >&2
      figure ranks exit_code="$rc" output="\"$(tr '\n"' ' \047' <"$RES/ranks.txt")\""
      ;;
    editkit)
      header editkit
      limited 240 "$PY" benchmarks/bench_p2p.py --full --repeats 2 --results "$FIGURES"
      ;;
    flow-quick)
      header flow-quick
      limited 150 "$PY" benchmarks/bench_flow.py --full --device cuda --resolution 512 --steps 8 --repeats 1 \
        | tee -a "$RES/flow.txt"
      ;;
    flow)
      header flow
      limited 600 "$PY" benchmarks/bench_flow.py --full --device cuda --resolution 1024 --repeats 1 \
        | tee -a "$RES/flow.txt"
      ;;
    real-edit)
      header real-edit
      limited 600 "$PY" benchmarks/bench_real_edit.py --full | tee -a "$RES/real_edit.txt"
      ;;
    splat-cup-7k)
      [ -z "${BUILD_PID:-}" ] || { wait "$BUILD_PID" || true; BUILD_PID=""; }
      header splat-cup-7k
      limited 300 "$PY" benchmarks/bench_splat.py --full --steps 7000 --no-brute-force --scenes cup \
        --scenes-dir "$SCENES_DIR" --results "$FIGURES"
      ;;
    splat-cup | splat-beercan)
      header "$stage"
      limited 600 "$PY" benchmarks/bench_splat.py --full --no-brute-force --scenes "${stage#splat-}" \
        --scenes-dir "$SCENES_DIR" --results "$FIGURES"
      ;;
    splat-quality)
      header splat-quality
      local scenes variants
      read -r -a scenes <<<"${SPLAT_QUALITY_SCENES:-cup beercan demo}"
      read -r -a variants <<<"${SPLAT_QUALITY_VARIANTS:-base base+absgrad base+antialiased base+bilateral_grid base+depth_loss quality}"
      limited 600 "$PY" benchmarks/bench_splat.py --full --no-brute-force --steps 30000 --scenes "${scenes[@]}" \
        --variants "${variants[@]}" --scenes-dir "$SCENES_DIR" --results "$FIGURES"
      ;;
    scene-edit)
      header scene-edit
      limited 600 "$PY" benchmarks/bench_scene_edit.py --full --configs idu | tee -a "$RES/scene_edit.txt"
      ;;
  esac
}

status=0
if [ "${requested[0]}" = quick ]; then
  DEADLINE=$((START + ${QUICK_BUDGET_S:-450}))
  BUILD_IN_BACKGROUND=1
  for stage in "${QUICK[@]}"; do
    run_stage "$stage" || { echo "gpu_check: $stage failed (exit $?); going on" >&2; status=1; }
  done
else
  for stage in "${requested[@]}"; do
    [ "$stage" = install ] || [ -f "$SITE/.installed" ] || run_stage install
    run_stage "$stage" || { echo "gpu_check: $stage failed (exit $?); going on" >&2; status=1; }
  done
fi
[ -z "${BUILD_PID:-}" ] || wait "$BUILD_PID" || true
echo "gpu_check: figures in $FIGURES ($(($(date +%s) - START)) s)" >&2
exit "$status"
