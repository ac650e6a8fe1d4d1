"""Loading: folders, pipelines, and clear messages when there are no weights."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler

from editkit import ModelNotFoundError, load_pipeline
from editkit.testing import tiny_pipeline


def test_folder_round_trip(tiny_model_dirs, sd1):
    # the fixture went through load_pipeline(folder): same weights as a freshly built tiny pipeline
    fresh = tiny_pipeline("sd1")
    for (name, a), b in zip(sd1.unet.state_dict().items(), fresh.unet.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    assert isinstance(sd1.scheduler, DDIMScheduler) and sd1.unet.dtype == torch.float32
    xl = load_pipeline(tiny_model_dirs["sdxl"], device="cpu")
    assert type(xl).__name__ == "StableDiffusionXLPipeline"


def test_an_already_loaded_pipeline_is_accepted():
    pipe = tiny_pipeline("sd2")
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    out = load_pipeline(pipe, device="cpu")
    assert out is pipe and isinstance(out.scheduler, DDIMScheduler)
    assert out.scheduler.config.prediction_type == "v_prediction"  # the model's own settings are kept
    assert isinstance(load_pipeline(tiny_pipeline("sd1"), device="cpu", scheduler="keep").scheduler, DDIMScheduler)


def test_no_weights_offline_gives_instructions(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="Point editkit at a Stable Diffusion model"):
        load_pipeline("stable-diffusion-v1-5/stable-diffusion-v1-5", device="cpu")
    with pytest.raises(ModelNotFoundError, match="no file or folder"):
        load_pipeline(str(tmp_path / "missing"), device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="no model_index.json"):
        load_pipeline(tmp_path / "empty", device="cpu")
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelNotFoundError, match="could not load the checkpoint"):
        load_pipeline(bad, device="cpu")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ModelNotFoundError, match="not a checkpoint file"):
        load_pipeline(text, device="cpu")
    with pytest.raises(TypeError, match="path, a hub id or a diffusers pipeline"):
        load_pipeline(42)


def test_hub_id_from_the_local_hub_cache(tiny_model_dirs, tmp_path):
    # Lay the tiny model out as the hub client caches a download, then load it by its hub id, offline.
    import shutil

    repo = tmp_path / "models--editkit-tests--tiny-sd1"
    revision = "0" * 40
    shutil.copytree(tiny_model_dirs["sd1"], repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    pipe = load_pipeline("editkit-tests/tiny-sd1", device="cpu", local_files_only=True, cache_dir=tmp_path)
    assert type(pipe).__name__ == "StableDiffusionPipeline" and isinstance(pipe.scheduler, DDIMScheduler)
    with pytest.raises(ModelNotFoundError, match="editkit-tests/not-there"):
        load_pipeline("editkit-tests/not-there", device="cpu", local_files_only=True, cache_dir=tmp_path)
