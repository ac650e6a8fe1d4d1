"""Shared by the scene-edit tests: a trained demo run and the tiny SD model's test variants (see test_edit's
docstring for why the variants exist)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

DEMO = Path(__file__).resolve().parents[3] / "assets" / "demo"


@pytest.fixture(scope="package", autouse=True)
def no_lpips_weights():
    """The edits here run as where no LPIPS weights are on disk (the term off), whatever this machine has:
    the figures the tests measure do not depend on it. Tests of the term put a stand-in network in place."""
    from splat.training import metrics

    with pytest.MonkeyPatch.context() as m:
        m.setattr(metrics, "load_lpips", lambda device: None)
        yield


@pytest.fixture(scope="session")
def run(tmp_path_factory) -> Path:
    """A trained demo run at 64 px (held-out PSNR ~25 dB): renders close to the photos, as a real run's."""
    from splat.config import TrainConfig
    from splat.training.trainer import Trainer

    out = tmp_path_factory.mktemp("edit") / "run"
    cfg = TrainConfig(
        out=out, device="cpu", progress=False, max_width=64, lpips=False, steps=300, sh_degree_interval=100,
        refine_start=50, refine_stop=150, refine_every=50, reset_every=0, eval_steps=(300,), save_steps=(300,),
        ckpt_every=0, learn_background=True, means_lr_steps=300, init_scale=1.0, save_renders=False,
    )  # fmt: skip
    Trainer(DEMO, cfg).train()
    return out


def _variant(model_dir: Path, query_scale: float = 1.0):
    from editkit.models import load_pipeline

    pipe = load_pipeline(model_dir, device="cpu")
    with torch.no_grad():
        pipe.unet.conv_in.weight.mul_(1e-6)
        for name, module in pipe.unet.named_modules():
            if name.endswith("attn2"):
                module.to_q.weight.mul_(query_scale)
    return pipe


@pytest.fixture(scope="session")
def smooth(tiny_model_dirs):
    return _variant(tiny_model_dirs["sd1"])


@pytest.fixture(scope="session")
def sharp(tiny_model_dirs):
    return _variant(tiny_model_dirs["sd1"], query_scale=30.0)
