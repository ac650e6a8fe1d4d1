"""`editkit edit` / `editkit generate` with tiny SD3 and FLUX pipelines: files written, methods per family
refused before the model is loaded, flow options checked."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from editkit.cli import EXIT_OK, EXIT_USAGE, main

FAST = ["--steps", "2", "--n-max", "1", "--quiet", "--seed", "0"]


@pytest.fixture(scope="module")
def flow_dirs(tmp_path_factory):
    from editkit.testing import save_tiny_pipeline

    root = tmp_path_factory.mktemp("tiny-flow-cli")
    return {fam: str(save_tiny_pipeline(root / fam, fam)) for fam in ("sd3", "flux")}


@pytest.fixture
def photo(tmp_path):
    y, x = np.mgrid[0:42, 0:38]  # cropped to multiples of 4 (tiny FLUX), or scaled to the tiny SD3's 32 px
    rgb = np.stack([x * 6, y * 5, (x + y) * 3], axis=-1).astype(np.uint8)
    path = tmp_path / "cat photo.png"
    Image.fromarray(rgb).save(path)
    return path


@pytest.mark.parametrize("fam", ["sd3", "flux"])
def test_flowedit_writes_the_edit_of_a_photo(flow_dirs, photo, tmp_path, capsys, fam):
    out = tmp_path / "out"
    code = main(["edit", str(photo), "--model", flow_dirs[fam], "--method", "flowedit", "--source", "a photo of a cat",
                 "--target", "a photo of a dog", "--output", str(out), *FAST])
    assert code == EXIT_OK, capsys.readouterr().err
    assert sorted(p.name for p in out.glob("*.png")) == ["cat_photo_edit0_a_photo_of_a_dog.png", "cat_photo_source.png"]
    assert capsys.readouterr().out.split() == [str(out / "cat_photo_source.png"),
                                               str(out / "cat_photo_edit0_a_photo_of_a_dog.png")]
    edit = np.asarray(Image.open(out / "cat_photo_edit0_a_photo_of_a_dog.png"), dtype=np.int16)
    src = np.asarray(Image.open(out / "cat_photo_source.png"), dtype=np.int16)
    assert edit.shape == src.shape and edit.shape[0] % 4 == edit.shape[1] % 4 == 0 and max(edit.shape) <= 40
    assert np.abs(edit - src).max() > 0  # the edit changed something


def test_flow_model_defaults_to_flowedit_and_rf_inversion_runs(flow_dirs, photo, tmp_path, capsys):
    for method in ([], ["--method", "rf-inversion", "--gamma", "0.5", "--eta", "0.9"]):
        out = tmp_path / f"out{len(method)}"
        code = main(["edit", str(photo), "--model", flow_dirs["sd3"], "--source", "a cat", "--target", "a dog",
                     "--output", str(out), "--steps", "2", "--quiet", *method])
        assert code == EXIT_OK, capsys.readouterr().err
        assert len(list(out.glob("*_edit0_a_dog.png"))) == 1


def test_generate_with_a_flow_model_samples_then_flowedits(flow_dirs, tmp_path, capsys):
    out = tmp_path / "gen"
    code = main(["generate", "--model", flow_dirs["flux"], "--source", "a cat", "--target", "a dog",
                 "a tiger", "--output", str(out), *FAST])
    assert code == EXIT_OK, capsys.readouterr().err
    assert sorted(p.name for p in out.glob("*.png")) == ["000_edit0_a_dog.png", "000_edit1_a_tiger.png", "000_source.png"]


@pytest.mark.parametrize("fam, method", [("sd3", "p2p"), ("flux", "pnp")])
def test_unet_methods_are_refused_for_flow_models_before_loading(flow_dirs, photo, tmp_path, capsys, monkeypatch, fam, method):
    """Mutation caught: the method checked after load_pipeline (the model would be loaded, then refused)."""
    import editkit

    monkeypatch.setattr(editkit, "load_pipeline", lambda *a, **k: pytest.fail("the model was loaded"))
    code = main(["edit", str(photo), "--model", flow_dirs[fam], "--method", method, "--source", "a cat",
                 "--target", "a dog", "--output", str(tmp_path / "o"), "--quiet"])
    assert code == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert f"method '{method}' is not available for" in err and "flowedit" in err and len(err.splitlines()) == 1


def test_flowedit_is_refused_for_a_unet_model_before_loading(tiny_model_dirs, photo, tmp_path, capsys, monkeypatch):
    import editkit

    monkeypatch.setattr(editkit, "load_pipeline", lambda *a, **k: pytest.fail("the model was loaded"))
    code = main(["edit", str(photo), "--model", str(tiny_model_dirs["sd1"]), "--method", "flowedit",
                 "--source", "a cat", "--target", "a dog", "--output", str(tmp_path / "o"), "--quiet"])
    assert code == EXIT_USAGE
    assert "'flowedit' is not available for Stable Diffusion 1.x/2.x models; use one of: p2p, pnp" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--n-max", "5", "--steps", "4"], "--n-max 5 is more than --steps 4"),
    (["--n-avg", "0"], "n_avg must be a positive integer"),
    (["--gamma", "2", "--method", "rf-inversion"], "gamma must be in [0, 1]"),
    (["--reweight", "dog=2"], "Prompt-to-Prompt options"),
])
def test_bad_flow_options_exit_2_before_loading(flow_dirs, photo, tmp_path, capsys, monkeypatch, args, message):
    import editkit

    monkeypatch.setattr(editkit, "load_pipeline", lambda *a, **k: pytest.fail("the model was loaded"))
    code = main(["edit", str(photo), "--model", flow_dirs["sd3"], "--source", "a cat", "--target", "a dog",
                 "--output", str(tmp_path / "o"), "--quiet", *args])
    assert code == EXIT_USAGE
    assert message in capsys.readouterr().err
