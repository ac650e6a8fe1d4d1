"""Catalogue of bad scene inputs: one row per case.

Every row asserts the exit code of `splat train` / `splat prepare`, a message naming the problem and the
file, no traceback, and that nothing was written into the scene folder (nor the output folder). Rows
marked as resource cases (files that once made pycolmap's reader allocate without bound) first run the
scene reader in a subprocess under an address-space limit and a time limit, and only then through the
CLI in this process.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import struct
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from splat.cli import main
from splat.outputs import OutputError
from splat.scene.colmap import SceneError, load_scene, read_reconstruction
from splat.training.trainer import train
from tests.splat.helpers import make_synthetic_scene, small_config

REPO = Path(__file__).resolve().parents[3]
MEMORY_LIMIT = 3 << 30  # bytes of address space for the resource subprocess
TIME_LIMIT = 240  # seconds for all resource rows together (each takes well under a second unloaded)


# ------------------------------------------------------------------------------------------------------
# mutations of a copy of the synthetic scene (16 PINHOLE views 64x48, binary model)
# ------------------------------------------------------------------------------------------------------
def model(scene: Path, name: str) -> Path:
    return scene / "sparse" / "0" / name


def patch(path: Path, offset: int, blob: bytes) -> None:
    data = bytearray(path.read_bytes())
    data[offset : offset + len(blob)] = blob
    path.write_bytes(bytes(data))


def random_bytes(path: Path, n: int = 4096) -> None:
    path.write_bytes(np.random.default_rng(len(path.name)).integers(0, 256, n, dtype=np.uint8).tobytes())


def truncate(path: Path, fraction: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def to_text(scene: Path) -> None:
    rec = read_reconstruction(model(scene, ""))
    for f in model(scene, "").iterdir():
        f.unlink()
    rec.write_text(str(model(scene, "")))


def bad_text_camera(scene: Path) -> None:
    to_text(scene)
    path = model(scene, "cameras.txt")
    path.write_text(path.read_text().replace("PINHOLE", "PINHOLES", 1))


def cut_images_txt(scene: Path) -> None:
    to_text(scene)
    path = model(scene, "images.txt")
    lines = path.read_text().splitlines()
    data = [i for i, line in enumerate(lines) if line and not line.startswith("#")]
    lines[data[0]] = " ".join(lines[data[0]].split()[:6])  # a pose line cut short
    path.write_text("\n".join(lines) + "\n")


def cut_png_body(scene: Path) -> None:
    path = scene / "images" / "007.png"
    truncate(path, 0.6)  # the header (and size) still reads; decoding the pixels fails


def equirectangular(scene: Path) -> None:
    import pycolmap

    rec = read_reconstruction(model(scene, ""))
    for camera_id, cam in list(rec.cameras.items()):
        rec.cameras[camera_id] = pycolmap.Camera.create_from_model_id(
            camera_id, pycolmap.CameraModelId.EQUIRECTANGULAR, 1.0, cam.width, cam.height
        )
    rec.write_binary(str(model(scene, "")))


def empty_sparse0(scene: Path) -> None:
    for f in model(scene, "").iterdir():
        f.unlink()


@dataclass
class Case:
    id: str
    mutate: Callable[[Path], None]
    match: str  # regex the message must match (names the file and the problem)
    resource: bool = False  # run the reader under a memory and time limit first
    command: str = "train"
    scene_arg: Callable[[Path], Path] = lambda scene: scene
    exit_code: int = 2  # bad input (splat.cli documents 0 ok, 1 internal error, 2 bad input)
    absent: str | None = None  # a regex the message must NOT match


CASES = [
    # -- resource cases: the model file declares more than it holds
    Case(
        "empty points3D.bin",
        lambda s: model(s, "points3D.bin").write_bytes(b""),
        r"points3D\.bin is empty",
        True,
    ),
    Case(
        "random points3D.bin",
        lambda s: random_bytes(model(s, "points3D.bin")),
        r"points3D\.bin .*corrupt",
        True,
    ),
    Case("random images.bin", lambda s: random_bytes(model(s, "images.bin")), r"images\.bin .*corrupt", True),
    Case(
        "random cameras.bin", lambda s: random_bytes(model(s, "cameras.bin")), r"cameras\.bin.*corrupt", True
    ),
    Case(
        "truncated cameras.bin",
        lambda s: truncate(model(s, "cameras.bin")),
        r"cameras\.bin .*truncated",
        True,
    ),
    Case(
        "truncated images.bin", lambda s: truncate(model(s, "images.bin")), r"images\.bin .*truncated", True
    ),
    Case(
        "points3D.bin declares 2**40 points",
        lambda s: patch(model(s, "points3D.bin"), 0, struct.pack("<Q", 2**40)),
        r"points3D\.bin declares 1099511627776 3D points but holds only \d+ bytes",
        True,
    ),
    Case(
        "points3D.bin track of 2**40",
        lambda s: patch(model(s, "points3D.bin"), 8 + 43, struct.pack("<Q", 2**40)),
        r"points3D\.bin .*3D point 0 of \d+ declares a track of 1099511627776 observations",
        True,
    ),
    # -- invalid content
    Case(
        "cameras.bin focal 0",
        lambda s: patch(model(s, "cameras.bin"), 32, struct.pack("<2d", 0.0, 0.0)),
        r"cameras\.bin: camera 1 \(PINHOLE\) has focal length \[0\.0, 0\.0\]; it must be positive",
        True,
    ),
    Case(
        "images.bin trailing bytes",
        lambda s: model(s, "images.bin").write_bytes(model(s, "images.bin").read_bytes() + b"\0" * 5),
        r"images\.bin has 5 bytes after its last declared record",
    ),
    Case(
        "NaN camera pose",
        lambda s: patch(model(s, "frames.bin"), 16, struct.pack("<d", float("nan"))),  # qw of frame 1
        r"image 000\.png .*non-finite pose",
    ),
    Case("text model: unknown camera model", bad_text_camera, r"cameras\.txt, line \d+: .*MODEL one of"),
    Case("text model: pose line cut short", cut_images_txt, r"images\.txt, line \d+: expected 'IMAGE_ID"),
    Case(
        "EQUIRECTANGULAR camera",
        equirectangular,
        r"EQUIRECTANGULAR camera model, which cannot be undistorted",
    ),
    # -- missing pieces
    Case(
        "scene does not exist",
        lambda s: None,
        r"scene folder .*nowhere does not exist",
        False,
        "train",
        lambda s: s.parent / "nowhere",
    ),  # fmt: skip
    Case(
        "missing cameras.bin",
        lambda s: model(s, "cameras.bin").unlink(),
        r"sparse/0 is incomplete: missing cameras\.bin",
        absent="already exists",
    ),
    Case(
        "empty sparse/0",
        empty_sparse0,
        r"no COLMAP model .* in .*sparse/0: it is empty",
        absent="already exists",
    ),
    Case(
        "one image missing",
        lambda s: (s / "images" / "005.png").unlink(),
        r"image .*images/005\.png is listed in the COLMAP model but missing",
    ),
    Case(
        "three images missing",
        lambda s: [(s / "images" / f"00{i}.png").unlink() for i in (1, 2, 3)],
        r"3 images listed in the COLMAP model are missing from .*images: 001\.png, 002\.png, 003\.png",
    ),
    Case("PNG with a cut body", cut_png_body, r"cannot decode image .*images/007\.png"),
    # -- splat prepare
    Case(
        "prepare SCENE/images",
        lambda s: None,
        r"images is an images folder; pass the scene folder that holds it",
        command="prepare",
        scene_arg=lambda s: s / "images",
    ),
    Case(
        "prepare missing scene",
        lambda s: None,
        r"scene folder .*nowhere does not exist",
        False,
        "prepare",
        lambda s: s.parent / "nowhere",
    ),  # fmt: skip
    Case(
        "prepare over an existing model",
        lambda s: None,
        r"sparse/0 already exists; pass --overwrite",
        command="prepare",
        absent="overwrite=True",
    ),
]


@pytest.fixture(scope="module")
def base_scene(tmp_path_factory) -> Path:
    return make_synthetic_scene(tmp_path_factory.mktemp("bad-scenes") / "scene")


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    if not root.exists():
        return {}
    return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def _make(base: Path, root: Path, case: Case) -> Path:
    scene = root / "scene"
    shutil.copytree(base, scene)
    case.mutate(scene)
    return scene


@pytest.fixture(scope="module")
def resource_results(base_scene, tmp_path_factory) -> dict[str, dict]:
    """Run the scene reader on every resource case in one subprocess limited to MEMORY_LIMIT bytes of
    address space; returns {case id: {"error": message or None, "seconds": ..., "maxrss_kb": ...}}."""
    root = tmp_path_factory.mktemp("resource")
    scenes = {}
    for i, case in enumerate(c for c in CASES if c.resource):
        scenes[case.id] = str(_make(base_scene, root / str(i), case))
    script = textwrap.dedent(
        f"""
        import json, resource, sys, time
        resource.setrlimit(resource.RLIMIT_AS, ({MEMORY_LIMIT}, {MEMORY_LIMIT}))
        from splat.scene.colmap import SceneError, load_scene
        out = {{}}
        for case_id, scene in json.loads(sys.argv[1]).items():
            t0 = time.perf_counter()
            try:
                load_scene(scene, cache_dir=scene + "-cache")
                error = None
            except SceneError as e:
                error = str(e)
            out[case_id] = {{
                "error": error,
                "seconds": time.perf_counter() - t0,
                "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            }}
        print(json.dumps(out))
        """
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-c", script, json.dumps(scenes)],
        capture_output=True,
        text=True,
        timeout=TIME_LIMIT,
        cwd=REPO,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _argv(case: Case, scene: Path, out: Path) -> list[str]:
    target = str(case.scene_arg(scene))
    if case.command == "prepare":
        return ["prepare", target, "--no-progress", "--num-threads", "1"]
    return ["train", target, "--preset", "cpu-small", "--out", str(out), "--steps", "2", "--device", "cpu"]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_scene(case, base_scene, tmp_path, capsys, request):
    scene = _make(base_scene, tmp_path, case)
    if case.resource:
        result = request.getfixturevalue("resource_results")[case.id]
        assert result["error"] is not None, "the reader accepted a bad model"
        assert result["seconds"] < 30, result
        # peak RSS of the whole process, imports included (about 0.8 GB with torch on a fresh install); the issue
        # measured 14 GB for an empty points3D.bin, and the old reader hit the 3 GB address-space limit
        assert result["maxrss_kb"] < 1_500_000, result
        assert re.search(case.match, result["error"]), result["error"]
    before = _snapshot(scene)
    out = tmp_path / "out"
    code = main(_argv(case, scene, out))
    err = capsys.readouterr().err
    assert code == case.exit_code, err
    assert re.search(case.match, err), err
    assert f"splat {case.command}: error:" in err and "Traceback" not in err
    if case.absent:
        assert not re.search(case.absent, err), err
    assert _snapshot(scene) == before, "the scene folder was modified"
    assert not out.exists(), "the output folder was created on bad input"


# ------------------------------------------------------------------------------------------------------
# inputs that are used with a notice
# ------------------------------------------------------------------------------------------------------
def test_photos_not_in_the_model_are_named_in_one_line(base_scene, tmp_path, caplog):
    scene = tmp_path / "scene"
    shutil.copytree(base_scene, scene)
    for name in ("extra_b.png", "extra_a.png"):
        shutil.copy(scene / "images" / "000.png", scene / "images" / name)
    (scene / "images" / "notes.txt").write_text("not a photo")
    with caplog.at_level(logging.WARNING, logger="splat"):
        loaded = load_scene(scene)
    notices = [r.getMessage() for r in caplog.records if "not used" in r.getMessage()]
    assert len(notices) == 1 and "\n" not in notices[0], notices
    assert notices[0].startswith("2 image(s) in") and notices[0].endswith("extra_a.png, extra_b.png"), notices
    assert len(loaded.views) == 16


def test_non_finite_sfm_point_is_dropped_and_never_becomes_a_gaussian(base_scene, tmp_path, caplog):
    import pycolmap
    import torch

    from splat.gaussians.init import init_gaussians
    from tests.splat.helpers import small_config

    scene = tmp_path / "scene"
    shutil.copytree(base_scene, scene)
    rec = read_reconstruction(model(scene, ""))
    n = rec.num_points3D()
    rec.add_point3D(np.array([np.nan, 0.0, 0.0]), pycolmap.Track(), np.array([10, 20, 30], dtype=np.uint8))
    rec.add_point3D(np.array([0.0, np.inf, 0.0]), pycolmap.Track(), np.array([10, 20, 30], dtype=np.uint8))
    rec.write_binary(str(model(scene, "")))
    with caplog.at_level(logging.WARNING, logger="splat"):
        loaded = load_scene(scene)
    assert loaded.points.shape == (n, 3) and np.isfinite(loaded.points).all()
    assert any(f"dropped 2 of {n + 2} SfM points" in r.getMessage() for r in caplog.records)
    params = init_gaussians(loaded.points, loaded.colors, small_config(tmp_path / "out"))
    assert all(torch.isfinite(v).all() for v in params.values())


def test_all_points_non_finite_is_refused(base_scene, tmp_path):
    scene = tmp_path / "scene"
    shutil.copytree(base_scene, scene)
    path = model(scene, "points3D.bin")
    data = bytearray(path.read_bytes())
    (count,) = struct.unpack_from("<Q", data, 0)
    pos = 8
    for _ in range(count):  # every point's x becomes NaN (id Q, xyz 3d, rgb 3B, error d, track Q + 8 each)
        struct.pack_into("<d", data, pos + 8, float("nan"))
        (length,) = struct.unpack_from("<Q", data, pos + 43)
        pos += 51 + 8 * length
    path.write_bytes(bytes(data))
    with pytest.raises(SceneError, match=rf"all {count} SfM points .* non-finite"):
        load_scene(scene)


# ------------------------------------------------------------------------------------------------------
# the undistortion cache never deletes what it did not create, and never writes into the scene
# ------------------------------------------------------------------------------------------------------
@pytest.fixture
def radial_scene(base_scene, tmp_path) -> Path:
    """The synthetic scene with SIMPLE_RADIAL cameras (k = 0.01), so that it gets undistorted."""
    import pycolmap

    scene = tmp_path / "radial"
    shutil.copytree(base_scene, scene)
    rec = read_reconstruction(model(scene, ""))
    for camera_id, cam in list(rec.cameras.items()):
        new = pycolmap.Camera.create_from_model_id(
            camera_id, pycolmap.CameraModelId.SIMPLE_RADIAL, 1.0, cam.width, cam.height
        )
        new.params = [cam.params[0], cam.params[2], cam.params[3], 0.01]
        rec.cameras[camera_id] = new
    rec.write_binary(str(model(scene, "")))
    return scene


def test_cache_pointed_at_a_user_folder_is_never_deleted(radial_scene, tmp_path):
    user = tmp_path / "my-photos"
    (user / "undistorted").mkdir(parents=True)
    (user / "undistorted" / "holiday.jpg").write_bytes(b"precious")
    (user / "notes.txt").write_text("mine")
    before = _snapshot(user)
    with pytest.raises(SceneError, match=r"my-photos/undistorted exists but was not created by splat"):
        load_scene(radial_scene, cache_dir=user)
    assert _snapshot(user) == before  # nothing deleted, nothing left behind (no temporary folder)


def test_cache_goes_outside_the_scene_and_is_rebuilt_only_when_ours(radial_scene, tmp_path, capfd):
    before = _snapshot(radial_scene)
    loaded = load_scene(radial_scene)  # default cache: $SPLAT_CACHE_DIR (a temporary folder in tests)
    assert loaded.undistorted
    assert Path(os.environ["SPLAT_CACHE_DIR"]) in loaded.model_dir.parents
    assert _snapshot(radial_scene) == before
    assert "undistort" not in capfd.readouterr().err.lower()  # COLMAP's per-image log went to a file
    cache = loaded.model_dir.parent
    assert (cache / "undistort.log").stat().st_size > 0
    # the model changes: the owned cache is replaced, a file of ours inside it goes with it
    (cache / "ours.txt").write_text("x")
    rec = read_reconstruction(model(radial_scene, ""))
    rec.write_binary(str(model(radial_scene, "")))
    os.utime(model(radial_scene, "cameras.bin"), ns=(1, 1))
    again = load_scene(radial_scene)
    assert again.model_dir == loaded.model_dir and not (cache / "ours.txt").exists()
    assert [p.name for p in cache.parent.iterdir() if p.name.startswith(".undistorted-")] == []


def test_image_folder_named_images_inside_images_is_not_suggested(base_scene, tmp_path, capsys):
    """`splat train SCENE/images`: the message points at the scene folder."""
    scene = tmp_path / "scene"
    shutil.copytree(base_scene, scene)
    code = main(["train", str(scene / "images"), "--out", str(tmp_path / "o"), "--steps", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "pass the scene folder" in err and "images/images" not in err, err


# ---------------------------------------------------------------------------------------------------------
# the same through the Python API (splat.train): a clear error naming the problem, and nothing written


@pytest.fixture
def scene(synthetic_scene, tmp_path):
    dst = tmp_path / "scene"
    shutil.copytree(synthetic_scene, dst)
    return dst


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def _expect_error(scene, tmp_path, exc, match):
    before = _files(scene)
    out = tmp_path / "out"
    with pytest.raises(exc, match=match):
        train(scene, small_config(out, steps=2))
    assert not out.exists(), "nothing may be written on bad input"
    assert _files(scene) == before


def test_missing_images_folder(scene, tmp_path):
    shutil.rmtree(scene / "images")
    _expect_error(scene, tmp_path, SceneError, "no images folder")


def test_missing_model_file(scene, tmp_path):
    (scene / "sparse" / "0" / "points3D.bin").unlink()
    _expect_error(scene, tmp_path, SceneError, "missing points3D.bin")


def test_corrupt_model_file(scene, tmp_path):
    (scene / "sparse" / "0" / "images.bin").write_bytes(b"this is not a COLMAP file")
    _expect_error(scene, tmp_path, SceneError, r"images\.bin .*truncated or corrupt")


def test_image_size_disagrees_with_camera(scene, tmp_path):
    path = scene / "images" / "003.png"
    Image.open(path).resize((32, 24)).save(path)
    _expect_error(scene, tmp_path, SceneError, r"003.png is 32x24 pixels but its COLMAP camera is 64x48")


def test_missing_image_file(scene, tmp_path):
    (scene / "images" / "005.png").unlink()
    _expect_error(scene, tmp_path, SceneError, "005.png is listed in the COLMAP model but missing")


def test_model_without_points(scene, tmp_path):
    model = scene / "sparse" / "0"
    rec = read_reconstruction(model)
    for pid in list(rec.point3D_ids()):
        rec.delete_point3D(pid)
    rec.write_binary(str(model))
    _expect_error(scene, tmp_path, SceneError, "no 3D points")


def test_output_folder_cannot_be_written(scene, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    before = _files(scene)
    with pytest.raises(OutputError, match="cannot be written|is not a folder"):
        train(scene, small_config(blocker / "out", steps=2))
    with pytest.raises(OutputError, match="is not a folder"):
        train(scene, small_config(blocker, steps=2))
    assert blocker.read_text() == "x" and _files(scene) == before


def test_bad_scene_config(scene, tmp_path):
    from splat.training.trainer import default_config

    (scene / "splat.json").write_text('{"stepz": 3}')
    with pytest.raises(ValueError, match="unknown option.*stepz"):
        default_config(scene)
    (scene / "splat.json").write_text('{"steps": "many"}')
    with pytest.raises(ValueError, match="steps must be an integer"):
        default_config(scene)
