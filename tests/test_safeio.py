"""safeio: atomic writes keep the old file on failure, follow the umask, and owned folders are the only
ones ever removed."""

import os

import pytest

import safeio


def test_atomic_write_follows_umask_and_replaces(tmp_path):
    old = os.umask(0o022)
    try:
        target = tmp_path / "sub" / "a.txt"
        safeio.atomic_write_text(target, "one")
        safeio.atomic_write_text(target, "two")
        assert target.read_text() == "two"
        assert (target.stat().st_mode & 0o777) == 0o644
        os.umask(0o077)
        safeio.atomic_write_text(target, "three")
        assert (target.stat().st_mode & 0o777) == 0o600
    finally:
        os.umask(old)
    assert [p.name for p in target.parent.iterdir()] == ["a.txt"]


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a.bin"
    safeio.atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError):
        with safeio.atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_write_error_names_the_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(safeio.WriteError, match="file"):
        safeio.atomic_write_text(blocker / "inside.txt", "y")  # parent is a file


def test_remove_stale_temps_only_touches_our_temporaries(tmp_path):
    (tmp_path / "d").mkdir()
    stale = tmp_path / "d" / ".ckpt.pt.abc123.tmp"
    stale.write_text("x")
    keep = [tmp_path / "notes.tmp", tmp_path / ".hidden", tmp_path / "d" / "ckpt.pt"]
    for p in keep:
        p.write_text("x")
    removed = safeio.remove_stale_temps(tmp_path)
    assert removed == [stale] and not stale.exists()
    assert all(p.exists() for p in keep)


def test_owned_dirs(tmp_path):
    cache = safeio.make_owned_dir(tmp_path / "cache", owner="splat")
    (cache / "x").write_text("x")
    assert safeio.make_owned_dir(cache, owner="splat") == cache  # reuse is fine
    assert safeio.remove_owned_dir(cache, owner="splat") and not cache.exists()
    foreign = tmp_path / "user"
    foreign.mkdir()
    (foreign / "precious").write_text("x")
    with pytest.raises(safeio.OwnershipError):
        safeio.remove_owned_dir(foreign, owner="splat")
    with pytest.raises(safeio.OwnershipError):
        safeio.make_owned_dir(foreign, owner="splat")
    link = tmp_path / "link"
    link.symlink_to(cache.parent)
    with pytest.raises(safeio.OwnershipError):
        safeio.remove_owned_dir(link, owner="splat")
    assert (foreign / "precious").exists()
