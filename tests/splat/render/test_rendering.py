"""The reference rasterizer: finite-difference gradients, and agreement with gsplat on a GPU."""

from __future__ import annotations

import pytest
import torch

from splat.render._torch_impl import rasterize_torch


def _tiny_case(dtype=torch.float64, n=4, device="cpu"):
    g = torch.Generator().manual_seed(3)
    means = (torch.rand(n, 3, generator=g, dtype=dtype) - 0.5) * 0.6
    # large Gaussians in a tiny image: bounding boxes cover the whole image, so the
    # image is a smooth function of the parameters
    scales = 0.25 + 0.1 * torch.rand(n, 3, generator=g, dtype=dtype)
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    opac = 0.3 + 0.4 * torch.rand(n, generator=g, dtype=dtype)
    sh = 0.5 * torch.randn(n, 4, 3, generator=g, dtype=dtype)
    viewmat = torch.eye(4, dtype=dtype)
    viewmat[2, 3] = 2.5
    viewmat[:3, :3] = torch.linalg.matrix_exp(
        torch.tensor([[0, -0.1, 0.2], [0.1, 0, -0.15], [-0.2, 0.15, 0]], dtype=dtype)
    )
    K = torch.tensor([[12.0, 0, 4.3], [0, 12.0, 3.6], [0, 0, 1]], dtype=dtype)
    tensors = [means, quats, scales, opac, sh, viewmat[None], K[None]]
    return [t.to(device) for t in tensors]


def test_reference_renderer_gradients_match_finite_differences():
    means, quats, scales, opac, sh, viewmats, Ks = _tiny_case()
    bg = torch.tensor([[0.2, 0.1, 0.3]], dtype=torch.float64)

    def f(means, quats, scales, opac, sh):
        img, alpha, _ = rasterize_torch(
            means, quats, scales, opac, sh, viewmats, Ks, 8, 7, sh_degree=1, backgrounds=bg
        )
        return torch.cat([img.flatten(), alpha.flatten()])

    inputs = tuple(t.clone().requires_grad_(True) for t in (means, quats, scales, opac, sh))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_reference_renderer_basic_properties():
    means, quats, scales, opac, sh, viewmats, Ks = _tiny_case(torch.float32, n=6)
    img, alpha, meta = rasterize_torch(means, quats, scales, opac, sh, viewmats, Ks, 8, 7, sh_degree=1)
    assert img.shape == (1, 7, 8, 3) and alpha.shape == (1, 7, 8, 1)
    assert (alpha >= 0).all() and (alpha <= 1).all() and alpha.max() > 0.3
    assert meta["means2d"].shape == (1, 6, 2) and meta["radii"].shape == (1, 6, 2)
    # a Gaussian behind the camera is culled
    far = means.clone()
    far[0, 2] = -10
    _, _, meta2 = rasterize_torch(far, quats, scales, opac, sh, viewmats, Ks, 8, 7, sh_degree=1)
    assert (meta2["radii"][0, 0] == 0).all()


@pytest.mark.parametrize("render_mode", ["RGB", "RGB+ED"])
def test_a_gaussian_in_the_camera_plane_is_culled_with_zero_gradient(render_mode):
    # training can move a Gaussian onto a camera's z = 0 plane (it happened at step 562 of a 600-step cup run):
    # culled, it must get no gradient, and the others the gradient they get without it (not NaN everywhere)
    means, quats, scales, opac, sh, _, Ks = _tiny_case(torch.float32, n=5)
    viewmats = torch.eye(4)[None]  # world = camera coordinates, so that z is exactly what is set
    means[:, 2] += 2.5
    means[0] = torch.tensor([0.3, -0.2, 0.0])  # z = 0
    means[1] = torch.tensor([0.1, 0.1, -1e-30])  # just behind it (z * z is 0 in float32)

    def grads(keep):
        inputs = [x[keep].clone().requires_grad_(True) for x in (means, quats, scales, opac, sh)]
        img, alpha, _ = rasterize_torch(*inputs, viewmats, Ks, 8, 7, sh_degree=1, render_mode=render_mode)
        (img.square().sum() + alpha.sum()).backward()
        return [x.grad for x in inputs]

    with_culled = grads(torch.arange(5))
    without = grads(torch.arange(2, 5))
    for g, g_ref in zip(with_culled, without, strict=True):
        assert torch.isfinite(g).all()
        assert (g[:2] == 0).all()
        torch.testing.assert_close(g[2:], g_ref)


@pytest.mark.gpu
def test_reference_renderer_matches_gsplat_forward_and_backward():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from gsplat import rasterization

    g = torch.Generator().manual_seed(0)
    n, W, H = 200, 64, 48
    means = ((torch.rand(n, 3, generator=g) - 0.5) * 2).cuda()
    quats = torch.randn(n, 4, generator=g).cuda()
    scales = (0.05 + 0.1 * torch.rand(n, 3, generator=g)).cuda()
    opac = (0.2 + 0.7 * torch.rand(n, generator=g)).cuda()
    sh = (0.5 * torch.randn(n, 16, 3, generator=g)).cuda()
    viewmats = torch.eye(4)[None].cuda()
    viewmats[0, 2, 3] = 4.0
    Ks = torch.tensor([[[60.0, 0, 32], [0, 60.0, 24], [0, 0, 1]]]).cuda()
    outs = []
    for fn in (rasterize_torch, rasterization):
        ins = [t.clone().requires_grad_(True) for t in (means, quats, scales, opac, sh)]
        kw = {"packed": False} if fn is rasterization else {}
        img, alpha, meta = fn(*ins, viewmats, Ks, W, H, sh_degree=3, **kw)
        meta["means2d"].retain_grad()  # the screen-space gradient densification reads
        (img * torch.linspace(0, 1, 3, device="cuda")).sum().backward()
        outs.append(
            (img.detach(), alpha.detach(), [t.grad for t in ins], meta["means2d"].grad, meta["radii"])
        )
    (img_t, a_t, g_t, m2d_t, radii_t), (img_g, a_g, g_g, m2d_g, radii_g) = outs
    torch.testing.assert_close(img_t, img_g, atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(a_t, a_g, atol=2e-3, rtol=1e-3)

    def rel_err(a, b):
        return float((a - b).norm() / b.norm().clamp_min(1e-12))

    names = ("means", "quats", "scales", "opacities", "sh")
    for name, gt, gg in zip(names, g_t, g_g, strict=True):
        assert torch.nn.functional.cosine_similarity(gt.flatten(), gg.flatten(), dim=0) > 0.99, name
        assert rel_err(gt, gg) < 0.05, (name, rel_err(gt, gg))
    # means2d [C, N, 2]: the gradient densification reads, on the Gaussians both renderers keep
    assert m2d_t.shape == m2d_g.shape == (1, n, 2)
    visible = (radii_g > 0).all(-1) & (radii_t > 0).all(-1)  # [C, N]
    assert visible.sum() > n // 2 and m2d_g[visible].abs().sum() > 0
    err = rel_err(m2d_t[visible], m2d_g[visible])
    assert err < 0.05, err
    cos = torch.nn.functional.cosine_similarity(m2d_t[visible].flatten(), m2d_g[visible].flatten(), dim=0)
    assert cos > 0.99, cos


@pytest.mark.gpu
def test_fused_ssim_matches_pytorch_msssim_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pytest.importorskip("fused_ssim", reason="fused-ssim is not installed (scripts/gpu_check.sh install)")
    from pytorch_msssim import ssim as msssim

    from splat.training.metrics import ssim

    g = torch.Generator().manual_seed(0)
    gt = torch.rand(64, 80, 3, generator=g).cuda()
    pred = (gt + 0.1 * torch.randn(64, 80, 3, generator=g).cuda()).clamp(0, 1).requires_grad_(True)
    fused = ssim(pred, gt)  # the fused kernel on CUDA
    fused.backward()
    grad_fused = pred.grad.clone()
    pred.grad = None
    ref = msssim(pred.permute(2, 0, 1)[None], gt.permute(2, 0, 1)[None], data_range=1.0)
    ref.backward()
    torch.testing.assert_close(fused.detach(), ref.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grad_fused, pred.grad, rtol=1e-3, atol=1e-7)
