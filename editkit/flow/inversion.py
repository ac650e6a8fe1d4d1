"""Inverting a photo along the flow ODE of SD3 / FLUX, and sampling it back (or to an edit).

Notation as in :mod:`editkit.flow.sampling` (``t = 0`` data, ``t = 1`` noise, ``v = dx/dt``). Inversion
integrates the same ODE the sampler integrates, the other way: along the pipeline's grid reversed,
``0 = t_N < t_{N-1} < ... < t_0 = 1``, from ``x_0`` (the photo's latent) to ``x_1``. Sampling ``x_1`` back with
the same prompt, guidance and solver returns the photo up to the solver's error, which shrinks with the step
count (measured in the tests and in ``docs/flow-models.md``).

Solvers (:data:`editkit.flow.sampling.SOLVERS`):

* ``"euler"``: ``x += h v(x, t_i)``; one transformer call a step; error O(h).
* ``"rf-solver"`` (RF-Solver, Wang et al. 2024): the second-order Taylor step of the ODE with the time
  derivative of ``v`` taken by a finite difference over half a step; that is the explicit midpoint rule,
  two calls a step, error O(h^2).
* ``"fireflow"`` (FireFlow, Deng et al., ICML 2025): the midpoint rule with the velocity at the start of a step
  replaced by the previous step's midpoint velocity; one call a step (plus one), second order in practice.

RF-Inversion (Rout et al., ICLR 2025, "Semantic image inversion and editing using rectified stochastic
differential equations"; diffusers community ``pipeline_flux_rf_inversion.py``) steers both directions with
the straight-line velocity towards a known endpoint:

* inversion (its Algorithm 1, Eq. 8): ``dY/dt = v(Y, t) + gamma ((y_1 - Y) / (1 - t) - v(Y, t))`` with
  ``y_1 ~ N(0, I)`` (``gamma = 0``: plain Euler inversion; 1: straight to the noise ``y_1``);
* sampling (its Algorithm 2, Eq. 17): ``dX/dt = v(X, t) + eta_t ((X - y_0) / t - v(X, t))`` with ``y_0`` the
  photo's latent and ``eta_t = eta`` on the steps ``[start * N, stop * N)`` counted from the noisy end, else 0.

Defaults are the community pipeline's: 28 steps, ``gamma = 0.5``, ``eta = 1.0``, ``start = 0``, ``stop = 0.25``,
the inversion with the empty prompt at guidance 0 (FLUX's distilled guidance input; on SD3 no classifier-free
guidance), the edit at guidance 3.5. Where we differ: the community pipeline evaluates the inversion's
velocity at the uniform times ``i / N`` while stepping by the shifted grid's differences; we evaluate and step
on the same (shifted) grid, as the ODE it discretises asks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from . import sampling as fs

FLOW_INVERSION = "flow inversion"  # progress stage names
RF_INVERSION = "RF-Inversion"
RF_EDIT = "RF-Inversion edit"


@dataclass
class FlowInversion:
    """A photo inverted to noise: everything needed to sample it back (or to an edit)."""

    latents: torch.Tensor  # [1, C, h, w] x_1
    source_latents: torch.Tensor  # [1, C, h, w] x_0 of the photo
    prompt: str
    guidance: float
    num_inference_steps: int
    solver: str
    transformer_calls: int


def _grid(pipe, steps: int, latent_hw) -> list[float]:
    return fs.schedule(pipe, steps, latent_hw).sigmas.tolist()  # t_0 = 1 ... t_N = 0


def _check_number(name: str, value, low: float, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < low \
            or (high is not None and value > high):
        span = f"in [{low:g}, {high:g}]" if high is not None else f">= {low:g}"
        raise ValueError(f"{name} must be a finite number {span}, got {value!r}")
    return float(value)


def _source_latents(pipe, image, size=None) -> torch.Tensor:
    from .flowedit import image_tensor

    if isinstance(image, torch.Tensor) and image.ndim == 4 and image.shape[1] != 3:
        return image.to(device=pipe._execution_device, dtype=torch.float32)  # already x_0
    return fs.encode_image(pipe, image_tensor(pipe, image, size)).float()


@torch.no_grad()
def invert(pipe, image, prompt: str = "", *, num_inference_steps: int = 28, solver: str = "euler",
           guidance: float | None = None, size=None, session=None, progress: bool = False) -> FlowInversion:
    """Invert a photo (path, PIL, ``[1, 3, H, W]`` pixels in ``[-1, 1]``, or ``[1, C, h, w]`` latents) to
    ``x_1`` by integrating the flow ODE from ``t = 0`` to ``t = 1`` with ``solver``.

    ``guidance`` defaults to 1.0 on SD3 (no classifier-free guidance: guided inversion drifts, as DDIM's
    does) and to FLUX's pipeline default 3.5 (a model input on FLUX, it does not make inversion drift).
    """
    fs.check_solver(solver)
    fam = fs.family(pipe)
    g = (1.0 if fam == "sd3" else fs.DEFAULT_GUIDANCE[fam]) if guidance is None else guidance
    g = _check_number("guidance", g, 0.0)
    x0 = _source_latents(pipe, image, size)
    cond = fs.encode_prompts(pipe, [prompt])
    ts = _grid(pipe, num_inference_steps, x0.shape[-2:])[::-1]
    fs.begin_session(session, pipe, 1, g, x0.shape[-2:], num_inference_steps)
    x1 = fs.integrate(fs.model_field(pipe, cond, g, session), x0.clone(), ts, solver, stage=FLOW_INVERSION,
                      progress=progress)
    return FlowInversion(x1, x0, prompt, g, num_inference_steps, solver,
                         fs.calls_per_run(solver, num_inference_steps))


@torch.no_grad()
def sample_back(pipe, inversion: FlowInversion, prompts: str | Sequence[str] | None = None, *,
                guidance: float | None = None, session=None, output_type: str = "latent", progress: bool = False):
    """Sample ``inversion.latents`` back to images, with the inversion's prompt (a reconstruction) or with
    ``prompts`` (one image per prompt: an edit by regeneration), using the inversion's solver and grid."""
    prompts = [inversion.prompt] if prompts is None else ([prompts] if isinstance(prompts, str) else list(prompts))
    g = inversion.guidance if guidance is None else _check_number("guidance", guidance, 0.0)
    cond = fs.encode_prompts(pipe, prompts)
    x1 = inversion.latents.expand(len(prompts), *inversion.latents.shape[1:]).clone()
    x = fs.sample(pipe, x1, cond, g, inversion.num_inference_steps, solver=inversion.solver, session=session,
                  progress=progress)
    return x if output_type == "latent" else fs.decode_latents(pipe, x, output_type)


# ------------------------------------------------------------------------------------------ RF-Inversion

@dataclass(frozen=True)
class RFInversionConfig:
    """RF-Inversion's settings (defaults: diffusers community ``pipeline_flux_rf_inversion.py``)."""

    num_inference_steps: int = 28
    gamma: float = 0.5  # inversion controller strength (towards the noise y_1)
    eta: float = 1.0  # sampling controller strength (towards the photo y_0)
    start: float = 0.0  # eta acts on the steps [start * N, stop * N) counted from the noisy end
    stop: float = 0.25
    source_guidance: float = 0.0  # the inversion's guidance (the paper inverts with the empty prompt at 0)
    target_guidance: float = 3.5

    def validate(self) -> RFInversionConfig:
        if not isinstance(self.num_inference_steps, int) or isinstance(self.num_inference_steps, bool) \
                or self.num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be a positive integer, got {self.num_inference_steps!r}")
        _check_number("gamma", self.gamma, 0.0, 1.0)
        _check_number("eta", self.eta, 0.0, 1.0)
        _check_number("start", self.start, 0.0, 1.0)
        _check_number("stop", self.stop, 0.0, 1.0)
        if self.start > self.stop:
            raise ValueError(f"start ({self.start}) must not be after stop ({self.stop})")
        _check_number("source_guidance", self.source_guidance, 0.0)
        _check_number("target_guidance", self.target_guidance, 0.0)
        return self

    def eta_steps(self) -> range:
        n = self.num_inference_steps
        return range(int(self.start * n), min(int(self.stop * n), n))


@torch.no_grad()
def rf_invert(pipe, image, prompt: str = "", config: RFInversionConfig | None = None, *,
              generator: torch.Generator | None = None, size=None, session=None, progress: bool = False):
    """RF-Inversion's controlled forward ODE (Euler). Returns ``(x_1, y_0)``, each ``[1, C, h, w]``."""
    config = (config or RFInversionConfig()).validate()
    y0 = _source_latents(pipe, image, size)
    cond = fs.encode_prompts(pipe, [prompt])
    y1 = fs.randn_model(pipe, y0, generator)
    field = fs.model_field(pipe, cond, config.source_guidance, session)
    gamma = config.gamma

    def controlled(x, t, step):  # Eq. 8: u + gamma (u(.|y_1) - u)
        v = field(x, t, step)
        return v + gamma * ((y1 - x) / (1 - t) - v)

    ts = _grid(pipe, config.num_inference_steps, y0.shape[-2:])[::-1]
    fs.begin_session(session, pipe, 1, config.source_guidance, y0.shape[-2:], config.num_inference_steps)
    return fs.integrate(controlled, y0.clone(), ts, "euler", stage=RF_INVERSION, progress=progress), y0


@torch.no_grad()
def rf_sample(pipe, x1: torch.Tensor, y0: torch.Tensor, prompt: str, config: RFInversionConfig | None = None, *,
              session=None, progress: bool = False) -> torch.Tensor:
    """RF-Inversion's controlled reverse ODE (Euler) from ``x_1`` with ``prompt``, pulled towards ``y_0``."""
    config = (config or RFInversionConfig()).validate()
    cond = fs.encode_prompts(pipe, [prompt])
    field = fs.model_field(pipe, cond, config.target_guidance, session)
    window = config.eta_steps()
    eta = config.eta

    def controlled(x, t, step):  # Eq. 17, in dx/dt form: v + eta_t ((x - y_0) / t - v)
        v = field(x, t, step)
        return v + eta * ((x - y0) / t - v) if step in window else v

    ts = _grid(pipe, config.num_inference_steps, x1.shape[-2:])
    fs.begin_session(session, pipe, 1, config.target_guidance, x1.shape[-2:], config.num_inference_steps)
    return fs.integrate(controlled, x1.clone(), ts, "euler", stage=RF_EDIT, progress=progress)


def rf_inversion_edit(pipe, image, target_prompt: str, *, source_prompt: str = "", num_inference_steps=None,
                      gamma=None, eta=None, start=None, stop=None, source_guidance=None, target_guidance=None,
                      generator: torch.Generator | int | None = None, size=None, session=None,
                      output_type: str = "pil", progress: bool = False):
    """Edit a photo with RF-Inversion: controlled inversion, then controlled sampling with ``target_prompt``.

    Returns ``(image, latents)``. Settings left ``None`` take :class:`RFInversionConfig`'s defaults.
    """
    given = dict(num_inference_steps=num_inference_steps, gamma=gamma, eta=eta, start=start, stop=stop,
                 source_guidance=source_guidance, target_guidance=target_guidance)
    config = RFInversionConfig(**{k: v for k, v in given.items() if v is not None}).validate()
    if isinstance(generator, int) and not isinstance(generator, bool):
        generator = torch.Generator().manual_seed(generator)
    x1, y0 = rf_invert(pipe, image, source_prompt, config, generator=generator, size=size, progress=progress)
    x = rf_sample(pipe, x1, y0, target_prompt, config, session=session, progress=progress)
    x = x.to(pipe.transformer.dtype)
    return (x if output_type == "latent" else fs.decode_latents(pipe, x, output_type)[0]), x
