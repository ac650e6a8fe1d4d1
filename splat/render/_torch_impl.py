"""Pure-PyTorch reference rasterizer: the readable, differentiable twin of gsplat's CUDA path.

It follows the same conventions as ``gsplat.rasterization`` (pinhole cameras, ``viewmats`` are
world-to-camera 4x4 matrices, quaternions are ``wxyz``, activated scales and opacities, SH colours
with the ``+0.5`` offset, an ``eps2d`` low-pass filter, alpha clamped to 0.999, Gaussians with
``alpha < 1/255`` skipped, and front-to-back compositing that stops once transmittance would fall
below 1e-4), so that the two agree forward and backward up to float round-off.

Like gsplat it works on tiles, but all at once instead of one thread block per tile: the depth-sorted
Gaussians whose screen-space box touches a tile are gathered into a padded [tiles, K] index, alphas are
evaluated as one [tiles, K, pixels] tensor and composited with an exclusive cumulative product of
(1 - alpha). Tiles are 8x8 by default (gsplat: 16x16; the image does not depend on it): each
(tile, Gaussian) pair costs a whole tile of pixels, and small tiles waste less on small Gaussians.
Memory and time grow with (pixels x Gaussians per tile), so it is meant for small images (tests, CPU
training of small scenes), not for full-resolution training.

Notation (3DGS paper -> code):
    mu (3D mean)          means       [N, 3]
    Sigma = R S S^T R^T   covars      [N, 3, 3]
    W (world->camera)     viewmats    [C, 4, 4]
    J (affine Jacobian)   jac         [C, N, 2, 3]
    Sigma' (2D)           covars2d    [C, N, 2, 2]
    alpha_i               alpha       [t, K, P]  (tiles x Gaussians per tile x pixels per tile)
    T_i                   t_excl      [t, K, P]
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

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
ALPHA_MAX = 0.999  # alpha is clamped to this value (gsplat; the original 3DGS CUDA code uses 0.99)
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
    # one unbind rather than a select per coefficient: the backward then stacks the coefficients'
    # gradients once instead of adding each into its own zero-filled copy of the whole tensor
    coeffs = coeffs.unbind(-2)
    result = SH_C0 * coeffs[0]
    if degree < 1:
        return result
    d = F.normalize(dirs, dim=-1)
    x, y, z = d[..., 0:1], d[..., 1:2], d[..., 2:3]
    result = (
        result - SH_C1 * y * coeffs[1] + SH_C1 * z * coeffs[2] - SH_C1 * x * coeffs[3]
    )
    if degree < 2:
        return result
    xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
    result = (
        result
        + SH_C2[0] * xy * coeffs[4]
        + SH_C2[1] * yz * coeffs[5]
        + SH_C2[2] * (2 * zz - xx - yy) * coeffs[6]
        + SH_C2[3] * xz * coeffs[7]
        + SH_C2[4] * (xx - yy) * coeffs[8]
    )
    if degree < 3:
        return result
    return (
        result
        + SH_C3[0] * y * (3 * xx - yy) * coeffs[9]
        + SH_C3[1] * xy * z * coeffs[10]
        + SH_C3[2] * y * (4 * zz - xx - yy) * coeffs[11]
        + SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy) * coeffs[12]
        + SH_C3[4] * x * (4 * zz - xx - yy) * coeffs[13]
        + SH_C3[5] * z * (xx - yy) * coeffs[14]
        + SH_C3[6] * x * (xx - 3 * yy) * coeffs[15]
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
    return project_with_compensations(means, covars, viewmats, Ks, width, height, eps2d, near_plane, far_plane)[:4]


def project_with_compensations(
    means: Tensor,  # [N, 3]
    covars: Tensor,  # [N, 3, 3]
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    eps2d: float,
    near_plane: float,
    far_plane: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """:func:`project`, plus the anti-aliasing compensations [C, N] (Mip-Splatting's 2D filter).

    The ``eps2d`` low-pass filter dilates every Gaussian: a Gaussian smaller than a pixel grows to about a
    pixel and, at the same opacity, covers more of the image than it should (the "dilation" Mip-Splatting
    describes). gsplat's ``rasterize_mode="antialiased"`` multiplies each opacity by
    ``sqrt(det(Sigma') / det(Sigma' + eps2d I))`` so that the filtered Gaussian keeps the integral of the
    unfiltered one. Clamped at 0 as gsplat 1.4 - 1.5 does (later gsplat floors it at 0.005^2 before the
    square root, so that the tiniest Gaussians are not culled outright).
    """
    R, t = viewmats[:, :3, :3], viewmats[:, :3, 3]  # [C, 3, 3], [C, 3]
    means_c = torch.einsum("cij,nj->cni", R, means) + t[:, None, :]  # [C, N, 3]
    covars_c = R[:, None] @ covars[None] @ R[:, None].transpose(-1, -2)  # [C, N, 3, 3]
    x, y, z = means_c.unbind(-1)  # [C, N] each
    # Culled Gaussians (behind the near plane or past the far one) divide by 1 instead of z: their outputs
    # reach no pixel, and a z of (almost) 0 would make the backward pass compute 0 * inf = NaN for them.
    in_range = (z > near_plane) & (z < far_plane)
    z_depth, z = z, torch.where(in_range, z, torch.ones_like(z))
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
    det_orig = covars2d[..., 0, 0] * covars2d[..., 1, 1] - covars2d[..., 0, 1] * covars2d[..., 1, 0]  # [C, N]
    eye = torch.eye(2, dtype=means.dtype, device=means.device)
    covars2d = covars2d + eps2d * eye

    a, b, c = covars2d[..., 0, 0], covars2d[..., 0, 1], covars2d[..., 1, 1]
    det = a * c - b * b
    valid = (det > 0) & in_range
    det_safe = torch.where(valid, det, torch.ones_like(det))
    compensations = torch.sqrt(torch.clamp_min(det_orig / det_safe, 0.0))  # [C, N]
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
    return means2d, conics, z_depth, radii, compensations


def _tile_intersections(
    lo: Tensor,  # [V, 2] first tile (x, y) of each depth-sorted visible Gaussian
    hi: Tensor,  # [V, 2] last tile (inclusive)
    n_tx: int,
    n_ty: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """All (tile, Gaussian) pairs, grouped by tile and depth-sorted inside each tile.

    Returns ``tile_ids`` [I], ``local`` [I] (rank of the pair's Gaussian among its tile's, 0 = nearest)
    and ``gauss`` [I] (index into the V visible Gaussians), with I the number of intersections.
    """
    lo = torch.maximum(lo, torch.zeros_like(lo))
    hi = torch.minimum(hi, torch.tensor([n_tx - 1, n_ty - 1], device=hi.device))
    span = (hi - lo + 1).clamp_min(0)  # [V, 2] tiles covered along x and y
    counts = span[:, 0] * span[:, 1]  # [V]
    gauss = torch.repeat_interleave(torch.arange(len(counts), device=lo.device), counts)  # [I]
    starts = torch.cumsum(counts, 0) - counts  # [V] first intersection of each Gaussian
    offset = torch.arange(len(gauss), device=lo.device) - starts[gauss]  # [I] index inside its box
    w = span[gauss, 0]
    tx = lo[gauss, 0] + offset % w
    ty = lo[gauss, 1] + torch.div(offset, w, rounding_mode="floor")
    tile_ids = ty * n_tx + tx  # [I]
    # Gaussians are already depth-sorted, so sorting by (tile, Gaussian rank) keeps depth order per tile
    order = torch.argsort(tile_ids * len(counts) + gauss)
    tile_ids, gauss = tile_ids[order], gauss[order]
    per_tile = torch.bincount(tile_ids, minlength=n_tx * n_ty)  # [T]
    tile_start = torch.cumsum(per_tile, 0) - per_tile  # [T]
    local = torch.arange(len(tile_ids), device=lo.device) - tile_start[tile_ids]  # [I]
    return tile_ids, local, gauss


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
    max_elements: int = 1 << 18,
    absgrad: Tensor | None = None,  # [N, 2]
    _reference: bool = False,
) -> tuple[Tensor, Tensor]:
    """Front-to-back alpha compositing of one camera -> image [H, W, D], alpha [H, W].

    All tiles at once (in chunks of about ``max_elements`` alpha values to bound memory): the
    depth-sorted Gaussians touching each tile are gathered into a padded ``[T, K]`` index (K = most
    Gaussians on one tile of the chunk), their alphas evaluated as one ``[T, K, P]`` tensor (P pixels
    per tile) and composited with an exclusive cumulative product of ``1 - alpha`` along K.

    ``absgrad``, a buffer [N, 2], receives AbsGS's absolute screen-space gradient during the backward
    pass: for each Gaussian, ``sum over pixels |dL/d mean2d|`` taken per pixel and per axis before the sum
    (the plain gradient sums the signed per-pixel terms, which cancel across an edge). A pixel's term is
    the gradient reaching its offset ``dx`` / ``dy`` (``d dx / d mean2d_x = 1``).

    Each chunk is composited by :class:`_CompositeChunk`, whose backward is written out by hand;
    ``_reference=True`` composites with plain autograd instead (:func:`_composite_chunk_autograd`, the
    readable definition, kept as the reference the hand-written gradient is tested against).
    """
    D = rgb.shape[-1]
    dev, dtype = means2d.device, means2d.dtype
    n_tx, n_ty = math.ceil(width / tile_size), math.ceil(height / tile_size)
    T, P = n_tx * n_ty, tile_size * tile_size

    vis = torch.where((radii > 0).all(dim=-1))[0]
    vis = vis[torch.argsort(depths[vis].detach(), stable=True)]  # [V] front to back
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
        tile_ids, local, gauss = _tile_intersections(lo, hi, n_tx, n_ty)
        per_tile = torch.bincount(tile_ids, minlength=T)  # [T]

    # pixel centres of every tile of the padded image: [T, P] each
    ys, xs = torch.meshgrid(
        torch.arange(n_ty * tile_size, dtype=dtype, device=dev) + 0.5,
        torch.arange(n_tx * tile_size, dtype=dtype, device=dev) + 0.5,
        indexing="ij",
    )
    to_tiles = lambda a: a.reshape(n_ty, tile_size, n_tx, tile_size).permute(0, 2, 1, 3).reshape(T, P)  # noqa: E731
    px, py = to_tiles(xs), to_tiles(ys)

    # Tiles are processed busiest first, in chunks whose [t, K, P] tensors stay below max_elements
    # (at least one tile per chunk): sorting by count keeps the padding of each chunk small.
    by_count = torch.argsort(per_tile, descending=True, stable=True)  # [T]
    rank_of_tile = torch.empty_like(by_count)
    rank_of_tile[by_count] = torch.arange(T, device=dev)
    rank = rank_of_tile[tile_ids]  # [I] position of each intersection's tile in the sorted order
    # intersections in chunk order (stable: tile by tile, each tile's in depth order), so that a chunk's are
    # one slice: starts[r] is the first intersection of the tile of rank r
    order = torch.argsort(rank, stable=True)
    rank, local, owner = rank[order], local[order], vis[gauss[order]]
    counts = per_tile[by_count].tolist()
    starts = [0, *itertools.accumulate(counts)]
    out_img, out_acc = [], []
    t0 = 0
    while t0 < T:
        kmax = counts[t0]  # the chunk's first tile is its busiest
        if kmax == 0:  # every remaining tile is empty
            out_img.append(rgb.new_zeros(T - t0, P, D))
            out_acc.append(rgb.new_zeros(T - t0, P))
            break
        t1 = min(T, t0 + max(1, max_elements // (kmax * P)))
        with torch.no_grad():
            sel = slice(starts[t0], starts[t1])
            slot = torch.zeros(t1 - t0, kmax, dtype=torch.long, device=dev)  # [t, K] padded index
            valid = torch.zeros(t1 - t0, kmax, dtype=torch.bool, device=dev)
            slot[rank[sel] - t0, local[sel]] = owner[sel]
            valid[rank[sel] - t0, local[sel]] = True
            tiles = by_count[t0:t1]  # [t]
        args = (means2d[slot], conics[slot], opacities[slot], rgb[slot], px[tiles], py[tiles], valid)  # [t, K, ...]
        if _reference:
            img, acc = _composite_chunk_autograd(*args, slot, absgrad)
        elif torch.is_grad_enabled() and any(a.requires_grad for a in args[:4]):
            img, acc = _CompositeChunk.apply(*args, slot, absgrad)
        else:
            img, acc, _ = _composite_chunk_forward(*args)
        out_img.append(img)  # [t, P, D]
        out_acc.append(acc)  # [t, P]
        t0 = t1
    unsort = rank_of_tile  # sorted position of each tile, in raster order

    def untile(a: Tensor) -> Tensor:  # [T, P, ...] -> [H, W, ...]
        rest = a.shape[2:]
        a = a.reshape(n_ty, n_tx, tile_size, tile_size, *rest).transpose(1, 2)
        return a.reshape(n_ty * tile_size, n_tx * tile_size, *rest)[:height, :width]

    return untile(torch.cat(out_img)[unsort]), untile(torch.cat(out_acc)[unsort])


def _composite_chunk_autograd(
    mu: Tensor,  # [t, K, 2]
    con: Tensor,  # [t, K, 3]
    op: Tensor,  # [t, K]
    col: Tensor,  # [t, K, D]
    px: Tensor,  # [t, P] pixel centres
    py: Tensor,  # [t, P]
    valid: Tensor,  # [t, K] bool: False on padding
    slot: Tensor,  # [t, K] Gaussian index of each pair (for absgrad)
    absgrad: Tensor | None,  # [N, 2]
) -> tuple[Tensor, Tensor]:
    """One chunk of tiles composited by plain autograd -> image [t, P, D], accumulated alpha [t, P].

    The definition :class:`_CompositeChunk` computes (same values) with a hand-written backward.
    """
    dx = mu[..., 0:1] - px[:, None, :]  # [t, K, P]
    dy = mu[..., 1:2] - py[:, None, :]
    if absgrad is not None and dx.requires_grad:
        _add_abs_grad_hooks(dx, dy, slot, valid, absgrad)
    sigma = 0.5 * (con[..., 0:1] * dx * dx + con[..., 2:3] * dy * dy) + con[..., 1:2] * dx * dy
    alpha = torch.clamp_max(op[..., None] * torch.exp(-sigma), ALPHA_MAX)  # [t, K, P]
    keep = (sigma >= 0) & (alpha >= ALPHA_MIN) & valid[..., None]
    alpha = torch.where(keep, alpha, torch.zeros_like(alpha))
    t_incl = torch.cumprod(1 - alpha, dim=1)  # transmittance after each Gaussian   [t, K, P]
    t_excl = torch.cat([torch.ones_like(t_incl[:, :1]), t_incl[:, :-1]], dim=1)  # T_i, before it
    # the rasterizer stops at the first Gaussian that would bring T to or below T_MIN
    weight = alpha * t_excl * (t_incl > T_MIN)  # alpha_i * T_i   [t, K, P]
    return torch.einsum("tkp,tkd->tpd", weight, col), weight.sum(1)


def _composite_chunk_forward(
    mu: Tensor, con: Tensor, op: Tensor, col: Tensor, px: Tensor, py: Tensor, valid: Tensor, for_backward=False
) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
    """:func:`_composite_chunk_autograd`'s forward, bit for bit, without autograd and mostly in place.

    The same operations in the same order (so the same float results), reusing a few [t, K, P] buffers.
    With ``for_backward``, also returns what :class:`_CompositeChunk`'s backward needs: the alphas, the
    weights ``w_i = alpha_i T_i m_i`` and the pairs that pass no gradient to alpha's input (skipped, or
    clamped to ALPHA_MAX).
    """
    dx = mu[..., 0:1] - px[:, None, :]  # [t, K, P]
    dy = mu[..., 1:2] - py[:, None, :]
    # -sigma, exactly: rounding is symmetric, so -(0.5 q + r) = (-0.5 q) - r bit for bit
    neg_sigma = con[..., 0:1] * dx
    neg_sigma *= dx
    tmp = con[..., 2:3] * dy
    tmp *= dy
    neg_sigma += tmp
    neg_sigma *= -0.5
    torch.mul(con[..., 1:2], dx, out=tmp)
    tmp *= dy
    neg_sigma -= tmp  # -(0.5 (a dx^2 + c dy^2) + b dx dy)
    del dx, dy, tmp
    keep = neg_sigma <= 0  # sigma >= 0
    # padding pairs get opacity 0: their alpha is 0 (or NaN), below ALPHA_MIN, so they are skipped as before
    alpha = neg_sigma.exp_()
    alpha *= op.masked_fill(~valid, 0.0)[..., None]
    clamped = alpha > ALPHA_MAX if for_backward else None
    alpha.clamp_max_(ALPHA_MAX)
    keep &= alpha >= ALPHA_MIN
    dropped = keep.logical_not_()
    alpha.masked_fill_(dropped, 0.0)
    t_incl = torch.cumprod(1 - alpha, dim=1)  # transmittance after each Gaussian   [t, K, P]
    weight = torch.empty_like(alpha)  # alpha_i T_i with T_i = t_incl[i - 1] (1 for the first)
    weight[:, :1] = alpha[:, :1]
    torch.mul(alpha[:, 1:], t_incl[:, :-1], out=weight[:, 1:])
    weight *= t_incl > T_MIN  # the stop mask
    del t_incl
    img = torch.einsum("tkp,tkd->tpd", weight, col)
    acc = weight.sum(1)
    if not for_backward:
        return img, acc, ()
    no_grad = dropped.logical_or_(clamped)  # d alpha / d (o exp(-sigma)) = 0 there
    return img, acc, (alpha, weight, no_grad)


class _CompositeChunk(torch.autograd.Function):
    """:func:`_composite_chunk_autograd` with a hand-written backward (the 3DGS compositing gradient).

    With ``s_i = c_i . g + g_acc`` per pixel (``g`` the image's gradient, ``g_acc`` the accumulated
    alpha's) and ``w_i = alpha_i T_i m_i`` (``m`` the T_MIN stop mask, a constant):
    ``dL/dc_i = sum_p w_i g`` and
    ``dL/d alpha_i = m_i T_i s_i - 1/(1 - alpha_i) sum_{j>i} w_j s_j`` (a reverse cumulative sum along K).
    Then through ``alpha = min(o e^-sigma, ALPHA_MAX)`` (zero where clamped or skipped), whose input
    ``o e^-sigma`` equals alpha wherever the gradient passes, so ``dL/d sigma = -alpha dL/d alpha`` and
    ``dL/d o = sum_p alpha dL/d alpha / o``; and through the quadratic form
    ``sigma = a dx^2 / 2 + b dx dy + c dy^2 / 2`` to the conic and to ``dx = mean_x - pixel_x`` (and dy).
    AbsGS's ``sum_p |dL/d dx|`` (and dy) is added to ``absgrad`` here when it is given.
    """

    @staticmethod
    def forward(ctx, mu, con, op, col, px, py, valid, slot, absgrad):
        img, acc, (alpha, weight, no_grad) = _composite_chunk_forward(mu, con, op, col, px, py, valid, True)
        ctx.save_for_backward(mu, con, op, col, px, py, valid, slot, alpha, weight, no_grad)
        ctx.absgrad = absgrad
        return img, acc

    @staticmethod
    @once_differentiable
    def backward(ctx, g_img, g_acc):
        mu, con, op, col, px, py, valid, slot, alpha, weight, no_grad = ctx.saved_tensors
        need_mu, need_con, need_op, need_col = ctx.needs_input_grad[:4]
        absgrad = ctx.absgrad if need_mu else None
        grad_mu = grad_con = grad_op = grad_col = None
        if need_col:
            grad_col = torch.bmm(weight, g_img)  # [t, K, D]
        if not (need_mu or need_con or need_op or absgrad is not None):
            return grad_mu, grad_con, grad_op, grad_col, None, None, None, None, None
        ws = torch.bmm(col, g_img.transpose(1, 2))  # c_i . g   [t, K, P]
        ws += g_acc[:, None, :]
        ws *= weight  # w_i s_i
        suffix = ws.flip(1).cumsum(1)  # suffix[:, k] = sum_{j >= K-1-k} w_j s_j
        r = 1 - alpha
        torch.div(alpha, r, out=r)  # alpha_i / (1 - alpha_i)
        r[:, :-1] *= suffix[:, :-1].flip(1)  # * sum_{j > i} w_j s_j
        r[:, -1:] = 0.0
        del suffix
        ga = ws.sub_(r)  # alpha_i dL/d alpha_i
        del r
        ga.masked_fill_(no_grad, 0.0)  # = -dL/d sigma
        # Sums over a tile's pixels of ga times 1, dx, dy, dx^2, dx dy, dy^2 (sigma's derivatives), as one
        # batched matrix product: with the tile's centre (ox, oy), dx = (mean_x - ox) - (px - ox) = ex - u,
        # so each sum is a polynomial in (ex, ey) of the pixel moments of ga: sum ga u^i v^j.
        ox = (px.amin(-1, keepdim=True) + px.amax(-1, keepdim=True)) / 2  # [t, 1] (exact: half-pixel grid)
        oy = (py.amin(-1, keepdim=True) + py.amax(-1, keepdim=True)) / 2
        u, v = px - ox, py - oy  # [t, P]
        basis = torch.stack([torch.ones_like(u), u, v, u * u, u * v, v * v], dim=-1)  # [t, P, 6]
        m0, mu_, mv, muu, muv, mvv = torch.bmm(ga, basis).unbind(-1)  # [t, K] each
        ex, ey = mu[..., 0] - ox, mu[..., 1] - oy  # [t, K]
        a, b, c = con.unbind(-1)  # [t, K]
        if need_op:  # ga.sum = o dL/do: alpha = o e^-sigma wherever the gradient passes
            grad_op = torch.where(op != 0, m0 / op, torch.zeros_like(op))
        if need_con:  # d sigma / d(a, b, c) = (dx^2 / 2, dx dy, dy^2 / 2)
            sxx = ex * ex * m0 - 2 * ex * mu_ + muu
            sxy = ex * ey * m0 - ex * mv - ey * mu_ + muv
            syy = ey * ey * m0 - 2 * ey * mv + mvv
            grad_con = torch.stack([-0.5 * sxx, -sxy, -0.5 * syy], dim=-1)
        if need_mu:  # d sigma / d dx = a dx + b dy, d sigma / d dy = b dx + c dy
            sx, sy = ex * m0 - mu_, ey * m0 - mv
            grad_mu = torch.stack([-(a * sx + b * sy), -(b * sx + c * sy)], dim=-1)
        if absgrad is not None:  # |dL/d dx| = |ga (a dx + b dy)| per pixel, summed over the tile's
            dx = mu[..., 0:1] - px[:, None, :]  # [t, K, P]
            dy = mu[..., 1:2] - py[:, None, :]
            gdx, gdy = ga * dx, ga * dy
            rows = slot[valid]
            for axis, (p, q, gp, gq) in enumerate(((a, b, gdx, gdy), (c, b, gdy, gdx))):
                per_pixel = gp * p[..., None]
                per_pixel += gq * q[..., None]
                per_pair = per_pixel.abs_().sum(-1)[valid]
                absgrad.index_put_(
                    (rows, torch.full_like(rows, axis)), per_pair.to(absgrad.dtype), accumulate=True
                )
        return grad_mu, grad_con, grad_op, grad_col, None, None, None, None, None


def _add_abs_grad_hooks(dx: Tensor, dy: Tensor, slot: Tensor, valid: Tensor, absgrad: Tensor) -> None:
    """During backward, add ``sum_p |dL/d dx[t, k, p]|`` (and dy) to ``absgrad[slot[t, k]]`` [N, 2]."""
    rows, cols = slot[valid], torch.zeros_like(slot[valid])

    def hook(axis: int):
        def add(grad: Tensor) -> None:  # grad [t, K, P]
            per_pair = grad.abs().sum(-1)[valid]  # [pairs] summed over the tile's pixels
            absgrad.index_put_((rows, cols + axis), per_pair.to(absgrad.dtype), accumulate=True)

        return add

    dx.register_hook(hook(0))
    dy.register_hook(hook(1))


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
    tile_size: int = 8,
    rasterize_mode: str = "classic",
    absgrad: bool = False,
    render_mode: str = "RGB",
) -> tuple[Tensor, Tensor, dict]:
    """Render C images; returns colours [C, H, W, D], alphas [C, H, W, 1] and a gsplat-like meta dict.

    ``rasterize_mode="antialiased"`` scales each opacity by its compensation (see
    :func:`project_with_compensations`; the meta dict then holds ``compensations`` [C, N]).
    ``absgrad=True`` sets ``meta["means2d"].absgrad`` [C, N, 2] once backward has run (see
    :func:`_composite_tiles`), where gsplat's ``DefaultStrategy(absgrad=True)`` reads it.
    ``render_mode="RGB+ED"`` appends the expected depth ``sum_i w_i z_i / sum_i w_i`` as a last channel
    (``w_i = alpha_i T_i``), as gsplat does; ``"RGB"`` renders colours only.
    """
    if rasterize_mode not in ("classic", "antialiased"):
        raise ValueError(f"rasterize_mode must be 'classic' or 'antialiased', got {rasterize_mode!r}")
    if render_mode not in ("RGB", "RGB+ED"):
        raise ValueError(f"render_mode must be 'RGB' or 'RGB+ED', got {render_mode!r}")
    C = viewmats.shape[0]
    covars = covariance_3d(quats, scales)  # [N, 3, 3]
    means2d, conics, depths, radii, compensations = project_with_compensations(
        means, covars, viewmats, Ks, width, height, eps2d, near_plane, far_plane
    )
    opacities_c = opacities[None].expand(C, -1)  # [C, N]
    if rasterize_mode == "antialiased":
        opacities_c = opacities_c * compensations
    absgrads = torch.zeros_like(means2d.detach()) if absgrad else None  # [C, N, 2]

    if sh_degree is not None:
        campos = -torch.einsum("cji,cj->ci", viewmats[:, :3, :3], viewmats[:, :3, 3])  # [C, 3]
        dirs = means[None] - campos[:, None]  # [C, N, 3]
        rgb = eval_sh(sh_degree, colors[None].expand(C, -1, -1, -1), dirs)  # [C, N, 3]
        rgb = torch.clamp_min(rgb + 0.5, 0.0)
    else:
        rgb = colors[None].expand(C, -1, -1)  # [C, N, D]
    n_color = rgb.shape[-1]
    if render_mode == "RGB+ED":
        rgb = torch.cat([rgb, depths[..., None]], dim=-1)  # [C, N, D + 1]

    images, alphas = [], []
    for ci in range(C):
        img, acc = _composite_tiles(
            means2d[ci], conics[ci], depths[ci], radii[ci], opacities_c[ci], rgb[ci], width, height, tile_size,
            absgrad=None if absgrads is None else absgrads[ci],
        )
        if render_mode == "RGB+ED":  # expected depth: normalised by the accumulated alpha
            img = torch.cat([img[..., :n_color], img[..., n_color:] / acc[..., None].clamp_min(1e-10)], dim=-1)
        if backgrounds is not None:
            img = torch.cat([img[..., :n_color] + (1 - acc)[..., None] * backgrounds[ci], img[..., n_color:]], -1)
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
    if rasterize_mode == "antialiased":
        meta["compensations"] = compensations
    if absgrads is not None:
        means2d.absgrad = absgrads  # filled in by the backward pass (as gsplat's CUDA backward does)
    return torch.stack(images), torch.stack(alphas), meta
