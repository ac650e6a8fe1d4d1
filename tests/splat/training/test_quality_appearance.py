"""Per-image bilateral grids (golden values from gsplat's examples/lib_bilagrid.py, run once with the same
seeded grids) and the SfM depth targets."""

from __future__ import annotations

import math

import pytest
import torch

from splat.training import appearance
from splat.training.appearance import BilateralGrids, total_variation
from splat.training.depth import disparity_l1, sample_depth, sparse_depths


def _perturbed_grids() -> tuple[BilateralGrids, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    grids = BilateralGrids(2, grid_shape=(4, 3, 5))
    with torch.no_grad():
        grids.grids.add_(torch.randn(grids.grids.shape, generator=g) * 0.3)
    rgb = torch.rand(2, 5, 6, 3, generator=g)
    return grids, rgb


def test_identity_at_start():
    grids = BilateralGrids(3)
    rgb = torch.rand(2, 7, 9, 3)
    torch.testing.assert_close(grids(rgb, torch.tensor([2, 0])), rgb)
    assert grids.tv_loss().item() == 0.0


def test_slice_and_tv_match_gsplat_lib_bilagrid():
    """Golden values: gsplat's BilateralGrid(2, grid_X=4, grid_Y=3, grid_W=5) + slice() on the same grids,
    images and indices (grid 1 for image 0, grid 0 for image 1) (mutation: guidance axes swapped, pixel
    centres without +0.5, align_corners=False, or grids taken in image order)."""
    grids, rgb = _perturbed_grids()
    out = grids(rgb, torch.tensor([1, 0]))
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([0.8406031727790833, 0.8046718835830688, 0.4908921718597412]))
    torch.testing.assert_close(out[1, 4, 5], torch.tensor([0.3381331264972687, 0.48504677414894104, 0.8577837944030762]))
    assert out.sum().item() == pytest.approx(89.85700988769531, rel=1e-5)
    assert total_variation(grids.grids).item() == pytest.approx(0.56353759765625, rel=1e-5)


def test_tv_by_hand():
    x = torch.tensor([[[[0.0, 1.0], [3.0, 3.0]]]])  # [1, 1, 2, 2]
    # axis 2: (3-0)^2 + (3-1)^2 = 13 over 2 elements; axis 3: (1-0)^2 + 0 = 1 over 2
    assert total_variation(x).item() == pytest.approx(13 / 2 + 1 / 2)


def test_lr_schedule_shape():
    total = 30_000
    assert appearance.lr_factor(1, total) == pytest.approx(0.01)
    assert appearance.lr_factor(1001, total) == pytest.approx(0.01 ** (1000 / total))
    assert appearance.lr_factor(total + 1, total) == pytest.approx(0.01)


def test_sparse_depths_keep_the_nearest_point_per_cell():
    K = torch.tensor([[10.0, 0, 8], [0, 10.0, 8], [0, 0, 1]])
    viewmat = torch.eye(4)
    points = torch.tensor([
        [0.0, 0.0, 2.0],  # centre pixel, near
        [0.0, 0.0, 5.0],  # behind it, same pixel: hidden
        [0.5, 0.5, 1.0],  # pixel (13, 13)
        [0.0, 0.0, -1.0],  # behind the camera
        [10.0, 0.0, 1.0],  # outside the image
    ])  # fmt: skip
    uv, z = sparse_depths(points, viewmat, K, 16, 16, cell=4)
    assert sorted(z.tolist()) == [1.0, 2.0]
    torch.testing.assert_close(uv[z == 2.0], torch.tensor([[8.0, 8.0]]))


def test_depth_sampling_and_disparity_loss():
    depth = torch.arange(12.0).reshape(3, 4) + 1  # [H, W]
    uv = torch.tensor([[0.0, 0.0], [3.0, 2.0], [1.5, 1.0]])
    torch.testing.assert_close(sample_depth(depth, uv), torch.tensor([1.0, 12.0, 6.5]))
    pred, target = torch.tensor([2.0, 4.0]), torch.tensor([4.0, 4.0])
    assert disparity_l1(pred, target, scene_scale=3.0).item() == pytest.approx(3.0 * (0.25 / 2))
    assert math.isfinite(disparity_l1(torch.tensor([0.0]), torch.tensor([1.0]), 1.0).item())
