"""SfM with pycolmap (`splat.scene.sfm.prepare`): real photos, failures that must be clear, the cache, EXIF.

The real-photo tests read `../shared/scenes/cup` in place (never copied into the repository) and copy a
subset into a temporary folder."""

import shutil
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from PIL import Image

from splat.scene.colmap import default_cache_dir
from splat.scene.sfm import PrepareConfig, SfmError, _natural_key, _pairs, prepare
from tests.helpers import png_header_only
from tests.splat.helpers import SHARED_SCENES

SCENES = SHARED_SCENES
needs_cup = pytest.mark.skipif(
    not (SCENES / "cup" / "sparse" / "0").is_dir(), reason="../shared/scenes/cup missing"
)


def cup_names(step: int, count: int) -> list[str]:
    names = sorted((p.name for p in (SCENES / "cup" / "images").glob("*.jpg")), key=_natural_key)
    return names[::step][:count]


def photo_scene(root: Path, names: list[str], size: int | None = None) -> Path:
    """A photo-only scene `root/images` holding cup photos (downscaled to `size` px on the long side)."""
    (root / "images").mkdir(parents=True)
    for name in names:
        if size is None:
            shutil.copy(SCENES / "cup" / "images" / name, root / "images" / name)
        else:
            with Image.open(SCENES / "cup" / "images" / name) as im:
                im.thumbnail((size, size), Image.LANCZOS)
                im.save(root / "images" / name, quality=92)
    return root


def quiet(**kwargs) -> PrepareConfig:
    return PrepareConfig(progress=False, num_threads=2, **kwargs)


CUP_COUNT = 16


@pytest.fixture(scope="module")
def cup_run(tmp_path_factory):
    """SfM once on 16 cup photos (every second one of the capture, downscaled from 800x600 to 480x360 as the
    other cup tests do; per-image cameras as in the shipped model). Measured with mapper seeds 0-3: 16/16
    registered, ~850 points, camera centres within 0.3 % of the camera extent of the shipped model's; about
    a sixth of the CPU time of 24 photos at full size."""
    if not (SCENES / "cup" / "sparse" / "0").is_dir():
        pytest.skip("../shared/scenes/cup missing")
    scene = photo_scene(tmp_path_factory.mktemp("cup"), cup_names(step=2, count=CUP_COUNT), size=480)
    cfg = quiet(camera_mode="per_image")
    return scene, cfg, prepare(scene, cfg)


@needs_cup
def test_cup_registers_and_matches_reference_poses(cup_run):
    scene, _, summary = cup_run
    assert summary.num_images == CUP_COUNT
    assert summary.num_registered >= 0.9 * CUP_COUNT, summary
    assert summary.matcher == "exhaustive" and summary.num_pairs == CUP_COUNT * (CUP_COUNT - 1) // 2
    assert 0 < summary.mean_reprojection_error < 1.5
    rec = pycolmap.Reconstruction(scene / "sparse" / "0")
    assert rec.num_reg_images() == summary.num_registered and rec.num_points3D() == summary.num_points > 500
    assert [p.name for p in (scene / "sparse").iterdir()] == ["0"]  # no temp dirs left beside the model

    # Similarity-align our cameras to the shipped model's and compare the camera centres.
    ref = pycolmap.Reconstruction(SCENES / "cup" / "sparse" / "0")
    ref_centres = {im.name: im.projection_center() for im in ref.images.values()}
    extent = np.linalg.norm(
        np.ptp(np.stack(list(ref_centres.values())), axis=0)
    )  # bbox diagonal of all cameras
    sim = pycolmap.align_reconstructions_via_proj_centers(rec, ref, max_proj_center_error=0.05 * extent)
    assert sim is not None
    rec.transform(sim)
    errors = [
        np.linalg.norm(rec.image(i).projection_center() - ref_centres[rec.image(i).name])
        for i in rec.reg_image_ids()
    ]
    assert max(errors) < 0.02 * extent, (max(errors) / extent, np.median(errors) / extent)


@needs_cup
def test_existing_model_is_not_overwritten_and_rerun_reuses_cache(cup_run):
    scene, cfg, first = cup_run
    model = scene / "sparse" / "0"
    before = {p.name: p.stat().st_mtime_ns for p in model.iterdir()}
    with pytest.raises(SfmError, match="already exists.*overwrite"):
        prepare(scene, cfg)
    assert {p.name: p.stat().st_mtime_ns for p in model.iterdir()} == before

    cfg.overwrite = True
    again = prepare(scene, cfg)
    assert again.num_extracted == 0 and again.num_pairs_matched == 0  # features and matches from the cache
    assert f"(features of {CUP_COUNT} images and" in str(again) and "pairs from the cache)" in str(again)
    assert first.num_extracted == CUP_COUNT and first.num_pairs_matched == first.num_pairs
    assert again.seconds["extract"] + again.seconds["match"] < 0.5 * (
        first.seconds["extract"] + first.seconds["match"]
    )
    assert abs(again.num_registered - first.num_registered) <= 1
    assert {p.name: p.stat().st_mtime_ns for p in model.iterdir()} != before  # replaced
    assert [p.name for p in (scene / "sparse").iterdir()] == ["0"]


def test_noise_images_fail_clearly_and_write_no_model(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    for i in range(6):
        pixels = rng.integers(0, 256, size=(120, 160, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "images" / f"noise_{i}.png")
    with pytest.raises(SfmError, match="registered no images"):
        prepare(tmp_path, quiet())
    assert not (tmp_path / "sparse").exists()


def test_too_few_and_unreadable_images_fail_with_names(tmp_path):
    (tmp_path / "images").mkdir()
    for i in range(2):
        Image.new("RGB", (64, 48), (i * 100, 50, 50)).save(tmp_path / "images" / f"ok_{i}.jpg")
    with pytest.raises(SfmError, match="holds 2 image.*at least 3"):
        prepare(tmp_path, quiet())
    Image.new("RGB", (64, 48)).save(tmp_path / "images" / "ok_2.jpg")
    data = (tmp_path / "images" / "ok_2.jpg").read_bytes()
    (tmp_path / "images" / "broken.jpg").write_bytes(data[: len(data) // 3])
    (tmp_path / "images" / "notes.txt").write_text("not a photo, ignored")
    with pytest.raises(SfmError, match=r"1 image\(s\).*cannot be read: broken\.jpg"):
        prepare(tmp_path, quiet())
    assert not (tmp_path / "sparse").exists()


def test_missing_images_folder_points_at_loose_photos(tmp_path):
    Image.new("RGB", (64, 48)).save(tmp_path / "a.jpg")
    with pytest.raises(SfmError, match="1 photos lie directly in .*move them into"):
        prepare(tmp_path, quiet())


@needs_cup
def test_exif_rotated_photos_are_made_upright(tmp_path):
    """Half of the photos are stored sideways with an EXIF orientation that says how to turn them back. Eight
    photos (measured with mapper seeds 0 and 1: 8/8 registered; twelve took 1.8 times the CPU time)."""
    scene = photo_scene(tmp_path, cup_names(step=2, count=8), size=480)
    for name in sorted((scene / "images").iterdir())[::2]:
        with Image.open(name) as im:
            sideways = im.transpose(Image.Transpose.ROTATE_90)  # counter-clockwise; orientation 6 undoes it
        exif = Image.Exif()
        exif[0x0112] = 6
        sideways.save(name, quality=92, exif=exif)
    summary = prepare(scene, quiet(camera_mode="single", min_registered_fraction=0.8))
    assert summary.upright_copies and summary.num_registered >= 7, summary
    rec = pycolmap.Reconstruction(scene / "sparse" / "0")
    assert {(c.width, c.height) for c in rec.cameras.values()} == {(480, 360)}  # landscape, as shot


def test_pairs_follow_capture_order():
    names = sorted(["f10.jpg", "f2.jpg", "f1.jpg", "f3.jpg"], key=_natural_key)
    assert names == ["f1.jpg", "f2.jpg", "f3.jpg", "f10.jpg"]
    assert len(_pairs(names, "exhaustive", 10)) == 6
    seq = _pairs([f"{i}.jpg" for i in range(20)], "sequential", overlap=3)
    # neighbours 1..3 ahead plus quadratic offsets 1, 2, 4 ahead: offsets {1, 2, 3, 4}
    assert ("0.jpg", "4.jpg") in seq and ("0.jpg", "5.jpg") not in seq
    assert len(seq) == 19 + 18 + 17 + 16


DEMO_IMAGES = Path(__file__).resolve().parents[3] / "assets" / "demo" / "images"


@pytest.mark.skipif(not DEMO_IMAGES.is_dir(), reason="assets/demo/images missing")
def test_splat_train_on_photos_only_runs_sfm_then_trains(tmp_path, capsys):
    """`splat train SCENE` with SCENE/images alone: SfM writes SCENE/sparse/0, then training writes a PLY."""
    from splat.cli import main

    scene = tmp_path / "scene"
    (scene / "images").mkdir(parents=True)
    # a third of the demo circle (10 degree steps), no model; measured: 12/12 registered, ~790 points (18
    # photos took half as much SfM time again)
    for path in sorted(DEMO_IMAGES.glob("*.jpg"))[:12]:
        shutil.copy(path, scene / "images" / path.name)
    out = tmp_path / "out"
    argv = [
        "train",
        str(scene),
        "--preset",
        "cpu-small",
        "--out",
        str(out),
        "--steps",
        "5",
        "--save-steps",
        "5",
    ]
    argv += [
        "--eval-steps",
        "5",
        "--ckpt-every",
        "0",
        "--max-width",
        "96",
        "--device",
        "cpu",
        "--no-progress",
    ]
    assert main(argv) == 0, capsys.readouterr().err
    assert pycolmap.Reconstruction(scene / "sparse" / "0").num_reg_images() >= 11
    plys = list(out.rglob("*.ply"))
    assert plys and all(p.stat().st_size > 1000 for p in plys), plys


@needs_cup
def test_auto_matcher_scales_with_retrieval_above_the_exhaustive_limit(tmp_path):
    """Above `exhaustive_max_images`, auto matches the sequential neighbours plus the images a vocabulary tree
    trained on the scene retrieves: fewer pairs than exhaustive, including pairs far apart in name order,
    and the set still registers."""
    names = cup_names(step=2, count=14)
    scene = photo_scene(tmp_path / "scene", names, size=480)
    cfg = quiet(exhaustive_max_images=8, sequential_overlap=3, retrieval_num_images=5, camera_mode="per_image")
    summary = prepare(scene, cfg)
    assert summary.matcher == "retrieval", summary
    sequential = set(_pairs(sorted(names, key=_natural_key), "sequential", 3))
    assert len(sequential) < summary.num_pairs < 14 * 13 // 2, summary
    assert (default_cache_dir(scene) / "sfm" / "vocab_tree.bin").is_file()
    assert summary.num_registered >= 11, summary
    assert "from the cache" not in str(summary)  # a cold run takes nothing from the cache
    assert sorted(p.name for p in scene.iterdir()) == ["images", "sparse"]  # no cache inside the scene


def test_a_photo_over_the_pixel_limit_is_refused_before_sfm(tmp_path, monkeypatch):
    """A photo over SPLAT_MAX_IMAGE_PIXELS is named before COLMAP spends minutes on it (not when training reads
    it afterwards), and nothing is decoded: a header declaring 120 Mpx with no body (PIL's warning, which
    pytest turns into an error, never fires), then a real photo over a lowered limit."""
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.new("RGB", (64, 48), (i * 80, 50, 50)).save(images / f"ok_{i}.jpg")
    png_header_only(images / "huge.png", 12_000, 10_000)
    with pytest.raises(SfmError, match=r"1 image\(s\) .* more than 100 Mpx: huge\.png \(12000x10000\).*SPLAT_MAX"):
        prepare(tmp_path, quiet())
    (images / "huge.png").unlink()
    monkeypatch.setenv("SPLAT_MAX_IMAGE_PIXELS", "3000")  # 64 x 48 = 3072
    with pytest.raises(SfmError, match=r"3 image\(s\) .* more than 0.003 Mpx: ok_0\.jpg \(64x48\)"):
        prepare(tmp_path, quiet())
    assert not (tmp_path / "sparse").exists()
