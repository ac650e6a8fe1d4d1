"""Reliability catalogue, second round: one run per folder, every size bounded, no non-finite model read.

Each row runs the real command line (``splat.cli.main`` in-process; the entry point in a subprocess where
signals or pipes are what is checked; ``main`` in one child process for the cases whose peak memory is
checked) and asserts the exit code, a one-line message naming the problem, no traceback, and that nothing was
written or lost.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from splat.cli import main
from tests.helpers import png_header_only
from tests.splat.commands.catalogue import DEMO, assert_refused, run_cli, tree

FAST = ["--device", "cpu", "--no-progress", "--no-lpips", "--max-width", "32"]
GIB = 2**30



# One child process runs every case whose peak memory is checked, each through ``splat.cli.main``: before a case
# the kernel's high-water mark of the process (VmHWM) is reset to its current resident size (Linux:
# /proc/self/clear_refs, "5"), so each case reports its own peak, as a fresh process of its own did (one
# interpreter, and torch's import, instead of four). stdout and stderr are caught at the file descriptors.
_PEAKS = r"""
import contextlib, json, os, sys, tempfile, time
import numpy as np


def peak():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


@contextlib.contextmanager
def captured(texts):
    files = [tempfile.TemporaryFile() for _ in range(2)]
    saved = [os.dup(1), os.dup(2)]
    sys.stdout.flush(), sys.stderr.flush()
    for f, fd in zip(files, (1, 2)):
        os.dup2(f.fileno(), fd)
    try:
        yield
    finally:
        sys.stdout.flush(), sys.stderr.flush()
        for s, fd in zip(saved, (1, 2)):
            os.dup2(s, fd)
            os.close(s)
        for f, key in zip(files, ("stdout", "stderr")):
            f.seek(0)
            texts[key] = f.read().decode(errors="replace")


def frames(gaussians, cam_path, *a, **k):  # the renderer's cost left out: frames as large as the path says
    for i in range(len(cam_path)):
        yield np.full((cam_path.height, cam_path.width, 3), i % 256, np.uint8)


from splat.cli import main

results = {}
for name, argv, fake_renderer in json.loads(sys.argv[1]):
    if fake_renderer:
        import splat.view.video as video

        video.render_path = frames
    result = results[name] = {}
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak resident size starts again from the current one
    t0 = time.monotonic()
    with captured(result):
        try:
            result["rc"] = main(argv)
        except SystemExit as e:
            result["rc"] = e.code
    result["seconds"] = time.monotonic() - t0
    result["peak"] = peak()
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    dst = tmp_path_factory.mktemp("rel") / "scene"
    shutil.copytree(DEMO, dst)
    return dst


@pytest.fixture(scope="module")
def run(scene, tmp_path_factory):
    """A finished 4-step run of the demo (run folder with checkpoints, PLY and metrics)."""
    out = tmp_path_factory.mktemp("rel") / "run"
    rc = main(["train", str(scene), "--out", str(out), "--steps", "4", "--ckpt-every", "2", *FAST])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def peaks(run, scene, tmp_path_factory):
    """Exit code, output, peak resident memory and time of every case whose memory is bounded, in one child."""
    from splat.view.camera_path import FORMAT

    tmp = tmp_path_factory.mktemp("peaks")
    huge = tmp / "huge-scene"
    shutil.copytree(scene, huge)
    victim = sorted((huge / "images").iterdir())[0]
    png_header_only(victim, 20_000, 20_000)  # 400 Mpx: 1.2 GB decoded
    cases = [
        ("huge_image", ["train", huge, "--out", tmp / "out", "--steps", "2", *FAST], False),
        ("billion_frames", ["render", run, "--scene", scene, "--path", "orbit", "--frames", "1000000000",
                            "--video", tmp / "v.mp4", "--device", "cpu"], False),
    ]  # fmt: skip
    eye = [[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 4.0], [0, 0, 0, 1.0]]
    K = [[800.0, 0, 512], [0, 800.0, 384], [0, 0, 1.0]]
    for n in (4, 64):  # 1024x768 frames, made at no cost (the renderer replaced)
        path = tmp / f"p{n}.json"
        path.write_text(json.dumps({"format": FORMAT, "width": 1024, "height": 768, "fps": 30,
                                    "cameras": [{"cam_from_world": eye, "K": K}] * n}))  # fmt: skip
        cases.append((f"video{n}", ["render", run, "--path-file", path, "--video", tmp / f"v{n}.mp4", "--device",
                                    "cpu"], True))  # fmt: skip
    cases = [(name, [str(a) for a in argv], fake) for name, argv, fake in cases]
    p = subprocess.run([sys.executable, "-c", _PEAKS, json.dumps(cases)], capture_output=True, text=True,
                       timeout=600)  # fmt: skip
    assert p.returncode == 0, p.stderr
    return {"tmp": tmp, "victim": victim, **json.loads(p.stdout.strip().splitlines()[-1])}


def _ckpt_of(run: Path) -> Path:
    return sorted((run / "ckpts").glob("ckpt_*.pt"))[-1]


# -- one run per folder --------------------------------------------------------------------------------------
def test_a_new_run_refuses_a_folder_holding_another_run(scene, run, tmp_path, capsys):
    out = tmp_path / "R"
    shutil.copytree(run, out)
    before = tree(out)
    rc, err = run_cli(["train", scene, "--out", out, "--steps", "2", "--seed", "7", *FAST], capsys)
    assert_refused(rc, err, r"R holds another run.*--overwrite.*--resume")
    assert tree(out) == before  # nothing of the old run deleted or replaced


def test_overwrite_replaces_the_old_run_whole(scene, run, tmp_path, capsys):
    out = tmp_path / "R"
    shutil.copytree(run, out)
    old = {p.name for p in (out / "ckpts").iterdir()}
    rc, err = run_cli(["train", scene, "--out", out, "--steps", "2", "--seed", "7", "--overwrite", *FAST], capsys)
    assert rc == 0, err
    new = {p.name for p in (out / "ckpts").iterdir()}
    assert "ckpt_000004.pt" in old and "ckpt_000004.pt" not in new  # the old run's later steps are gone
    metrics = json.loads((out / "metrics.json").read_text())
    final = metrics[max(metrics, key=int)]
    try:
        rc = main(["eval", str(out), "--scene", str(scene), "--device", "cpu"])
    except SystemExit as e:
        rc = e.code
    printed = capsys.readouterr().out
    assert rc == 0
    scored = json.loads(printed[printed.index("{"):])
    # eval of the folder scores the model the new run reported, not a stale checkpoint of the old one
    assert abs(scored["psnr"] - final["psnr"]) < 1e-3, (scored, final)


def test_retention_deletes_only_checkpoints_of_its_own_run(scene, run, tmp_path, capsys):
    out = tmp_path / "R"
    shutil.copytree(run, out)
    foreign = out / "ckpts" / "ckpt_000001.pt"  # a checkpoint another run wrote, put here by hand
    other = torch.load(_ckpt_of(run), weights_only=True)
    other["run_id"] = "someone-else"
    torch.save(other, foreign)
    rc, err = run_cli(["train", scene, "--out", out, "--resume", _ckpt_of(run), "--steps", "8",
                       "--ckpt-every", "2", "--keep-ckpts", "1", *FAST], capsys)  # fmt: skip
    assert rc == 0, err
    assert foreign.exists()  # retention pruned its own older checkpoints only
    own = sorted(p.name for p in (out / "ckpts").glob("ckpt_*.pt") if p != foreign)
    assert own[-1] == "ckpt_000008.pt" and "ckpt_000006.pt" not in own


# -- sizes bounded before memory is spent -------------------------------------------------------------------
def test_a_billion_frames_is_refused_at_once_with_bounded_memory(peaks):
    p = peaks["billion_frames"]
    assert p["rc"] == 2, p["stderr"]
    assert re.search(r"--frames 1000000000.*at most \d+.*SPLAT_MAX_FRAMES", p["stderr"]), p["stderr"]
    assert "Traceback" not in p["stderr"], p["stderr"]
    assert p["peak"] < 1.5 * GIB and p["seconds"] < 60
    assert not (peaks["tmp"] / "v.mp4").exists()


@pytest.mark.parametrize(
    "path_json, pattern",
    [
        ({"width": 10**7, "height": 10**7}, r"width 10000000 is more than allowed: at most \d+ pixels.*SPLAT_MAX_FRAME_SIZE"),
        ("many", r"20004 cameras is more than allowed: at most 20000.*SPLAT_MAX_FRAMES"),
        ("big", r"is \d+\.\d MB: at most 1 MB.*SPLAT_MAX_JSON_MB"),
        ("nested", r"nested too deeply"),
    ],
)
def test_camera_path_files_are_bounded(run, scene, tmp_path, capsys, monkeypatch, path_json, pattern):
    path = tmp_path / "path.json"
    if path_json == "nested":
        path.write_text("[" * 100_000 + "]" * 100_000)
    else:
        rc, err = run_cli(["render", run, "--scene", scene, "--path", "orbit", "--frames", "4",
                           "--save-path", path, "--device", "cpu", "--out", tmp_path / "o"], capsys)  # fmt: skip
        assert rc == 0, err
        data = json.loads(path.read_text())
        if path_json == "many":  # just over the default limit (4 cameras each)
            data["cameras"] = data["cameras"] * 5001
        elif path_json == "big":  # a file over the size limit is refused before it is parsed
            data["cameras"] = data["cameras"] * 2000
            monkeypatch.setenv("SPLAT_MAX_JSON_MB", "1")
        else:
            data.update(path_json)
        path.write_text(json.dumps(data))
    before = tree(tmp_path)
    rc, err = run_cli(["render", run, "--scene", scene, "--path-file", path, "--video", tmp_path / "v.mp4",
                       "--device", "cpu"], capsys)  # fmt: skip
    assert_refused(rc, err, pattern)
    assert tree(tmp_path) == before


def test_deeply_nested_splat_json_is_one_line(scene, tmp_path, capsys):
    s = tmp_path / "scene"
    shutil.copytree(scene, s)
    (s / "splat.json").write_text("{" + '"a":{' * 50_000 + "}" * 50_001)
    rc, err = run_cli(["train", s, "--out", tmp_path / "out", *FAST], capsys)
    assert_refused(rc, err, r"splat\.json.*nested too deeply")
    assert not (tmp_path / "out").exists()


def test_an_image_declaring_a_huge_size_is_refused_before_decoding(peaks):
    p = peaks["huge_image"]
    assert p["rc"] == 2, p["stderr"]
    assert peaks["victim"].name in p["stderr"] and re.search(r"20000x20000", p["stderr"])
    assert "Traceback" not in p["stderr"]
    assert p["peak"] < 1.2 * GIB, p["peak"]


# -- no non-finite or malformed model passes ---------------------------------------------------------------
@pytest.fixture(scope="module")
def nan_ckpt(run, tmp_path_factory):
    ck = torch.load(_ckpt_of(run), weights_only=True)
    ck["params"]["means"][3, 1] = float("nan")
    path = tmp_path_factory.mktemp("nan") / "nan.pt"
    torch.save(ck, path)
    return path


@pytest.fixture(scope="module")
def nan_ply(run, tmp_path_factory):
    from splat.gaussians.ply import property_names

    raw = bytearray(next(run.rglob("*.ply")).read_bytes())
    body = raw.index(b"end_header\n") + len(b"end_header\n")
    names = property_names()
    at = body + 4 * (2 * len(names) + names.index("opacity"))  # the third Gaussian's opacity
    raw[at : at + 4] = struct.pack("<f", float("nan"))
    path = tmp_path_factory.mktemp("nan") / "nan.ply"
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("model", ["nan_ckpt", "nan_ply"])
@pytest.mark.parametrize("command", ["eval", "render", "export"])
def test_non_finite_models_are_refused(request, model, command, scene, tmp_path, capsys):
    path = request.getfixturevalue(model)
    argv = {"eval": ["eval", path, "--scene", scene, "--device", "cpu"],
            "render": ["render", path, "--scene", scene, "--out", tmp_path / "r", "--device", "cpu"],
            "export": ["export", path, "--out", tmp_path / "x.ply"]}[command]  # fmt: skip
    before = tree(tmp_path)
    rc, err = run_cli(argv, capsys)
    assert_refused(rc, err, rf"{path.name}.*non-finite")
    assert tree(tmp_path) == before


@pytest.mark.parametrize("command", ["eval", "render", "view", "edit"])
def test_a_truncated_ply_is_one_line_naming_the_file(run, scene, command, tmp_path, capsys):
    src = next(p for p in run.rglob("*.ply"))
    bad = tmp_path / "cut.ply"
    bad.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    argv = {"eval": ["eval", bad, "--scene", scene, "--device", "cpu"],
            "render": ["render", bad, "--scene", scene, "--out", tmp_path / "r", "--device", "cpu"],
            "view": ["view", bad, "--device", "cpu", "--port", "65531"],
            "edit": ["edit", bad, "--scene", scene, "--source", "a cup", "--target", "a mug",
                     "--model", tmp_path / "no-model", "--out", tmp_path / "e"]}[command]  # fmt: skip
    before = tree(tmp_path)
    rc, err = run_cli(argv, capsys)
    assert_refused(rc, err, r"cut\.ply")
    assert len(err.strip().splitlines()) == 1, err
    assert tree(tmp_path) == before


def test_a_huge_learning_rate_ends_in_the_divergence_message(scene, tmp_path, capsys):
    rc, err = run_cli(["train", scene, "--out", tmp_path / "out", "--steps", "6", "--sh0-lr", "1e38", *FAST],
                      capsys)  # fmt: skip
    assert_refused(rc, err, r"diverged|non-finite", code=3)


# -- smaller ones --------------------------------------------------------------------------------------------
def test_export_takes_a_run_folder(run, tmp_path, capsys):
    rc, err = run_cli(["export", run, "--out", tmp_path / "x.ply"], capsys)
    assert rc == 0, err
    assert (tmp_path / "x.ply").stat().st_size > 0


def test_help_into_a_closed_pipe_is_quiet(tmp_path):
    p = subprocess.run(f"{sys.executable} -m splat.cli --help | head -n 1", shell=True, capture_output=True,
                       text=True, timeout=60)  # fmt: skip
    assert p.stdout.strip() and "BrokenPipeError" not in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_sigterm_is_treated_as_ctrl_c(scene, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "splat.cli", "train", str(scene), "--out", str(out),
                             "--steps", "100000", "--ckpt-every", "0", "--eval-steps", "0", *FAST],
                            stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    # metrics.json is written by the evaluation at step 0, inside the run's signal handlers: from then on a
    # SIGTERM is the run's to handle (no sleep guessing when training has started)
    deadline = time.monotonic() + 120
    while not (out / "metrics.json").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "--resume" in err and "Traceback" not in err and "Aborted" not in err, err
    assert list((out / "ckpts").glob("ckpt_*.pt")), "an interrupted run keeps a checkpoint"


@pytest.mark.parametrize("name", ["../escape.png", "/etc/hostname"])
def test_image_names_leaving_the_images_folder_are_refused(scene, tmp_path, capsys, name):
    import pycolmap

    s = tmp_path / "scene"
    shutil.copytree(scene, s)
    rec = pycolmap.Reconstruction(str(s / "sparse" / "0"))
    image_id = sorted(rec.images)[0]
    rec.images[image_id].name = name
    rec.write_binary(str(s / "sparse" / "0"))
    rc, err = run_cli(["train", s, "--out", tmp_path / "out", "--steps", "2", *FAST], capsys)
    assert_refused(rc, err, rf"{re.escape(name)}.*(leaves|outside) the images folder")
    assert not (tmp_path / "out").exists()


def test_edit_with_an_unwritable_cache_warns_once_and_keeps_inversions_in_memory(
    run, scene, tiny_model_dirs, tmp_path, capsys
):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would go")  # unwritable for root as well
    out = tmp_path / "edited"
    # two iterations edit two views: two inversions, the second of which would warn again
    rc, err = run_cli(["edit", run, "--scene", scene, "--source", "a photo of a cat", "--target", "a photo of a dog",
                       "--steps", "4", "--edit-size", "32", "--iterations", "2", "--edit-every", "1",
                       "--cache-dir", blocker / "cache", "--no-progress", "--device", "cpu",
                       "--model", tiny_model_dirs["sd1"], "--out", out], capsys)  # fmt: skip
    assert rc == 0, err
    assert err.count("cannot be written") == 1 and "kept in memory" in err, err  # one warning, not one per view
    printed = capsys.readouterr().out
    summary = json.loads(printed[printed.index("{") : printed.rindex("}") + 1]) if "{" in printed else None
    assert (out / "ckpts").is_dir() or summary is not None
    assert blocker.read_text().startswith("a file")


def test_a_video_streams_its_frames(peaks):
    """Peak memory of `splat render --video` does not grow with the number of frames: each frame goes to the
    encoder as it is made (the renderer is replaced by one that makes 1024x768 frames at no cost)."""
    for n in (4, 64):
        p = peaks[f"video{n}"]
        assert p["rc"] == 0, p["stderr"]
        assert f"({n} frames, 1024x768" in p["stdout"] or (peaks["tmp"] / f"v{n}.mp4").stat().st_size > 0
    # 60 more frames of 1024x768 hold 141 MB as uint8 if they are kept
    assert peaks["video64"]["peak"] - peaks["video4"]["peak"] < 40 * 2**20, peaks
