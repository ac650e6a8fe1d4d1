"""The `splat` command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from splat.cli import main
from splat.commands.train import parse_train

HELP_SCRIPT = """
import contextlib, io, json, sys
from splat.cli import main
from splat.commands import COMMANDS
texts = {}
for argv in (["--help"], *([name, "--help"] for name in COMMANDS)):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        try:
            main(argv)
        except SystemExit:
            pass
    texts[argv[0]] = buf.getvalue()
print(json.dumps({"torch": "torch" in sys.modules, "texts": texts}))
"""


@pytest.fixture(scope="module")
def helps():
    """`splat --help` and every `splat COMMAND --help`, in one fresh process (one interpreter start)."""
    out = subprocess.run([sys.executable, "-c", HELP_SCRIPT], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def test_help_of_every_command_imports_no_torch(helps):
    from splat.commands import COMMANDS

    assert helps["torch"] is False  # fails if a command module (or splat.cli) imports torch at the top
    assert set(helps["texts"]) == {"--help", *COMMANDS}
    for name in COMMANDS:
        assert f"splat {name}" in helps["texts"][name] and "--help" in helps["texts"][name], name


def test_train_help_documents_every_option(helps):
    import dataclasses

    from splat.config import TrainConfig

    out = helps["texts"]["train"]
    for f in dataclasses.fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in out, f.name
    assert "--preset" in out
    words = " ".join(out.replace("│", " ").split())
    assert "about 720 bytes per Gaussian" in words  # what a checkpoint costs
    assert "--sfm.matcher" in out and "--sfm.max-image-size" in out  # prepare's SfM options
    assert "--sfm.overwrite" not in out  # train never replaces a model


def test_docs_name_out_on_resume_and_exit_codes():
    from pathlib import Path

    import splat.cli

    docs = (Path(__file__).parents[3] / "docs" / "splat.md").read_text()  # the README links to it
    assert "(docs/splat.md)" in (Path(__file__).parents[3] / "README.md").read_text()
    resume_lines = [line for line in docs.splitlines() if line.startswith("splat train") and "--resume" in line]
    assert resume_lines and all("--out" in line for line in resume_lines)
    for text in (docs, splat.cli.__doc__):
        assert "0 ok, 1 internal error" in text and "2 bad input" in text and "130 interrupted" in text


def test_preset_then_scene_json_then_flags(synthetic_scene, tmp_path):
    scene = tmp_path / "s"
    scene.mkdir()
    (scene / "splat.json").write_text(json.dumps({"steps": 77, "max_width": 100, "eval_steps": [5]}))
    _, cfg = parse_train([str(scene), "--preset", "cpu-small", "--max-width", "50"])
    assert cfg.steps == 77  # from splat.json over the preset's 2000
    assert cfg.max_width == 50  # flag over splat.json
    assert cfg.eval_steps == (5,)
    assert cfg.refine_stop == 1500  # from the preset


def test_cli_train_export_and_errors(synthetic_scene, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", str(synthetic_scene), "--out", str(out), "--steps", "3", "--device", "cpu", "--no-progress",
               "--eval-steps", "3", "--save-steps", "3", "--sh-degree", "1", "--no-lpips", "--no-save-renders"])  # fmt: skip
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 3 and summary["psnr"] > 5
    ckpt = out / "ckpts" / "ckpt_000003.pt"
    assert main(["export", str(ckpt), "--out", str(tmp_path / "x.ply")]) == 0
    from splat.gaussians.ply import read_ply

    assert read_ply(tmp_path / "x.ply")["means"].shape[0] == summary["num_gaussians"]
    assert main(["train", str(tmp_path / "nope"), "--out", str(tmp_path / "o2"), "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err
