"""Reference renderer: anti-aliased mode (Mip-Splatting's compensation), AbsGS's absolute gradient and
the expected-depth channel, against closed forms and a per-pixel brute force."""

from __future__ import annotations

import math

import pytest
import torch

from splat.render._torch_impl import rasterize_torch
from splat.render.rasterization import rasterize

F = 40.0  # focal length in pixels
EPS2D = 0.3


def _one_gaussian(sigma_px: float, opacity: float, size: int = 24, z: float = 4.0):
    """An isotropic Gaussian at the image centre whose screen-space standard deviation is ``sigma_px``."""
    means = torch.tensor([[0.0, 0.0, z]])
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    scales = torch.full((1, 3), sigma_px * z / F)  # sigma' = f s / z at the centre of the image
    opac = torch.tensor([opacity])
    colors = torch.ones(1, 3)
    viewmats = torch.eye(4)[None]
    Ks = torch.tensor([[[F, 0, size / 2], [0, F, size / 2], [0, 0, 1]]])
    return means, quats, scales, opac, colors, viewmats, Ks, size


@pytest.mark.parametrize("sigma_px", [0.4, 0.8, 2.0])
def test_antialiased_compensation_is_the_closed_form(sigma_px):
    """sqrt(det Sigma' / det(Sigma' + eps I)) = s^2 / (s^2 + eps) for an isotropic s (mutation: no
    compensation, or the blurred determinant on both sides)."""
    *args, size = _one_gaussian(sigma_px, 0.5)
    _, _, meta = rasterize(*args, size, size, backend="torch", rasterize_mode="antialiased")
    expected = sigma_px**2 / (sigma_px**2 + EPS2D)
    assert meta["compensations"][0, 0].item() == pytest.approx(expected, rel=1e-4)


def test_antialiased_keeps_the_unfiltered_footprint():
    """Sum of alpha over the image = the integral of the *unfiltered* Gaussian, o 2 pi s^2, in
    anti-aliased mode; classic mode dilates it to o 2 pi (s^2 + eps) (mutation: filter without
    compensation makes the two modes equal and fails the first assertion)."""
    sigma, o = 0.6, 0.4
    *args, size = _one_gaussian(sigma, o)
    _, alpha_aa, _ = rasterize(*args, size, size, backend="torch", rasterize_mode="antialiased")
    _, alpha_cl, _ = rasterize(*args, size, size, backend="torch", rasterize_mode="classic")
    unfiltered = o * 2 * math.pi * sigma**2
    dilated = o * 2 * math.pi * (sigma**2 + EPS2D)
    assert alpha_aa.sum().item() == pytest.approx(unfiltered, rel=0.03)
    assert alpha_cl.sum().item() == pytest.approx(dilated, rel=0.03)


def _scene(seed: int = 0, n: int = 12, size: int = 16):
    g = torch.Generator().manual_seed(seed)
    means = (torch.randn(n, 3, generator=g) * 0.4 + torch.tensor([0.0, 0.0, 3.0])).requires_grad_()
    quats = torch.randn(n, 4, generator=g)
    scales = torch.rand(n, 3, generator=g) * 0.08 + 0.03
    opac = torch.rand(n, generator=g) * 0.8 + 0.1
    colors = torch.rand(n, 3, generator=g)
    viewmats = torch.eye(4)[None]
    Ks = torch.tensor([[[20.0, 0, size / 2], [0, 20.0, size / 2], [0, 0, 1]]])
    target = torch.rand(1, size, size, 3, generator=g)
    return means, quats, scales, opac, colors, viewmats, Ks, size, target


@pytest.mark.parametrize("mode", ["classic", "antialiased"])
def test_absgrad_is_the_sum_of_per_pixel_absolute_gradients(mode):
    """means2d.absgrad = sum over pixels |d L_p / d mean2d| (per axis), computed here by one backward
    per pixel; and it is not the plain gradient (mutation: absgrad off / the plain gradient stored)."""
    means, quats, scales, opac, colors, viewmats, Ks, size, target = _scene()
    img, _, meta = rasterize_torch(
        means, quats, scales, opac, colors, viewmats, Ks, size, size, absgrad=True, rasterize_mode=mode
    )
    m2d = meta["means2d"]
    m2d.retain_grad()
    per_pixel = (img - target).square().sum(-1)[0]  # [H, W]: one loss term per pixel
    brute = torch.zeros_like(m2d)
    for y in range(size):
        for x in range(size):
            (g,) = torch.autograd.grad(per_pixel[y, x], m2d, retain_graph=True)
            brute += g.abs()
    m2d.absgrad.zero_()  # the hooks fire on every backward pass, the per-pixel ones above included
    per_pixel.sum().backward()
    assert m2d.absgrad.abs().sum() > 0
    torch.testing.assert_close(m2d.absgrad, brute, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(m2d.absgrad, m2d.grad.abs(), rtol=1e-2)  # signed terms do cancel


def test_expected_depth_channel():
    """RGB+ED: the last channel is sum w_i z_i / sum w_i; one opaque-ish Gaussian gives its own depth."""
    *args, size = _one_gaussian(3.0, 0.9, z=5.0)
    img, alpha, _ = rasterize(*args, size, size, backend="torch", render_mode="RGB+ED")
    assert img.shape[-1] == 4
    covered = alpha[0, ..., 0] > 0.05
    torch.testing.assert_close(img[0, ..., 3][covered], torch.full_like(img[0, ..., 3][covered], 5.0))
    rgb_only, _, _ = rasterize(*args, size, size, backend="torch")
    torch.testing.assert_close(img[..., :3], rgb_only)


@pytest.mark.gpu
def test_antialiased_absgrad_and_depth_match_gsplat():
    """The reference twin against gsplat's CUDA path: anti-aliased images, absgrad and RGB+ED."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from gsplat import rasterization

    g = torch.Generator().manual_seed(0)
    n, W, H = 200, 64, 48
    means = ((torch.rand(n, 3, generator=g) - 0.5) * 2).cuda()
    means[:, 2] += 4.0
    quats = torch.randn(n, 4, generator=g).cuda()
    scales = (0.01 + 0.1 * torch.rand(n, 3, generator=g)).cuda()  # some below a pixel: compensation < 1
    opac = (0.2 + 0.7 * torch.rand(n, generator=g)).cuda()
    colors = torch.rand(n, 3, generator=g).cuda()
    viewmats = torch.eye(4)[None].cuda()
    Ks = torch.tensor([[[60.0, 0, 32], [0, 60.0, 24], [0, 0, 1]]]).cuda()
    weights = torch.rand(1, H, W, 4, generator=g).cuda()
    outs = []
    for fn in (rasterize_torch, rasterization):
        ins = [t.clone().requires_grad_(True) for t in (means, quats, scales, opac, colors)]
        kw = {"packed": False} if fn is rasterization else {}
        img, _, meta = fn(*ins, viewmats, Ks, W, H, rasterize_mode="antialiased", absgrad=True,
                          render_mode="RGB+ED", **kw)
        (img * weights).sum().backward()
        outs.append((img.detach(), meta["means2d"].absgrad, meta["radii"]))
    (img_t, abs_t, radii_t), (img_g, abs_g, radii_g) = outs
    torch.testing.assert_close(img_t, img_g, atol=5e-3, rtol=1e-3)
    visible = (radii_g > 0).all(-1) & (radii_t > 0).all(-1)
    err = float((abs_t[visible] - abs_g[visible]).norm() / abs_g[visible].norm())
    assert err < 0.05, err
