"""Build the offline bundle a lent GPU machine installs from: what its image lacks, as wheels.

    python scripts/gpu_bundle.py                       # .gpu_bundle/ for the device (CPython 3.12, x86-64)
    python scripts/gpu_bundle.py --python-version 3.11 --out /tmp/b   # the same set for this interpreter
    python scripts/gpu_bundle.py --prebuilt gsplat-1.5.3-cp312-cp312-linux_x86_64.whl   # reuse a build

The device machine (``/work/.library/device/KINDS.md``: Python 3.12, torch 2.11 + CUDA 13, nvcc, ninja,
transformers, accelerate, safetensors, scipy, imageio, ...) reaches no package registry. This script, run
on a machine that does, downloads into ``OUT`` (default ``.gpu_bundle/``, ignored by git):

    core/      binary wheels of what the GPU checks import and the image lacks (diffusers, pycolmap, tyro,
               pytorch-msssim and whatever they need that the image lacks), at the versions installed here
               (so the device runs what the CPU suite tested), plus gsplat's source distribution:
               ``scripts/gpu_check.sh install`` builds gsplat's CUDA extension from it once, with every core
               and for the device's architecture only, into a wheel it keeps under ``$OUT`` (16 MiB at most
               come back); ``--prebuilt WHEEL`` puts such a wheel here instead, and no build is needed.
    viewer/    viser and what it needs (the viewer; not part of the quick plan, which carries core/ only)
    scenes/    ``../shared/scenes/cup`` (``--scenes``; the device gets the checkout only, never ``../shared``;
               cup and beercan together do not fit one call beside the wheels)
    manifest.json   every file with its size and sha256, the target Python and the pinned versions

What the image already has is read from ``scripts/gpu_device_packages.txt`` (one distribution a line,
``name`` or ``name==version``); a requirement that such a pinned version does not satisfy is an error, so a
mismatch shows here rather than on the device. imageio-ffmpeg (68 MB, videos only) and fused-ssim (not on
PyPI) are left out: on the device, SSIM uses pytorch-msssim and no GPU check writes a video.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as md
import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_sdist_filename
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
DEVICE_PACKAGES = REPO / "scripts" / "gpu_device_packages.txt"
CORE = ("diffusers", "pycolmap", "tyro", "pytorch-msssim")
VIEWER = ("viser",)
SDISTS = ("gsplat",)  # built on the device, where CUDA is
SCENES = ("cup",)
MIB = 2**20
CALL_LIMIT = 64 * MIB  # what one device call may carry: working tree + carried paths
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64", "manylinux_2_5_x86_64")  # fmt: skip


class BundleError(RuntimeError):
    """The bundle cannot be built as asked (a message for the user, no traceback)."""


def device_packages(path: Path = DEVICE_PACKAGES) -> dict[str, Version | None]:
    """The distributions the device image has: canonical name -> pinned version (None: version unknown)."""
    found: dict[str, Version | None] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, version = line.partition("==")
        found[canonicalize_name(name)] = Version(version) if version else None
    return found


def marker_env(python_version: str) -> dict[str, str]:
    return {
        "python_version": python_version, "python_full_version": f"{python_version}.0",
        "implementation_name": "cpython", "platform_python_implementation": "CPython", "os_name": "posix",
        "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64", "extra": "",
    }  # fmt: skip


def installed_version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def installed_requires(name: str) -> list[str]:
    """The requirements of the distribution ``name`` installed here, as its metadata lists them."""
    return md.requires(name) or []


def requirements_of(wheel: Path, env: dict[str, str]) -> list[Requirement]:
    """The run-time requirements a wheel declares that apply on the target (no extras)."""
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
        text = z.read(meta).decode("utf-8")
    reqs = []
    for line in text.splitlines():
        if line.startswith("Requires-Dist:"):
            req = Requirement(line.split(":", 1)[1].strip())
            if req.marker is None or Marker(str(req.marker)).evaluate(env):
                reqs.append(req)
    return reqs


def _pip_download(specs: list[str], dest: Path, python_version: str, binary: bool, sources=()) -> list[Path]:
    """One ``pip download --no-deps`` of ``specs`` into ``dest``: wheels for the target (``binary``), but
    source distributions of the names in ``sources``; or source distributions only. Returns the files added."""
    before = set(dest.iterdir())
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(dest), *specs]
    if binary:
        cmd += ["--only-binary=:all:", "--python-version", python_version, "--implementation", "cp"]
        for plat in PLATFORMS:
            cmd += ["--platform", plat]
        if sources:
            cmd += [f"--no-binary={','.join(sources)}", "--no-build-isolation"]
    else:
        cmd += ["--no-binary=:all:", "--no-build-isolation"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_pip_env(binary and not sources))
    new = sorted(set(dest.iterdir()) - before)
    if proc.returncode != 0 or len(new) != len(specs):
        err = [ln for ln in proc.stderr.splitlines() if ln.startswith("ERROR")] or proc.stderr.splitlines()[-3:]
        raise BundleError(f"pip could not download {' '.join(specs)} for CPython {python_version}: {' '.join(err)}")
    return new


def _pip_env(binary: bool) -> dict[str, str]:
    import os

    env = dict(os.environ)
    if not binary:
        env["BUILD_NO_CUDA"] = "1"  # gsplat's setup.py reads it; its metadata then needs no CUDA here
    return env


def _pin(req: Requirement) -> str:
    """Pin to the version installed here when it satisfies the requirement (the version the suite tests)."""
    have = installed_version(req.name)
    if have is not None and req.specifier.contains(have, prereleases=True):
        return f"{req.name}=={have}"
    return f"{req.name}{req.specifier}"


def collect(names, dest: Path, python_version: str, device: dict[str, Version | None], seen: dict[str, Path],
            ahead: dict[str, tuple[str, Path]] | None = None):
    """Download ``names`` and, recursively, whatever they need that the device image lacks (a level of the
    dependency tree at a time). A wheel in ``ahead`` (canonical name -> (pin, file), from `fetch_ahead`) is
    taken from there when the level asks for that very pin; pip is called only for the rest of the level."""
    env = marker_env(python_version)
    level = [Requirement(n) for n in names]
    while level:
        wanted: dict[str, Requirement] = {}
        for req in level:
            key = canonicalize_name(req.name)
            if key in device:
                pinned = device[key]
                if pinned is not None and not req.specifier.contains(pinned, prereleases=True):
                    raise BundleError(
                        f"the device image has {req.name}=={pinned}, which does not satisfy '{req}'; add a "
                        f"wheel for it (remove it from {DEVICE_PACKAGES.name}) or pin an older dependant"
                    )
            elif key not in seen:
                wanted.setdefault(key, req)
        level = []
        if not wanted:
            break
        pins = {key: _pin(r) for key, r in wanted.items()}
        new, rest = [], []
        for key, pin in pins.items():
            if ahead and key in ahead and ahead[key][0] == pin and ahead[key][1].name.endswith(".whl"):
                file = ahead.pop(key)[1]
                new.append(file.rename(dest / file.name))
            else:
                rest.append(pin)
        if rest:
            new += _pip_download(rest, dest, python_version, binary=True)
        for wheel in sorted(new):
            key = canonicalize_name(wheel.name.split("-", 1)[0])
            seen[key] = wheel
            level += requirements_of(wheel, env)


def predict(names, python_version: str, device: dict[str, Version | None], known=()) -> dict[str, str]:
    """The pins `collect` will most likely ask pip for: its walk, over the requirements of the distributions
    installed here instead of the downloaded wheels'. A pin of the installed version has the installed
    distribution's requirements (the same release's metadata); where a pin is some other version, the walk
    stops there (`collect` learns the rest from the wheel). Canonical name -> pin; ``known`` are left out."""
    env = marker_env(python_version)
    pins: dict[str, str] = {}
    level = [Requirement(n) for n in names]
    while level:
        wanted: dict[str, Requirement] = {}
        for req in level:
            key = canonicalize_name(req.name)
            if key not in device and key not in known and key not in pins:
                wanted.setdefault(key, req)
        level = []
        for key, req in wanted.items():
            pins[key] = _pin(req)
            if pins[key] != f"{req.name}=={installed_version(req.name)}":
                continue
            for line in installed_requires(req.name):
                dep = Requirement(line)
                if dep.marker is None or Marker(str(dep.marker)).evaluate(env):
                    level.append(dep)
    return pins


def fetch_ahead(pins: dict[str, str], dest: Path, python_version: str, sources: dict[str, str] | None = None):
    """Download the wheels of ``pins`` (from `predict`) and the source distributions of ``sources`` (canonical
    name -> pin) in one pip call, for `collect` and `build` to take from: canonical name -> (pin, file). Empty
    when pip fails; then each is asked for on its own as before, and what fails is reported there."""
    sources = sources or {}
    wheels = {key: pin for key, pin in pins.items() if key not in sources}  # a wheel of those: in its level
    dest.mkdir()
    specs = [*wheels.values(), *sources.values()]
    try:
        files = _pip_download(specs, dest, python_version, binary=True, sources=sorted(sources)) if specs else []
    except BundleError:
        return {}
    ahead = {}
    for file in files:
        try:
            if file.name.endswith(".whl"):
                key = canonicalize_name(file.name.split("-", 1)[0])
                pin = wheels.get(key)
            else:
                key = canonicalize_name(parse_sdist_filename(file.name)[0])
                pin = sources.get(key)
        except ValueError:  # a name packaging cannot read: not taken, asked for again
            continue
        if pin is not None:
            ahead[key] = (pin, file)
    return ahead


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def scenes_root() -> Path:
    for p in (REPO.parent / "shared" / "scenes", REPO.parent.parent / "shared" / "scenes"):
        if p.is_dir():
            return p
    raise BundleError(f"no ../shared/scenes beside {REPO}: the bundle carries the cup scene from there")


def build(out: Path, python_version: str = "3.12", prebuilt: Path | None = None, viewer: bool = True,
          scenes=SCENES) -> dict:
    """Build the bundle into ``out`` (replaced as a whole) and return its manifest."""
    device = device_packages()
    tmp = Path(tempfile.mkdtemp(prefix=".gpu_bundle-", dir=out.parent))
    try:
        core, view = tmp / "core", tmp / "viewer"
        core.mkdir()
        # what the walks below will ask for, as far as this environment's metadata tells, and the sources, in
        # one pip call (instead of one a level and one for the sources); pip is then asked only for the rest
        pins = predict(CORE, python_version, device)
        if viewer:
            pins.update(predict(VIEWER, python_version, device, known=set(pins)))
        sources = {} if prebuilt is not None else {canonicalize_name(n): _pin(Requirement(n)) for n in SDISTS}
        ahead = fetch_ahead(pins, tmp / "ahead", python_version, sources)
        seen: dict[str, Path] = {}
        collect(CORE, core, python_version, device, seen, ahead)
        if prebuilt is not None:
            if not prebuilt.is_file() or not prebuilt.name.startswith("gsplat-"):
                raise BundleError(f"--prebuilt {prebuilt}: not a gsplat wheel file")
            shutil.copy2(prebuilt, core / prebuilt.name)
        else:
            for key, pin in sources.items():
                if key in ahead and ahead[key][0] == pin and not ahead[key][1].name.endswith(".whl"):
                    file = ahead.pop(key)[1]
                    file.rename(core / file.name)
                else:
                    _pip_download([pin], core, python_version, binary=False)
        if viewer:
            view.mkdir()
            collect(VIEWER, view, python_version, device, dict(seen), ahead)
        shutil.rmtree(tmp / "ahead")  # what no walk took
        if scenes:
            root = scenes_root()
            for name in scenes:
                if not (root / name / "sparse").is_dir():
                    raise BundleError(f"no scene {name!r} in {root}")
                shutil.copytree(root / name, tmp / "scenes" / name)
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        manifest = {
            "python_version": python_version,
            "platform": "linux x86_64 (manylinux)",
            "files": {str(p.relative_to(tmp)): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files},
            "bytes": {part: tree_size(tmp / part) for part in ("core", "viewer", "scenes") if (tmp / part).exists()},
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
        return manifest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


IMPORTS = ("gsplat", "diffusers", "pycolmap", "tyro", "viser", "pytorch_msssim", "editkit", "splat",
           "editkit.p2p", "editkit.flow.flowedit", "splat.training.trainer", "splat.render.rasterization")
# ^ what the GPU stages run


def _device_standin(dest: Path, device: dict[str, Version | None]) -> list[str]:
    """A folder that holds, as links into this environment, only the distributions the device image has.

    This environment's versions of them may need other distributions than the device's versions do (the
    image is consistent in itself), so their own requirements, as installed here, are linked too.
    """
    env = marker_env("{}.{}".format(*sys.version_info[:2]))
    dists = {canonicalize_name(d.metadata["Name"]): d for d in md.distributions() if d.metadata["Name"]}
    queue, linked = [name for name in device if name in dists], set()
    while queue:
        key = queue.pop()
        if key in linked or key not in dists:
            continue
        linked.add(key)
        dist = dists[key]
        for top in {Path(str(f)).parts[0] for f in dist.files or () if not str(f).startswith(("..", "/"))}:
            src = Path(str(dist.locate_file(top)))
            if src.exists() and not (dest / top).exists():
                (dest / top).symlink_to(src)
        for line in dist.requires or ():
            req = Requirement(line)
            if req.marker is None or Marker(str(req.marker)).evaluate(env):
                queue.append(canonicalize_name(req.name))
    return sorted(linked)


def install_offline(bundle: Path, site: Path, python: str = sys.executable) -> None:
    """``pip install --no-index --no-deps`` of the bundle's wheels and sources into ``site`` (one pip call;
    the sources are built without build isolation, in this environment, as the device builds gsplat)."""
    wheels = sorted(bundle.glob("core/*.whl")) + sorted(bundle.glob("viewer/*.whl"))
    sdists = sorted(bundle.glob("core/*.tar.gz"))
    if not wheels:
        raise BundleError(f"{bundle}: no wheels (build it first: python scripts/gpu_bundle.py --out {bundle})")
    pip = [python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
           "--no-build-isolation", "--target", str(site)]  # fmt: skip
    proc = subprocess.run([*pip, *map(str, wheels + sdists)], capture_output=True, text=True,
                          env=_pip_env(binary=False))  # fmt: skip
    if proc.returncode != 0:
        raise BundleError(f"pip install --no-index from {bundle} failed: {proc.stderr[-800:]}")


def import_check(site: Path, imports=IMPORTS, python: str = sys.executable) -> str:
    """Import ``imports`` seeing only ``site``, the checkout and a stand-in for the device image (links to
    the distributions of this environment that ``gpu_device_packages.txt`` lists): an import that works here
    only because this environment has something the device lacks fails. Returns what the imports printed.
    """
    with tempfile.TemporaryDirectory(prefix="gpu-bundle-image-") as tmp:
        standin = Path(tmp)
        _device_standin(standin, device_packages())
        code = (
            "import sys\n"
            f"sys.path[:0] = [{str(site)!r}, {str(REPO)!r}, {str(standin)!r}]\n"
            f"for name in {tuple(imports)!r}:\n"
            "    m = __import__(name)\n"
            "    print(name, getattr(m, '__version__', ''), m.__file__)\n"
        )
        proc = subprocess.run([python, "-I", "-S", "-c", code], capture_output=True, text=True, cwd=tmp)
    if proc.returncode != 0:
        raise BundleError(f"importing from the bundle failed: {proc.stderr.strip().splitlines()[-1]}")
    return proc.stdout


def check(bundle: Path, python: str = sys.executable) -> str:
    """Install the bundle with ``--no-index`` into a fresh folder and import what the GPU checks need."""
    with tempfile.TemporaryDirectory(prefix="gpu-bundle-check-") as tmp:
        install_offline(bundle, Path(tmp), python)
        return import_check(Path(tmp), IMPORTS, python)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / ".gpu_bundle", help="bundle folder (replaced)")
    ap.add_argument("--python-version", default="3.12", help="target CPython (the device has 3.12)")
    ap.add_argument("--prebuilt", type=Path, default=None, help="a gsplat wheel built on the device before")
    ap.add_argument("--no-viewer", action="store_true", help="leave viser out")
    ap.add_argument("--scenes", nargs="*", default=list(SCENES),
                    help="scenes of ../shared/scenes to carry (default: cup; none: --scenes with no name)")
    ap.add_argument("--check", action="store_true",
                    help="install OUT with --no-index into a fresh folder and import from it (this Python)")
    args = ap.parse_args(argv)
    if args.check:
        try:
            print(check(args.out.resolve()), end="")
        except BundleError as e:
            print(f"gpu_bundle: {e}", file=sys.stderr)
            return 2
        return 0
    if not re.fullmatch(r"3\.\d+", args.python_version):
        print(f"gpu_bundle: --python-version {args.python_version!r}: expected e.g. 3.12", file=sys.stderr)
        return 2
    try:
        manifest = build(args.out.resolve(), args.python_version, args.prebuilt, not args.no_viewer, args.scenes)
    except BundleError as e:
        print(f"gpu_bundle: {e}", file=sys.stderr)
        return 2
    for part, size in manifest["bytes"].items():
        print(f"{part:8s} {size / MIB:6.1f} MiB")
    print(f"bundle in {args.out} (manifest.json lists {len(manifest['files'])} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
