"""Editing with rectified-flow transformers: Stable Diffusion 3 / 3.5 and FLUX.1.

These models predict a velocity ``v = dx/dt`` along the straight path ``x_t = (1 - t) x_0 + t noise`` from
data (``t = 0``) to noise (``t = 1``), and their denoisers are MM-DiT transformers that attend jointly over
image and text tokens instead of a UNet with cross-attention. This package holds what editkit does with them:
describing a pipeline's family and its conditioning (``family``), one sampling loop that calls the
transformer in a single place with an explicit guidance-batch layout and tells a hook session the current
step (``sampling``), inversion-free FlowEdit (``flowedit``), inversion of a photo along the flow ODE (Euler,
a second-order solver, RF-Inversion's controlled ODE; ``inversion``), and attention control on joint
attention (``attention`` and its neighbours, built on :mod:`editkit.hooks`). It imports nothing from
``apps`` and touches no CUDA at import.
"""
