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


def _folder(path, text):
    path.mkdir()
    (path / "sub").mkdir()
    (path / "sub" / "data.txt").write_text(text)
    return path


def test_replace_dir_swaps_a_folder_in_and_follows_the_umask(tmp_path):
    import tempfile

    target = _folder(tmp_path / "model", "old")
    new = tempfile.mkdtemp(dir=tmp_path)  # private (0o700), as mkdtemp makes it
    (tmp_path / new / "data.txt").write_text("new")
    old_umask = os.umask(0o022)
    try:
        assert safeio.replace_dir(new, target) == target
    finally:
        os.umask(old_umask)
    assert (target / "data.txt").read_text() == "new" and not (target / "sub").exists()
    assert (target.stat().st_mode & 0o777) == 0o755
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # nothing left beside it
    fresh = _folder(tmp_path / "fresh", "first")
    safeio.replace_dir(fresh, tmp_path / "placed")  # nothing there before
    assert (tmp_path / "placed" / "sub" / "data.txt").read_text() == "first"


@pytest.mark.parametrize("failing_move", ["new into place", "old aside"])
def test_replace_dir_puts_the_old_folder_back_when_the_move_fails(tmp_path, monkeypatch, failing_move):
    """Mutations caught: the old folder not moved back (target missing after the failure); the folder made to
    hold the old one left behind when moving it there fails."""
    target = _folder(tmp_path / "model", "old")
    new = _folder(tmp_path / ".model.tmp", "new")
    rename = os.rename
    failing_src = new if failing_move == "new into place" else target

    def failing(src, dst):
        if os.fspath(src) == os.fspath(failing_src):
            raise OSError(28, "No space left on device")
        rename(src, dst)

    monkeypatch.setattr(safeio.os, "rename", failing)
    with pytest.raises(safeio.WriteError, match="model: no space left"):
        safeio.replace_dir(new, target)
    assert (target / "sub" / "data.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model.tmp", "model"]  # no ".model.old-*" left


def test_replace_dir_with_an_owner_replaces_only_its_own_folder(tmp_path):
    """Mutation caught: the owner not checked (the user's folder replaced)."""
    foreign = _folder(tmp_path / "undistorted", "precious")
    new = safeio.make_owned_dir(tmp_path / ".undistorted.tmp", owner="splat")
    with pytest.raises(safeio.OwnershipError, match="not created by splat"):
        safeio.replace_dir(new, foreign, owner="splat")
    assert (foreign / "sub" / "data.txt").read_text() == "precious" and new.is_dir()
    owned = safeio.replace_dir(new, tmp_path / "cache", owner="splat")  # nothing there: fine
    again = safeio.make_owned_dir(tmp_path / ".cache.tmp", owner="splat")
    (again / "v2").write_text("x")
    safeio.replace_dir(again, owned, owner="splat")  # its own folder: replaced
    assert (owned / "v2").is_file()
    link = tmp_path / "link"
    link.symlink_to(owned)
    with pytest.raises(safeio.OwnershipError):
        safeio.replace_dir(safeio.make_owned_dir(tmp_path / ".l.tmp", owner="splat"), link, owner="splat")
    assert link.is_symlink() and (owned / "v2").is_file()  # the link and what it points at are untouched
