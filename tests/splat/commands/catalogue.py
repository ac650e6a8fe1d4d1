"""What the command-line catalogues share (``test_bad_inputs``, ``test_reliability``): the demo scene, a
snapshot of a folder tree, running ``splat.cli.main`` in-process and checking a refusal."""

from __future__ import annotations

import re
import stat
from pathlib import Path

from splat.cli import main

DEMO = Path(__file__).resolve().parents[3] / "assets" / "demo"


def tree(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with its type, size and modification time: equal before and after means
    nothing was written, replaced or deleted."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[p.relative_to(root).as_posix()] = (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns)
    return out


def run_cli(argv, capsys) -> tuple[int, str]:
    """``splat ARGV`` in-process -> (exit code, stderr); tyro's usage errors count as their exit code."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err


def assert_refused(rc: int, err: str, pattern: str, code: int = 2) -> None:
    """Exit ``code``, a message matching ``pattern``, no traceback."""
    assert rc == code, (rc, err)
    assert re.search(pattern, err), err
    assert "Traceback" not in err, err
