"""Checkpoints through the CLI on the demo scene: resume restores the saved settings, render / eval / export
skip the SfM initialisation, crafted files cannot steer the filesystem, output modes follow the umask.

One short training (3 steps at 32 px, 2 held-out views) is shared by the whole module.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch

from splat.cli import main

DEMO = Path(__file__).resolve().parents[3] / "assets" / "demo"
FAST = [
    "--device",
    "cpu",
    "--no-progress",
    "--no-lpips",
    "--max-width",
    "32",
    "--sh-degree",
    "1",
    "--test-every",
    "18",
]


def tree(root: Path, skip: tuple[Path, ...] = ()) -> dict[str, tuple]:
    """Every path under ``root`` -> (kind, size, mtime_ns), except under ``skip``."""
    out = {}
    for p in sorted(root.rglob("*")):
        if any(p == s or s in p.parents for s in skip):
            continue
        st = p.lstat()
        out[p.relative_to(root).as_posix()] = (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    scene = root / "scene"
    shutil.copytree(DEMO, scene)
    out = root / "run"
    old = os.umask(0o022)
    try:
        rc = main(["train", str(scene), "--out", str(out), "--steps", "3", "--ckpt-every", "1", "--keep-ckpts", "1",
                   "--save-steps", "1", "--eval-steps", "0", "3", *FAST])  # fmt: skip
    finally:
        os.umask(old)
    assert rc == 0
    return root, scene, out


def test_outputs_follow_the_umask_and_checkpoints_are_pruned_in_pairs(run):
    root, scene, out = run
    files = [
        out / "config.json",
        out / "metrics.json",
        out / "ckpts" / "ckpt_000003.pt",
        out / "point_cloud" / "iteration_3" / "point_cloud.ply",
        next((out / "renders" / "step_000003").glob("*_render.png")),
    ]
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f  # -rw-r--r-- under umask 022 (not mkstemp's 0600)
    # --keep-ckpts 1 with a checkpoint every step: 3 is the newest, 1 a save step, 2 is gone
    assert sorted(p.name for p in (out / "ckpts").iterdir()) == [
        "ckpt_000001.pt",
        "ckpt_000003.pt",
    ]
    # every kept step with a PLY has its checkpoint and vice versa for save steps; nothing half-written
    assert sorted(p.name for p in (out / "point_cloud").iterdir()) == ["iteration_1", "iteration_3"]
    assert not list(out.rglob("*.tmp"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"0", "3"}  # step 0 shows where training started


def test_resume_restores_the_checkpoint_settings(run, tmp_path):
    root, scene, out = run
    ckpt = out / "ckpts" / "ckpt_000001.pt"
    out2 = tmp_path / "resumed"
    out2.mkdir()
    stale = out2 / ".config.json.x1y2z3.tmp"  # what a kill during an atomic write leaves
    stale.write_text("partial")
    rc = main(
        ["train", str(scene), "--resume", str(ckpt), "--out", str(out2), "--steps", "3", "--no-progress"]
    )
    assert rc == 0
    cfg = json.loads((out2 / "config.json").read_text())
    # from the checkpoint, not from the scene's splat.json (max_width 160, steps 600) nor the defaults
    assert (cfg["max_width"], cfg["sh_degree"], cfg["device"], cfg["lpips"]) == (32, 1, "cpu", False)
    assert cfg["steps"] == 3 and cfg["keep_ckpts"] == 1 and cfg["out"] == str(out2)
    assert not stale.exists()
    metrics = json.loads((out2 / "metrics.json").read_text())
    assert set(metrics) == {"0", "3"}
    first = json.loads((out / "metrics.json").read_text())
    for step in ("0", "3"):  # exact resume: the same figures as the uninterrupted run
        assert {k: metrics[step][k] for k in ("psnr", "ssim", "num_gaussians")} == {
            k: first[step][k] for k in ("psnr", "ssim", "num_gaussians")
        }


def test_resume_refuses_unsafe_changes_and_other_scenes(run, tmp_path, capsys, synthetic_scene):
    root, scene, out = run
    ckpt = out / "ckpts" / "ckpt_000003.pt"
    out2 = tmp_path / "o"
    rc = main(["train", str(scene), "--resume", str(ckpt), "--out", str(out2), "--max-width", "64",
               "--refine-every", "7", "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "max_width (checkpoint: 32, now: 64)" in err and "refine_every (checkpoint: 100, now: 7)" in err
    assert "cannot change on resume" in err and "Traceback" not in err
    assert not out2.exists()
    # the checkpoint's step beyond --steps
    assert main(["train", str(scene), "--resume", str(ckpt), "--out", str(out2), "--steps", "2"]) == 2
    assert "beyond steps=2" in capsys.readouterr().err
    # another scene (same settings): refused by its fingerprint
    rc = main(["train", str(synthetic_scene), "--resume", str(ckpt), "--out", str(out2), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "trained on another scene" in err, err
    assert main(["eval", str(ckpt), "--scene", str(synthetic_scene), "--device", "cpu"]) == 2
    assert "trained on another scene" in capsys.readouterr().err
    assert not out2.exists()


def test_render_eval_export_use_the_model_without_a_trainer(run, tmp_path, monkeypatch, capsys):
    """render / eval / export hold a loaded Model: no Trainer, no SfM initialisation, no SfM run."""
    import splat.gaussians.init
    import splat.scene.ensure
    import splat.training.trainer

    def forbidden(*a, **k):
        raise AssertionError("render / eval / export must neither build a Trainer nor initialise Gaussians")

    monkeypatch.setattr(splat.training.trainer.Trainer, "__init__", forbidden)
    monkeypatch.setattr(splat.training.trainer, "init_gaussians", forbidden)
    monkeypatch.setattr(splat.gaussians.init, "knn_sq_dist", forbidden)
    monkeypatch.setattr(splat.scene.ensure, "ensure_model", forbidden)
    root, scene, out = run
    ckpt = out / "ckpts" / "ckpt_000003.pt"
    saved = torch.load(ckpt, weights_only=True)
    assert (
        main(["render", str(ckpt), "--scene", str(scene), "--out", str(tmp_path / "r"), "--device", "cpu"])
        == 0
    )
    assert len(list((tmp_path / "r").glob("*_render.png"))) == 2  # 36 views, every 18th held out
    capsys.readouterr()
    assert main(["eval", str(ckpt), "--scene", str(scene), "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num_gaussians"] == len(saved["params"]["means"])
    # the same figure as the training run's evaluation at that step
    assert result["psnr"] == pytest.approx(
        json.loads((out / "metrics.json").read_text())["3"]["psnr"], abs=1e-4
    )
    assert main(["export", str(ckpt), "--out", str(tmp_path / "x.ply")]) == 0
    from splat.gaussians.ply import read_ply

    assert torch.equal(read_ply(tmp_path / "x.ply")["means"], saved["params"]["means"])


def test_crafted_checkpoint_and_scene_json_cannot_steer_the_filesystem(run, tmp_path, capsys):
    """Paths inside a checkpoint or a scene's splat.json never decide where anything is written or deleted."""
    root, scene, out = run
    victim = tmp_path / "victim"
    (victim / "undistorted").mkdir(parents=True)
    (victim / "undistorted" / "precious.txt").write_text("keep me")
    (victim / "config.json").write_text("{}")
    (victim / "images").mkdir()
    ckpt = torch.load(out / "ckpts" / "ckpt_000001.pt", weights_only=True)
    ckpt["config"].update(
        out=str(victim), cache_dir=str(victim), images="../../victim/images", resume=str(victim)
    )
    crafted = tmp_path / "crafted.pt"
    torch.save(ckpt, crafted)
    bad_scene = tmp_path / "bad_scene"
    shutil.copytree(DEMO, bad_scene)
    (bad_scene / "splat.json").write_text(
        json.dumps({"steps": 2, "out": str(victim), "cache_dir": str(victim)})
    )

    own = [tmp_path / n for n in ("o1", "o2", "o3", "x.ply")] + [
        scene / ".splat_cache",
        bad_scene / ".splat_cache",
    ]
    before = tree(tmp_path, skip=tuple(own))
    before_root = tree(root, skip=(scene / ".splat_cache",))
    cmds = [
        [
            "train",
            str(scene),
            "--resume",
            str(crafted),
            "--out",
            str(tmp_path / "o1"),
            "--steps",
            "3",
            "--no-progress",
        ],
        ["render", str(crafted), "--scene", str(scene), "--out", str(tmp_path / "o2"), "--device", "cpu"],
        ["eval", str(crafted), "--scene", str(scene), "--device", "cpu"],
        ["eval", str(crafted), "--scene", str(scene), "--out", str(tmp_path / "o3"), "--device", "cpu"],
        ["export", str(crafted), "--out", str(tmp_path / "x.ply")],
    ]
    for argv in cmds:
        assert main(argv) == 0, (argv, capsys.readouterr().err)
    assert main(["train", str(bad_scene), *FAST, "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert "cache_dir, out may not be set here" in err and "--out" in err
    assert tree(tmp_path, skip=tuple(own)) == before  # nothing written or deleted outside the outputs
    assert tree(root, skip=(scene / ".splat_cache",)) == before_root
    assert (victim / "undistorted" / "precious.txt").read_text() == "keep me"
    assert json.loads((tmp_path / "o1" / "config.json").read_text())["out"] == str(tmp_path / "o1")


def test_train_passes_sfm_options_to_prepare(tmp_path, monkeypatch, capsys):
    import splat.scene.sfm

    captured = []

    def fake_prepare(scene, cfg):
        captured.append(cfg)
        raise splat.scene.sfm.SfmError("stopped by the test")

    monkeypatch.setattr(splat.scene.sfm, "prepare", fake_prepare)
    scene = tmp_path / "photos"
    shutil.copytree(DEMO / "images", scene / "images")
    rc = main(["train", str(scene), "--out", str(tmp_path / "o"), "--no-progress", "--sfm.matcher", "sequential",
               "--sfm.max-image-size", "800", "--sfm.camera-model", "PINHOLE", "--sfm.seed", "7"])  # fmt: skip
    assert rc == 2 and "stopped by the test" in capsys.readouterr().err
    (cfg,) = captured
    assert (cfg.matcher, cfg.max_image_size, cfg.camera_model, cfg.seed) == ("sequential", 800, "PINHOLE", 7)
    assert cfg.overwrite is False and cfg.progress is False
    assert not (tmp_path / "o").exists()
