"""The package's Python API, as the README shows it: ``splat.default_config``, ``splat.train``,
``splat.load_model`` from a bare ``import splat``, in any order, any number of times."""

from __future__ import annotations

import subprocess
import sys

from tests.splat.helpers import DEMO

# Run in a fresh interpreter: the bug this guards against depends on what has been imported before.
SCRIPT = """
import sys
import splat
assert "torch" not in sys.modules, "import splat must stay light"
cfg = splat.default_config(sys.argv[1])          # imports the trainer's package first
import splat.training.metrics                    # and more of it
for _ in range(2):                               # a second call as well
    assert callable(splat.train), type(splat.train)
from splat.training.trainer import train
assert splat.train is train
assert callable(splat.load_model) and callable(splat.rasterize) and splat.Trainer.__name__ == "Trainer"
print("ok")
"""


def test_api_names_stay_what_the_readme_says_after_any_import():
    # mutation: naming the trainer's folder splat/train again makes splat.train that package after the first
    # import of it (a module: "TypeError: 'module' object is not callable")
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(DEMO)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_model_renders_cameras_given_as_numpy_or_lists(demo_run):
    import numpy as np
    import pytest
    import torch

    import splat

    model = splat.load_model(demo_run)
    K = torch.tensor([[60.0, 0.0, 32.0], [0.0, 60.0, 24.0], [0.0, 0.0, 1.0]])
    viewmat = torch.eye(4)
    viewmat[2, 3] = 4.0
    image, alpha, _ = model.render(K, viewmat, 64, 48)
    assert image.shape == (48, 64, 3) and float(alpha.max()) > 0  # the view sees Gaussians
    # mutation: without Model._as_camera, numpy input fails inside rasterize ("expected Tensor ...")
    again, _, _ = model.render(K.numpy().astype(np.float64), viewmat.tolist(), 64, 48)
    assert torch.equal(image, again)
    with pytest.raises(ValueError, match=r"K must be 3x3, got shape \(2, 2\)"):
        model.render([[1.0, 2.0], [3.0, 4.0]], viewmat, 64, 48)
    with pytest.raises(TypeError, match="viewmat must be a 4x4 matrix of numbers"):
        model.render(K, "identity", 64, 48)


def test_docs_example_renders_a_scene_camera(demo_run):
    import splat
    from splat.scene.cameras import scene_cameras

    model = splat.load_model(demo_run)
    cams = scene_cameras(DEMO, model.config)  # numpy float64, as docs/splat.md passes them on
    image, alpha, _ = model.render(cams.Ks[0], cams.viewmats[0], *cams.sizes[0])
    width, height = cams.sizes[0]
    assert image.shape == (height, width, 3) and float(alpha.mean()) > 0.5  # the demo fills its photos
