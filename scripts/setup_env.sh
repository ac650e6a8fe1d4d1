# Sourced by scripts/demo.sh and scripts/test.sh (not run on its own): makes sure the project's virtual
# environment exists and has the project installed, then sets PY to its interpreter.
#
#   setup_env EXTRAS     e.g. setup_env "" (the demo) or setup_env "test" (the test suite)
#
# What it does, in order:
#   1. the virtual environment: REPO/.venv (or $VENV), built with $PYTHON (default python3; 3.10-3.12) the
#      first time. Stock Debian / Ubuntu refuse `pip install` outside a venv (PEP 668); this is why.
#   2. torch: kept as it is if `import torch` works in the venv. Otherwise installed (torch==2.13.0, or
#      $TORCH_SPEC): from $TORCH_INDEX_URL if set; else, when an NVIDIA GPU is visible (`nvidia-smi -L`),
#      from the default index (the CUDA build, a few GB); else, on a CPU-only machine, the CPU build: from
#      the configured find-links (a local wheel house; checked offline with `pip --no-index`) when they hold
#      a `+cpu` build, otherwise PyTorch's CPU index https://download.pytorch.org/whl/cpu (a few hundred MB
#      instead of the GBs of CUDA packages that PyPI's Linux torch pulls in).
#   3. the project, editable, with EXTRAS (`pip install -e ".[EXTRAS]"`), skipped when pyproject.toml and
#      EXTRAS have not changed since the last successful install (a stamp file in the venv).
#
# Environment variables:
#   PYTHON=python3.12      interpreter the venv is built from
#   VENV=path              where the venv lives (default: .venv in the repository root)
#   TORCH_INDEX_URL=url    index to install torch from (e.g. https://download.pytorch.org/whl/cu126)
#   TORCH_SPEC=torch==X    which torch to install when none is there
#   USE_CURRENT_PYTHON=1   no venv and no installs: run with $PYTHON (default python3) as it is, e.g. an
#                          environment you prepared yourself (the tests use this)
#   SETUP_DRY_RUN=1        print the pip / venv commands instead of running them

TORCH_CPU_INDEX="https://download.pytorch.org/whl/cpu"

_setup_run() {
  if [ "${SETUP_DRY_RUN:-0}" = 1 ]; then
    echo "would run: $*"
  else
    "$@"
  fi
}

_setup_check_python() {  # $1: interpreter; exits 2 with a message unless it is Python 3.10-3.12
  local py="$1" version
  if ! version=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null); then
    echo "error: no Python interpreter '$py' (set PYTHON=python3.11, or install Python 3.10-3.12)" >&2
    exit 2
  fi
  case "$version" in
    3.10 | 3.11 | 3.12) ;;
    *)
      echo "error: $py is Python $version; supported: 3.10, 3.11, 3.12 (set PYTHON=python3.11)" >&2
      exit 2
      ;;
  esac
}

_setup_torch_args() {  # prints the pip arguments that install torch here, one per line
  local spec="${TORCH_SPEC:-torch==2.13.0}"
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    printf '%s\n' "$spec" --index-url "$TORCH_INDEX_URL"
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    printf '%s\n' "$spec"  # a GPU: the default index's CUDA build is what we want
  elif "$PY" -m pip install --dry-run --no-index --no-deps --quiet --report - "$spec" 2>/dev/null \
    | "$PY" -c 'import json, sys; sys.exit(0 if any("+cpu" in i["metadata"]["version"] for i in json.load(sys.stdin)["install"]) else 1)' \
      2>/dev/null; then
    printf '%s\n' "$spec"  # pip's find-links (a local wheel house, no network) already offer a CPU build
  else
    printf '%s\n' "$spec" --index-url "$TORCH_CPU_INDEX"
  fi
}

setup_env() {
  local extras="$1" repo venv target stamp_file stamp torch_args torch_version
  repo="$(pwd)"
  if [ "${USE_CURRENT_PYTHON:-0}" = 1 ]; then
    PY="${PYTHON:-python3}"
    _setup_check_python "$PY"
    echo "setup: USE_CURRENT_PYTHON=1, using $(command -v "$PY" || echo "$PY") as it is (no installs)" >&2
    return 0
  fi
  venv="${VENV:-$repo/.venv}"
  if [ ! -x "$venv/bin/python" ]; then
    _setup_check_python "${PYTHON:-python3}"
    echo "setup: creating the virtual environment $venv" >&2
    if ! _setup_run "${PYTHON:-python3}" -m venv "$venv"; then
      echo "error: could not create $venv; on Debian / Ubuntu: sudo apt install python3-venv" >&2
      exit 1
    fi
  fi
  PY="$venv/bin/python"
  if [ "${SETUP_DRY_RUN:-0}" = 1 ] && [ ! -x "$PY" ]; then
    PY="${PYTHON:-python3}"  # nothing was created: ask the base interpreter instead
  fi
  _setup_check_python "$PY"

  # one import of torch answers both "is it there?" and "which version?" (seconds each)
  if torch_version=$("$PY" -c "import torch; print(torch.__version__)" 2>/dev/null); then
    echo "setup: keeping torch ${torch_version##*$'\n'} from $venv" >&2
  else
    mapfile -t torch_args < <(_setup_torch_args)
    echo "setup: installing torch (${torch_args[*]})" >&2
    _setup_run "$PY" -m pip install -q "${torch_args[@]}"
  fi

  target="."
  [ -n "$extras" ] && target=".[$extras]"
  stamp_file="$venv/.editkit-splat-installed-${extras:-base}"
  stamp="$extras $(cksum <"$repo/pyproject.toml")"
  if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ] \
    && "$PY" -c "import splat, editkit" >/dev/null 2>&1; then
    echo "setup: project already installed in $venv" >&2
  else
    echo "setup: installing the project into $venv (pip install -e '$target'; the first time takes minutes)" >&2
    _setup_run "$PY" -m pip install -q -e "$target"
    [ "${SETUP_DRY_RUN:-0}" = 1 ] || echo "$stamp" >"$stamp_file"
  fi
}
