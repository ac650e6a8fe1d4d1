"""Configuration: one validation for every field, paths only from the command line, one source of truth
for densification, checkpoint size and pruning. All fast (no training)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from splat.config import (
    PATH_FIELDS,
    PRESETS,
    ConfigError,
    DensifyConfig,
    TrainConfig,
    apply_overrides,
    config_to_dict,
    scene_config,
    validate,
)

# (field, bad JSON value, words the message must contain)
BAD_VALUES = [
    ("steps", 0, "integer >= 1"),
    ("steps", "many", "integer >= 1"),
    ("steps", True, "integer >= 1"),
    ("steps", 2.5, "integer >= 1"),
    ("refine_every", 0, "integer >= 1"),
    ("reset_every", -1, "integer >= 0"),
    ("means_lr", -1e-4, "finite number > 0"),
    ("means_lr", 0, "finite number > 0"),
    ("means_lr", math.nan, "finite number > 0"),
    ("means_lr_final", math.inf, "finite number > 0"),
    ("scales_lr", math.inf, "finite number >= 0"),
    ("scales_lr", -1.0, "finite number >= 0"),
    ("sh0_lr", math.nan, "finite number >= 0"),
    ("opacities_lr", "fast", "finite number >= 0"),
    ("quats_lr", -math.inf, "finite number >= 0"),
    ("adam_eps", 0, "finite number > 0"),
    ("background", [1, 2], "three numbers in [0, 1]"),
    ("background", [0, 0, 2], "three numbers in [0, 1]"),
    ("background", [0, 0, math.nan], "three numbers in [0, 1]"),
    ("device", "banana", '"cpu"'),
    ("device", "cuda:x", '"cuda:N"'),
    ("backend", "opengl", "'gsplat'"),
    ("strategy", "greedy", "'default', 'mcmc'"),
    ("sh_degree", 4, "integer from 0 to 3"),
    ("init_opacity", 1.0, "(0, 1)"),
    ("reset_value", 0, "(0, 1)"),
    ("ssim_lambda", 1.5, "[0, 1]"),
    ("downscale", 0, "finite number > 0"),
    ("max_width", -1, "integer >= 0"),
    ("test_every", 1, "0 or an integer >= 2"),
    ("eval_steps", [1, -2], "step numbers"),
    ("save_steps", "7000", "step numbers"),
    ("save_steps", [1.5], "step numbers"),
    ("ckpt_every", -5, "integer >= 0"),
    ("keep_ckpts", -1, "integer >= 0"),
    ("cap_max", 0, "integer >= 1"),
    ("progress", "yes", "true or false"),
    ("lpips", 1, "true or false"),
    ("seed", -1, "integer >= 0"),
    ("grow_grad2d", 0.0, "finite number > 0"),
    ("prune_opa", 1.0, "[0, 1)"),
    ("sh_degree_interval", 0, "integer >= 1"),
]


@pytest.mark.parametrize("field,value,allowed", BAD_VALUES, ids=[f"{f}={v!r}" for f, v, _ in BAD_VALUES])
def test_every_bad_value_is_refused_naming_field_and_allowed_values(field, value, allowed):
    with pytest.raises(ConfigError) as e:
        apply_overrides(TrainConfig(), {field: value}, source="SRC")
    msg = str(e.value)
    assert msg.startswith(f"SRC: {field} must be "), msg
    assert allowed in msg, msg


def test_validate_catches_python_api_values_too():
    with pytest.raises(ConfigError, match="refine_every must be an integer >= 1, got 0"):
        validate(TrainConfig(refine_every=0))
    with pytest.raises(ConfigError, match="images must be a folder name inside the scene"):
        validate(TrainConfig(images="../elsewhere"))
    with pytest.raises(ConfigError, match="images must be"):
        validate(TrainConfig(images="/abs/images"))


def test_python_api_takes_folders_as_str_or_path():
    # mutation: without TrainConfig.__post_init__, out="runs/a" is refused as "out must be a path"
    cfg = dataclasses.replace(TrainConfig(), out="runs/a", resume="runs/a/ckpt.pt", cache_dir=Path("c"))
    assert (cfg.out, cfg.resume, cfg.cache_dir) == (Path("runs/a"), Path("runs/a/ckpt.pt"), Path("c"))
    validate(cfg)
    with pytest.raises(ConfigError, match="out must be a path, got ''"):
        validate(TrainConfig(out=""))


def test_every_field_has_a_rule_and_defaults_and_presets_are_valid():
    for name, cfg in PRESETS.items():
        validate(cfg, name)  # would raise AssertionError for a field without a rule
    validate(TrainConfig())
    # JSON round trip of the flat dict (config.json, checkpoints) gives the same config back
    for cfg in PRESETS.values():
        d = json.loads(json.dumps(config_to_dict(cfg)))
        assert apply_overrides(TrainConfig(), d) == cfg


def test_presets_evaluate_at_step_zero():
    for name, cfg in PRESETS.items():
        assert 0 in cfg.eval_steps, name
    assert (
        0
        in json.loads((Path(__file__).parents[3] / "assets" / "demo" / "splat.json").read_text())[
            "eval_steps"
        ]
    )


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ConfigError, match="unknown preset 'fast'; choose from default, mcmc, cpu-small"):
        scene_config(Path("."), "fast")


@pytest.mark.parametrize("key", PATH_FIELDS)
def test_scene_json_may_not_set_paths(tmp_path, key):
    (tmp_path / "splat.json").write_text(json.dumps({"steps": 5, key: str(tmp_path / "elsewhere")}))
    with pytest.raises(ConfigError, match=rf"{key} may not be set here .*--{key.replace('_', '-')}"):
        scene_config(tmp_path)


def test_checkpoint_paths_are_ignored():
    saved = config_to_dict(TrainConfig(steps=9))
    saved.update(out="/victim", cache_dir="/victim/cache", images="../../victim", resume="/victim/x.pt")
    cfg = apply_overrides(TrainConfig(), saved, paths="ignore")
    assert cfg.steps == 9
    for key in PATH_FIELDS:
        assert getattr(cfg, key) == getattr(TrainConfig(), key), key


def test_non_finite_json_numbers_are_refused(tmp_path):
    (tmp_path / "splat.json").write_text('{"scales_lr": Infinity}')
    with pytest.raises(ConfigError, match=r"splat.json: scales_lr must be a finite number >= 0, got inf"):
        scene_config(tmp_path)


def test_densifier_takes_the_config_whole():
    """Every DensifyConfig field reaches gsplat's strategy or our reset unchanged (one source of truth)."""
    from splat.training.strategy import Densifier

    cfg = TrainConfig(refine_start=7, refine_stop=70, refine_every=9, reset_every=21, reset_value=0.03,
                      grow_grad2d=3e-4, grow_scale3d=0.02, prune_opa=0.004, prune_scale3d=0.2)  # fmt: skip
    d = Densifier(cfg.densify_config(), scene_scale=2.0)
    s = d.strategy
    assert (s.refine_start_iter, s.refine_stop_iter, s.refine_every, s.reset_every) == (7, 70, 9, 21)
    assert (s.grow_grad2d, s.grow_scale3d, s.prune_opa, s.prune_scale3d) == (3e-4, 0.02, 0.004, 0.2)
    assert (d.reset_every, d.reset_value, d.refine_stop) == (21, 0.03, 70)
    mcmc = TrainConfig(strategy="mcmc", cap_max=123, noise_lr=7.0, min_opacity=0.01, mcmc_refine_stop=99,
                       refine_start=3, refine_every=4)  # fmt: skip
    m = Densifier(mcmc.densify_config()).strategy
    assert (m.cap_max, m.noise_lr, m.min_opacity, m.refine_stop_iter, m.refine_start_iter, m.refine_every) == (
        123, 7.0, 0.01, 99, 3, 4,
    )  # fmt: skip
    # TrainConfig extends DensifyConfig: the flat fields are the same objects, not copies
    assert {f.name for f in dataclasses.fields(DensifyConfig)} <= {
        f.name for f in dataclasses.fields(TrainConfig)
    }


def test_checkpoint_costs_what_help_says(tmp_path):
    """A checkpoint at SH degree 3 (params + Adam moments + densifier statistics) is ~720 bytes per Gaussian."""
    from splat.gaussians.checkpoint import BYTES_PER_GAUSSIAN_SH3, read_checkpoint, write_checkpoint
    from splat.gaussians.params import make_optimizers, make_params

    n = 20_000
    p = make_params(torch.randn(n, 3), torch.randn(n, 3), torch.randn(n, 4), torch.randn(n),
                    torch.randn(n, 1, 3), torch.zeros(n, 15, 3))  # fmt: skip
    opts = make_optimizers(p, {k: 1e-3 for k in p}, eps=1e-15)
    sum(v.square().sum() for v in p.values()).backward()
    for o in opts.values():
        o.step()
    ckpt = {"format": "splat-ckpt-1", "step": 1, "config": {}, "params": {k: v.detach() for k, v in p.items()},
            "optimizers": {k: o.state_dict() for k, o in opts.items()},
            "strategy": {"kind": "default", "state": {k: torch.zeros(n) for k in ("grad2d", "count", "radii")}}}  # fmt: skip
    path = tmp_path / "c.pt"
    write_checkpoint(path, ckpt)
    per_gaussian = path.stat().st_size / n
    assert abs(per_gaussian - BYTES_PER_GAUSSIAN_SH3) < 0.03 * BYTES_PER_GAUSSIAN_SH3, per_gaussian
    assert torch.equal(read_checkpoint(path)["params"]["means"], p["means"].detach())


def test_help_states_checkpoint_cost():
    import inspect

    from splat.gaussians.checkpoint import BYTES_PER_GAUSSIAN_SH3

    assert f"about {BYTES_PER_GAUSSIAN_SH3} bytes per Gaussian" in inspect.getsource(TrainConfig)


def test_checkpoint_writer_streams_into_the_temp_file(tmp_path, monkeypatch):
    """torch.save receives a path (the atomic temp file), never an in-memory buffer."""
    import splat.gaussians.checkpoint as ck

    seen = []
    real = torch.save
    monkeypatch.setattr(ck.torch, "save", lambda obj, f: (seen.append(f), real(obj, f)))
    ck.write_checkpoint(tmp_path / "a.pt", {"format": ck.FORMAT})
    assert len(seen) == 1 and isinstance(seen[0], Path) and seen[0].name.endswith(".tmp")
    assert (tmp_path / "a.pt").is_file() and not list(tmp_path.glob("*.tmp"))


def test_prune_keeps_newest_and_save_steps(tmp_path):
    from splat.gaussians.checkpoint import prune_checkpoints

    for s in (100, 200, 300, 400, 500, 600):
        (tmp_path / f"ckpt_{s:06d}.pt").write_bytes(b"x")
    (tmp_path / "ckpt_keep.pt").write_bytes(b"user file")  # not our name: untouched
    removed = prune_checkpoints(tmp_path, keep_last=2, keep_steps=(200,))
    assert sorted(p.name for p in removed) == ["ckpt_000100.pt", "ckpt_000300.pt", "ckpt_000400.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ckpt_000200.pt", "ckpt_000500.pt", "ckpt_000600.pt", "ckpt_keep.pt",
    ]  # fmt: skip
    assert prune_checkpoints(tmp_path, keep_last=0, keep_steps=()) == []


def test_crafted_checkpoints_are_refused_cleanly(tmp_path):
    from splat.gaussians.checkpoint import CheckpointError, read_checkpoint

    cases = {
        "random.pt": b"\x00\x01garbage" * 10,
        "empty.pt": b"",
    }
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(CheckpointError, match=f"cannot read checkpoint .*{name}"):
            read_checkpoint(tmp_path / name)
    torch.save({"format": "splat-ckpt-1", "step": 1}, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="not a complete splat checkpoint"):
        read_checkpoint(tmp_path / "partial.pt")
    torch.save({"format": "splat-ckpt-1", "x": Path("/")}, tmp_path / "object.pt")  # not plain data
    with pytest.raises(CheckpointError, match="objects other than tensors and plain data, which are refused"):
        read_checkpoint(tmp_path / "object.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="is not a splat checkpoint"):
        read_checkpoint(tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.pt")
