"""Bad-input catalogue for the `splat` CLI: one row per case.

Every row asserts the exit code (2: bad input), a message naming the problem, no traceback on stderr, and
that nothing was written or deleted anywhere (the whole temporary tree is compared before and after).
Rows run in-process through ``splat.cli.main`` (our own messages: one line); one also runs as a subprocess
to check the real entry point.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from splat.cli import main
from tests.splat.commands.catalogue import DEMO, tree

FAST = ["--device", "cpu", "--no-progress", "--no-lpips", "--max-width", "32", "--steps", "2"]



# -- scene mutations -----------------------------------------------------------------------------------
def _json(text):
    return lambda s: (s / "splat.json").write_text(text)


def _rm(*names):
    def f(s):
        for n in names:
            p = s / n
            shutil.rmtree(p) if p.is_dir() else p.unlink()

    return f


def _empty_model(s):
    for p in (s / "sparse" / "0").iterdir():
        p.unlink()


def _ckpt(payload):
    def f(s):
        if isinstance(payload, bytes):
            (s.parent / "c.pt").write_bytes(payload)
        else:
            torch.save(payload, s.parent / "c.pt")

    return f


def _valid_looking_ckpt(config=None, params=None):
    n = 4
    params = params if params is not None else {
        "means": torch.zeros(n, 3), "scales": torch.zeros(n, 3), "quats": torch.ones(n, 4),
        "opacities": torch.zeros(n), "sh0": torch.zeros(n, 1, 3), "shN": torch.zeros(n, 3, 3),
    }  # fmt: skip
    return {"format": "splat-ckpt-1", "step": 1, "config": config or {}, "params": params}


# id -> (mutate scene, argv template, message regex, text that must NOT appear)
# argv placeholders: {scene}, {out}, {tmp}, {ckpt}
ROWS = {
    # scene and model
    "scene_missing": (None, ["train", "{tmp}/nope", "--out", "{out}"], r"scene folder .*nope does not exist", None),
    "scene_is_a_file": (
        lambda s: (s.parent / "f").write_text("x"), ["train", "{tmp}/f", "--out", "{out}"], r"is not a folder", None
    ),
    "missing_cameras_bin": (
        _rm("sparse/0/cameras.bin"), ["train", "{scene}", "--out", "{out}"], r"missing cameras\.bin", "--overwrite"
    ),
    "empty_sparse0": (_empty_model, ["train", "{scene}", "--out", "{out}"], r"sparse/0: it is empty", "overwrite"),
    "no_images_no_model": (
        _rm("images", "sparse"), ["train", "{scene}", "--out", "{out}"], r"has no images folder", None
    ),
    # the scene's splat.json
    "json_device_banana": (_json('{"device": "banana"}'), ["train", "{scene}", "--out", "{out}"], r"splat\.json: device must be .*got 'banana'", None),
    "json_background_2": (_json('{"background": [1, 2]}'), ["train", "{scene}", "--out", "{out}"], r"background must be three numbers in \[0, 1\].*\[1, 2\]", None),
    "json_refine_every_0": (_json('{"refine_every": 0}'), ["train", "{scene}", "--out", "{out}"], r"refine_every must be an integer >= 1, got 0", None),
    "json_scales_lr_inf": (_json('{"scales_lr": Infinity}'), ["train", "{scene}", "--out", "{out}"], r"scales_lr must be a finite number >= 0, got inf", None),
    "json_means_lr_nan": (_json('{"means_lr": NaN}'), ["train", "{scene}", "--out", "{out}"], r"means_lr must be a finite number > 0, got nan", None),
    "json_negative_lr": (_json('{"opacities_lr": -0.05}'), ["train", "{scene}", "--out", "{out}"], r"opacities_lr must be a finite number >= 0, got -0\.05", "math domain"),
    "json_sets_out": (_json('{"out": "/tmp/elsewhere"}'), ["train", "{scene}"], r"out may not be set here .*--out", None),
    "json_sets_cache_dir": (_json('{"cache_dir": "/tmp"}'), ["train", "{scene}", "--out", "{out}"], r"cache_dir may not be set here", None),
    "json_sets_images": (_json('{"images": "../../x"}'), ["train", "{scene}", "--out", "{out}"], r"images may not be set here", None),
    "json_sets_resume": (_json('{"resume": "x.pt"}'), ["train", "{scene}", "--out", "{out}"], r"resume may not be set here", None),
    "json_invalid": (_json('{"steps": 3,'), ["train", "{scene}", "--out", "{out}"], r"splat\.json is not valid JSON", None),
    "json_not_object": (_json("[1, 2]"), ["train", "{scene}", "--out", "{out}"], r"must hold a JSON object", None),
    "json_unknown_key": (_json('{"stepz": 3}'), ["train", "{scene}", "--out", "{out}"], r"unknown option\(s\) \['stepz'\]", None),
    "json_steps_string": (_json('{"steps": "many"}'), ["train", "{scene}", "--out", "{out}"], r"steps must be an integer >= 1, got 'many'", None),
    "json_test_every_1": (_json('{"test_every": 1}'), ["train", "{scene}", "--out", "{out}"], r"test_every must be 0 or an integer >= 2", None),
    # flags
    "flag_negative_lr": (None, ["train", "{scene}", "--out", "{out}", "--means-lr", "-1e-4"], r"means_lr must be a finite number > 0", "math domain"),
    "flag_nan_lr": (None, ["train", "{scene}", "--out", "{out}", "--scales-lr", "nan"], r"scales_lr must be a finite number", None),
    "flag_inf_lr": (None, ["train", "{scene}", "--out", "{out}", "--sh0-lr", "inf"], r"sh0_lr must be a finite number", None),
    "flag_refine_every_0": (None, ["train", "{scene}", "--out", "{out}", "--refine-every", "0"], r"refine_every must be an integer >= 1", None),
    "flag_device_banana": (None, ["train", "{scene}", "--out", "{out}", "--device", "banana"], r"device must be .*'banana'", None),
    "flag_cuda_missing": (None, ["train", "{scene}", "--out", "{out}", "--device", "cuda:3"], r"device 'cuda:3' requested but", None),
    "flag_background_2": (None, ["train", "{scene}", "--out", "{out}", "--background", "1", "2"], r"background", None),
    "flag_unknown_preset": (None, ["train", "{scene}", "--out", "{out}", "--preset", "fast"], r"preset", None),
    "flag_images_outside": (None, ["train", "{scene}", "--out", "{out}", "--images", "../x"], r"images must be a folder name inside the scene", None),
    "flag_sh_degree_4": (None, ["train", "{scene}", "--out", "{out}", "--sh-degree", "4"], r"sh_degree must be an integer from 0 to 3", None),
    "flag_steps_0": (None, ["train", "{scene}", "--out", "{out}", "--steps", "0"], r"steps must be an integer >= 1", None),
    "flag_keep_ckpts_negative": (None, ["train", "{scene}", "--out", "{out}", "--keep-ckpts", "-1"], r"keep_ckpts must be an integer >= 0", None),
    "flag_eval_steps_negative": (None, ["train", "{scene}", "--out", "{out}", "--eval-steps", "-5"], r"eval_steps must be a list of step numbers", None),
    "out_is_a_file": (lambda s: (s.parent / "f").write_text("x"), ["train", "{scene}", "--out", "{tmp}/f"], r"is not a folder", None),
    "unknown_command": (None, ["trian", "{scene}"], r"unknown command 'trian'; choose from train", None),
    # checkpoints
    "resume_missing": (None, ["train", "{scene}", "--out", "{out}", "--resume", "{tmp}/none.pt"], r"checkpoint .*none\.pt does not exist", None),
    "resume_garbage": (_ckpt(b"\x00garbage" * 8), ["train", "{scene}", "--out", "{out}", "--resume", "{ckpt}"], r"cannot read checkpoint .*c\.pt", None),
    "resume_with_preset": (None, ["train", "{scene}", "--out", "{out}", "--resume", "{tmp}/none.pt", "--preset", "mcmc"], r"--preset does not apply with --resume", None),
    "render_missing_ckpt": (None, ["render", "{tmp}/none.pt", "--scene", "{scene}", "--out", "{out}"], r"does not exist", None),
    "eval_garbage_ckpt": (_ckpt(b"PK\x03\x04broken zip"), ["eval", "{ckpt}", "--scene", "{scene}"], r"cannot read checkpoint", None),
    "export_truncated_ckpt": (_ckpt(b""), ["export", "{ckpt}", "--out", "{out}/x.ply"], r"cannot read checkpoint", None),
    "export_not_a_checkpoint": (_ckpt([1, 2, 3]), ["export", "{ckpt}", "--out", "{out}/x.ply"], r"is not a splat checkpoint", None),
    "export_missing_params": (_ckpt(_valid_looking_ckpt(params={"means": torch.zeros(2, 3)})), ["export", "{ckpt}", "--out", "{out}/x.ply"], r"c\.pt has no Gaussian parameter", None),
    "render_ckpt_bad_config": (_ckpt(_valid_looking_ckpt(config={"refine_every": 0})), ["render", "{ckpt}", "--scene", "{scene}", "--out", "{out}"], r"c\.pt \(saved config\): refine_every must be an integer >= 1", None),
    "render_ckpt_bad_device": (_ckpt(_valid_looking_ckpt()), ["render", "{ckpt}", "--scene", "{scene}", "--out", "{out}", "--device", "banana"], r"device must be", None),
    "eval_ckpt_unknown_option": (_ckpt(_valid_looking_ckpt(config={"evil": 1})), ["eval", "{ckpt}", "--scene", "{scene}"], r"unknown option\(s\) \['evil'\]", None),
}  # fmt: skip


def _prepare(tmp_path: Path, mutate):
    scene = tmp_path / "scene"
    shutil.copytree(DEMO, scene)
    if mutate is not None:
        mutate(scene)
    return scene


def _argv(template, tmp_path, scene):
    subs = {
        "scene": str(scene),
        "out": str(tmp_path / "out"),
        "tmp": str(tmp_path),
        "ckpt": str(tmp_path / "c.pt"),
    }
    return [a.format(**subs) for a in template]


@pytest.mark.parametrize("row", list(ROWS))
def test_bad_input(row, tmp_path, capsys):
    mutate, template, pattern, forbidden = ROWS[row]
    scene = _prepare(tmp_path, mutate)
    argv = _argv(template, tmp_path, scene)
    if argv[0] == "train" and "--device" not in argv:
        argv += ["--device", "cpu"]
    before = tree(tmp_path)
    usage = False
    try:
        rc = main(argv)
    except SystemExit as e:  # tyro's usage errors (bad flag syntax, unknown choice): a box of lines
        rc, usage = e.code, True
    err = capsys.readouterr().err
    assert rc == 2, (rc, err)
    assert re.search(pattern, err), err
    assert "Traceback" not in err
    if not usage:
        assert len(err.strip().splitlines()) == 1, err  # one line
    if forbidden:
        assert forbidden not in err, err
    assert tree(tmp_path) == before, "a bad input must not write or delete anything"


@pytest.mark.parametrize("row", ["json_device_banana"])
def test_bad_input_subprocess(row, tmp_path):
    mutate, template, pattern, _ = ROWS[row]
    scene = _prepare(tmp_path, mutate)
    before = tree(tmp_path)
    argv = _argv(template, tmp_path, scene)
    p = subprocess.run(
        [sys.executable, "-m", "splat.cli", *argv], capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 2, p.stderr
    assert re.search(pattern, p.stderr) and "Traceback" not in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr  # one line
    assert tree(tmp_path) == before


def test_disk_full_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch):
    import errno

    import safeio

    scene = _prepare(tmp_path, None)

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safeio.os, "fsync", full)
    rc = main(["train", str(scene), "--out", str(tmp_path / "out"), *FAST])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "config.json: no space left on the device" in err
    assert not list((tmp_path / "out").rglob("*.tmp"))  # the temp file was removed
