"""The one adapter around pycolmap: a COLMAP scene folder in, pinhole views and SfM points out.

Accepted layout::

    SCENE/images/...              the photos (sub-folders allowed, names as in the model)
    SCENE/sparse/0/cameras.bin    (or .txt) - also accepted directly in SCENE/sparse/
    SCENE/sparse/0/images.bin
    SCENE/sparse/0/points3D.bin

Model files are checked before pycolmap reads them (:func:`check_model_files`): every count a binary
file declares is walked record by record against the file's size, so an empty, truncated or random file
is refused with a message naming it instead of making pycolmap's reader allocate without bound.

Cameras are per image. PINHOLE and SIMPLE_PINHOLE models are used as they are. Every other model COLMAP's
undistorter handles (SIMPLE_RADIAL, RADIAL, OPENCV, FULL_OPENCV, OPENCV_FISHEYE, FOV, SIMPLE_RADIAL_FISHEYE,
RADIAL_FISHEYE, THIN_PRISM_FISHEYE, RAD_TAN_THIN_PRISM_FISHEYE, SIMPLE_DIVISION, DIVISION, EUCM) is
undistorted once with ``pycolmap.undistort_images`` into ``CACHE/undistorted`` (rebuilt when the model
files change). FISHEYE and SIMPLE_FISHEYE, and any fisheye camera whose distortion parameters are all
(near) zero, which the undistorter passes through unchanged although they are not pinhole, are first
rewritten as the same OPENCV_FISHEYE projection. EQUIRECTANGULAR
(360-degree panoramas) is refused: no pinhole camera covers it.

Caches never go into the scene folder. ``CACHE`` is the ``cache_dir`` argument (the trainer passes
``OUT/.cache``), else :func:`default_cache_dir`: ``$SPLAT_CACHE_DIR/scenes/NAME-HASH`` or
``~/.cache/splat/scenes/NAME-HASH`` (``$XDG_CACHE_HOME`` is honoured). Folders the cache owns are created
with :func:`safeio.make_owned_dir` and only removed with :func:`safeio.remove_owned_dir`, so a cache
folder pointed at a user's folder is never deleted. pycolmap's per-image undistortion log goes to
``CACHE/undistorted/undistort.log``.

When ``splat prepare`` made upright copies of EXIF-rotated photos (``CACHE/sfm/upright``), SfM ran on
those, so they are what is read (and undistorted) instead of the raw files.

SfM points with a non-finite coordinate are dropped, with one warning line saying how many; non-finite
or non-positive intrinsics and non-finite poses are refused. Every problem with the input raises
:class:`SceneError` naming the file and what is wrong. Notices (unused photos, dropped points) go to the
``splat`` logger, which prints them to stderr by default.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import mmap
import os
import re
import secrets
import struct
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageOps

from safeio import (
    OwnershipError,
    WriteError,
    atomic_write_text,
    make_owned_dir,
    remove_owned_dir,
    replace_dir,
)
from splat.config import how_to_raise, limit

PINHOLE_MODELS = ("PINHOLE", "SIMPLE_PINHOLE")
# equidistant fisheye models without distortion parameters, which COLMAP's undistorter leaves as they are;
# they are rewritten as the same OPENCV_FISHEYE projection first (see _equidistant_as_opencv_fisheye)
EQUIDISTANT_MODELS = ("SIMPLE_FISHEYE", "FISHEYE")
REFUSED_MODELS = ("EQUIRECTANGULAR",)
MODEL_FILES = ("cameras", "images", "points3D")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
LEGACY_CACHE_DIRNAME = ".splat_cache"  # older versions cached inside the scene; only read from now
CACHE_OWNER = "splat scene cache"
MAX_CAMERA_SIDE = 100_000  # pixels; larger is a corrupt header, not a camera

log = logging.getLogger("splat")


class SceneError(ValueError):
    """A scene folder that cannot be used, with the reason in the message."""


@dataclass
class View:
    """One registered image with a pinhole camera."""

    name: str  # image name as stored in the model, e.g. "0001.jpg"
    image_path: Path
    K: np.ndarray  # [3, 3] float64 intrinsics for an image of (width, height)
    width: int
    height: int
    cam_from_world: np.ndarray  # [4, 4] float64 world-to-camera (OpenCV axes)
    exif_transpose: bool = False  # the file must be EXIF-rotated to match the camera


@dataclass
class SceneModel:
    views: list[View]  # sorted by name
    points: np.ndarray  # [P, 3] float64 SfM points, COLMAP world frame (all finite)
    colors: np.ndarray  # [P, 3] uint8
    model_dir: Path  # the (possibly undistorted) model that was read
    undistorted: bool


# ------------------------------------------------------------------------------------------------------
# cache location
# ------------------------------------------------------------------------------------------------------
def default_cache_root() -> Path:
    """``$SPLAT_CACHE_DIR``, else ``$XDG_CACHE_HOME/splat``, else ``~/.cache/splat``."""
    if os.environ.get("SPLAT_CACHE_DIR"):
        return Path(os.environ["SPLAT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "splat"


def default_cache_dir(scene: str | Path) -> Path:
    """The cache folder of one scene: ``default_cache_root()/scenes/NAME-HASH`` (HASH of its absolute path)."""
    resolved = Path(scene).resolve()
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in resolved.name)[:40] or "scene"
    return default_cache_root() / "scenes" / f"{name}-{digest}"


# ------------------------------------------------------------------------------------------------------
# model files: found, checked, read
# ------------------------------------------------------------------------------------------------------
def find_model_dir(scene: Path) -> Path | None:
    """``SCENE/sparse/0`` (when it exists, complete or not) or ``SCENE/sparse`` holding the model files
    directly, else None (no model: SfM may make one)."""
    sparse0 = scene / "sparse" / "0"
    if sparse0.is_dir():
        return sparse0
    if any((scene / "sparse" / f"cameras{ext}").exists() for ext in (".bin", ".txt")):
        return scene / "sparse"
    return None


@functools.cache
def _camera_models() -> dict:
    """{model id: (name, number of params, indices of the focal lengths)} from pycolmap itself."""
    import pycolmap

    models = {}
    for model in pycolmap.CameraModelId.__members__.values():
        if model.name == "INVALID":
            continue
        cam = pycolmap.Camera.create_from_model_id(1, model, 1.0, 1, 1)
        names = [n.strip() for n in cam.params_info.split(",")]
        focal = tuple(i for i, n in enumerate(names) if n in ("f", "fx", "fy"))
        models[int(model)] = (model.name, len(cam.params), focal)
    return models


def _check_camera(path: Path, camera_id, model: str, nparams: int, focal, width, height, params) -> None:
    where = f"{path}: camera {camera_id} ({model}"
    if not (0 < width <= MAX_CAMERA_SIDE and 0 < height <= MAX_CAMERA_SIDE):
        raise SceneError(f"{where}) has an impossible size {width}x{height} (corrupt file?)")
    if len(params) != nparams:
        raise SceneError(f"{where}) has {len(params)} parameters, the model has {nparams}")
    if not all(np.isfinite(params)):
        raise SceneError(f"{where}) has non-finite parameters {list(params)}")
    if any(params[i] <= 0 for i in focal):
        raise SceneError(
            f"{where}) has focal length {[float(params[i]) for i in focal]}; it must be positive "
            "(truncated or corrupt file?)"
        )


class _Walker:
    """Walks a binary COLMAP file record by record, refusing any read past its end."""

    def __init__(self, path: Path, buf):
        self.path, self.buf, self.pos, self.size = path, buf, 0, len(buf)

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise SceneError(
                f"{self.path} is truncated or corrupt: {what} needs {n} bytes at offset {self.pos}, "
                f"but the file has {self.size} bytes"
            )

    def read(self, fmt: str, what: str) -> tuple:
        n = struct.calcsize(fmt)
        self.need(n, what)
        out = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return out

    def skip(self, n: int, what: str) -> None:
        self.need(n, what)
        self.pos += n

    def count(self, record_min: int, what: str) -> int:
        """A declared record count, checked against the bytes left (each record at least ``record_min``)."""
        (n,) = self.read("<Q", f"the number of {what}")
        left = self.size - self.pos
        if n * record_min > left:
            raise SceneError(
                f"{self.path} declares {n} {what} but holds only {left} bytes after its header, room for at "
                f"most {left // record_min} (truncated or corrupt file?)"
            )
        return n

    def end(self) -> None:
        if self.pos != self.size:
            raise SceneError(
                f"{self.path} has {self.size - self.pos} bytes after its last declared record (corrupt file?)"
            )


def _walk_cameras(w: _Walker) -> None:
    models = _camera_models()
    for _ in range(w.count(24, "cameras")):
        camera_id, model_id, width, height = w.read("<IiQQ", "a camera header")
        if model_id not in models:
            raise SceneError(f"{w.path}: camera {camera_id} has unknown model id {model_id} (corrupt file?)")
        name, nparams, focal = models[model_id]
        params = w.read(f"<{nparams}d", f"the parameters of camera {camera_id}")
        _check_camera(w.path, camera_id, name, nparams, focal, width, height, params)
    w.end()


def _walk_images(w: _Walker) -> None:
    for _ in range(w.count(64 + 1 + 8, "images")):
        (image_id,) = w.read("<I", "an image id")
        w.skip(56 + 4, f"the pose of image {image_id}")
        end = w.buf.find(b"\0", w.pos, w.size)
        if end < 0:
            raise SceneError(f"{w.path} is truncated or corrupt: the name of image {image_id} never ends")
        w.pos = end + 1
        (n,) = w.read("<Q", f"the number of 2D points of image {image_id}")
        w.skip(24 * n, f"{n} 2D points of image {image_id}")
    w.end()


def _walk_points(w: _Walker) -> None:
    buf, size, pos = w.buf, w.size, w.pos + 8
    n = w.count(51, "3D points")
    unpack = struct.Struct("<Q").unpack_from
    for i in range(n):  # id Q, xyz 3d, rgb 3B, error d, track length Q, track 2I each
        if pos + 51 > size:
            w.pos = pos
            w.need(51, f"3D point {i} of {n}")
        (length,) = unpack(buf, pos + 43)
        pos += 51 + 8 * length
        if pos > size:
            raise SceneError(
                f"{w.path} is truncated or corrupt: 3D point {i} of {n} declares a track of {length} "
                f"observations, past the end of the file ({size} bytes)"
            )
    w.pos = pos
    w.end()


def _walk_rigs(w: _Walker) -> None:
    for _ in range(w.count(8, "rigs")):
        rig_id, num_sensors = w.read("<II", "a rig header")
        if num_sensors > 0:
            w.skip(8, f"the reference sensor of rig {rig_id}")
        for _ in range(max(0, num_sensors - 1)):
            _, _, has_pose = w.read("<iIB", f"a sensor of rig {rig_id}")
            if has_pose:
                w.skip(56, f"a sensor pose of rig {rig_id}")
    w.end()


def _walk_frames(w: _Walker) -> None:
    for _ in range(w.count(68, "frames")):
        frame_id, _ = w.read("<II", "a frame header")
        w.skip(56, f"the pose of frame {frame_id}")
        (n,) = w.read("<I", f"the number of data ids of frame {frame_id}")
        w.skip(16 * n, f"{n} data ids of frame {frame_id}")
    w.end()


_BINARY_WALKERS = {
    "cameras": _walk_cameras,
    "images": _walk_images,
    "points3D": _walk_points,
    "rigs": _walk_rigs,
    "frames": _walk_frames,
}


def _check_binary_file(path: Path, walk) -> None:
    size = path.stat().st_size
    if size < 8:
        raise SceneError(
            f"{path} is {'empty' if size == 0 else 'truncated'} ({size} bytes): an interrupted COLMAP write or "
            "a full disk? Export the model again, or move the folder away so that SfM runs on the photos again"
        )
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        walk(_Walker(path, buf))


def _text_lines(path: Path) -> list[str]:
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise SceneError(f"{path} is not a text COLMAP file (not UTF-8 text at byte {e.start})") from None
    if "\0" in text:
        raise SceneError(f"{path} is not a text COLMAP file (it holds NUL bytes)")
    return text.splitlines()


def _numbers(path: Path, lineno: int, tokens: list[str], kind=float) -> list:
    try:
        return [kind(t) for t in tokens]
    except ValueError:
        raise SceneError(f"{path}, line {lineno}: expected numbers, got {' '.join(tokens)!r}") from None


def _check_text_model(model_dir: Path) -> None:
    by_name = {name: (nparams, focal) for name, nparams, focal in _camera_models().values()}
    path = model_dir / "cameras.txt"
    for lineno, line in enumerate(_text_lines(path), 1):
        tokens = line.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        if len(tokens) < 4 or tokens[1] not in by_name:
            raise SceneError(
                f"{path}, line {lineno}: expected 'CAMERA_ID MODEL WIDTH HEIGHT PARAMS...' with MODEL one of "
                f"{', '.join(by_name)}; got {line.strip()[:80]!r}"
            )
        camera_id, width, height = _numbers(path, lineno, [tokens[0], tokens[2], tokens[3]], int)
        params = _numbers(path, lineno, tokens[4:])
        nparams, focal = by_name[tokens[1]]
        _check_camera(path, camera_id, tokens[1], nparams, focal, width, height, params)

    path = model_dir / "images.txt"
    lines = _text_lines(path)
    i = 0
    while i < len(lines):  # as COLMAP reads it: a pose line, then the very next line holds the 2D points
        tokens = lines[i].split()
        i += 1
        if not tokens or tokens[0].startswith("#"):
            continue
        if len(tokens) < 10:
            raise SceneError(
                f"{path}, line {i}: expected 'IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME', got "
                f"{lines[i - 1].strip()[:80]!r}"
            )
        _numbers(path, i, tokens[1:8])
        _numbers(path, i, [tokens[0], tokens[8]], int)
        points = lines[i].split() if i < len(lines) else []
        i += 1
        if len(points) % 3:
            raise SceneError(
                f"{path}, line {i}: 2D points come in triples 'X Y POINT3D_ID' ({len(points)} values)"
            )

    path = model_dir / "points3D.txt"
    for lineno, line in enumerate(_text_lines(path), 1):
        tokens = line.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        if len(tokens) < 8 or (len(tokens) - 8) % 2:
            raise SceneError(
                f"{path}, line {lineno}: expected 'POINT3D_ID X Y Z R G B ERROR (IMAGE_ID POINT2D_IDX)...', "
                f"got {line.strip()[:80]!r}"
            )
        _numbers(path, lineno, tokens[1:4] + tokens[7:8])
        _numbers(path, lineno, tokens[4:7], int)


def check_model_files(model_dir: Path) -> str:
    """Check that ``model_dir`` holds one complete COLMAP model whose files are consistent with their
    declared counts, so that pycolmap can read it without surprises. Returns ``".bin"`` or ``".txt"``."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise SceneError(f"COLMAP model folder {model_dir} does not exist")
    for ext in (".bin", ".txt"):
        present = [f for f in MODEL_FILES if (model_dir / f"{f}{ext}").is_file()]
        if present:
            missing = [f"{f}{ext}" for f in MODEL_FILES if f not in present]
            if missing:
                raise SceneError(
                    f"COLMAP model in {model_dir} is incomplete: missing {', '.join(missing)}. Export the whole "
                    "model again, or move that folder away to run SfM on the photos again"
                )
            break
    else:
        contents = "it is empty" if not any(model_dir.iterdir()) else "it holds no model files"
        raise SceneError(
            f"no COLMAP model (cameras/images/points3D .bin or .txt) in {model_dir}: {contents}. Put the model "
            "there, or delete the empty folder so that `splat train` runs SfM on the photos"
        )
    if ext == ".bin":
        for name, walk in _BINARY_WALKERS.items():
            path = model_dir / f"{name}.bin"
            if name in MODEL_FILES or path.is_file():
                _check_binary_file(path, walk)
    else:
        _check_text_model(model_dir)
    return ext


def read_reconstruction(model_dir: Path):
    """Check (:func:`check_model_files`) and read a binary or text COLMAP model; every failure is a
    :class:`SceneError`."""
    import pycolmap

    model_dir = Path(model_dir)
    ext = check_model_files(model_dir)
    try:
        rec = pycolmap.Reconstruction()
        (rec.read_binary if ext == ".bin" else rec.read_text)(str(model_dir))
    except (ValueError, RuntimeError, IndexError, OSError) as e:  # pycolmap's checks raise these
        raise SceneError(
            f"cannot read the COLMAP model in {model_dir} (corrupt or inconsistent?): {e}"
        ) from e
    if rec.num_reg_images() == 0:
        raise SceneError(f"COLMAP model in {model_dir} has no registered images")
    return rec


# ------------------------------------------------------------------------------------------------------
# cameras and images
# ------------------------------------------------------------------------------------------------------
def _pinhole_K(camera) -> np.ndarray:
    name = camera.model.name
    p = np.asarray(camera.params, dtype=np.float64)
    if name == "SIMPLE_PINHOLE":
        fx = fy = p[0]
        cx, cy = p[1], p[2]
    elif name == "PINHOLE":
        fx, fy, cx, cy = p[:4]
    else:
        raise SceneError(f"camera {camera.camera_id} has model {name}, expected a pinhole model")
    K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=np.float64)
    if not np.isfinite(K).all() or fx <= 0 or fy <= 0:
        raise SceneError(
            f"camera {camera.camera_id} has invalid intrinsics fx={fx}, fy={fy}, cx={cx}, cy={cy}"
        )
    return K


def header_size(path: Path, check: bool = True) -> tuple[int, int]:
    """``(width, height)`` as the image's header declares them, nothing decoded; larger than
    ``SPLAT_MAX_IMAGE_PIXELS`` is a :class:`SceneError` (checked here, before any decoder runs: PIL's own
    decompression-bomb check, which would otherwise refuse first without the size, waits for this one),
    unless ``check`` is false (the caller then compares with ``limit("image_pixels")`` itself)."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # only the header is read below
    try:
        with Image.open(path) as im:
            width, height = im.size
    except FileNotFoundError:
        raise SceneError(f"image {path} is listed in the COLMAP model but missing") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise SceneError(f"cannot read image {path}: {e}") from e
    finally:
        Image.MAX_IMAGE_PIXELS = saved
    most = limit("image_pixels")
    if check and width * height > most:
        raise SceneError(
            f"image {path} is {width}x{height} pixels ({width * height / 1e6:.0f} Mpx), more than allowed: "
            f"at most {most / 1e6:.0f} Mpx; {how_to_raise('image_pixels')} (or downscale the photos)"
        )
    return width, height


@contextlib.contextmanager
def photo_pixel_limit() -> Iterator[None]:
    """Inside, PIL's decompression-bomb check is ``SPLAT_MAX_IMAGE_PIXELS`` instead of PIL's own 89.5 Mpx, and
    a photo over it is an error (PIL alone only warns up to twice its limit). A photo our limit allows (raised,
    say, for a 200 MP phone's photos) then decodes without a warning, and one over it (a file swapped after
    :func:`header_size` read it) never decodes. Enter it in one thread around all decoding, worker threads
    included: PIL's limit and the warning filters are process-wide."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = limit("image_pixels")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def check_image_size(path: Path, width: int, height: int) -> bool:
    """Check ``path`` is an image of the camera's size. Returns True if it needs its EXIF rotation."""
    header_size(path)  # nothing decoded beyond the limit
    try:
        with photo_pixel_limit(), Image.open(path) as im:
            raw = im.size
            if raw == (width, height):
                return False
            oriented = ImageOps.exif_transpose(im).size
    except FileNotFoundError:
        raise SceneError(f"image {path} is listed in the COLMAP model but missing") from None
    except (OSError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise SceneError(f"cannot read image {path}: {e}") from e
    if oriented == (width, height):
        return True
    raise SceneError(
        f"image {path} is {raw[0]}x{raw[1]} pixels but its COLMAP camera is {width}x{height}; "
        "the photos and the model do not belong together (resized or replaced images?)"
    )


def _name_list(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def list_images(image_dir: Path) -> list[str]:
    """Photo names under ``image_dir`` (sub-folders included, hidden files skipped), as POSIX paths."""
    names = []
    for root, dirs, files in os.walk(image_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = Path(root).relative_to(image_dir)
        for f in files:
            if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTENSIONS:
                names.append((rel / f).as_posix())
    return sorted(names)


def _check_names_inside(model_dir: Path, names: list[str]) -> None:
    """An image name is a path inside the images folder: absolute names and ``..`` are refused (a crafted
    ``images.bin`` must not make the run read, or the undistortion write, files elsewhere)."""
    for name in names:
        pure = PurePosixPath(name.replace("\\", "/"))
        if pure.is_absolute() or ".." in pure.parts or re.match(r"^[A-Za-z]:", name) or not name.strip():
            raise SceneError(f"COLMAP model {model_dir}: image name {name} leaves the images folder "
                             "(absolute, or with '..'); image names are paths inside it")  # fmt: skip


def _check_images_present(image_dir: Path, model_names: list[str], all_model_names: set[str]) -> None:
    """Model images missing on disk: an error. Photos on disk the model does not use: one notice."""
    on_disk = set(list_images(image_dir))
    missing = [n for n in model_names if n not in on_disk and not (image_dir / n).is_file()]
    if len(missing) == 1:
        raise SceneError(f"image {image_dir / missing[0]} is listed in the COLMAP model but missing")
    if missing:
        raise SceneError(
            f"{len(missing)} images listed in the COLMAP model are missing from {image_dir}: "
            f"{_name_list(missing)}. Restore them, or point the model at the right images folder"
        )
    used = set(model_names)
    unused = sorted(n for n in on_disk if n not in used)
    if unused:
        why = {n: "not registered" if n in all_model_names else "not in the model" for n in unused}
        kinds = sorted(set(why.values()))
        log.warning(
            "%d image(s) in %s are %s and not used: %s",
            len(unused),
            image_dir,
            " or ".join(kinds) if len(kinds) > 1 else kinds[0],
            _name_list(unused),
        )


# ------------------------------------------------------------------------------------------------------
# undistortion cache
# ------------------------------------------------------------------------------------------------------
def _fingerprint(model_dir: Path, image_dir: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(model_dir.iterdir()):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    h.update(str(image_dir.resolve()).encode())
    return h.hexdigest()


@contextlib.contextmanager
def stderr_to(path: Path) -> Iterator[None]:
    """Send everything written to file descriptor 2 (COLMAP's glog lines) to ``path`` meanwhile."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(path, "ab") as f:
            os.dup2(f.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def _equidistant_as_opencv_fisheye(rec) -> bool:
    """Rewrite the fisheye cameras that COLMAP's undistorter would pass through unchanged as the same
    projection in a model it converts to pinhole.

    The undistorter skips every camera whose distortion parameters are all below 1e-8
    (``Camera::IsUndistorted``); for a fisheye model that is still the equidistant projection, not a
    pinhole one. FISHEYE and SIMPLE_FISHEYE have no distortion parameters at all. Each such camera becomes
    OPENCV_FISHEYE with the same focal lengths and centre and k1 = 2e-8 (k2..k4 = 0): the projection moves
    by at most f * theta^3 * 2e-8 pixels, under 1e-5 px for any real lens."""
    import pycolmap

    changed = False
    for camera_id, cam in list(rec.cameras.items()):
        name = cam.model.name
        extra = [i for i, n in enumerate(_param_names(cam)) if n not in ("f", "fx", "fy", "cx", "cy")]
        p = np.asarray(cam.params, dtype=np.float64)
        if name not in EQUIDISTANT_MODELS and not ("FISHEYE" in name and np.all(np.abs(p[extra]) <= 1e-8)):
            continue
        names = _param_names(cam)
        f = {n: p[i] for i, n in enumerate(names)}
        fx, fy = (f["f"], f["f"]) if "f" in f else (f["fx"], f["fy"])
        new = pycolmap.Camera.create_from_model_id(
            camera_id, pycolmap.CameraModelId.OPENCV_FISHEYE, 1.0, cam.width, cam.height
        )
        new.params = [fx, fy, f["cx"], f["cy"], 2e-8, 0.0, 0.0, 0.0]
        rec.cameras[camera_id] = new
        changed = True
    return changed


def _param_names(camera) -> list[str]:
    return [n.strip() for n in camera.params_info.split(",")]


def undistort_to_cache(model_dir: Path, image_dir: Path, cache_root: Path) -> Path:
    """Undistort a model with non-pinhole cameras into ``cache_root/undistorted`` (atomically) and return it.

    ``cache_root`` may be any folder; only ``undistorted`` (and its temporary twin) are created, owned
    and replaced by this function. An ``undistorted`` folder not created here is never deleted."""
    import pycolmap

    cache_root = Path(cache_root)
    target = cache_root / "undistorted"
    fp = _fingerprint(model_dir, image_dir)
    stamp = target / "source.json"
    if stamp.is_file():
        try:
            if json.loads(stamp.read_text()).get("fingerprint") == fp:
                return target
        except (OSError, ValueError, AttributeError):
            pass  # unreadable stamp: rebuild
    try:
        cache_root.mkdir(parents=True, exist_ok=True)
        tmp = make_owned_dir(cache_root / f".undistorted-{os.getpid()}-{secrets.token_hex(4)}", CACHE_OWNER)
    except (OSError, OwnershipError) as e:
        raise SceneError(f"cannot create the undistortion cache in {cache_root}: {e}") from e
    logfile = tmp / "undistort.log"
    try:
        source = model_dir
        rec = pycolmap.Reconstruction()
        (rec.read_binary if (model_dir / "cameras.bin").is_file() else rec.read_text)(str(model_dir))
        if _equidistant_as_opencv_fisheye(rec):
            source = tmp / "input"
            source.mkdir()
            rec.write_binary(str(source))
        with stderr_to(logfile):
            pycolmap.undistort_images(output_path=str(tmp), input_path=str(source), image_path=str(image_dir))
        atomic_write_text(tmp / "source.json", json.dumps({"fingerprint": fp, "source": str(model_dir)}))
        replace_dir(tmp, target, owner=CACHE_OWNER)  # the old cache goes only once the new one is in place
    except OwnershipError:
        remove_owned_dir(tmp, CACHE_OWNER)
        raise SceneError(
            f"{target} exists but was not created by splat, so it is not replaced: choose another cache folder "
            "or remove it yourself"
        ) from None
    except (ValueError, RuntimeError, OSError) as e:  # pycolmap's errors, and WriteError
        detail = _tail(logfile)
        remove_owned_dir(tmp, CACHE_OWNER)
        if isinstance(e, WriteError):
            raise SceneError(str(e)) from e
        raise SceneError(
            f"undistorting {model_dir} failed: {e}" + (f" (COLMAP: {detail})" if detail else "")
        ) from e
    except BaseException:
        remove_owned_dir(tmp, CACHE_OWNER)
        raise
    return target


def upright_image_dir(scene: Path, image_dir: Path, names: list[str], cache_dir: str | Path | None) -> Path:
    """The folder of upright copies that ``splat.scene.sfm.prepare`` wrote for EXIF-rotated photos
    (``default_cache_dir(scene)/sfm/upright``, ``CACHE/upright``, or the older ``SCENE/.splat_cache/upright``)
    when it holds an up-to-date copy of every image in ``names``; else ``image_dir``. SfM ran on those
    copies, so the model's pixels are theirs."""
    roots = [default_cache_dir(scene) / "sfm", scene / LEGACY_CACHE_DIRNAME]
    roots += [Path(cache_dir)] if cache_dir is not None else []
    for upright in (root / "upright" for root in roots):
        if not upright.is_dir():
            continue
        try:
            fresh = all((upright / n).stat().st_mtime_ns >= (image_dir / n).stat().st_mtime_ns for n in names)
        except FileNotFoundError:
            fresh = False
        if fresh:
            return upright
    return image_dir


# ------------------------------------------------------------------------------------------------------
# the scene
# ------------------------------------------------------------------------------------------------------
def _finite_points(rec, model_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    ids = list(rec.point3D_ids())
    points = np.array([rec.points3D[j].xyz for j in ids], dtype=np.float64).reshape(-1, 3)
    colors = np.array([rec.points3D[j].color for j in ids], dtype=np.uint8).reshape(-1, 3)
    finite = np.isfinite(points).all(axis=1)
    if not finite.all():
        bad = int((~finite).sum())
        if bad == len(points):
            raise SceneError(f"all {bad} SfM points in {model_dir} have non-finite coordinates (NaN or inf)")
        log.warning(
            "dropped %d of %d SfM points in %s with non-finite coordinates (NaN or inf)",
            bad,
            len(points),
            model_dir,
        )
        points, colors = points[finite], colors[finite]
    return points, colors


def check_scene_folder(scene: Path, images: str = "images") -> None:
    """The scene folder exists and is not its own images folder (a common slip: `splat train SCENE/images`)."""
    scene = Path(scene)
    if not scene.exists():
        raise SceneError(f"scene folder {scene} does not exist")
    if not scene.is_dir():
        raise SceneError(f"scene {scene} is not a folder; pass the folder that holds {images}/ and sparse/")
    if scene.name == images and not (scene / images).is_dir() and list_images(scene):
        raise SceneError(
            f"{scene} is an images folder; pass the scene folder that holds it ({scene.parent}), "
            f"not the photos themselves"
        )


def load_scene(scene: str | Path, images: str = "images", cache_dir: str | Path | None = None) -> SceneModel:
    """Read ``scene`` into pinhole views (undistorting when needed) and SfM points; validate everything.

    Args:
        scene: the scene folder (holding ``images/`` and ``sparse/0``).
        images: name of the images sub-folder.
        cache_dir: where the undistortion cache goes (``cache_dir/undistorted``); default
            :func:`default_cache_dir` of the scene. Never inside the scene.
    """
    scene = Path(scene)
    check_scene_folder(scene, images)
    image_dir = scene / images
    if not image_dir.is_dir():
        raise SceneError(f"scene {scene} has no images folder ({image_dir} is missing)")
    model_dir = find_model_dir(scene)
    if model_dir is None:
        raise SceneError(f"scene {scene} has no COLMAP model: expected {scene / 'sparse' / '0'}/cameras.bin")
    rec = read_reconstruction(model_dir)
    if rec.num_points3D() == 0:
        raise SceneError(f"COLMAP model in {model_dir} has no 3D points; Gaussians are initialised from them")

    reg_ids = sorted(rec.reg_image_ids(), key=lambda i: rec.images[i].name)
    models = {rec.cameras[rec.images[i].camera_id].model.name for i in reg_ids}
    if refused := sorted(models & set(REFUSED_MODELS)):
        raise SceneError(
            f"COLMAP model in {model_dir} uses the {', '.join(refused)} camera model, which cannot be undistorted "
            "to a pinhole camera (a 360-degree panorama); convert the images to perspective views first"
        )
    names = [rec.images[i].name for i in reg_ids]
    _check_names_inside(model_dir, [im.name for im in rec.images.values()])
    _check_images_present(image_dir, names, {im.name for im in rec.images.values()})
    image_dir = upright_image_dir(scene, image_dir, names, cache_dir)
    # validate every registered image before anything is written (e.g. the undistortion cache)
    for i in reg_ids:
        img = rec.images[i]
        cam = rec.cameras[img.camera_id]
        check_image_size(image_dir / img.name, cam.width, cam.height)

    undistorted = any(m not in PINHOLE_MODELS for m in models)
    if undistorted:
        cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir(scene)
        out = undistort_to_cache(model_dir, image_dir, cache_root)
        model_dir, image_dir = out / "sparse", out / "images"
        rec = read_reconstruction(model_dir)
        reg_ids = sorted(rec.reg_image_ids(), key=lambda i: rec.images[i].name)

    views = []
    for i in reg_ids:
        img = rec.images[i]
        cam = rec.cameras[img.camera_id]
        path = image_dir / img.name
        transpose = check_image_size(path, cam.width, cam.height)
        w2c = np.eye(4)
        w2c[:3, :] = img.cam_from_world().matrix()
        if not np.isfinite(w2c).all():
            raise SceneError(f"image {img.name} in {model_dir} has a non-finite pose (NaN or inf)")
        views.append(View(img.name, path, _pinhole_K(cam), cam.width, cam.height, w2c, transpose))

    points, colors = _finite_points(rec, model_dir)
    return SceneModel(views, points, colors, model_dir, undistorted)
