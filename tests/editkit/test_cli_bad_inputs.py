"""Bad-input catalogue of the ``editkit`` command: one row per case, run through ``main`` in this
process (one row also as a real process, so the console entry point is covered too).

Every row asserts the documented exit code (2 bad input, 3 model not found), a one-line message naming the
problem, no traceback on stderr, and nothing written outside the output folder (the working folder, which
holds the inputs, is compared before and after). A bad input (exit 2) is refused before diffusers is even
imported (seconds of imports): those rows run with diffusers made unimportable.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
ARGS = ["--steps", "2", "--quiet"]


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_model_dirs) -> Path:
    """Inputs every row may use: the tiny model, damaged copies of it, a photo, pairs files."""
    root = tmp_path_factory.mktemp("bad-inputs")
    good = root / "model"
    shutil.copytree(tiny_model_dirs["sd1"], good)
    no_unet = root / "model-no-unet"
    shutil.copytree(good, no_unet)
    shutil.rmtree(no_unet / "unet")
    truncated = root / "model-truncated"
    shutil.copytree(good, truncated)
    weights = next((truncated / "unet").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])
    y, x = np.mgrid[0:40, 0:48]
    Image.fromarray(np.stack([x * 5, y * 6, x + y], -1).astype(np.uint8)).save(root / "photo.png")
    (root / "notes.png").write_text("not a picture")
    (root / "targets-not-list.jsonl").write_text(json.dumps({"source": "a cat", "targets": {"x": "a dog"}}) + "\n")
    (root / "targets-number.jsonl").write_text(json.dumps({"source": "a cat", "target": 3}) + "\n")
    (root / "not-an-object.jsonl").write_text("{}\n[1, 2]\n")
    (root / "a-file").write_text("in the way")
    return root


def snapshot(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*")}


P2P = ["--source", "a cat", "--target", "a dog"]

CASES = [
    # (id, argv after the command, exit code, words the message must contain)
    ("model-without-unet", ["generate", "--model", "{work}/model-no-unet", *P2P], 3, ["unet/", "--model"]),
    ("truncated-weights", ["generate", "--model", "{work}/model-truncated", *P2P], 3,
     ["corrupt", "diffusion_pytorch_model.safetensors"]),
    ("missing-model", ["generate", "--model", "{work}/nowhere", *P2P], 3, ["no file or folder", "--model"]),
    ("device-banana", ["generate", "--model", "{work}/model", "--device", "banana", *P2P], 2,
     ["banana", "cpu, cuda"]),
    ("device-cuda-without-gpu", ["generate", "--model", "{work}/model", "--device", "cuda:7", *P2P], 2, ["cuda:7"]),
    ("output-is-a-file", ["generate", "--model", "{work}/model", *P2P, "--output", "{work}/a-file"], 2,
     ["--output", "not a folder"]),
    ("output-under-a-file", ["generate", "--model", "{work}/model", *P2P, "--output", "{work}/a-file/out"], 2,
     ["--output", "cannot be written"]),
    ("pairs-targets-not-a-list", ["generate", "--model", "{work}/model", "--pairs", "{work}/targets-not-list.jsonl"],
     2, ["line 1", "'targets' must be a prompt or a list"]),
    ("pairs-target-a-number", ["generate", "--model", "{work}/model", "--pairs", "{work}/targets-number.jsonl"], 2,
     ["line 1", "'target'"]),
    ("pairs-line-not-an-object", ["generate", "--model", "{work}/model", "--pairs", "{work}/not-an-object.jsonl"],
     2, ["line 1"]),
    ("pairs-missing", ["generate", "--model", "{work}/model", "--pairs", "{work}/no-such.tsv"], 2,
     ["cannot read the pairs file"]),
    ("guidance-nan", ["generate", "--model", "{work}/model", *P2P, "--guidance", "nan"], 2, ["guidance", "finite"]),
    ("reweight-nan", ["generate", "--model", "{work}/model", *P2P, "--reweight", "dog=nan"], 2, ["dog=nan", "finite"]),
    ("steps-zero", ["generate", "--model", "{work}/model", *P2P, "--steps", "0"], 2, ["steps", "1 to 1000"]),
    ("cross-replace-out-of-range", ["generate", "--model", "{work}/model", *P2P, "--cross-replace", "1.5"], 2,
     ["cross replace", "between 0 and 1"]),
    ("image-not-an-image", ["edit", "{work}/notes.png", "--model", "{work}/model", *P2P], 2,
     ["notes.png", "not an image"]),
    ("pnp-fraction-nan", ["edit", "{work}/photo.png", "--method", "pnp", "--model", "{work}/model", "--target",
                          "a dog", "--pnp-f-t", "nan"], 2, ["--pnp-f-t"]),
]


def run_cli(argv, cwd: Path, capsys, monkeypatch) -> tuple[int, str]:
    from editkit.cli import main

    monkeypatch.chdir(cwd)
    capsys.readouterr()
    code = main(argv)
    return code, capsys.readouterr().err


def check_refused(got: int, err: str, code: int, words, work: Path, before: dict, tmp_path: Path) -> None:
    assert got == code, err
    assert "Traceback" not in err and "internal error" not in err, err
    assert err.strip().splitlines()[0].startswith("editkit: "), err
    for word in words:
        assert word in err, (word, err)
    assert snapshot(work) == before  # nothing written or deleted next to the inputs
    out = tmp_path / "out"
    assert not out.exists() or not any(out.iterdir())  # nothing in the output folder either
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["out"])  # nor anywhere else in the working folder


def row_argv(argv, work: Path, tmp_path: Path) -> list[str]:
    argv = [a.replace("{work}", str(work)) for a in argv]
    if "--output" not in argv:
        argv += ["--output", str(tmp_path / "out")]
    return [argv[0], *ARGS, *argv[1:]]


@pytest.mark.parametrize("argv, code, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(work, tmp_path, capsys, monkeypatch, argv, code, words):
    argv = row_argv(argv, work, tmp_path)
    before = snapshot(work)
    if code == 2:  # refused before the model, and before diffusers, is imported
        monkeypatch.setitem(sys.modules, "diffusers", None)
    got, err = run_cli(argv, tmp_path, capsys, monkeypatch)
    check_refused(got, err, code, words, work, before, tmp_path)


def test_bad_input_in_a_real_process(work, tmp_path):
    """`python -m editkit.cli`: the exit code and the message of the console entry point itself. The same fresh
    process shows what `import editkit` costs a plain run: accelerate (batch mode only) and diffusers (the
    model) are never imported, though editkit, editkit.batch and the command line were (``-X importtime``
    lists every import on stderr; those lines are set apart from the command's own)."""
    _, argv, code, words = next(c for c in CASES if c[0] == "device-banana")
    argv = row_argv(argv, work, tmp_path)
    before = snapshot(work)
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "editkit.cli", *argv], capture_output=True,
                          text=True, cwd=tmp_path, env=env, timeout=300)  # fmt: skip
    lines = proc.stderr.splitlines(keepends=True)
    imported = {line.split("|")[-1].strip() for line in lines if line.startswith("import time:")}
    assert {"editkit", "editkit.batch", "editkit.jobs", "tyro"} <= imported, sorted(imported)[:20]
    assert "accelerate" not in imported and "diffusers" not in imported
    err = "".join(line for line in lines if not line.startswith("import time:"))
    check_refused(proc.returncode, err, code, words, work, before, tmp_path)
