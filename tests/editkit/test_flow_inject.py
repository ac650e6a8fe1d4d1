"""Value injection (RF-Solver-Edit / FireFlow feature sharing) on the hook layer, tiny SD3.5 and FLUX transformers."""

from __future__ import annotations

import pytest
import torch

from editkit.flow.inject import InjectValues, RecordValues, ShareValues, ValueBank, default_value_layers
from editkit.hooks import BatchLayout, LayerInfo, describe_layers, hooked
from tests.editkit.flow_models import LATENT, get_model, inputs
from tests.editkit.test_flow_attention import Probe


@pytest.fixture(scope="module", params=("sd3", "flux"))
def model(request):
    return get_model(request.param)


def test_default_layers_are_rf_solver_edits():
    """FLUX.1: single-stream blocks with index > 19 of 38 (the last 18); no single stream: the same share of joint blocks."""
    flux = {f"s{i}": LayerInfo(f"s{i}", "single", i, False, 2, True) for i in range(38)}
    flux.update({f"j{i}": LayerInfo(f"j{i}", "joint", i, False, 2, True) for i in range(19)})
    assert default_value_layers(flux) == {f"s{i}" for i in range(20, 38)}
    sd3 = {f"j{i}": LayerInfo(f"j{i}", "joint", i, False, 2) for i in range(24)}
    assert default_value_layers(sd3) == {f"j{i}" for i in range(13, 24)}


def passes(model, layers, window, steps, part="all"):
    """Record a source pass, then run the target pass (other text) injecting; returns the bank and outputs."""
    latents, text = inputs(1, seed=11)
    _, target_text = inputs(1, seed=12)
    bank = ValueBank()
    with hooked(model.net, RecordValues(bank, layers, window, part)) as session:
        session.begin(BatchLayout(1, False), (LATENT, LATENT), steps)
        for i in range(steps):
            session.set_step(i, 1000 - 100 * i)
            model(latents, text, 1 - i / 10)
    outs, plain = [], []
    for i in range(steps):
        with hooked(model.net, InjectValues(bank, layers, window, part)) as session:
            session.begin(BatchLayout(1, False), (LATENT, LATENT), steps)
            session.set_step(i, 1000 - 100 * i)
            outs.append(model(latents, target_text, 1 - i / 10))
        plain.append(model(latents, target_text, 1 - i / 10))
    return bank, outs, plain


def test_injection_window_is_exact(model):
    layers = default_value_layers(describe_layers(model.net))
    assert layers
    bank, outs, plain = passes(model, layers, (1, 3), steps=4)
    assert bank.steps() == [1, 2]  # recorded exactly in the window
    assert {name for name, _, _ in bank.values} == set(layers)
    assert torch.equal(outs[0], plain[0])  # the step before the window: untouched
    assert not torch.allclose(outs[1], plain[1])  # first step of the window: injected
    assert not torch.allclose(outs[2], plain[2])  # last step of the window: injected
    assert torch.equal(outs[3], plain[3])  # the step after: untouched


def test_injected_values_are_the_recorded_ones(model):
    layers = describe_layers(model.net)
    name = max((lyr for lyr in layers.values() if lyr.place in ("joint", "single")), key=lambda lyr: lyr.depth).name
    latents, text = inputs(1, seed=13)
    _, target_text = inputs(1, seed=14)
    for part in ("all", "image"):
        bank, probe = ValueBank(), Probe(name, values=True)
        for controllers, txt in (([RecordValues(bank, [name], (0, 1), part)], text),
                                 ([InjectValues(bank, [name], (0, 1), part), probe], target_text)):
            with hooked(model.net, controllers) as session:
                session.begin(BatchLayout(1, False), (LATENT, LATENT), 1)
                session.set_step(0, 900)
                model(latents, txt, 0.9)
        recorded = bank.values[(name, 0, 0)]
        seen, tokens = probe.seen["value"][0], probe.seen["tokens"]
        assert torch.equal(seen[:, tokens.image], recorded[:, tokens.image])
        # part="all" (RF-Solver-Edit) also carries the text positions; "image" leaves them the target's
        assert torch.equal(seen[:, tokens.text], recorded[:, tokens.text]) is (part == "all")


def test_injection_without_a_recorded_step_is_an_error(model):
    layers = default_value_layers(describe_layers(model.net))
    latents, text = inputs(1)
    with hooked(model.net, InjectValues(ValueBank(), layers, (0, 1))) as session:
        session.begin(BatchLayout(1, False), (LATENT, LATENT), 1)
        session.set_step(0, 900)
        with pytest.raises(KeyError, match="no recorded values"):
            model(latents, text, 0.9)


def test_share_values_in_one_batch_leaves_the_source_row_alone(model):
    layers = describe_layers(model.net)
    name = next(lyr.name for lyr in layers.values() if lyr.place == "joint" and lyr.block == 1)
    latents, text = inputs(1, seed=15)
    other_latents, target_text = inputs(1, seed=16)
    x, txt = torch.cat([latents, other_latents]), torch.cat([text, target_text])
    probe = Probe(name, values=True)
    with hooked(model.net, [ShareValues([name], (0, 1)), probe]) as session:
        session.begin(BatchLayout(2, False), (LATENT, LATENT), 2)
        session.set_step(0, 900)
        out = model(x, txt, 0.9)
    v = probe.seen["value"]
    assert torch.equal(v[1], v[0])
    torch.testing.assert_close(out[:1], model(latents, text, 0.9), rtol=0, atol=1e-6)  # the source row as alone
    assert not torch.allclose(out[1:], model(other_latents, target_text, 0.9), atol=1e-4)
