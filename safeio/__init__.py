"""Safe file output shared by both engines: atomic writes, normal permissions, clear disk errors,
and folders that are removed only by the program that created them.

Every file the project writes goes through :func:`atomic_path` (or the helpers built on it): the data
goes to a temporary file beside the target (``.NAME.<random>.tmp``), is flushed, given the permissions
a plain ``open()`` would have given it (``0o666 & ~umask``) and renamed over the target, so a reader
sees the old file or the new one, never half of one. A kill leaves at most a ``.tmp`` file, which
:func:`remove_stale_temps` cleans up on the next run. A whole folder written at once (a COLMAP model, a
cache) is moved into place the same way by :func:`replace_dir`. Nothing outside this module renames a file
or folder into place (``tests/test_renames_through_safeio.py``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "OwnershipError",
    "WriteError",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "make_owned_dir",
    "remove_owned_dir",
    "remove_stale_temps",
    "replace_dir",
    "umask_mode",
]

TMP_SUFFIX = ".tmp"
_OWNER_MARK = ".created-by"


class WriteError(OSError):
    """A file could not be written (disk full, permission denied, ...); the message names the file."""


class OwnershipError(RuntimeError):
    """A folder was not created by this program, so it is not removed."""


def umask_mode(base: int = 0o666) -> int:
    """``base`` with the process umask applied (what ``open()`` / ``mkdir()`` would give)."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


def _describe(e: OSError, path: Path) -> str:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"cannot write {path}: no space left on the device (free some space and run again)"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {path}: permission denied"
    if e.errno == errno.EFBIG:
        return f"cannot write {path}: file too large for this file system"
    return f"cannot write {path}: {e.strerror or e}"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on a clean exit it is renamed over ``path``.

    Write the whole file to the yielded path (``torch.save(obj, tmp)``, ``image.save(tmp)``, ...).
    On any exception the temporary file is removed and ``path`` is left as it was. ``OSError`` s
    (disk full, permission denied) become :class:`WriteError` with a one-line message naming ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
        os.close(fd)
    except OSError as e:
        raise WriteError(e.errno, _describe(e, path)) from e
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # the data reaches the disk before the rename makes it visible
            os.fsync(f.fileno())
        os.chmod(tmp, umask_mode())  # mkstemp creates 0o600; give what open() would have given
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, WriteError):
            raise
        raise WriteError(e.errno, _describe(e, path)) from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, blob: bytes) -> None:
    """Write ``blob`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(blob)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def remove_stale_temps(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Remove the ``.NAME.*.tmp`` files an interrupted :func:`atomic_path` left in ``folder``.

    Only files of exactly that shape are touched. Returns the removed paths.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    pattern = f".*{TMP_SUFFIX}"
    found = folder.rglob(pattern) if recursive else folder.glob(pattern)
    removed = []
    for p in found:
        if p.is_file() and not p.is_symlink() and p.name.count(".") >= 3:
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def make_owned_dir(path: str | os.PathLike, owner: str) -> Path:
    """Create ``path`` (parents too) and mark it as created by ``owner`` so that it may be removed later.

    An existing folder is only accepted if it carries the same mark; otherwise :class:`OwnershipError`.
    """
    path = Path(path)
    mark = path / _OWNER_MARK
    if path.exists():
        if not path.is_dir():
            raise OwnershipError(f"{path} exists and is not a folder")
        if mark.is_file() and mark.read_text().strip() == owner:
            return path
        if any(path.iterdir()):
            raise OwnershipError(f"{path} exists and was not created by {owner}; choose another folder")
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_text(mark, owner + "\n")
    return path


def remove_owned_dir(path: str | os.PathLike, owner: str) -> bool:
    """Remove ``path`` only if :func:`make_owned_dir` created it for ``owner``; returns whether it did.

    A folder without the mark raises :class:`OwnershipError` and nothing is deleted. A symbolic link
    is never followed.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return False
    if not _owned_by(path, owner):
        raise OwnershipError(f"refusing to delete {path}: it was not created by {owner}")
    shutil.rmtree(path)
    return True


def _owned_by(path: Path, owner: str) -> bool:
    """``path`` is a real folder (not a symbolic link) that :func:`make_owned_dir` marked for ``owner``."""
    mark = path / _OWNER_MARK
    return not path.is_symlink() and path.is_dir() and mark.is_file() and mark.read_text().strip() == owner


def replace_dir(new: str | os.PathLike, target: str | os.PathLike, owner: str | None = None) -> Path:
    """Move the finished folder ``new`` to ``target``, replacing what is there; returns ``target``.

    ``new`` must be on the same file system (create it beside ``target``, e.g. with ``tempfile.mkdtemp(dir=
    target's parent)``). Its files reach the disk first and it gets the permissions ``mkdir`` would have given
    it (``0o777 & ~umask``; ``mkdtemp`` makes folders private). An existing ``target`` is moved aside
    (``.NAME.old-<random>`` beside it), ``new`` renamed into its place, and only then is the old one deleted:
    if the rename fails, the old one is put back and the error raised, so ``target`` is never lost. A symbolic
    link at ``target`` is replaced, never followed. With ``owner``, an existing ``target`` is replaced only if
    :func:`make_owned_dir` made it for that owner (else :class:`OwnershipError`, and nothing is touched).
    ``OSError`` s become :class:`WriteError` naming ``target``.
    """
    new, target = Path(new), Path(target)
    exists = target.exists() or target.is_symlink()
    if owner is not None and exists and not _owned_by(target, owner):
        raise OwnershipError(f"refusing to replace {target}: it was not created by {owner}")
    try:
        for root, _, files in os.walk(new):
            for name in files:
                fd = os.open(os.path.join(root, name), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        os.chmod(new, umask_mode(0o777))
        aside = None
        if exists:
            aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        try:
            if aside is not None:
                os.rename(target, aside / target.name)
            os.rename(new, target)
        except BaseException:
            if aside is not None:
                if not (target.exists() or target.is_symlink()):
                    os.rename(aside / target.name, target)
                aside.rmdir()
            raise
    except OSError as e:
        raise WriteError(e.errno, _describe(e, target)) from e
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    return target
