"""The reference renderer's hand-written compositing backward against plain autograd (the definition).

``_composite_tiles`` composites with :class:`_CompositeChunk` (hand-written gradient) by default and with
plain autograd when ``_reference=True``; in float64 the two must give the same image (bit for bit) and the
same gradients (to round-off), on scenes built to reach every branch: alphas clamped to ALPHA_MAX (and one
exactly at it), pairs below ALPHA_MIN, pixels where compositing stops at T_MIN, a fully occluded Gaussian,
empty tiles, several chunks, AbsGS's absolute gradient and an extra (depth) channel.
"""

from __future__ import annotations

import functools

import pytest
import torch

from splat.render import _torch_impl
from splat.render._torch_impl import ALPHA_MAX, ALPHA_MIN, T_MIN, _composite_tiles

W, H = 40, 24  # 5 x 3 tiles of 8x8


def _screen_scene(seed: int, n: int = 40, channels: int = 3):
    """Screen-space Gaussians reaching no further than x = 30 (the last column of tiles stays empty), a stack of
    opaque ones on one spot (T reaches T_MIN; the small last one of the stack is fully occluded)."""
    g = torch.Generator().manual_seed(seed)
    dt = torch.float64
    means2d = torch.rand(n, 2, generator=g, dtype=dt) * torch.tensor([18.0, H], dtype=dt)
    std = torch.rand(n, 2, generator=g, dtype=dt) * 3 + 0.6
    rho = (torch.rand(n, generator=g, dtype=dt) - 0.5) * 1.6
    opac = torch.rand(n, generator=g, dtype=dt) * 0.9 + 0.05
    opac[:4] = 1.0  # on pixel centres: alphas clamped to ALPHA_MAX there
    means2d[:4] = means2d[:4].floor() + 0.5
    opac[4:7] = 0.003  # below ALPHA_MIN everywhere: skipped
    # a stack of 5 opaque Gaussians at one spot, nearest first: T < T_MIN after the second
    means2d[-5:] = torch.tensor([12.3, 9.7], dtype=dt)
    std[-5:], rho[-5:], opac[-5:] = 4.0, 0.0, 0.995
    std[-1] = 0.5  # the last: inside the others' T_MIN stop everywhere it reaches ALPHA_MIN
    # one whose alpha is exactly ALPHA_MAX at a pixel centre (the clamp passes the gradient there)
    means2d[7] = torch.tensor([26.5, 4.5], dtype=dt)
    std[7], opac[7] = 0.7, ALPHA_MAX
    a, c, b = std[:, 0] ** 2, std[:, 1] ** 2, rho * std[:, 0] * std[:, 1]
    det = a * c - b * b
    conics = torch.stack([c / det, -b / det, a / det], -1)
    depths = torch.linspace(1.0, 2.0, n, dtype=dt)
    depths[-5:] = torch.linspace(0.5, 0.6, 5, dtype=dt)
    radii = torch.ceil(3.33 * torch.stack([a, c], -1).sqrt()).int()
    colors = torch.rand(n, channels, generator=g, dtype=dt)
    return means2d, conics, depths, radii, opac, colors


def _composite(reference: bool, scene, max_elements: int, absgrad: bool):
    means2d, conics, depths, radii, opac, colors = scene
    leaves = [t.clone().requires_grad_(True) for t in (means2d, conics, opac, colors)]
    buffer = torch.zeros_like(means2d) if absgrad else None
    img, acc = _composite_tiles(
        leaves[0], leaves[1], depths, radii, leaves[2], leaves[3], W, H, 8,
        max_elements=max_elements, absgrad=buffer, _reference=reference,
    )  # fmt: skip
    g = torch.Generator().manual_seed(7)
    loss = (img * torch.randn(img.shape, generator=g, dtype=img.dtype)).sum()
    loss = loss + (acc * torch.randn(acc.shape, generator=g, dtype=acc.dtype)).sum()
    loss.backward()
    return img.detach(), acc.detach(), [t.grad for t in leaves], buffer


@pytest.mark.parametrize(
    ("seed", "max_elements", "absgrad", "channels"),
    [(0, 1 << 18, False, 3), (1, 1500, True, 3), (2, 700, True, 4)],
    ids=["one-chunk", "chunks-absgrad", "chunks-absgrad-4-channels"],
)
def test_hand_written_backward_matches_autograd(seed, max_elements, absgrad, channels):
    """Mutations caught: the 1/(1 - alpha_i) factor of the later Gaussians' term dropped; the T_MIN stop
    mask ignored in the backward; gradient passed through alphas clamped to ALPHA_MAX (or stopped at
    exactly ALPHA_MAX); the absgrad axes swapped or summed signed."""
    scene = _screen_scene(seed, channels=channels)
    means2d = scene[0]
    img_ref, acc_ref, grads_ref, abs_ref = _composite(True, scene, max_elements, absgrad)
    img, acc, grads, abs_new = _composite(False, scene, max_elements, absgrad)

    # the scene reaches the branches it is built for
    assert (acc_ref[:, 32:] == 0).all()  # empty tiles
    assert acc_ref.max() > 1 - T_MIN * 1.5  # compositing stopped at T_MIN somewhere
    assert abs(float(acc_ref[4, 26]) - ALPHA_MAX) < 1e-12  # the Gaussian exactly at ALPHA_MAX
    opacity_grad = grads_ref[2]
    assert (opacity_grad[4:7] == 0).all()  # below ALPHA_MIN: skipped
    clamped = [(int(y), int(x)) for x, y in means2d[:4].tolist()]
    assert any(acc_ref[y, x] >= ALPHA_MAX - 1e-12 for y, x in clamped)  # a clamped alpha composited
    assert opacity_grad[-1] == 0 and (opacity_grad[-5:-1] != 0).all()  # the last of the stack is hidden

    assert torch.equal(img, img_ref) and torch.equal(acc, acc_ref)
    for name, new, ref in zip(("means2d", "conics", "opacities", "colors"), grads, grads_ref, strict=True):
        torch.testing.assert_close(new, ref, rtol=1e-10, atol=1e-12, msg=lambda m, name=name: f"{name}: {m}")
    if absgrad:
        assert abs_ref.abs().sum() > 0
        torch.testing.assert_close(abs_new, abs_ref, rtol=1e-10, atol=1e-12)


def test_full_renderer_gradients_match_autograd(monkeypatch):
    """Through projection and SH under autograd: RGB+ED, anti-aliased, absgrad and a background give the
    same image and the same gradients for means, quats, scales, opacities and SH with either backward."""
    g = torch.Generator().manual_seed(5)
    dt, n, size = torch.float64, 30, 20
    means = torch.randn(n, 3, generator=g, dtype=dt) * 0.5 + torch.tensor([0.0, 0.0, 3.0], dtype=dt)
    quats = torch.randn(n, 4, generator=g, dtype=dt)
    scales = torch.rand(n, 3, generator=g, dtype=dt) * 0.15 + 0.02
    opac = torch.rand(n, generator=g, dtype=dt) * 0.9 + 0.1
    sh = torch.randn(n, 9, 3, generator=g, dtype=dt) * 0.3
    viewmats = torch.eye(4, dtype=dt)[None].repeat(2, 1, 1)
    viewmats[1, 0, 3] = 0.3
    Ks = torch.tensor([[20.0, 0, size / 2], [0, 20.0, size / 2], [0, 0, 1]], dtype=dt)[None].repeat(2, 1, 1)
    bg = torch.rand(2, 3, generator=g, dtype=dt)
    weights = torch.randn(2, size, size, 4, generator=g, dtype=dt)
    plain = _torch_impl._composite_tiles
    outs = []
    for reference in (True, False):
        monkeypatch.setattr(_torch_impl, "_composite_tiles", functools.partial(plain, _reference=reference))
        ins = [t.clone().requires_grad_(True) for t in (means, quats, scales, opac, sh)]
        img, alpha, meta = _torch_impl.rasterize_torch(
            *ins, viewmats, Ks, size, size, sh_degree=2, backgrounds=bg, rasterize_mode="antialiased",
            absgrad=True, render_mode="RGB+ED",
        )  # fmt: skip
        ((img * weights).sum() + alpha.sum()).backward()
        outs.append((img.detach(), [t.grad for t in ins], meta["means2d"].absgrad))
    (img_ref, grads_ref, abs_ref), (img_new, grads_new, abs_new) = outs
    assert torch.equal(img_new, img_ref)
    for new, ref in zip(grads_new, grads_ref, strict=True):
        assert ref.abs().sum() > 0
        torch.testing.assert_close(new, ref, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(abs_new, abs_ref, rtol=1e-10, atol=1e-12)


def test_constants_are_the_rasterizers():
    """The scene above assumes gsplat's thresholds (an opacity of 0.003 stays below ALPHA_MIN)."""
    assert 0.003 < ALPHA_MIN < 0.05 and ALPHA_MAX == 0.999 and T_MIN == 1e-4
