"""Quality options in training: schedules that follow --steps, AbsGS in the densifier, bilateral grids
kept to training views, and one short run with every option on the reference backend."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

from splat.config import ConfigError, TrainConfig, apply_overrides, preset, scaled_schedule, schedule_warnings
from splat.gaussians.model import load_model
from splat.gaussians.params import make_optimizers, make_params
from splat.render.rasterization import rasterize
from splat.training.strategy import Densifier
from splat.training.trainer import Trainer
from tests.splat.helpers import small_config


def test_scaled_schedule_keeps_the_preset_shape():
    cfg = scaled_schedule(dataclasses.replace(preset("default"), steps=300))
    assert (cfg.refine_start, cfg.refine_stop, cfg.refine_every, cfg.reset_every) == (5, 150, 1, 30)
    assert (cfg.sh_degree_interval, cfg.means_lr_steps, cfg.mcmc_refine_stop) == (10, 300, 250)
    assert cfg.eval_steps == (0, 70, 300) and cfg.save_steps == (70, 300)
    assert cfg.schedule_steps == 300 and scaled_schedule(cfg) == cfg  # idempotent
    assert schedule_warnings(cfg) == []
    unscaled = TrainConfig(steps=300)  # schedule_steps 0: as given
    assert scaled_schedule(unscaled) == unscaled


def test_written_out_schedules_are_not_scaled_again():
    """A splat.json that writes schedules for its own steps (the demo's) takes them literally; one that
    only shortens the run scales the preset's (mutation: the rule removed -> the demo's 600-step schedule
    scaled by 600 / 30000)."""
    demo = apply_overrides(preset("default"), {"steps": 600, "refine_start": 100, "refine_every": 100})
    assert demo.schedule_steps == 0 and scaled_schedule(demo).refine_start == 100
    short = apply_overrides(preset("default"), {"steps": 600})
    assert short.schedule_steps == 30_000 and scaled_schedule(short).refine_start == 10


def test_unscaled_short_run_warns_what_will_not_happen():
    notes = schedule_warnings(TrainConfig(steps=300))
    assert any("no densification will happen" in n and "refine_start=500" in n for n in notes)
    assert any("SH degree only reaches 0 of 3" in n for n in notes)


def test_trainer_runs_the_scaled_schedule(synthetic_scene, tmp_path, caplog):
    """`--steps 300` from a preset densifies from step 5 (mutation: schedule not scaled -> 500)."""
    cfg = dataclasses.replace(preset("default"), out=tmp_path / "o", steps=300, device="cpu", progress=False)
    t = Trainer(synthetic_scene, cfg)
    assert t.densifier.strategy.refine_start_iter == 5 and t.densifier.strategy.refine_every == 1
    assert t.cfg.sh_degree_interval == 10 and t.cfg.means_lr_steps == 300
    with caplog.at_level(logging.WARNING, logger="splat.trainer"):
        Trainer(synthetic_scene, dataclasses.replace(cfg, schedule_steps=0, out=tmp_path / "p"))
    assert "no densification will happen" in caplog.text


def test_quality_options_are_validated():
    with pytest.raises(ConfigError, match="absgrad applies to the default strategy only"):
        apply_overrides(preset("mcmc"), {"absgrad": True})
    with pytest.raises(ConfigError, match="depth_lambda must be a finite number > 0"):
        apply_overrides(TrainConfig(), {"depth_lambda": 0})
    with pytest.raises(ConfigError, match="schedule_steps must be an integer >= 0"):
        apply_overrides(TrainConfig(), {"schedule_steps": -1})
    q = preset("quality")
    assert q.absgrad and q.schedule_steps == q.steps
    assert not (q.antialiased or q.bilateral_grid or q.depth_loss)  # opt-in: for particular captures and uses


def test_densifier_grows_on_the_absolute_gradient():
    """With absgrad the default strategy's statistic is |grad| summed per pixel, normalised as gsplat does
    (mutation: absgrad off: the densifier reads the plain gradient)."""
    g = torch.Generator().manual_seed(1)
    n, size = 10, 16
    params = make_params(
        torch.randn(n, 3, generator=g) * 0.3 + torch.tensor([0.0, 0.0, 3.0]),
        torch.log(torch.rand(n, 3, generator=g) * 0.08 + 0.03),
        torch.randn(n, 4, generator=g),
        torch.zeros(n),
        torch.rand(n, 1, 3, generator=g),
        torch.zeros(n, 3, 3),
    )
    optimizers = make_optimizers(params, {k: 1e-3 for k in params}, eps=1e-15)
    cfg = TrainConfig(absgrad=True, refine_start=100)
    assert Densifier(cfg).strategy.grow_grad2d == cfg.absgrad_grow_grad2d
    dens = Densifier(cfg)
    Ks = torch.tensor([[[20.0, 0, size / 2], [0, 20.0, size / 2], [0, 0, 1]]])
    colors = torch.cat([params["sh0"], params["shN"]], 1)
    img, _, info = rasterize(params["means"], params["quats"], torch.exp(params["scales"]),
                             torch.sigmoid(params["opacities"]), colors, torch.eye(4)[None], Ks, size, size,
                             sh_degree=1, backend="torch", absgrad=True)
    dens.step_pre_backward(params, optimizers, 1, info)
    (img - torch.rand(img.shape, generator=g)).square().sum().backward()
    dens.step_post_backward(params, optimizers, 1, info, lr_means=1e-3)
    expected = info["means2d"].absgrad[0].clone()
    expected[:, 0] *= size / 2
    expected[:, 1] *= size / 2
    seen = (info["radii"][0] > 0).all(-1)
    torch.testing.assert_close(dens.state["grad2d"][seen], expected.norm(dim=-1)[seen])
    plain = info["means2d"].grad[0].clone() * (size / 2)
    assert not torch.allclose(dens.state["grad2d"][seen], plain.norm(dim=-1)[seen], rtol=1e-2)


@pytest.fixture(scope="module")
def quality_run(synthetic_scene, tmp_path_factory):
    """A short run with every quality option (reference backend)."""
    out = tmp_path_factory.mktemp("quality") / "run"
    cfg = small_config(out, steps=24, refine_start=6, refine_every=6, refine_stop=20, reset_every=0,
                       means_lr_steps=24, sh_degree_interval=12, eval_steps=(24,), save_steps=(24,), max_width=48,
                       absgrad=True, antialiased=True, bilateral_grid=True, depth_loss=True)
    t = Trainer(synthetic_scene, cfg)
    result = t.train()
    return t, result


def test_every_option_trains_and_grids_stay_out_of_exports(quality_run):
    t, result = quality_run
    assert result.steps == 24 and result.metrics["24"]["psnr"] > 10
    assert t.appearance.grids.shape[0] == len(t.train_set)
    assert not torch.allclose(t.appearance.grids, torch.zeros_like(t.appearance.grids))
    ckpt = load_model(result.checkpoint).checkpoint
    assert ckpt["appearance"].shape == t.appearance.grids.shape  # kept to resume
    ply = load_model(result.ply)
    assert ply.kind == "ply" and set(ply.params) == {"means", "scales", "quats", "opacities", "sh0", "shN"}


def test_held_out_views_are_rendered_without_grids(quality_run):
    """gsplat's convention: novel views get no grid (mutation: a grid applied to held-out views: zeroed
    grids then black out the renders and change the scores)."""
    t, _ = quality_run
    before = t.evaluate(24)["psnr"]
    saved = t.appearance.grids.detach().clone()
    with torch.no_grad():
        t.appearance.grids.zero_()  # any grid applied would now turn renders black
    try:
        assert t.evaluate(24)["psnr"] == pytest.approx(before, abs=1e-6)
    finally:
        with torch.no_grad():
            t.appearance.grids.copy_(saved)
