"""Helpers shared by tests of both engines."""

from __future__ import annotations

import shutil
import struct
import zlib
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]  # fmt: skip


@contextmanager
def one_torch_thread():
    """One torch thread inside the block. The tests' tensors are small (64 px renders, a tiny UNet at 32 px),
    and on a 2-core machine that runs other processes too, two OpenMP threads wait for each other at every op:
    measured there, one tiny-UNet call took 0.13 s with two threads and 0.011 s with one (0.012 s with two on
    an idle machine), a 64 px render and its backward 0.14-0.16 s with two and 0.05-0.06 s with one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def headless_chromium(driver, *extra_args: str):
    """Debian's chromium, headless, launched from the Playwright ``driver`` (Playwright's own browser download
    is not needed) with ``extra_args`` and closed after the block. The test is skipped only when no chromium
    binary is installed (``scripts/test.sh`` installs it)."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (scripts/test.sh installs Debian's chromium)")
    browser = driver.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, *extra_args])
    try:
        yield browser
    finally:
        browser.close()


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares ``width x height`` but whose body is far too small for it: what a crafted
    file looks like to a loader that trusts the header. A decoder must never get that far."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path
