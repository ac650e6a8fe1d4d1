"""Camera paths: orbit / spiral geometry, interpolation through the views, JSON round trip and errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from splat.view.camera_path import (
    CameraPath,
    camera_centres,
    interpolate_path,
    load_path,
    make_path,
    orbit_path,
    save_path,
    scene_frame,
)
from tests.splat.helpers import look_at

K = np.array([[50.0, 0, 32], [0, 50.0, 24], [0, 0, 1]])


def ring_cameras(n=12, radius=3.0, target=(0.5, -0.2, 0.3), up=(0.0, 0.0, 1.0)):
    """Cameras on a wavy ring, all looking at ``target`` with ``up`` as their up axis."""
    target, up = np.asarray(target), np.asarray(up)
    a = 2 * np.pi * np.arange(n) / n
    centres = target + np.stack([radius * np.cos(a), 0.7 * radius * np.sin(a), 1.0 + 0.2 * np.sin(3 * a)], 1)
    return np.stack([look_at(c, target, up) for c in centres])


def test_scene_frame_finds_the_common_target_and_up():
    target = np.array([0.5, -0.2, 0.3])
    centre, up = scene_frame(ring_cameras(target=target))
    np.testing.assert_allclose(centre, target, atol=1e-9)  # every optical axis passes through it
    assert up[2] > 0.9  # cameras tilted down at the target: their mean up leans to +z


@pytest.mark.parametrize("kind", ["orbit", "spiral"])
def test_orbit_and_spiral_cameras_look_at_the_centre_and_keep_up(kind):
    views = ring_cameras()
    centre, up = scene_frame(views)
    path = make_path(kind, views, K[None].repeat(len(views), 0), 64, 48, frames=40)
    assert len(path) == 40 and path.Ks.shape == (40, 3, 3)
    for m in path.viewmats:
        R = m[:3, :3]
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-9)
        pos = -R.T @ m[:3, 3]
        to_centre = (centre - pos) / np.linalg.norm(centre - pos)
        np.testing.assert_allclose(R[2], to_centre, atol=1e-9)  # forward axis through the centre
        assert abs(R[0] @ up) < 1e-9  # no roll: the right axis stays horizontal
        assert -R[1] @ up > 0  # and the image's up is the scene's up
    heights = (camera_centres(path.viewmats) - centre) @ up
    if kind == "orbit":
        np.testing.assert_allclose(heights, heights.mean(), atol=1e-9)  # a level ellipse
        cams_h = (camera_centres(views) - centre) @ up
        assert abs(heights.mean() - cams_h.mean()) < 1e-9  # at the cameras' mean height
    else:
        assert np.ptp(heights) > 0.01  # the spiral rises and falls


def test_orbit_fits_the_ellipse_of_the_cameras():
    views = ring_cameras(n=36, radius=3.0)
    centre, up = scene_frame(views)
    path = orbit_path(views, K, 64, 48, frames=36)
    flat = camera_centres(path.viewmats) - centre
    flat -= (flat @ up)[:, None] * up
    r = np.linalg.norm(flat, axis=1)
    # the ring's semi-axes are 3.0 and 2.1 (before the tilt of `up` that the wavy heights cause)
    assert 2.8 < r.max() < 3.2 and 1.9 < r.min() < 2.3


def test_interpolation_passes_through_every_view_smoothly():
    views = ring_cameras(n=6)
    Ks = np.stack([K * (1 + 0.1 * i) for i in range(6)])
    Ks[:, 2] = [0, 0, 1]
    k = 8
    path = interpolate_path(views, Ks, 64, 48, frames=5 * k + 1)
    for j in range(6):
        np.testing.assert_allclose(path.viewmats[j * k], views[j], atol=1e-9)
        np.testing.assert_allclose(path.Ks[j * k], Ks[j], atol=1e-9)
    steps = np.linalg.norm(np.diff(camera_centres(path.viewmats), axis=0), axis=1)
    assert steps.max() < 2.0 * steps.mean()  # no jumps
    cos = [
        (np.trace(a[:3, :3] @ b[:3, :3].T) - 1) / 2
        for a, b in zip(path.viewmats[:-1], path.viewmats[1:], strict=True)
    ]
    assert min(cos) > np.cos(np.radians(15))  # small rotation between consecutive frames


def test_path_json_round_trip_and_clear_errors(tmp_path):
    path = orbit_path(ring_cameras(), K, 64, 48, frames=5, fps=24)
    f = tmp_path / "path.json"
    save_path(f, path)
    back = load_path(f)
    assert (back.width, back.height, back.fps, len(back)) == (64, 48, 24.0, 5)
    np.testing.assert_allclose(back.viewmats, path.viewmats, atol=1e-12)
    np.testing.assert_allclose(back.Ks, path.Ks, atol=1e-12)

    good = json.loads(f.read_text())

    def broken(change, match):
        data = json.loads(json.dumps(good))
        change(data)
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(data))
        with pytest.raises(ValueError, match=match):
            load_path(bad)

    broken(lambda d: d.update(format="nerfstudio"), "format")
    broken(lambda d: d.update(width=0), "width")
    broken(lambda d: d.update(fps="fast"), "fps")
    broken(lambda d: d.update(cameras=[]), "non-empty")
    broken(lambda d: d["cameras"][1].pop("K"), r"cameras\[1\]")
    broken(lambda d: d["cameras"][2].update(cam_from_world=[[2, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]),
           "rigid")  # fmt: skip
    broken(lambda d: d["cameras"][0].update(K=[[1, 0], [0, 1]]), "3x3")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_path(tmp_path / "junk.json")
    with pytest.raises(ValueError, match="does not exist"):
        load_path(tmp_path / "missing.json")


def test_bad_path_arguments():
    views = ring_cameras()
    with pytest.raises(ValueError, match="choose from"):
        make_path("zigzag", views, K[None], 64, 48)
    with pytest.raises(ValueError, match="frames"):
        orbit_path(views, K, 64, 48, frames=0)
    with pytest.raises(ValueError, match="at least 2"):
        scene_frame(views[:1])
    assert isinstance(orbit_path(views, K, 64, 48, frames=3), CameraPath)
