"""PlayCanvas' ``@playcanvas/splat-transform`` (an independent reader and writer of the splat file
formats), installed once per machine into a cache folder with npm and run with node.

The version is pinned: 2.7.1 is the newest whose ``engines`` accepts node 18-21 (3.x needs node 22).
``splat_transform()`` returns the path of its ``cli.mjs``, or raises ``Unavailable`` with the reason
(no node / npm, node too old, the install failed: no network).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

VERSION = "2.7.1"
CACHE = Path(os.environ.get("EDITKIT_SPLAT_NPM_CACHE", Path.home() / ".cache" / "editkit-splat" / "npm"))
CLI = CACHE / "node_modules" / "@playcanvas" / "splat-transform" / "bin" / "cli.mjs"


class Unavailable(RuntimeError):
    pass


def _installed_version() -> str | None:
    pkg = CLI.parent.parent / "package.json"
    if not pkg.is_file():
        return None
    import json

    return json.loads(pkg.read_text()).get("version")


def splat_transform() -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None:
        raise Unavailable("node is not installed")
    major = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip().lstrip("v")
    if not major.split(".")[0].isdigit() or int(major.split(".")[0]) < 18:
        raise Unavailable(f"node {major} is older than the 18 splat-transform {VERSION} needs")
    if _installed_version() != VERSION:
        if npm is None:
            raise Unavailable("npm is not installed")
        CACHE.mkdir(parents=True, exist_ok=True)
        cmd = [
            npm,
            "install",
            "--prefix",
            str(CACHE),
            "--no-audit",
            "--no-fund",
            f"@playcanvas/splat-transform@{VERSION}",
        ]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            raise Unavailable("npm install of @playcanvas/splat-transform timed out") from None
        if r.returncode != 0 or _installed_version() != VERSION:
            tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["?"]
            raise Unavailable(f"npm install of @playcanvas/splat-transform@{VERSION} failed: {tail[0]}")
    return CLI


def convert(cli: Path, src: Path, dst: Path, *options: str) -> None:
    """``splat-transform src dst`` (overwriting); raises AssertionError with its output on failure."""
    r = subprocess.run(
        ["node", str(cli), "-q", "-w", *options, str(src), str(dst)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0 and dst.exists(), (
        f"splat-transform {src.name} -> {dst.name} failed: {r.stderr[-800:]}"
    )
