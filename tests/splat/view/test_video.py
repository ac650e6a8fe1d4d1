"""Models from checkpoints / PLYs / run folders, render modes, and videos along camera paths (CLI)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from splat.cli import main
from tests.splat.helpers import DEMO


def test_load_model_from_checkpoint_ply_and_run_folder(demo_run):
    from splat.gaussians import load_model

    ckpt = load_model(demo_run / "ckpts" / "ckpt_000007.pt")
    ply = load_model(demo_run / "point_cloud" / "iteration_7" / "point_cloud.ply")
    run = load_model(demo_run)
    assert ckpt.sh_degree == ply.sh_degree == run.sh_degree == 2
    assert run.source.name == "ckpt_000007.pt" and run.kind == "checkpoint"  # a run folder: its newest checkpoint
    assert ckpt.step == ply.step == 7 and ply.kind == "ply"
    assert ply.config.max_width == 32  # the PLY's run config is found beside it
    for k in ckpt.params:
        assert torch.equal(ckpt.params[k], ply.params[k]), k  # our PLY stores the checkpoint's values exactly
    with pytest.raises(ValueError, match="holds no model"):
        load_model(DEMO)
    (demo_run.parent / "bad.ply").write_bytes(b"not a ply")
    with pytest.raises(ValueError, match="not a PLY"):
        load_model(demo_run.parent / "bad.ply")


def test_ply_renders_and_evaluates_like_its_checkpoint(demo_run, tmp_path, capsys):
    ckpt = demo_run / "ckpts" / "ckpt_000007.pt"
    ply = demo_run / "point_cloud" / "iteration_7" / "point_cloud.ply"
    # a PLY away from its run folder: no config found, so the defaults apply (+ the PLY's SH degree)
    lone = tmp_path / "lone.ply"
    lone.write_bytes(ply.read_bytes())
    outs = {}
    for name, model in (("ckpt", ckpt), ("ply", ply)):
        outs[name] = tmp_path / name
        assert (
            main(["render", str(model), "--scene", str(DEMO), "--out", str(outs[name]), "--device", "cpu"])
            == 0
        )
    renders = sorted(p.name for p in outs["ckpt"].glob("*_render.png"))
    assert len(renders) == 5  # every 8th of the 36 demo views is held out
    for name in renders:
        a = np.asarray(Image.open(outs["ckpt"] / name))
        b = np.asarray(Image.open(outs["ply"] / name))
        assert a.std() > 5  # not a blank picture
        np.testing.assert_array_equal(a, b)
    capsys.readouterr()
    scores = []
    for model in (ckpt, ply):
        assert main(["eval", str(model), "--scene", str(DEMO), "--device", "cpu"]) == 0
        scores.append(json.loads(capsys.readouterr().out))
    assert scores[0]["psnr"] == scores[1]["psnr"] and scores[0]["ssim"] == scores[1]["ssim"]
    from splat.config import TrainConfig
    from splat.gaussians import load_model

    model = load_model(lone)  # a PLY from elsewhere: no run config (the defaults), no step (a finished run's)
    assert (model.sh_degree, model.kind, model.checkpoint["config"]) == (2, "ply", None)
    assert model.config == TrainConfig(sh_degree=2) and model.step == TrainConfig().steps


def test_orbit_video_decodes_to_12_frames_of_the_right_size(demo_run, tmp_path, capsys):
    from splat.view.camera_path import load_path
    from splat.view.video import read_video

    video, path_json = tmp_path / "orbit.mp4", tmp_path / "orbit.json"
    rc = main(["render", str(demo_run), "--scene", str(DEMO), "--path", "orbit", "--frames", "12", "--fps", "12",
               "--width", "48", "--video", str(video), "--save-path", str(path_json), "--save-frames",
               "--out", str(tmp_path / "frames"), "--device", "cpu"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    frames = read_video(video)
    assert len(frames) == 12
    assert all(f.shape == (36, 48, 3) for f in frames)  # the demo's 4:3 at width 48
    pngs = sorted((tmp_path / "frames").glob("frame_*.png"))
    assert len(pngs) == 12
    # the video shows the rendered frames (up to H.264 loss), and they move
    first = np.asarray(Image.open(pngs[0])).astype(float)
    assert np.abs(frames[0] - first).mean() < 12
    assert np.abs(frames[0].astype(float) - frames[6]).mean() > 2 * np.abs(frames[0] - first).mean()
    cam_path = load_path(path_json)
    assert len(cam_path) == 12 and (cam_path.width, cam_path.height) == (48, 36)

    # the saved path renders again, here as a GIF
    gif = tmp_path / "again.gif"
    assert (
        main(["render", str(demo_run), "--path-file", str(path_json), "--video", str(gif), "--device", "cpu"])
        == 0
    )
    assert len(read_video(gif)) == 12


def test_render_path_errors_are_clear(demo_run, tmp_path, capsys):
    cases = [
        (["--path", "orbit"], "needs --scene"),
        (["--path", "orbit", "--scene", str(DEMO), "--video", str(tmp_path / "x.avi")], "unsupported type"),
        (["--path", "orbit", "--scene", str(DEMO), "--frames", "0"], "frames"),
        (["--path-file", str(tmp_path / "nope.json")], "does not exist"),
        (["--path", "orbit", "--path-file", "x.json"], "not both"),
    ]
    for extra, message in cases:
        assert main(["render", str(demo_run), "--out", str(tmp_path / "o"), *extra]) == 2, extra
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (extra, err)
    assert main(["render", str(tmp_path / "missing.ply"), "--scene", str(DEMO)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_render_modes_follow_the_reference_renderer():
    from splat.render.modes import render_mode, render_rgb, to_uint8
    from tests.splat.helpers import look_at

    # two opaque Gaussians on the optical axis: red at depth 2 (in front), green at depth 4 off to the side
    means = torch.tensor([[0.0, 0.0, 0.0], [0.8, 0.0, 2.0]])
    g = {
        "means": means,
        "quats": torch.tensor([[1.0, 0, 0, 0]] * 2),
        "scales": torch.full((2, 3), 0.25),
        "opacities": torch.tensor([0.99, 0.99]),
        "colors": torch.tensor([[[1.0, -1.0, -1.0]], [[-1.0, 1.0, -1.0]]]) / 0.28209479177387814 * 0.5,
    }
    viewmat = torch.from_numpy(look_at(np.array([0.0, 0.0, -2.0]), np.zeros(3), up=(0.0, -1.0, 0.0))).float()
    K = torch.tensor([[40.0, 0, 32], [0, 40.0, 24], [0, 0, 1]])
    bg = torch.tensor([0.0, 0.0, 1.0])
    rgb = render_mode(g, K, viewmat, 64, 48, 0, bg, "rgb")
    img, alpha = render_rgb(g, K, viewmat, 64, 48, 0, bg)
    np.testing.assert_array_equal(rgb, to_uint8(img))
    a = render_mode(g, K, viewmat, 64, 48, 0, bg, "alpha")
    np.testing.assert_array_equal(a[..., 0], (alpha[..., 0].clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8))
    d = render_mode(g, K, viewmat, 64, 48, 0, bg, "depth").astype(int)
    u_near, u_far = 32, 32 + round(40 * 0.8 / 4)
    assert d[24, u_near].sum() > d[24, u_far].sum() + 100  # nearer is brighter
    np.testing.assert_array_equal(d[0, 0], [0, 0, 255])  # background where nothing is
    c = render_mode(g, K, viewmat, 64, 48, 0, bg, "centres")
    np.testing.assert_array_equal(c[24, 32], [255, 0, 0])  # the red centre projects to the principal point
    np.testing.assert_array_equal(c[24, u_far], [0, 255, 0])
    assert (c == [0, 0, 255]).all(-1).sum() == 64 * 48 - 2
    with pytest.raises(ValueError, match="choose from"):
        render_mode(g, K, viewmat, 64, 48, 0, bg, "normals")


def test_view_command_serves_until_interrupted(demo_run, tmp_path):
    import select
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    pytest.importorskip("viser")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-X", "faulthandler", "-m", "splat.cli", "view", str(demo_run), "--scene", str(DEMO), "--port", str(port),
         "--device", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # started with SIGINT ignored, as a shell script's background job is: the server still ends on it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )  # fmt: skip
    try:
        deadline, line = time.monotonic() + 120, ""
        while "Gaussians) at http://127.0.0.1:" not in line:  # viser prints a banner first
            ready, _, _ = select.select([proc.stdout], [], [], max(deadline - time.monotonic(), 0))
            assert ready and proc.poll() is None, "splat view did not start"
            line = proc.stdout.readline()
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30).read()
        assert b"<html" in page.lower()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=60)  # ~1 s here; generous for a loaded machine
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack
            out, err = proc.communicate(timeout=60)
            pytest.fail(f"splat view did not exit after Ctrl-C:\n{err[-8000:]}")
    assert proc.returncode == 0 and "Traceback" not in err, err

    assert main(["view", str(tmp_path / "missing")]) == 2
    assert main(["view", str(demo_run), "--port", "70000"]) == 2
