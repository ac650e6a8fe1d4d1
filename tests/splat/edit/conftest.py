"""Shared by the scene-edit tests: a trained demo run and the tiny SD model's test variants (see test_edit's
docstring for why the variants exist)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

DEMO = Path(__file__).resolve().parents[3] / "assets" / "demo"


@contextmanager
def one_torch_thread():
    """One torch thread while the scene-edit tests run. Their tensors are small (64 px renders, the tiny UNet at
    32 px), and on a 2-core machine that runs other processes too, two OpenMP threads wait for each other at
    every op: measured there, one tiny-UNet call took 0.13 s with two threads and 0.011 s with one (0.012 s with
    two on an idle machine), a 64 px render and its backward 0.14-0.16 s with two and 0.05-0.06 s with one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="package", autouse=True)
def one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="package", autouse=True)
def no_lpips_weights():
    """The edits here run as where no LPIPS weights are on disk (the term off), whatever this machine has:
    the figures the tests measure do not depend on it. Tests of the term put a stand-in network in place."""
    from splat.train import metrics

    with pytest.MonkeyPatch.context() as m:
        m.setattr(metrics, "_load_lpips", lambda device: None)
        yield


@pytest.fixture(scope="session")
def run(tmp_path_factory) -> Path:
    """A trained demo run at 64 px (held-out PSNR ~25 dB): renders close to the photos, as a real run's."""
    from splat.config import TrainConfig
    from splat.train.trainer import Trainer

    out = tmp_path_factory.mktemp("edit") / "run"
    cfg = TrainConfig(
        out=out, device="cpu", progress=False, max_width=64, lpips=False, steps=300, sh_degree_interval=100,
        refine_start=50, refine_stop=150, refine_every=50, reset_every=0, eval_steps=(300,), save_steps=(300,),
        ckpt_every=0, learn_background=True, means_lr_steps=300, init_scale=1.0, save_renders=False,
    )  # fmt: skip
    with one_torch_thread():  # made before the package's fixtures
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
