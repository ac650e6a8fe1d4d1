"""Pure-PyTorch reference rasterizer: the readable, differentiable twin of gsplat's CUDA path.

It follows the same conventions as ``gsplat.rasterization`` (pinhole cameras, ``viewmats`` are
world-to-camera 4x4 matrices, quaternions are ``wxyz``, activated scales and opacities, SH colours
with the ``+0.5`` offset, an ``eps2d`` low-pass filter, alpha clamped to 0.999, Gaussians with
``alpha < 1/255`` skipped, and front-to-back compositing that stops once transmittance would fall
below 1e-4), so that the two agree forward and backward up to float round-off.

Like gsplat it works tile by tile (16x16 pixels): each tile composites, densely, the depth-sorted
Gaussians whose screen-space box touches it, with a cumulative sum of ``log(1 - alpha)`` giving the
transmittance. Memory and time grow with (pixels x Gaussians per tile), so it is meant for small
images (tests, CPU training of small scenes), not for full-resolution training.

Notation (3DGS paper -> code):
    mu (3D mean)          means       [N, 3]
    Sigma = R S S^T R^T   covars      [N, 3, 3]
    W (world->camera)     viewmats    [C, 4, 4]
    J (affine Jacobian)   jac         [C, N, 2, 3]
    Sigma' (2D)           covars2d    [C, N, 2, 2]
    alpha_i               alpha       [P, G]  (pixels x Gaussians of one tile)
    T_i                   exp(log_t_incl - log1m)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# Real spherical-harmonics constants (the same basis as the original 3DGS and gsplat).
SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (
    1.0925484305920792,
    -1.0925484305920792,
    0.31539156525252005,
    -1.0925484305920792,
    0.5462742152960396,
)
SH_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)

ALPHA_MIN = 1.0 / 255.0  # pairs with a smaller alpha are skipped
ALPHA_MAX = 0.999  # alpha is clamped to this value
T_MIN = 1e-4  # compositing stops before transmittance drops below this


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Rotation matrices from (not necessarily normalised) ``wxyz`` quaternions [..., 4] -> [..., 3, 3]."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]  # fmt: skip
    return torch.stack(rows, dim=-1).reshape(quats.shape[:-1] + (3, 3))


def covariance_3d(quats: Tensor, scales: Tensor) -> Tensor:
    """Sigma = R S S^T R^T from quats [N, 4] and activated scales [N, 3] -> [N, 3, 3]."""
    rs = quat_to_rotmat(quats) * scales[:, None, :]  # R @ diag(s)   [N, 3, 3]
    return rs @ rs.transpose(-1, -2)


def eval_sh(degree: int, coeffs: Tensor, dirs: Tensor) -> Tensor:
    """Evaluate real SH of the given degree. coeffs [..., K, 3] (K >= (degree+1)^2), dirs [..., 3] -> [..., 3]."""
    result = SH_C0 * coeffs[..., 0, :]
    if degree < 1:
        return result
    d = F.normalize(dirs, dim=-1)
    x, y, z = d[..., 0:1], d[..., 1:2], d[..., 2:3]
    result = (
        result - SH_C1 * y * coeffs[..., 1, :] + SH_C1 * z * coeffs[..., 2, :] - SH_C1 * x * coeffs[..., 3, :]
    )
    if degree < 2:
        return result
    xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
    result = (
        result
        + SH_C2[0] * xy * coeffs[..., 4, :]
        + SH_C2[1] * yz * coeffs[..., 5, :]
        + SH_C2[2] * (2 * zz - xx - yy) * coeffs[..., 6, :]
        + SH_C2[3] * xz * coeffs[..., 7, :]
        + SH_C2[4] * (xx - yy) * coeffs[..., 8, :]
    )
    if degree < 3:
        return result
    return (
        result
        + SH_C3[0] * y * (3 * xx - yy) * coeffs[..., 9, :]
        + SH_C3[1] * xy * z * coeffs[..., 10, :]
        + SH_C3[2] * y * (4 * zz - xx - yy) * coeffs[..., 11, :]
        + SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy) * coeffs[..., 12, :]
        + SH_C3[4] * x * (4 * zz - xx - yy) * coeffs[..., 13, :]
        + SH_C3[5] * z * (xx - yy) * coeffs[..., 14, :]
        + SH_C3[6] * x * (xx - 3 * yy) * coeffs[..., 15, :]
    )


def project(
    means: Tensor,  # [N, 3]
    covars: Tensor,  # [N, 3, 3]
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    eps2d: float,
    near_plane: float,
    far_plane: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """EWA projection (Zwicker et al.) of 3D Gaussians to every camera.

    Returns means2d [C, N, 2] (pixels), conics [C, N, 3] (upper triangle of Sigma'^-1),
    depths [C, N] and integer radii [C, N, 2] (0 where culled), like gsplat's ``fully_fused_projection``.
    """
    R, t = viewmats[:, :3, :3], viewmats[:, :3, 3]  # [C, 3, 3], [C, 3]
    means_c = torch.einsum("cij,nj->cni", R, means) + t[:, None, :]  # [C, N, 3]
    covars_c = R[:, None] @ covars[None] @ R[:, None].transpose(-1, -2)  # [C, N, 3, 3]
    x, y, z = means_c.unbind(-1)  # [C, N] each
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]  # [C, 1]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]

    # Clamp the point used for the Jacobian to 1.3x the field of view, as the original does.
    tan_fovx = 0.5 * width / fx
    tan_fovy = 0.5 * height / fy
    lim_x_pos = (width - cx) / fx + 0.3 * tan_fovx
    lim_x_neg = cx / fx + 0.3 * tan_fovx
    lim_y_pos = (height - cy) / fy + 0.3 * tan_fovy
    lim_y_neg = cy / fy + 0.3 * tan_fovy
    tx = z * torch.minimum(lim_x_pos, torch.maximum(-lim_x_neg, x / z))
    ty = z * torch.minimum(lim_y_pos, torch.maximum(-lim_y_neg, y / z))
    zeros = torch.zeros_like(z)
    jac = torch.stack([fx / z, zeros, -fx * tx / (z * z), zeros, fy / z, -fy * ty / (z * z)], dim=-1).reshape(
        z.shape + (2, 3)
    )  # [C, N, 2, 3]
    covars2d = jac @ covars_c @ jac.transpose(-1, -2)  # [C, N, 2, 2]
    eye = torch.eye(2, dtype=means.dtype, device=means.device)
    covars2d = covars2d + eps2d * eye

    a, b, c = covars2d[..., 0, 0], covars2d[..., 0, 1], covars2d[..., 1, 1]
    det = a * c - b * b
    valid = (det > 0) & (z > near_plane) & (z < far_plane)
    det_safe = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)  # [C, N, 3]
    means2d = torch.stack([fx * x / z + cx, fy * y / z + cy], dim=-1)  # [C, N, 2]

    with torch.no_grad():
        radius = torch.stack(
            [torch.ceil(3.33 * a.clamp_min(0).sqrt()), torch.ceil(3.33 * c.clamp_min(0).sqrt())], dim=-1
        )  # [C, N, 2]
        radius[~valid] = 0
        inside = (
            (means2d[..., 0] + radius[..., 0] > 0)
            & (means2d[..., 0] - radius[..., 0] < width)
            & (means2d[..., 1] + radius[..., 1] > 0)
            & (means2d[..., 1] - radius[..., 1] < height)
        )
        radius[~inside] = 0
        radii = radius.int()
    return means2d, conics, z, radii


def _composite_tiles(
    means2d: Tensor,  # [N, 2]
    conics: Tensor,  # [N, 3]
    depths: Tensor,  # [N]
    radii: Tensor,  # [N, 2]
    opacities: Tensor,  # [N]
    rgb: Tensor,  # [N, D]
    width: int,
    height: int,
    tile_size: int,
) -> tuple[Tensor, Tensor]:
    """Front-to-back alpha compositing of one camera, tile by tile -> image [H, W, D], alpha [H, W].

    Per tile, the Gaussians whose screen box touches it are taken in depth order and composited densely:
    a [P, G] alpha matrix (P pixels, G Gaussians) and a cumulative sum of log(1 - alpha) along G.
    """
    D = rgb.shape[-1]
    vis = torch.where((radii > 0).all(dim=-1))[0]
    vis = vis[torch.argsort(depths[vis].detach(), stable=True)]  # front to back
    with torch.no_grad():
        # the box outside which alpha < 1/255 anyway (tighter than 3.33 sigma for faint Gaussians)
        cov_diag = (
            torch.stack([conics[vis, 2], conics[vis, 0]], -1)
            / (conics[vis, 0] * conics[vis, 2] - conics[vis, 1] ** 2)[:, None]
        )  # [V, 2] = diag of Sigma'
        k = torch.sqrt(2 * torch.log((opacities[vis] / ALPHA_MIN).clamp_min(1.0)))  # [V]
        ext = torch.minimum(k[:, None] * cov_diag.sqrt(), radii[vis].to(cov_diag.dtype))  # [V, 2]
        centre = means2d[vis].detach()
        lo = torch.floor((centre - ext) / tile_size).long()  # [V, 2] tile coords
        hi = torch.floor((centre + ext) / tile_size).long()
    n_tx, n_ty = math.ceil(width / tile_size), math.ceil(height / tile_size)
    rows_img, rows_acc = [], []
    for ty in range(n_ty):
        y0, y1 = ty * tile_size, min((ty + 1) * tile_size, height)
        in_row = (lo[:, 1] <= ty) & (hi[:, 1] >= ty)
        tiles_img, tiles_acc = [], []
        for tx in range(n_tx):
            x0, x1 = tx * tile_size, min((tx + 1) * tile_size, width)
            gids = vis[in_row & (lo[:, 0] <= tx) & (hi[:, 0] >= tx)]  # [G], depth-sorted
            h, w = y1 - y0, x1 - x0
            if len(gids) == 0:
                tiles_img.append(rgb.new_zeros(h, w, D))
                tiles_acc.append(rgb.new_zeros(h, w))
                continue
            ys, xs = torch.meshgrid(
                torch.arange(y0, y1, dtype=means2d.dtype, device=means2d.device) + 0.5,
                torch.arange(x0, x1, dtype=means2d.dtype, device=means2d.device) + 0.5,
                indexing="ij",
            )
            dx = means2d[gids, 0][None, :] - xs.reshape(-1, 1)  # [P, G]
            dy = means2d[gids, 1][None, :] - ys.reshape(-1, 1)
            con = conics[gids]  # [G, 3]
            sigma = 0.5 * (con[:, 0] * dx * dx + con[:, 2] * dy * dy) + con[:, 1] * dx * dy  # [P, G]
            alpha = torch.clamp_max(opacities[gids] * torch.exp(-sigma), ALPHA_MAX)
            alpha = torch.where((sigma >= 0) & (alpha >= ALPHA_MIN), alpha, torch.zeros_like(alpha))
            log1m = torch.log1p(-alpha)  # [P, G]
            log_t_incl = torch.cumsum(log1m, dim=1)
            # the rasterizer stops at the first Gaussian that would bring T to or below T_MIN
            live = log_t_incl > math.log(T_MIN)
            weight = alpha * torch.exp(log_t_incl - log1m) * live  # alpha_i * T_i   [P, G]
            tiles_img.append((weight @ rgb[gids]).reshape(h, w, D))
            tiles_acc.append(weight.sum(1).reshape(h, w))
        rows_img.append(torch.cat(tiles_img, dim=1))
        rows_acc.append(torch.cat(tiles_acc, dim=1))
    return torch.cat(rows_img, dim=0), torch.cat(rows_acc, dim=0)


def rasterize_torch(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4] wxyz
    scales: Tensor,  # [N, 3] activated
    opacities: Tensor,  # [N] activated
    colors: Tensor,  # [N, K, 3] SH coefficients if sh_degree is set, else [N, D]
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    sh_degree: int | None = None,
    backgrounds: Tensor | None = None,  # [C, D]
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    tile_size: int = 16,
) -> tuple[Tensor, Tensor, dict]:
    """Render C images; returns colours [C, H, W, D], alphas [C, H, W, 1] and a gsplat-like meta dict."""
    C = viewmats.shape[0]
    covars = covariance_3d(quats, scales)  # [N, 3, 3]
    means2d, conics, depths, radii = project(
        means, covars, viewmats, Ks, width, height, eps2d, near_plane, far_plane
    )

    if sh_degree is not None:
        campos = -torch.einsum("cji,cj->ci", viewmats[:, :3, :3], viewmats[:, :3, 3])  # [C, 3]
        dirs = means[None] - campos[:, None]  # [C, N, 3]
        rgb = eval_sh(sh_degree, colors[None].expand(C, -1, -1, -1), dirs)  # [C, N, 3]
        rgb = torch.clamp_min(rgb + 0.5, 0.0)
    else:
        rgb = colors[None].expand(C, -1, -1)  # [C, N, D]

    images, alphas = [], []
    for ci in range(C):
        img, acc = _composite_tiles(
            means2d[ci], conics[ci], depths[ci], radii[ci], opacities, rgb[ci], width, height, tile_size
        )
        if backgrounds is not None:
            img = img + (1 - acc)[..., None] * backgrounds[ci]
        images.append(img)
        alphas.append(acc[..., None])

    meta = {
        "means2d": means2d,
        "radii": radii,
        "depths": depths,
        "conics": conics,
        "width": width,
        "height": height,
        "n_cameras": C,
        "gaussian_ids": None,
    }
    return torch.stack(images), torch.stack(alphas), meta
