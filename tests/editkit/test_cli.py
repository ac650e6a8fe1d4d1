"""The `editkit` command on a tiny offline model: files written, exit codes, messages, --help."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from PIL import Image

from editkit.cli import EXIT_MODEL_NOT_FOUND, EXIT_OK, EXIT_USAGE, main, read_pairs

STEPS = ["--steps", "2", "--quiet"]
needs_inversion = pytest.mark.skipif(importlib.util.find_spec("editkit.inversion") is None,
                                     reason="editkit.inversion not available")
needs_pnp = pytest.mark.skipif(importlib.util.find_spec("editkit.pnp") is None, reason="editkit.pnp not available")


@pytest.fixture(scope="module")
def model(tiny_model_dirs) -> str:
    return str(tiny_model_dirs["sd1"])


@pytest.fixture
def photo(tmp_path):
    y, x = np.mgrid[0:48, 0:64]
    rgb = np.stack([x * 4, y * 5, (x + y) * 2], axis=-1).astype(np.uint8)
    path = tmp_path / "cat photo.png"
    Image.fromarray(rgb).save(path)
    return path


def pngs(folder):
    return sorted(p.name for p in folder.glob("*.png"))


def test_help_documents_every_option(capsys):
    # in this process: the console entry point itself runs in tests/editkit/test_cli_bad_inputs.py
    assert main(["edit", "--help"]) == EXIT_OK
    text = capsys.readouterr().out
    for option in ("--model", "--device", "--steps", "--guidance", "--seed", "--output", "--source", "--target",
                   "--pairs", "--method", "--inversion", "--edit", "--cross-replace", "--self-replace",
                   "--reweight", "--blend-source", "--blend-target", "--pnp-f-t", "--pnp-attn-t", "--heatmaps"):
        assert option in text, option


def test_top_level_help_lists_commands_and_exit_codes(capsys):
    assert main(["--help"]) == EXIT_OK
    text = capsys.readouterr().out
    assert all(cmd in text for cmd in ("edit", "generate", "editkit-ui"))
    assert "Exit codes" in text and "model not found" in text


@pytest.mark.parametrize("args", [["ui"], ["ui", "--model", "x", "--help"]])
def test_ui_subcommand_points_at_the_ui_command(capsys, args):
    # the library does not import the app: `editkit ui` names the UI's own console script
    assert main(args) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "editkit-ui --model" in err


def test_generate_writes_source_edit_and_heatmaps(model, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["generate", "--model", model, "--source", "a cat riding a bicycle", "--target",
                 "a dog riding a bicycle", "--reweight", "dog=2", "--blend-source", "cat", "--blend-target", "dog",
                 "--heatmaps", "--output", str(out), *STEPS])
    assert code == EXIT_OK
    assert pngs(out) == ["000_edit0_a_dog_riding_a_bicycle.png", "000_heatmap_edit0.png", "000_heatmap_source.png",
                         "000_source.png"]
    printed = capsys.readouterr().out.split()
    assert sorted(printed) == sorted(str(p) for p in out.glob("*.png"))  # paths on stdout, for scripts
    assert Image.open(out / "000_source.png").size == (32, 32)


def test_generate_batch_from_tsv_and_jsonl(model, tmp_path):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("# source<TAB>target\na cat on a table\ta dog on a table\n\n"
                     + json.dumps({"source": "a red car", "targets": ["a red painting of a car"]}) + "\n")
    assert read_pairs(pairs) == [("a cat on a table", ["a dog on a table"]),
                                 ("a red car", ["a red painting of a car"])]
    out = tmp_path / "out"
    assert main(["generate", "--model", model, "--pairs", str(pairs), "--edit", "refine", "--output", str(out),
                 *STEPS]) == EXIT_OK
    assert pngs(out) == ["000_edit0_a_dog_on_a_table.png", "000_source.png",
                         "001_edit0_a_red_painting_of_a_car.png", "001_source.png"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--source", "a cat", "--target", "a big dog"], "same number of words"),
        (["--source", "a cat", "--target", "a dog", "--reweight", "zebra=2"], "zebra"),
        (["--source", "a cat", "--target", "a dog", "--reweight", "dog"], "WORD=SCALE"),
        (["--source", "a cat", "--target", "a dog", "--blend-source", "horse"], "horse"),
        (["--source", "a cat"], "--target is required"),
        (["--source", "a cat", "--target", "a dog", "--no-such-option"], ""),
    ],
)
def test_bad_input_exits_2_with_a_message(model, tmp_path, capsys, args, message):
    code = main(["generate", "--model", model, "--output", str(tmp_path / "out"), *STEPS, *args])
    assert code == EXIT_USAGE
    assert message in capsys.readouterr().err
    assert not pngs(tmp_path / "out") if (tmp_path / "out").exists() else True


def test_malformed_pairs_file_names_the_line(model, tmp_path, capsys):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("a cat\ta dog\nonly a source\n")
    assert main(["generate", "--model", model, "--pairs", str(pairs), *STEPS]) == EXIT_USAGE
    assert "line 2" in capsys.readouterr().err


def test_missing_model_exits_3_with_how_to(tmp_path, capsys, monkeypatch):
    code = main(["generate", "--model", str(tmp_path / "nowhere"), "--source", "a cat", "--target", "a dog",
                 "--output", str(tmp_path / "out"), *STEPS])
    assert code == EXIT_MODEL_NOT_FOUND
    err = capsys.readouterr().err
    assert "Point editkit at a Stable Diffusion model with --model PATH_OR_HUB_ID" in err
    assert "load_pipeline(" not in err  # CLI wording, not Python
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["generate", "--model", "editkit-tests/not-cached", "--source", "a cat", "--target", "a dog",
                 "--output", str(tmp_path / "out"), *STEPS])
    assert code == EXIT_MODEL_NOT_FOUND
    err = capsys.readouterr().err
    assert "'editkit-tests/not-cached' is not in the Hugging Face hub cache" in err and "offline" in err
    assert "local_files_only=False" not in err and "stacktrace" not in err  # our words, not diffusers'


@pytest.mark.parametrize(
    "args, message",
    [
        (["--source", "a cat", "--target", "a big dog"], "same number of words"),
        (["--source", "a cat", "--target", "a dog", "--reweight", "zebra=2"], "zebra"),
        (["--source", "a cat", "--target", "a dog", "--reweight", "dog=nan"], "finite"),
        (["--source", "a cat", "--target", "a dog", "--blend-target", "zebra"], "zebra"),
        (["--source", "a cat", "--target", "a dog", "--guidance", "inf"], "guidance"),
        (["--source", "a cat", "--target", "a dog", "--device", "banana"], "banana"),
    ],
)
def test_checks_run_before_the_model_is_loaded(tmp_path, capsys, monkeypatch, args, message):
    import editkit

    def loader(*a, **k):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(editkit, "load_pipeline", loader)
    assert main(["generate", "--model", "/nonexistent/model", "--output", str(tmp_path / "out"), *STEPS,
                 *args]) == EXIT_USAGE
    assert message in capsys.readouterr().err


def test_edit_without_images_or_with_a_missing_file_exits_2(model, tmp_path, capsys):
    assert main(["edit", "--model", model, "--source", "a cat", "--target", "a dog", *STEPS]) == EXIT_USAGE
    assert "at least one image" in capsys.readouterr().err
    assert main(["edit", str(tmp_path / "no.png"), "--model", model, "--source", "a cat", "--target", "a dog",
                 *STEPS]) == EXIT_USAGE
    assert "no such image" in capsys.readouterr().err


@needs_inversion
def test_edit_p2p_two_images_two_pairs(model, photo, tmp_path):
    other = tmp_path / "second.png"
    Image.open(photo).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(other)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"source": "a cat on a table", "target": "a dog on a table"}) + "\n"
                     + json.dumps({"source": "a cat on a table", "target": "a lion on a table"}) + "\n")
    out = tmp_path / "out"
    code = main(["edit", str(photo), str(other), "--model", model, "--pairs", str(pairs), "--inversion",
                 "negative-prompt", "--heatmaps", "--output", str(out), *STEPS])
    assert code == EXIT_OK
    names = pngs(out)
    for stem in ("cat_photo_000", "cat_photo_001", "second_000", "second_001"):
        assert f"{stem}_heatmap_edit0.png" in names
    # both pairs share the source prompt: its reconstruction is written once per photo
    assert [n for n in names if n.endswith("_source.png") and "heatmap" not in n] == ["cat_photo_000_source.png", "second_000_source.png"]
    assert [n for n in names if n.endswith("_heatmap_source.png")] == ["cat_photo_000_heatmap_source.png",
                                                                     "second_000_heatmap_source.png"]
    assert "cat_photo_001_edit0_a_lion_on_a_table.png" in names


@needs_pnp
def test_edit_pnp_writes_the_edit(model, photo, tmp_path):
    out = tmp_path / "out"
    code = main(["edit", str(photo), "--method", "pnp", "--model", model, "--target", "a watercolor painting",
                 "--output", str(out), *STEPS])
    assert code == EXIT_OK
    assert "cat_photo_edit0_a_watercolor_painting.png" in pngs(out)
