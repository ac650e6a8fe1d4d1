"""The set-up logic behind the README's two commands (scripts/setup_env.sh, sourced by demo.sh and test.sh).

The decisions are checked in a clean virtual environment built here, with pip in dry-run mode (the commands
are printed, nothing is installed): which torch gets installed on a CPU-only machine, on a GPU machine and
with an explicit index, that an installed torch is kept, that unsupported Pythons are refused, and that
test.sh fails when pytest collects nothing. The full install itself runs in CI (.ci/run on a fresh clone).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="the set-up scripts are bash scripts")


@pytest.fixture(scope="module")
def clean_venv(tmp_path_factory) -> Path:
    """A fresh virtual environment with pip and nothing else (no torch). Its pip is this environment's pip,
    linked in: ensurepip would spend seconds installing the same pip again."""
    import pip

    path = tmp_path_factory.mktemp("setup") / "venv"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(path)
    (site,) = path.glob("lib/python*/site-packages")
    package = Path(pip.__file__).parent
    for src in (package, *package.parent.glob(f"pip-{pip.__version__}.dist-info")):
        (site / src.name).symlink_to(src)
    return path


def fake_wheel_house(folder: Path, version: str) -> Path:
    """A find-links folder holding a minimal (metadata-only) torch wheel of ``version``."""
    folder.mkdir(parents=True, exist_ok=True)
    dist = f"torch-{version}.dist-info"
    wheel = folder / f"torch-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n")
        z.writestr(
            f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        z.writestr(f"{dist}/RECORD", "")
    return folder


def run_setup(tmp_path: Path, extras: str = "test", gpu: bool = False, **env_vars: str):
    """Source setup_env.sh and call ``setup_env EXTRAS`` in dry-run mode with a controlled PATH and pip config."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if gpu:
        fake = bin_dir / "nvidia-smi"
        fake.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 (UUID: GPU-0)'\n")
        fake.chmod(0o755)
    # PATH without any real nvidia-smi: only the tools the script uses, and the fake one if asked
    for tool in ("bash", "cat", "cksum"):
        if not (bin_dir / tool).exists():
            (bin_dir / tool).symlink_to(shutil.which(tool))
    path = str(bin_dir)
    env = {
        "PATH": path,
        "HOME": str(tmp_path),
        "PIP_CONFIG_FILE": os.devnull,  # this machine's pip configuration must not decide the outcome
        "PIP_NO_INPUT": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "SETUP_DRY_RUN": "1",
        **env_vars,
    }
    cmd = f'source scripts/setup_env.sh && setup_env "{extras}" && echo "PY=$PY"'
    return subprocess.run(["bash", "-c", cmd], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def pip_lines(proc) -> list[str]:
    return [line for line in proc.stdout.splitlines() if line.startswith("would run:")]


def test_cpu_machine_without_local_wheel_uses_pytorch_cpu_index(clean_venv, tmp_path):
    empty = tmp_path / "wheels"
    empty.mkdir()
    proc = run_setup(tmp_path, VENV=str(clean_venv), PIP_FIND_LINKS=str(empty))
    assert proc.returncode == 0, proc.stderr
    lines = pip_lines(proc)
    assert any("torch==2.13.0" in x and f"--index-url {CPU_INDEX}" in x for x in lines), proc.stdout
    assert any("-e .[test]" in x for x in lines), proc.stdout
    assert f"PY={clean_venv}/bin/python" in proc.stdout


def test_cpu_machine_with_local_cpu_wheel_installs_it_from_the_configured_index(clean_venv, tmp_path):
    house = fake_wheel_house(tmp_path / "wheels", "2.13.0+cpu")
    proc = run_setup(tmp_path, VENV=str(clean_venv), PIP_FIND_LINKS=str(house))
    assert proc.returncode == 0, proc.stderr
    torch_lines = [x for x in pip_lines(proc) if "torch==" in x]
    assert len(torch_lines) == 1 and "--index-url" not in torch_lines[0], proc.stdout


def test_cpu_machine_with_local_cuda_wheel_still_uses_cpu_index(clean_venv, tmp_path):
    house = fake_wheel_house(tmp_path / "wheels", "2.13.0")  # a local wheel, but not a CPU build
    proc = run_setup(tmp_path, VENV=str(clean_venv), PIP_FIND_LINKS=str(house))
    assert proc.returncode == 0, proc.stderr
    assert any(f"--index-url {CPU_INDEX}" in x for x in pip_lines(proc)), proc.stdout


def test_gpu_machine_uses_default_index(clean_venv, tmp_path):
    proc = run_setup(tmp_path, gpu=True, VENV=str(clean_venv))
    assert proc.returncode == 0, proc.stderr
    torch_lines = [x for x in pip_lines(proc) if "torch==" in x]
    assert len(torch_lines) == 1 and "--index-url" not in torch_lines[0], proc.stdout


def test_explicit_index_wins(clean_venv, tmp_path):
    url = "https://download.pytorch.org/whl/cu126"
    proc = run_setup(tmp_path, VENV=str(clean_venv), TORCH_INDEX_URL=url, TORCH_SPEC="torch==2.12.0")
    assert proc.returncode == 0, proc.stderr
    assert any(f"torch==2.12.0 --index-url {url}" in x for x in pip_lines(proc)), proc.stdout


@pytest.mark.skipif(not (Path(sys.prefix) / "bin" / "python").exists(), reason="tests not run from a venv")
def test_installed_torch_is_kept(tmp_path):
    # the interpreter running this test has torch: used as the venv, torch must not be installed again
    proc = run_setup(tmp_path, extras="", VENV=sys.prefix)
    assert proc.returncode == 0, proc.stderr
    assert "keeping torch" in proc.stderr
    assert not any("torch==" in x for x in pip_lines(proc)), proc.stdout
    # the project is installed, unless this venv's stamp says an earlier `setup_env ""` (scripts/demo.sh) did
    stamped = (Path(sys.prefix) / ".editkit-splat-installed-base").is_file()
    planned = any(x.endswith("-e .") for x in pip_lines(proc))
    assert planned or (stamped and "project already installed" in proc.stderr), (proc.stdout, proc.stderr)


def test_new_venv_is_created_where_asked(clean_venv, tmp_path):
    # asked of an interpreter without torch (the clean venv's): the plan goes on to torch's index with no
    # torch import (seconds) along the way
    target, python = tmp_path / "new-venv", clean_venv / "bin" / "python"
    proc = run_setup(tmp_path, VENV=str(target), PYTHON=str(python))
    assert proc.returncode == 0, proc.stderr
    assert f"would run: {python} -m venv {target}" in proc.stdout


@pytest.mark.parametrize("version", ["3.9", "3.13"])
def test_unsupported_python_is_refused(tmp_path, version):
    fake = tmp_path / "python-old"
    fake.write_text(f"#!/bin/sh\necho {version}\n")
    fake.chmod(0o755)
    proc = run_setup(tmp_path, VENV=str(tmp_path / "v"), PYTHON=str(fake))
    assert proc.returncode == 2
    assert f"Python {version}; supported: 3.10, 3.11, 3.12" in proc.stderr


def test_test_script_fails_when_no_test_is_collected(tmp_path):
    # test.sh's exit code is what is checked: collecting nothing needs no pytest plugins, no tests/conftest.py
    env = {**os.environ, "USE_CURRENT_PYTHON": "1", "PYTHON": sys.executable, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    proc = subprocess.run(
        [
            "bash",
            "scripts/test.sh",
            "-p",
            "no:cacheprovider",
            "--noconftest",
            "tests/test_safeio.py",
            "-k",
            "no_such_test_zz",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 5, proc.stdout + proc.stderr  # pytest's "no tests collected", passed through
