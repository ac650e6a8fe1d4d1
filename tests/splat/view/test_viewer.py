"""The web viewer (viser) driven by headless Chromium: frames match the reference renderer, follow the
camera, jump to training views, and watching a training run changes nothing in it.

Debian's chromium through Playwright's ``executable_path``, with SwiftShader for WebGL (viser draws with
three.js). Skipped only when chromium or viser is not installed (``scripts/test.sh`` installs both).
"""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest
import torch

from tests.helpers import headless_chromium
from tests.splat.helpers import DEMO, small_config

pytestmark = pytest.mark.browser
viser = pytest.importorskip("viser")

TIMEOUT_S = 180  # two shared CPU cores: chromium's start and the first WebGL frame can be slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser(playwright_driver):
    # SwiftShader for WebGL: viser draws with three.js
    with headless_chromium(playwright_driver, "--use-gl=angle", "--use-angle=swiftshader",
                           "--enable-unsafe-swiftshader") as browser:  # fmt: skip
        yield browser


@pytest.fixture(scope="module")
def demo_viewer(demo_run):
    from splat.gaussians import load_model
    from splat.scene.cameras import scene_cameras
    from splat.view.viewer import Viewer

    model = load_model(demo_run)
    params, sh_degree = model.params, model.sh_degree
    viewer = Viewer(params, sh_degree, scene_cameras(DEMO, model.config), port=free_port(), resolution=48,
                    transport="png")  # fmt: skip
    yield viewer, params
    viewer.stop()


def reference(params, frame, sh_degree):
    from splat.gaussians.model import activated
    from splat.render.modes import render_rgb, to_uint8

    bg = torch.tensor(frame.background)
    return to_uint8(
        render_rgb(activated(params), frame.K, frame.viewmat, frame.width, frame.height, sh_degree, bg)[0]
    )


def frame_from(viewer, w2c: np.ndarray, after: int = 0):
    """The first frame sent after ``after`` drawn from the pose ``w2c`` (the browser may echo older poses
    first: its camera messages and ours cross on the wire)."""
    frame = viewer.wait_for_frame(after, timeout=TIMEOUT_S)
    while frame is not None and not np.allclose(frame.viewmat[:3].numpy(), w2c[:3], atol=2e-3):
        frame = viewer.wait_for_frame(frame.index, timeout=TIMEOUT_S)
    assert frame is not None, "no frame from the expected camera"
    return frame


def client_of(viewer):
    clients = list(viewer.server.get_clients().values())
    assert len(clients) == 1
    return clients[0]


def downsample(image: np.ndarray, width: int, height: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image[..., :3]).resize((width, height), Image.Resampling.BOX)).astype(
        float
    )


def test_browser_gets_reference_frames_that_follow_the_camera(demo_viewer, browser):
    viewer, params = demo_viewer
    page = browser.new_page(viewport={"width": 640, "height": 480})
    try:
        page.goto(viewer.url)
        # the browser's camera starts on the first training view: a frame is drawn from that pose
        first = int(np.flatnonzero(viewer.cameras.train)[0])
        frame = frame_from(viewer, viewer.cameras.viewmats[first])
        client = client_of(viewer)
        assert (frame.width, frame.height) == (48, 36)  # the 640x480 canvas's aspect, long side 48
        # the pixels sent are exactly the reference renderer's for that camera
        np.testing.assert_array_equal(frame.image, reference(params, frame, viewer.sh_degree))
        assert frame.image.std() > 5

        # delivered: the browser's own canvas (cameras hidden) shows that image as its background. The
        # canvas is read until it shows the newest frame sent (no other frame sent meanwhile): the browser
        # decodes an image before it draws it, and echoed camera messages may still bring a frame or two.
        viewer.show_cameras(False)
        deadline = time.monotonic() + 60  # the browser is up and drawing by now
        while True:
            sent, frame = viewer.frames_sent, viewer.frames[client.client_id]
            shown = client.get_render(480, 640, transport_format="png", timeout=TIMEOUT_S)
            seen = downsample(shown, frame.width, frame.height)
            err_same = np.abs(seen - frame.image).mean()
            if (err_same < 12 and viewer.frames_sent == sent) or time.monotonic() > deadline:
                break
            time.sleep(0.2)

        # moving the camera through viser's API: the browser reports it back, a new frame follows
        n = viewer.frames_sent
        client.camera.position = client.camera.position + 0.3 * viewer.radius * np.cross(
            viewer.up, [1.0, 0, 0]
        )
        moved = viewer.wait_for_frame(n, timeout=TIMEOUT_S)
        while moved is not None and np.allclose(moved.viewmat[:3].numpy(), frame.viewmat[:3].numpy(), atol=2e-3):
            moved = viewer.wait_for_frame(moved.index, timeout=TIMEOUT_S)  # a late echo of the old pose
        assert moved is not None and moved.index > frame.index
        assert not torch.allclose(moved.viewmat, frame.viewmat, atol=1e-3)
        np.testing.assert_array_equal(moved.image, reference(params, moved, viewer.sh_degree))
        assert np.abs(moved.image.astype(float) - frame.image).mean() > 5
        err_other = np.abs(seen - moved.image).mean()
        print(f"browser canvas vs frame: {err_same:.2f}, vs another frame: {err_other:.2f}")
        assert err_same < 0.5 * err_other and err_same < 12

        # a click on a frustum jumps to that training view (the callback's effect)
        n = viewer.frames_sent
        viewer.jump_to_view(client, 5)
        jumped = frame_from(viewer, viewer.cameras.viewmats[5], after=n)
        np.testing.assert_array_equal(jumped.image, reference(params, jumped, viewer.sh_degree))

        # controls: render mode and SH degree change what is drawn
        n = viewer.frames_sent
        viewer.set_mode("alpha")
        alpha = viewer.wait_for_frame(n, timeout=TIMEOUT_S)
        while alpha is not None and alpha.mode != "alpha":  # a frame already in flight in the old mode
            alpha = viewer.wait_for_frame(viewer.frames_sent, timeout=TIMEOUT_S)
        assert alpha.mode == "alpha" and (alpha.image[..., 0] == alpha.image[..., 1]).all()
        viewer.set_mode("rgb")
        png = viewer.screenshot(client)
        assert png[:4] == b"\x89PNG"
    finally:
        viewer.show_cameras(True)
        page.close()


def test_viewer_during_training_serves_frames_and_changes_nothing(synthetic_scene, tmp_path, browser):
    from splat.commands.train import train_with_viewer
    from splat.training.trainer import Trainer

    kw = dict(
        steps=16, refine_start=4, refine_every=4, refine_stop=12, reset_every=0, eval_steps=(), save_steps=()
    )
    plain = Trainer(synthetic_scene, small_config(tmp_path / "plain", **kw))
    plain.train()

    pages = []

    def open_browser(viewer):
        page = browser.new_page(viewport={"width": 320, "height": 240})
        pages.append(page)
        page.goto(viewer.url)
        assert viewer.wait_for_frame(0, timeout=TIMEOUT_S) is not None  # connected before step 1
        open_browser.viewer = viewer

    watched = train_with_viewer(
        synthetic_scene, small_config(tmp_path / "watched", **kw), port=free_port(), wait=False,
        viewer_kwargs={"resolution": 32, "train_update_s": 0.0}, on_ready=open_browser,
    )  # fmt: skip
    for page in pages:
        page.close()
    viewer = open_browser.viewer
    steps_drawn = {f.step for f in viewer.frames.values()}
    assert viewer.frames_sent >= 2 and any(s is not None and s >= 1 for s in steps_drawn), viewer.frames_sent
    assert "**step**" in viewer._stats.content

    from splat.gaussians import load_model

    final = load_model(watched.checkpoint).params
    assert len(final["means"]) != len(plain.split.model.points)  # densification ran: the test covers it
    for k in final:
        assert torch.equal(final[k], plain.params[k].detach().cpu()), k
