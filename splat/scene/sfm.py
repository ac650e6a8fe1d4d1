"""Structure from motion with pycolmap: from a folder of photos to a COLMAP sparse model.

`splat prepare SCENE` (and `splat train SCENE` when `SCENE/sparse/0` is missing) runs

    SCENE/images/*.jpg  ->  SIFT features  ->  matching  ->  incremental mapping  ->  SCENE/sparse/0/*.bin

The database and other intermediate files live in a cache folder outside the scene (`cache_dir`, by
default `splat.scene.colmap.default_cache_dir(SCENE)/sfm`: `$SPLAT_CACHE_DIR/scenes/NAME-HASH/sfm` or
`~/.cache/splat/scenes/NAME-HASH/sfm`) that a rerun reuses: features of unchanged images are not extracted
again and image pairs that were already matched are not matched again.

Matching scales with the number of images: `matcher="auto"` matches every pair of a small set
(`exhaustive_max_images`), and above that uses `retrieval`: each image is matched with its neighbours in
file-name order (the sequential pairs, for captures taken in order) and with the images that look most like
it according to a visual index (a vocabulary tree) trained on the scene's own SIFT descriptors, since
pycolmap ships no vocabulary tree and none can be downloaded offline. The pairs grow linearly with the
images instead of quadratically, and retrieval closes loops and connects unordered photos. The model is written as COLMAP returns it (distorted camera
models included); undistortion happens when the scene is read (`splat/scene/colmap.py`).

Example:

    >>> from pathlib import Path
    >>> from splat.scene.sfm import PrepareConfig, prepare
    >>> summary = prepare(Path("scene"), PrepareConfig(camera_model="SIMPLE_PINHOLE"))
    >>> summary.num_registered, summary.num_images
    (36, 36)
"""

from __future__ import annotations

import itertools
import json
import math
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pycolmap
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from safeio import (
    OwnershipError,
    atomic_path,
    atomic_write_text,
    make_owned_dir,
    remove_owned_dir,
    replace_dir,
)
from splat.config import how_to_raise, limit
from splat.scene.colmap import (
    CACHE_OWNER,
    SceneError,
    default_cache_dir,
    header_size,
    photo_pixel_limit,
    stderr_to,
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
# EXIF tag numbers (PIL.ExifTags.Base): orientation, and what tells two cameras apart.
_EXIF_ORIENTATION, _EXIF_MAKE, _EXIF_MODEL, _EXIF_IFD, _EXIF_FOCAL = 0x0112, 0x010F, 0x0110, 0x8769, 0x920A
# Bump when the way the database is filled changes, so that old caches are rebuilt instead of reused.
_CACHE_VERSION = 1


class SfmError(ValueError):
    """SfM could not produce a usable model; the message says what happened and what to try."""


@dataclass
class PrepareConfig:
    """How `splat prepare` turns `SCENE/images` into the COLMAP model `SCENE/sparse/0`."""

    matcher: Literal["auto", "exhaustive", "sequential", "retrieval"] = "auto"
    """Which image pairs to match. exhaustive: every pair (best for few unordered photos, quadratic cost); sequential: each image with its neighbours in file-name order (video frames); retrieval: the sequential pairs plus each image's `retrieval_num_images` most similar images by a vocabulary tree trained on the scene (linear cost, closes loops); auto: exhaustive up to `exhaustive_max_images` images, retrieval above."""
    exhaustive_max_images: int = 30
    """With matcher=auto, the largest image count matched exhaustively (30 images = 435 pairs)."""
    retrieval_num_images: int = 15
    """With matcher=retrieval, how many most similar images each image is matched with."""
    sequential_overlap: int = 10
    """With sequential matching, each image is matched with the next `sequential_overlap` images, plus images 2, 4, 8, ... ahead (COLMAP's quadratic overlap) to close larger gaps."""
    camera_mode: Literal["auto", "single", "per_image"] = "auto"
    """single: one camera shared by all images (one phone, fixed zoom); per_image: each image gets its own intrinsics (zoom, autofocus, mixed cameras); auto: single when all images have the same size and the same EXIF make, model and focal length, else per_image."""
    camera_model: Literal["SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV"] = "SIMPLE_RADIAL"
    """COLMAP camera model to estimate. Distorted models are undistorted by the trainer."""
    max_image_size: int = 1600
    """Images are downscaled to at most this many pixels on their long side for feature extraction (keypoints are scaled back, the model keeps full resolution). Smaller is faster, larger finds more."""
    max_num_features: int = 8192
    """Most SIFT features kept per image."""
    min_registered_fraction: float = 0.5
    """Fail (and write no model) when fewer than this fraction of the images is registered."""
    overwrite: bool = False
    """Replace an existing `SCENE/sparse/0`. Without it an existing model is never touched."""
    cache_dir: Path | None = None
    """Folder for the database, upright copies of EXIF-rotated photos and mapper output; default `$SPLAT_CACHE_DIR/scenes/NAME-HASH/sfm` (else `~/.cache/splat/...`), never inside the scene. A rerun reuses it."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where SIFT extraction and matching run. auto: the GPU when pycolmap was built with CUDA, else CPU."""
    num_threads: int = -1
    """CPU threads for COLMAP; -1 uses all cores."""
    seed: int = 0
    """Random seed of the mapper's RANSAC and initial-pair search (results may still vary slightly with more than one thread)."""
    progress: bool = True
    """Show a progress bar per stage and print a summary at the end."""
    verbose: bool = False
    """Show COLMAP's own log (very long) instead of errors only."""


@dataclass
class SfmSummary:
    """What `prepare` did."""

    model_dir: Path  # SCENE/sparse/0
    num_images: int  # images found in SCENE/images
    num_registered: int  # images with a pose in the written model
    left_out: list[str]  # names of the images that were not registered
    num_points: int  # 3D points in the model
    mean_reprojection_error: float  # pixels
    num_models: int  # models COLMAP returned; the largest one was kept
    matcher: str  # "exhaustive", "sequential" or "retrieval", after resolving "auto"
    camera_mode: str  # "single" or "per_image", after resolving "auto"
    num_extracted: int  # images whose features were extracted in this run (the rest came from the cache)
    num_pairs: int  # image pairs the matcher considered
    num_pairs_matched: int  # pairs matched in this run (the rest came from the cache)
    upright_copies: bool  # True when EXIF-rotated photos were made upright in the cache for SfM
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per stage

    def __str__(self) -> str:
        stages = ", ".join(f"{k} {v:.1f}s" for k, v in self.seconds.items())
        cached = []
        if self.num_extracted < self.num_images:
            cached.append(f"features of {self.num_images - self.num_extracted} images")
        if self.num_pairs_matched < self.num_pairs:
            cached.append(f"{self.num_pairs - self.num_pairs_matched} pairs")
        from_cache = f" ({' and '.join(cached)} from the cache)" if cached else ""
        lines = [
            f"SfM: {self.num_registered}/{self.num_images} images registered, {self.num_points} points, "
            f"mean reprojection error {self.mean_reprojection_error:.2f} px",
            f"  matcher {self.matcher}, camera {self.camera_mode}; features extracted for {self.num_extracted} "
            f"images, {self.num_pairs_matched}/{self.num_pairs} pairs matched{from_cache}",
            f"  time: {stages}",
            f"  model: {self.model_dir}",
        ]
        if self.left_out:
            lines.insert(1, f"  left out: {_name_list(self.left_out)}")
        return "\n".join(lines)


def prepare(scene: Path, cfg: PrepareConfig) -> SfmSummary:
    """Runs SfM on `scene/images` and writes the largest COLMAP model to `scene/sparse/0`.

    Args:
        scene: folder holding `images/` (the photos).
        cfg: options, see `PrepareConfig`.

    Returns:
        An `SfmSummary`; printed too when `cfg.progress` is on.

    Raises:
        SfmError: too few images, unreadable images, an existing model without `overwrite`, nothing
            registered, or fewer than `cfg.min_registered_fraction` of the images registered. No model is
            written in any of these cases.
    """
    scene = Path(scene)
    model_dir = scene / "sparse" / "0"
    seconds: dict[str, float] = {}

    # 1. Check inputs
    _check_scene_folder(scene)
    if model_dir.exists() and not cfg.overwrite:
        raise SfmError(
            f"{model_dir} already exists; pass --overwrite to replace it (the model there is lost), or train on "
            "it as it is."
        )
    if not 0.0 <= cfg.min_registered_fraction <= 1.0:
        raise SfmError(f"--min-registered-fraction must be in [0, 1], got {cfg.min_registered_fraction}")
    for name in ("exhaustive_max_images", "retrieval_num_images", "sequential_overlap"):
        if getattr(cfg, name) < 1:
            raise SfmError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
    device = _resolve_device(cfg.device)
    image_dir = scene / "images"
    names = _list_images(scene, image_dir)
    if len(names) < 3:
        raise SfmError(
            f"{image_dir} holds {len(names)} image(s); SfM needs at least 3 overlapping photos (20-100 is typical)."
        )
    cache = Path(cfg.cache_dir) if cfg.cache_dir is not None else default_cache_dir(scene) / "sfm"
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SfmError(f"cannot create the SfM cache folder {cache}: {e.strerror or e}") from e

    with _colmap_log(cfg.verbose):
        # 2. Read every image once: unreadable files, sizes, EXIF orientation and camera identity
        t0 = time.perf_counter()
        infos = _read_image_infos(image_dir, names, cfg.progress)
        upright = any(info["orientation"] not in (None, 1) for info in infos.values())
        sfm_image_dir = (
            _upright_copies(image_dir, cache / "upright", infos, cfg.progress) if upright else image_dir
        )
        camera_mode = cfg.camera_mode
        if camera_mode == "auto":
            identities = {(info["size"], info["camera"]) for info in infos.values()}
            camera_mode = "single" if len(identities) == 1 else "per_image"
        seconds["read"] = time.perf_counter() - t0

        # 3. Feature extraction (SIFT), reusing the cached database where it still fits
        t0 = time.perf_counter()
        database = cache / "database.db"
        settings = {
            "version": _CACHE_VERSION,
            "camera_mode": camera_mode,
            "camera_model": cfg.camera_model,
            "max_image_size": cfg.max_image_size,
            "max_num_features": cfg.max_num_features,
            "upright": upright,
        }
        fingerprints = {n: infos[n]["fingerprint"] for n in names}
        _invalidate_stale_cache(cache / "manifest.json", database, settings, fingerprints)
        num_extracted = _extract(database, sfm_image_dir, names, camera_mode, cfg, device)
        atomic_write_text(
            cache / "manifest.json", json.dumps({"settings": settings, "images": fingerprints}, indent=1)
        )
        seconds["extract"] = time.perf_counter() - t0

        # 4. Matching: every pair for small sets; neighbours in name order plus retrieved look-alikes above
        t0 = time.perf_counter()
        matcher = cfg.matcher
        if matcher == "auto":
            matcher = "exhaustive" if len(names) <= cfg.exhaustive_max_images else "retrieval"
        ordered = sorted(names, key=_natural_key)
        pairs = _pairs(ordered, matcher, cfg.sequential_overlap)
        if matcher == "retrieval":
            pairs = _merge_pairs(pairs, _retrieved_pairs(database, cache, ordered, cfg))
        num_pairs_matched = _match(database, cache / "pairs.txt", pairs, cfg, device)
        seconds["match"] = time.perf_counter() - t0

        # 5. Incremental mapping; keep the largest model
        t0 = time.perf_counter()
        models = _map(database, sfm_image_dir, cache / "mapping", len(names), cfg)
        seconds["map"] = time.perf_counter() - t0

    # 6. Check the result before writing anything
    if not models:
        raise SfmError(
            f"SfM registered no images of {image_dir}: no initial image pair with enough matches was found "
            f"({len(names)} images). Photos need texture and overlap (each spot seen in 3+ photos from "
            "different positions); try more photos, matcher='exhaustive', or a larger max_image_size."
        )
    rec = max(models.values(), key=lambda r: (r.num_reg_images(), r.num_points3D()))
    registered = {rec.image(i).name for i in rec.reg_image_ids()}
    left_out = [n for n in sorted(names, key=_natural_key) if n not in registered]
    fraction = len(registered) / len(names)
    if fraction < cfg.min_registered_fraction:
        raise SfmError(
            f"SfM registered only {len(registered)}/{len(names)} images of {image_dir} ({fraction:.0%}, below "
            f"min_registered_fraction={cfg.min_registered_fraction:g}). Left out: {_name_list(left_out)}. "
            "Remove photos that do not overlap the others, add photos in between, or lower the threshold."
        )

    # 7. Write SCENE/sparse/0 atomically: into a temp dir beside it, then rename
    _write_model_atomically(rec, model_dir)
    summary = SfmSummary(
        model_dir=model_dir,
        num_images=len(names),
        num_registered=len(registered),
        left_out=left_out,
        num_points=rec.num_points3D(),
        mean_reprojection_error=float(rec.compute_mean_reprojection_error()),
        num_models=len(models),
        matcher=matcher,
        camera_mode=camera_mode,
        num_extracted=num_extracted,
        num_pairs=len(pairs),
        num_pairs_matched=num_pairs_matched,
        upright_copies=upright,
        seconds=seconds,
    )
    if cfg.progress:
        print(summary)
    return summary


# ----------------------------------------------------------------------------------------------------------
# Steps


def _resolve_device(device: str) -> pycolmap.Device:
    if device == "cuda" and not pycolmap.has_cuda:
        raise SfmError("device='cuda' but this pycolmap was built without CUDA; use device='cpu' or 'auto'.")
    if device == "cuda" or (device == "auto" and pycolmap.has_cuda):
        return pycolmap.Device.cuda
    return pycolmap.Device.cpu


def _check_scene_folder(scene: Path) -> None:
    """The scene must exist and be the folder holding images/, not images/ itself."""
    if not scene.exists():
        raise SfmError(f"scene folder {scene} does not exist")
    if not scene.is_dir():
        raise SfmError(f"{scene} is not a folder; pass the scene folder that holds images/")
    if scene.name == "images" and not (scene / "images").is_dir():
        if any(p.suffix.lower() in IMAGE_EXTENSIONS for p in scene.iterdir()):
            raise SfmError(
                f"{scene} is an images folder; pass the scene folder that holds it ({scene.parent}), "
                f"e.g. `splat prepare {scene.parent}`"
            )


def _list_images(scene: Path, image_dir: Path) -> list[str]:
    """Names of the photos directly in `image_dir` (sub-folders are not searched)."""
    if not image_dir.is_dir():
        loose = (
            [p.name for p in scene.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS]
            if scene.is_dir()
            else []
        )
        hint = f" {len(loose)} photos lie directly in {scene}: move them into {image_dir}." if loose else ""
        raise SfmError(f"{image_dir} does not exist; put the photos there.{hint}")
    return sorted(p.name for p in image_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _read_image_infos(image_dir: Path, names: list[str], progress: bool) -> dict[str, dict]:
    """Decodes every image (JPEGs at 1/8 scale, fast) so that broken files fail here, named, not in COLMAP."""
    infos, unreadable, too_large = {}, [], []
    most = limit("image_pixels")
    for name in tqdm(names, desc="read images", unit="img", disable=not progress):
        path = image_dir / name
        try:
            width, height = header_size(path, check=False)  # nothing decoded yet
        except SceneError as e:
            unreadable.append(f"{name} ({e})")
            continue
        if width * height > most:  # refused before COLMAP spends minutes on it, not when training reads it
            too_large.append(f"{name} ({width}x{height})")
            continue
        try:
            with photo_pixel_limit(), Image.open(path) as im:
                size = im.size
                exif = im.getexif()
                im.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
                im.load()
        except Exception as e:  # PIL raises several types for broken files
            unreadable.append(f"{name} ({type(e).__name__}: {e})")
            continue
        focal = exif.get_ifd(_EXIF_IFD).get(_EXIF_FOCAL)
        stat = path.stat()
        infos[name] = {
            "size": size,
            "orientation": exif.get(_EXIF_ORIENTATION),
            "camera": (exif.get(_EXIF_MAKE), exif.get(_EXIF_MODEL), None if focal is None else float(focal)),
            "fingerprint": [stat.st_size, stat.st_mtime_ns],
        }
    if too_large:
        raise SfmError(
            f"{len(too_large)} image(s) in {image_dir} have more than {most / 1e6:g} Mpx: {'; '.join(too_large)}. "
            f"Downscale them, or {how_to_raise('image_pixels')}."
        )
    if unreadable:
        raise SfmError(
            f"{len(unreadable)} image(s) in {image_dir} cannot be read: {'; '.join(unreadable)}. "
            "Remove or re-export them and run again."
        )
    return infos


def _upright_copies(image_dir: Path, out_dir: Path, infos: dict[str, dict], progress: bool) -> Path:
    """COLMAP reads raw pixels and ignores EXIF orientation: SfM runs on upright copies in the cache."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in tqdm(sorted(infos), desc="upright copies", unit="img", disable=not progress):
        src, dst = image_dir / name, out_dir / name
        if dst.exists() and dst.stat().st_mtime_ns >= src.stat().st_mtime_ns:
            continue
        with photo_pixel_limit(), Image.open(src) as im:
            upright = ImageOps.exif_transpose(im)
            kwargs = {"quality": 95} if dst.suffix.lower() in (".jpg", ".jpeg") else {}
            with atomic_path(dst) as tmp:
                upright.save(tmp, format=Image.registered_extensions()[dst.suffix.lower()], **kwargs)
    return out_dir


def _invalidate_stale_cache(manifest: Path, database: Path, settings: dict, fingerprints: dict) -> None:
    """Deletes the cached database when settings changed or a cached image changed or disappeared.

    New images are fine: only they get extracted and matched."""
    if not database.exists():
        return
    try:
        old = json.loads(manifest.read_text())
    except (OSError, ValueError):
        old = None
    stale = old is None or old.get("settings") != settings
    if not stale:
        stale = any(fingerprints.get(n) != fp for n, fp in old.get("images", {}).items())
    if stale:
        database.unlink()


def _extract(
    database: Path, image_dir: Path, names: list[str], camera_mode: str, cfg: PrepareConfig, device
) -> int:
    """SIFT features for the images not in the database yet; returns how many were extracted."""
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = cfg.camera_model
    mode = pycolmap.CameraMode.SINGLE if camera_mode == "single" else pycolmap.CameraMode.PER_IMAGE
    db = pycolmap.Database.open(database)  # creates an empty database when there is none
    done = {im.name for im in db.read_all_images() if db.exists_keypoints(im.image_id)}
    db.close()
    todo = [n for n in names if n not in done]
    options = pycolmap.FeatureExtractionOptions()
    options.max_image_size = cfg.max_image_size
    options.num_threads = cfg.num_threads
    options.sift.max_num_features = cfg.max_num_features
    bar = tqdm(
        total=len(names), initial=len(done), desc="extract features", unit="img", disable=not cfg.progress
    )
    # Import every new image first so that cameras are assigned once over the whole set (a single shared
    # camera stays single although extraction below runs in chunks, which is what gives progress).
    if todo:
        pycolmap.import_images(database, image_dir, camera_mode=mode, image_names=todo, options=reader)
    chunk = 8
    for i in range(0, len(todo), chunk):
        pycolmap.extract_features(
            database, image_dir, image_names=todo[i : i + chunk], camera_mode=mode,
            reader_options=reader, extraction_options=options, device=device,
        )  # fmt: skip
        bar.update(len(todo[i : i + chunk]))
    bar.close()
    db = pycolmap.Database.open(database)
    done = {im.name for im in db.read_all_images() if db.exists_keypoints(im.image_id)}
    db.close()
    if missing := [n for n in names if n not in done]:
        raise SfmError(
            f"COLMAP could not extract features from {len(missing)} image(s) in {image_dir}: "
            f"{_name_list(missing)}. Re-export them as 8-bit JPEG or PNG and run again."
        )
    return len(todo)


def _pairs(names: list[str], matcher: str, overlap: int) -> list[tuple[str, str]]:
    """Image pairs to match; `names` in capture order for sequential matching (and the sequential part of
    retrieval, whose retrieved pairs are added by `_retrieved_pairs`)."""
    if matcher == "exhaustive":
        return list(itertools.combinations(names, 2))
    offsets = sorted(set(range(1, overlap + 1)) | {2**k for k in range(overlap)})
    return [(names[i], names[i + d]) for i in range(len(names)) for d in offsets if i + d < len(names)]


def _merge_pairs(a: list[tuple[str, str]], b: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The union of two pair lists, each unordered pair once, in first-seen order."""
    seen, out = set(), []
    for x, y in itertools.chain(a, b):
        key = (x, y) if x < y else (y, x)
        if x != y and key not in seen:
            seen.add(key)
            out.append((x, y))
    return out


def _retrieved_pairs(
    database: Path, cache: Path, names: list[str], cfg: PrepareConfig
) -> list[tuple[str, str]]:
    """Each image with its `cfg.retrieval_num_images` most similar images by a vocabulary tree.

    pycolmap ships no vocabulary tree (COLMAP downloads one, which cannot happen offline), so one is
    trained here with pycolmap's `VisualIndex` on a sample of the scene's own SIFT descriptors (about 40
    per visual word, as faiss's k-means wants) and written to the cache; COLMAP's vocabulary-tree pair
    generator then queries every image against it."""
    db = pycolmap.Database.open(database)
    try:
        ids = {im.name: im.image_id for im in db.read_all_images()}
        descriptors = [np.asarray(db.read_descriptors(ids[n]).data) for n in names]  # each [M_i, 128] uint8
    finally:
        db.close()
    total = sum(len(d) for d in descriptors)
    words = int(min(4096, max(64, 2 ** round(math.log2(max(total, 1) / 200)))))
    rng = np.random.default_rng(cfg.seed)
    stacked = np.concatenate(descriptors)
    sample = stacked[rng.choice(total, size=min(total, 40 * words), replace=False)].astype(np.float32)
    index = pycolmap.VisualIndex.create(stacked.shape[1], 64)
    options = pycolmap.VisualIndex.BuildOptions()
    options.num_visual_words, options.num_iterations, options.num_rounds = words, 10, 1
    options.num_threads = cfg.num_threads
    with stderr_to(cache / "vocab_tree.log"):  # faiss's k-means warnings
        index.build(
            options, pycolmap.FeatureDescriptorsFloat(type=pycolmap.FeatureExtractorType.SIFT, data=sample)
        )
    tree = cache / "vocab_tree.bin"
    index.write(tree)
    pairing = pycolmap.VocabTreePairingOptions()
    pairing.vocab_tree_path = str(tree)
    pairing.num_images = cfg.retrieval_num_images + 1  # the query image retrieves itself first
    pairing.num_threads = cfg.num_threads
    db = pycolmap.Database.open(database)
    try:
        found = pycolmap.VocabTreePairGenerator(pairing, db).all_pairs()
        by_id = {im.image_id: im.name for im in db.read_all_images()}
    finally:
        db.close()
    wanted = set(names)
    return [
        (by_id[a], by_id[b]) for a, b in found if a != b and by_id.get(a) in wanted and by_id.get(b) in wanted
    ]


def _match(database: Path, pairs_file: Path, pairs: list[tuple[str, str]], cfg: PrepareConfig, device) -> int:
    """Matches and geometrically verifies the pairs not matched yet; returns how many it matched."""
    db = pycolmap.Database.open(database)
    ids = {im.name: im.image_id for im in db.read_all_images()}
    todo = [(a, b) for a, b in pairs if not db.exists_matches(ids[a], ids[b])]
    db.close()
    options = pycolmap.FeatureMatchingOptions()
    options.num_threads = cfg.num_threads
    pairing = pycolmap.ImportedPairingOptions()
    pairing.match_list_path = str(pairs_file)
    bar = tqdm(
        total=len(pairs),
        initial=len(pairs) - len(todo),
        desc="match pairs",
        unit="pair",
        disable=not cfg.progress,
    )
    chunk = max(100, len(pairs) // 20)
    for i in range(0, len(todo), chunk):
        block = todo[i : i + chunk]
        atomic_write_text(pairs_file, "".join(f"{a} {b}\n" for a, b in block))
        pycolmap.match_image_pairs(database, matching_options=options, pairing_options=pairing, device=device)
        bar.update(len(block))
    bar.close()
    return len(todo)


def _map(database: Path, image_dir: Path, out_dir: Path, num_images: int, cfg: PrepareConfig) -> dict:
    """COLMAP's incremental mapper; returns {index: Reconstruction} (empty when nothing was registered)."""
    try:
        remove_owned_dir(out_dir, CACHE_OWNER)  # the previous run's output, only if this program made it
        make_owned_dir(out_dir, CACHE_OWNER)
    except OwnershipError as e:
        raise SfmError(f"{e}; choose another --cache-dir") from None
    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = cfg.num_threads
    options.random_seed = cfg.seed
    options.min_model_size = min(10, max(3, num_images // 4))
    bar = tqdm(total=num_images, desc="map (registered)", unit="img", disable=not cfg.progress)

    def new_model():  # a new model starts from its initial pair
        bar.reset(total=num_images)
        bar.update(2)

    models = pycolmap.incremental_mapping(
        database, image_dir, out_dir, options=options,
        initial_image_pair_callback=new_model, next_image_callback=lambda: bar.update(1),
    )  # fmt: skip
    bar.close()
    return {k: r for k, r in models.items() if r.num_reg_images() > 0}


def _write_model_atomically(rec: pycolmap.Reconstruction, model_dir: Path) -> None:
    """Write the model into a folder beside ``model_dir``, then move it into place (``safeio.replace_dir``: an
    existing model, only replaced with overwrite=True, is deleted once the new one is there)."""
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{model_dir.name}.tmp-", dir=model_dir.parent))
    try:
        rec.write_binary(tmp)
        replace_dir(tmp, model_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------------------------------------
# Helpers


def _natural_key(name: str) -> list:
    """'frame2.jpg' before 'frame10.jpg'."""
    return [int(s) if s.isdigit() else s.lower() for s in re.split(r"(\d+)", name)]


def _name_list(names: list[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


@contextmanager
def _colmap_log(verbose: bool) -> Iterator[None]:
    """COLMAP logs every image and every mapper step; show errors only unless verbose."""
    old = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = 0 if verbose else 2
    try:
        yield
    finally:
        pycolmap.logging.minloglevel = old
