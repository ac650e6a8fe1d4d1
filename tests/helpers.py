"""Helpers shared by tests of both engines."""

from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def one_torch_thread():
    """One torch thread inside the block. The tests' tensors are small (64 px renders, a tiny UNet at 32 px),
    and on a 2-core machine that runs other processes too, two OpenMP threads wait for each other at every op:
    measured there, one tiny-UNet call took 0.13 s with two threads and 0.011 s with one (0.012 s with two on
    an idle machine), a 64 px render and its backward 0.14-0.16 s with two and 0.05-0.06 s with one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
