"""`splat export --format` writes every shared format from a run folder, a checkpoint or a PLY, and every
command that reads a model (`eval`, `render`, `view`'s loader) reads each back."""

from __future__ import annotations

import json

import pytest
import torch

from splat.cli import main
from splat.gaussians.formats import SUFFIXES
from splat.gaussians.model import load_model

from ..helpers import DEMO, make_demo_run

SHARED = ["splat", "compressed-ply", "spz", "sog", "png"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_demo_run(tmp_path_factory.mktemp("export") / "run")


def _eval(model, capsys) -> float:
    assert main(["eval", str(model), "--scene", str(DEMO), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    return json.loads(out[out.index("{"):])["psnr"]


def _render(model, width: int = 64):
    """The model seen from its first training camera, scaled to ``width`` pixels."""
    from splat.scene.colmap import load_scene

    view = load_scene(DEMO).views[0]
    scale = width / view.width
    K = torch.tensor(view.K, dtype=torch.float32).clone()
    K[:2] *= scale
    viewmat = torch.tensor(view.cam_from_world, dtype=torch.float32)
    img, _, _ = model.render(K, viewmat, width, round(view.height * scale), model.config.sh_degree)
    return img.clamp(0, 1)


def _psnr(a, b) -> float:
    return float(-10 * torch.log10(((a - b) ** 2).mean().clamp_min(1e-12)))


@pytest.fixture(scope="module")
def ply(run, tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "model.ply"
    assert main(["export", str(run), "--out", str(path)]) == 0
    return path


@pytest.mark.parametrize("fmt", SHARED)
def test_export_each_format_and_read_it_back(ply, fmt, tmp_path, capsys):
    out = tmp_path / f"model{SUFFIXES[fmt]}"
    assert main(["export", str(ply), "--out", str(out)]) == 0  # from a PLY, the format from the name
    assert f"({fmt}, " in capsys.readouterr().out
    original, decoded = load_model(ply), load_model(out)
    assert decoded.kind == fmt and decoded.num_gaussians == original.num_gaussians
    # same Gaussians up to the format's quantisation (stored order may differ: compare sorted positions)
    a = original.params["means"].sort(dim=0).values
    b = decoded.params["means"].sort(dim=0).values
    extent = float((a.max(0).values - a.min(0).values).max())
    assert float((a - b).abs().max()) < 0.01 * extent
    assert decoded.config.sh_degree == (0 if fmt == "splat" else original.config.sh_degree)
    # the decoded Gaussians render the original's picture (.splat: without its view-dependent colour)
    assert _psnr(_render(decoded), _render(original)) > (20 if fmt == "splat" else 28), fmt


def test_eval_and_render_read_shared_formats(run, ply, tmp_path, capsys):
    spz, sog = tmp_path / "model.spz", tmp_path / "scene_sog"
    assert main(["export", str(sorted((run / "ckpts").glob("*.pt"))[-1]), "--out", str(spz)]) == 0
    sog.mkdir()
    assert main(["export", str(run), "--out", str(sog / "meta.json")]) == 0  # a SOG as a folder of files
    assert len(list(sog.iterdir())) > 1
    p_ply, p_spz = _eval(ply, capsys), _eval(spz, capsys)
    assert abs(p_spz - p_ply) < 0.5, (p_ply, p_spz)
    assert main(["render", str(sog), "--scene", str(DEMO), "--out", str(tmp_path / "r"), "--device", "cpu"]) == 0
    assert list((tmp_path / "r").rglob("*.png"))


def test_export_refuses_a_name_without_a_format(run, tmp_path, capsys):
    rc = main(["export", str(run), "--out", str(tmp_path / "model.bin")])
    err = capsys.readouterr().err
    assert rc == 2 and "its name says no format" in err and "Traceback" not in err
    assert not (tmp_path / "model.bin").exists()
    assert main(["export", str(run), "--out", str(tmp_path / "model.bin"), "--format", "spz"]) == 0
    from splat.gaussians.formats import load_gaussians_file

    params, _ = load_gaussians_file(tmp_path / "model.bin", format="spz")  # --format wins over the name
    assert len(params["means"]) == load_model(run).num_gaussians
