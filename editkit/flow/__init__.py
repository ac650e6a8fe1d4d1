"""Editing with rectified-flow transformers: Stable Diffusion 3 / 3.5 and FLUX.1.

These models predict a velocity ``v = dx/dt`` along the straight path ``x_t = (1 - t) x_0 + t noise`` from
data (``t = 0``) to noise (``t = 1``), and their denoisers are MM-DiT transformers that attend jointly over
image and text tokens instead of a UNet with cross-attention. This package holds what editkit does with them:
the conditioning, the time grid and one sampling loop that calls the transformer in a single place with an
explicit guidance-batch layout and tells a hook session the current step (``sampling``), inversion-free
FlowEdit (``flowedit``), inversion of a photo along the flow ODE (Euler, RF-Solver, FireFlow) and
RF-Inversion's controlled ODEs (``inversion``), the methods behind one call for the command line, the UI and
scene editing (``edit``), and attention control on joint attention (built on :mod:`editkit.hooks`). Which
family a model is: :func:`editkit.models.detect_family` / :func:`editkit.models.family_of`. It imports
nothing from ``apps`` and touches no CUDA at import; see docs/flow-models.md.
"""
