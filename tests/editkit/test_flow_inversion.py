"""editkit.flow.inversion: reconstruction of a photo through the flow ODE (Euler, RF-Solver, FireFlow) and
RF-Inversion's controlled ODEs, on the tiny random-weight SD3 / FLUX pipelines.

The random transformers' velocities vary smoothly enough with the latent for the solvers' orders to show
(no smoothed variant needed). Reconstruction errors (MSE of the latent, the photo's latent has variance
0.24 on SD3, 0.013 on FLUX) measured on the 2-core CPU machine, with the bounds asserted below:

    SD3   euler      2 steps 7.0e-2   4 steps 1.4e-2   8 steps 3.1e-3
    SD3   rf-solver  2 steps 5.1e-4   4 steps 9.3e-5   (2 calls a step)
    SD3   fireflow   2 steps 6.0e-4   4 steps 7.0e-5   (1 call a step + 1)
    FLUX  euler      4 steps 3.7e-2   8 steps 1.1e-2
    FLUX  rf-solver  4 steps 1.1e-3   (8 calls, as Euler's 8 steps)
"""

from __future__ import annotations

import pytest
import torch

from editkit.flow import inversion as fi
from editkit.flow import sampling as fs

from ._flow_common import SOURCE, TARGET, photo, tiny


def mse(a, b):
    return float(((a.float() - b.float()) ** 2).mean())


def round_trip(pipe, solver, steps, prompt=SOURCE):
    inv = fi.invert(pipe, photo(), prompt, num_inference_steps=steps, solver=solver)
    return mse(fi.sample_back(pipe, inv), inv.source_latents), inv


@pytest.fixture(scope="module")
def sd3_errors():
    pipe = tiny("sd3")
    return {(s, n): round_trip(pipe, s, n)[0] for s, n in [("euler", 2), ("euler", 4), ("rf-solver", 2), ("fireflow", 3)]}


def test_euler_reconstruction_is_bounded_and_first_order(sd3_errors):
    """Mutations caught: the inversion evaluated on the sampling grid's order (t descending) instead of
    ascending; the step size taken as t_i instead of t_{i+1} - t_i; sample_back with another prompt."""
    e2, e4 = sd3_errors[("euler", 2)], sd3_errors[("euler", 4)]
    assert e4 < 2.0e-2  # measured 1.4e-2
    assert e4 < e2 / 3  # measured 7.0e-2 -> 1.4e-2 (first order would give / 2; the grid is shifted)


def test_second_order_solvers_beat_euler_at_equal_transformer_calls(sd3_errors):
    """RF-Solver with 2 steps and FireFlow with 3 steps cost 4 transformer calls each way, as Euler's 4 steps.
    Mutations caught: the midpoint evaluated at t_i instead of t_i + h/2; FireFlow not reusing (then its cost
    is RF-Solver's) or reusing a stale velocity of the wrong step."""
    assert fs.calls_per_run("rf-solver", 2) == fs.calls_per_run("fireflow", 3) == fs.calls_per_run("euler", 4) == 4
    euler = sd3_errors[("euler", 4)]
    assert sd3_errors[("rf-solver", 2)] < euler / 10  # measured 5.1e-4 vs 1.4e-2
    assert sd3_errors[("fireflow", 3)] < euler / 10
    assert sd3_errors[("rf-solver", 2)] < 1e-3


def test_flux_second_order_beats_euler_at_equal_calls():
    """The same on FLUX (packed tokens, resolution-dependent shift): 8 calls each way."""
    pipe = tiny("flux")
    euler, _ = round_trip(pipe, "euler", 8)
    rf, _ = round_trip(pipe, "rf-solver", 4)
    assert euler < 1.6e-2  # measured 1.1e-2
    assert rf < euler / 5  # measured 1.1e-3


def test_solvers_call_the_transformer_as_often_as_they_say():
    """Mutation caught: FireFlow evaluating v(x, t_i) on every step (2 calls a step)."""
    pipe = tiny("sd3")
    calls = []
    handle = pipe.transformer.register_forward_hook(lambda *a: calls.append(1))
    try:
        for solver, steps in [("euler", 3), ("rf-solver", 2), ("fireflow", 3)]:
            calls.clear()
            fi.invert(pipe, photo(), SOURCE, num_inference_steps=steps, solver=solver)
            assert len(calls) == fs.calls_per_run(solver, steps), solver
    finally:
        handle.remove()


def test_rf_inversion_without_control_is_euler_inversion():
    """gamma = eta = 0 leaves RF-Inversion's ODEs the plain flow ODE: the result equals Euler inversion and
    sampling. Mutation caught: the controlled field's base term not the model's velocity (e.g. its sign)."""
    pipe = tiny("sd3")
    cfg = fi.RFInversionConfig(num_inference_steps=3, gamma=0.0, eta=0.0, source_guidance=1.0, target_guidance=1.0)
    x1, y0 = fi.rf_invert(pipe, photo(), SOURCE, cfg, generator=torch.Generator().manual_seed(0))
    x = fi.rf_sample(pipe, x1, y0, SOURCE, cfg)
    inv = fi.invert(pipe, photo(), SOURCE, num_inference_steps=3, solver="euler", guidance=1.0)
    assert torch.allclose(x1, inv.latents, atol=1e-5)
    assert torch.allclose(x, fi.sample_back(pipe, inv), atol=1e-5)


def test_rf_inversion_controllers_pull_where_they_should():
    """gamma = 1 sends the inversion straight to the noise y_1 = randn(generator); eta = 1 over every step
    lands the sampling exactly on the photo y_0, whatever the prompt; eta on the default window
    [0, 0.25) reduces the reconstruction error of a gamma = 0.5 inversion (measured 0.98 -> 0.71 MSE at 4
    steps). Mutations caught: (y_1 - Y) / t instead of / (1 - t); (X - y_0) / (1 - t) instead of / t; the eta
    window counted from the clean end."""
    pipe = tiny("sd3")
    full = fi.RFInversionConfig(num_inference_steps=4, gamma=1.0, eta=1.0, stop=1.0, target_guidance=1.0)
    x1, y0 = fi.rf_invert(pipe, photo(), SOURCE, full, generator=torch.Generator().manual_seed(3))
    noise = fs.randn_model(pipe, y0, torch.Generator().manual_seed(3))
    assert torch.allclose(x1, noise, atol=1e-5)
    assert torch.allclose(fi.rf_sample(pipe, x1, y0, TARGET, full), y0, atol=1e-5)

    errors = {}
    for eta in (0.0, 1.0):
        cfg = fi.RFInversionConfig(num_inference_steps=4, gamma=0.5, eta=eta, source_guidance=1.0, target_guidance=1.0)
        x1, y0 = fi.rf_invert(pipe, photo(), SOURCE, cfg, generator=torch.Generator().manual_seed(0))
        errors[eta] = mse(fi.rf_sample(pipe, x1, y0, SOURCE, cfg), y0)
    assert errors[1.0] < 0.85 * errors[0.0]
    assert list(fi.RFInversionConfig(num_inference_steps=28).eta_steps()) == list(range(0, 7))


@pytest.mark.parametrize("bad, match", [(dict(gamma=1.5), "gamma"), (dict(eta=-0.1), "eta"),
                                        (dict(start=0.5, stop=0.25), "start"), (dict(num_inference_steps=0), "steps")])
def test_bad_rf_inversion_settings_are_named(bad, match):
    with pytest.raises(ValueError, match=match):
        fi.RFInversionConfig(**bad).validate()


def test_unknown_solver_is_named():
    with pytest.raises(ValueError, match="solver 'rk4'"):
        fi.invert(tiny("sd3"), photo(), SOURCE, num_inference_steps=2, solver="rk4")
