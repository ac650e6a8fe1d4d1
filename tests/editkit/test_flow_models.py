"""editkit.load_pipeline and family detection for SD3 / FLUX: folders saved in diffusers' layout, the family
told without loading weights, half precision chosen per family, one-line refusals."""

from __future__ import annotations

import json

import pytest
import torch

from editkit import models
from editkit.models import UnsupportedModelError, detect_family, family_of, load_pipeline


@pytest.fixture(scope="module")
def flow_dirs(tmp_path_factory):
    from editkit.testing import save_tiny_pipeline

    root = tmp_path_factory.mktemp("tiny-flow")
    return {fam: save_tiny_pipeline(root / fam, fam) for fam in ("sd3", "flux")}


@pytest.mark.parametrize("fam, cls", [("sd3", "StableDiffusion3Pipeline"), ("flux", "FluxPipeline")])
def test_folder_loads_with_its_family_and_keeps_the_flow_scheduler(flow_dirs, fam, cls):
    """Mutations caught: the DDIM scheduler forced onto a flow model; the family read from the wrong field."""
    assert detect_family(flow_dirs[fam]) == fam
    pipe = load_pipeline(flow_dirs[fam], device="cpu")
    assert type(pipe).__name__ == cls and family_of(pipe) == fam
    assert type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    assert pipe.transformer.dtype == torch.float32


def test_family_from_a_folder_is_told_without_loading_weights(flow_dirs, tmp_path):
    """Only model_index.json is read: the folder's weights may be missing."""
    index = json.loads((flow_dirs["flux"] / "model_index.json").read_text())
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    assert detect_family(tmp_path) == "flux"


def test_single_file_family_from_tensor_names(tmp_path):
    from safetensors.torch import save_file

    for name, key, fam in [("sd35.safetensors", "model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight", "sd3"),
                           ("flux1-dev.safetensors", "double_blocks.0.img_attn.qkv.weight", "flux"),
                           ("sdxl.safetensors", "conditioner.embedders.1.model.ln_final.weight", "sdxl"),
                           ("v1-5.safetensors", "model.diffusion_model.input_blocks.0.0.weight", "sd")]:
        save_file({key: torch.zeros(1)}, str(tmp_path / name))
        assert detect_family(tmp_path / name) == fam, name


def test_hub_ids_by_name_when_not_cached():
    assert detect_family("stabilityai/stable-diffusion-3.5-medium") == "sd3"
    assert detect_family("black-forest-labs/FLUX.1-dev") == "flux"
    assert detect_family("stabilityai/stable-diffusion-xl-base-1.0") == "sdxl"
    assert detect_family("someone/some-model") is None


def test_another_family_is_refused_in_one_line(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "PixArtAlphaPipeline"}))
    with pytest.raises(UnsupportedModelError) as e:
        load_pipeline(tmp_path, device="cpu")
    assert "PixArtAlphaPipeline" in str(e.value) and "\n" not in str(e.value)


def test_half_precision_per_family_and_methods_per_family():
    """bf16 for FLUX on CUDA (fp16 overflows in its activations), fp16 for SD3, fp32 on CPU. Mutation caught:
    one half dtype for every family."""
    assert models.default_dtype("cuda", "flux") == torch.bfloat16
    assert models.default_dtype("cuda", "sd3") == torch.float16
    assert models.default_dtype("cpu", "flux") == torch.float32
    assert "flowedit" in models.methods_for("sd3") and "flowedit" in models.methods_for("flux")
    with pytest.raises(ValueError, match="'p2p' is not available for FLUX.1 models; use one of: flowedit"):
        models.check_method("flux", "p2p")
    with pytest.raises(ValueError, match="'flowedit' is not available for SDXL"):
        models.check_method("sdxl", "flowedit")


def test_offload_needs_cuda(flow_dirs):
    with pytest.raises(ValueError, match="offload"):
        load_pipeline(flow_dirs["sd3"], device="cpu", offload=True)


@pytest.mark.gpu
def test_flux_loads_in_bf16_with_model_offload_on_cuda(flow_dirs):
    pipe = load_pipeline(flow_dirs["flux"], offload=True)
    assert pipe.transformer.dtype == torch.bfloat16
    from editkit.flow.sampling import generate

    image = generate(pipe, "a photo of a cat", height=32, width=32, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert image[0].size == (32, 32)
