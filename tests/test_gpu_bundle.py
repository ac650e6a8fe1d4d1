"""The offline bundle a GPU machine installs from (scripts/gpu_bundle.py) and the device command that carries
it (scripts/gpu_check.sh --dry-run), checked on this CPU machine with pip's registry.

The device image (Python 3.12) lacks diffusers, gsplat, pycolmap, tyro, viser, ...; the bundle must hold them
and what they need, fit in one device call with the working tree, and install without an index.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import gpu_bundle  # noqa: E402

MIB = 2**20


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """Where this module's bundles and installs go, and pip's own temporary trees (TMPDIR): a folder in RAM
    (/dev/shm) where the machine has one with room. Preparing and building gsplat's source writes its 1,750
    files several times over; on this machine's disk file creation cost more than the work itself (untarring
    the source: 7.2 s in /tmp, 0.2 s in /dev/shm; the local build and offline install: 44 s -> 17 s)."""
    shm = Path("/dev/shm")
    ram = shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 2 * 2**30
    root = Path(tempfile.mkdtemp(prefix="test-gpu-bundle-", dir=shm)) if ram else tmp_path_factory.mktemp("b")
    (root / "tmp").mkdir()
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("TMPDIR", str(root / "tmp"))
            yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def device_bundle(scratch):
    """The bundle as the device gets it: CPython 3.12 wheels, gsplat's source, the cup scene."""
    try:
        gpu_bundle.scenes_root()
    except gpu_bundle.BundleError as e:  # a checkout without ../shared beside it
        pytest.skip(str(e))
    out = scratch / "b312"
    gpu_bundle.build(out, python_version="3.12")
    return out


def test_device_bundle_has_what_the_image_lacks_and_fits_one_call(device_bundle):
    files = [p.name for p in (device_bundle / "core").iterdir()]
    for name in ("diffusers-", "pycolmap-", "tyro-", "pytorch_msssim-", "gsplat-"):
        assert any(f.startswith(name) for f in files), name
    assert any(f.startswith("pycolmap-") and "cp312" in f and "x86_64" in f for f in files)
    assert any(f.startswith("gsplat-") and f.endswith(".tar.gz") for f in files)  # built on the device
    assert any(p.name.startswith("viser-") for p in (device_bundle / "viewer").iterdir())
    # nothing the image has already: torch, transformers, numpy ... would shadow the image's builds
    device = gpu_bundle.device_packages()
    for f in files:
        assert gpu_bundle.canonicalize_name(f.split("-", 1)[0]) not in device, f
    sizes = {part: gpu_bundle.tree_size(device_bundle / part) for part in ("core", "viewer", "scenes")}
    assert sizes["core"] + sizes["viewer"] < 64 * MIB  # every wheel in one call
    assert (device_bundle / "scenes" / "cup" / "sparse" / "0").is_dir()


def test_bundle_installs_offline_and_imports(scratch):
    # the same set for this interpreter, installed with --no-index into a fresh folder; the import sees only
    # that folder, the checkout and a stand-in for the device image's own packages
    out, site = scratch / "local", scratch / "site"
    gpu_bundle.build(out, python_version="{}.{}".format(*sys.version_info[:2]), scenes=())
    gpu_bundle.install_offline(out, site)
    printed = gpu_bundle.import_check(site)
    for name in gpu_bundle.IMPORTS:
        assert f"{name} " in printed, printed
    assert str(site / "diffusers") in printed and str(site / "pycolmap") in printed  # from the bundle
    # the stand-in is no copy of this environment: what the bundle lacks cannot be imported
    for path in site.glob("tyro*"):
        subprocess.run(["rm", "-rf", str(path)], check=True)
    with pytest.raises(gpu_bundle.BundleError, match="tyro"):
        gpu_bundle.import_check(site, ("tyro",))


# A package index and an environment for build() without a registry: the walk fetched ahead from what this
# environment has installed must end with the bundle the level-by-level walk builds.
INDEX = {  # name -> {version: requirements}, as the index's wheels declare them
    "a": {"1.0": ["b", "c>=2"]},
    "b": {"1.0": ["e"]},  # the installed b 1.0 says d instead: its metadata is a guess, not the answer
    "c": {"1.0": [], "3.0": []},  # installed 1.0 does not satisfy a's c>=2: the newest is fetched
    "d": {"1.0": []},
    "e": {"1.0": ["torch"]},  # torch: the device image has it
    "v": {"2.0": ["a", "w"]},  # the viewer's root; a is core's already
    "w": {"1.0": []},
}
INSTALLED = {"a": ("1.0", ["b", "c"]), "b": ("1.0", ["d"]), "c": ("1.0", []), "d": ("1.0", []),
             "v": ("2.0", ["a", "w"]), "w": ("1.0", [])}  # fmt: skip


def _fake_pip_download(calls):
    def download(specs, dest, python_version, binary, sources=()):
        calls.append(list(specs))
        new = []
        for spec in specs:
            req = gpu_bundle.Requirement(spec)
            if not binary or req.name in sources:
                new.append(dest / f"{req.name}-1.0.tar.gz")
                new[-1].write_bytes(b"source")
                continue
            version = max((v for v in INDEX[req.name] if v in req.specifier), key=gpu_bundle.Version)
            new.append(dest / f"{req.name}-{version}-py3-none-any.whl")
            with zipfile.ZipFile(new[-1], "w") as z:
                lines = [f"Name: {req.name}", f"Version: {version}"]
                lines += [f"Requires-Dist: {r}" for r in INDEX[req.name][version]]
                z.writestr(f"{req.name}-{version}.dist-info/METADATA", "\n".join(lines) + "\n")
        return sorted(new)

    return download


def test_build_fetches_ahead_and_keeps_the_level_by_level_result(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_bundle, "CORE", ("a",))
    monkeypatch.setattr(gpu_bundle, "VIEWER", ("v",))
    monkeypatch.setattr(gpu_bundle, "SDISTS", ("s",))
    monkeypatch.setattr(gpu_bundle, "device_packages", lambda: {"torch": None})
    monkeypatch.setattr(gpu_bundle, "installed_version", lambda name: INSTALLED.get(name, (None,))[0])
    monkeypatch.setattr(gpu_bundle, "installed_requires", lambda name: INSTALLED[name][1])
    files, calls = {}, {}
    for how in ("ahead", "by level"):
        calls[how] = []
        monkeypatch.setattr(gpu_bundle, "_pip_download", _fake_pip_download(calls[how]))
        if how == "by level":
            monkeypatch.setattr(gpu_bundle, "predict", lambda *a, **k: {})
        files[how] = sorted(gpu_bundle.build(tmp_path / how, scenes=())["files"])
    assert files["ahead"] == files["by level"] == [
        "core/a-1.0-py3-none-any.whl", "core/b-1.0-py3-none-any.whl", "core/c-3.0-py3-none-any.whl",
        "core/e-1.0-py3-none-any.whl", "core/s-1.0.tar.gz", "viewer/v-2.0-py3-none-any.whl",
        "viewer/w-1.0-py3-none-any.whl",
    ]  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "ahead").iterdir()) == ["core", "manifest.json", "viewer"]
    # one call for every wheel the environment predicts and the source, then only what it did not: c>=2, e
    assert calls["ahead"] == [["a==1.0", "b==1.0", "c==1.0", "d==1.0", "v==2.0", "w==1.0", "s"], ["c>=2"], ["e"]]
    assert calls["by level"] == [["s"], ["a==1.0"], ["b==1.0", "c>=2"], ["e"], ["v==2.0"], ["w==1.0"]]


def _dry_run(bundle: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "GPU_BUNDLE": str(bundle)}
    return subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "quick", "--dry-run"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=120)  # fmt: skip


def test_dry_run_prints_the_device_command_and_checks_sizes(device_bundle):
    proc = _dry_run(device_bundle)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    command = next(line for line in out.splitlines() if line.startswith("device run command: "))
    command = command.removeprefix("device run command: ")
    assert command.endswith("bash scripts/gpu_check.sh quick") and len(command) < 2000
    assert f'carry: ["{device_bundle}/core", "{device_bundle}/scenes"]' in out
    assert "fits: yes" in out
    # a carry over the device's 64 MiB is refused (a sparse file: its size counts, not its disk use)
    with open(device_bundle / "scenes" / "padding.bin", "wb") as f:
        f.truncate(70 * MIB)
    try:
        proc = _dry_run(device_bundle)
    finally:
        (device_bundle / "scenes" / "padding.bin").unlink()
    assert proc.returncode != 0 and "one call carries at most 64 MiB" in proc.stderr, proc.stderr


def test_dry_run_without_a_bundle_says_how_to_build_one(tmp_path):
    proc = _dry_run(tmp_path / "missing")
    assert proc.returncode != 0
    assert "python scripts/gpu_bundle.py" in proc.stderr
