"""Auxiliary losses of the depth-refinement diffusion model, computed on its x0 estimate.

Every loss compares a predicted depth-like map with a reference under a validity mask; pixels outside the
mask (sensor holes, missing reference) never contribute, neither to the value nor to the gradient, and an
empty mask gives a loss of exactly 0 (not NaN). The diffusion MSE itself is computed by the trainer.

Shapes: maps are ``[B, 1, H, W]`` (most functions also accept ``C > 1`` channels); masks are ``[B, 1, H, W]``
bool or float (``> 0.5`` = valid). Depth-like maps are z-depth in metres or any global rescaling of it
(e.g. ``d / median(d)``), so that the normal term is meaningful; the structural terms only need the values
to be in a range consistent with ``data_range``.

Conventions follow :mod:`models.camera`: pixel ``(u, v)`` has its centre at integer coordinates, ``u`` to the
right (last axis), ``v`` down; camera axes x right, y down, z forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Shaped

from models.diffusion.config import LossWeights

Tensor = torch.Tensor

# Small constants: the clamp keeps 1/z finite at holes (z = 0); the SSIM constants follow Wang et al. 2004.
_MIN_DEPTH = 1e-6
_SSIM_K1, _SSIM_K2 = 0.01, 0.03


# ---------------------------------------------------------------------------------------------- helpers


def _as_bool(mask: Tensor) -> Tensor:
    """A bool mask from a bool or float (``> 0.5`` = valid) one, same shape."""
    return mask if mask.dtype == torch.bool else mask > 0.5


def masked_mean(x: Float[Tensor, "b c h w"], mask: Shaped[Tensor, " b #c h w"]) -> Float[Tensor, ""]:
    """Mean of ``x`` over valid pixels; 0 when there are none.

    Values outside the mask are replaced (not multiplied) by zero, so NaN/inf there cannot leak into the
    result or its gradient.

    Args:
        x: ``[B, C, H, W]`` values.
        mask: ``[B, 1, H, W]`` or ``[B, C, H, W]`` validity, broadcast over channels.

    Returns:
        Scalar tensor.
    """
    m = _as_bool(mask).expand_as(x)
    total = torch.where(m, x, torch.zeros_like(x)).sum()
    count = m.sum().clamp_min(1).to(x.dtype)
    return total / count


def erode_mask(mask: Shaped[Tensor, "b 1 h w"], radius: int = 1) -> Bool[Tensor, "b 1 h w"]:
    """Pixels whose whole ``(2 radius + 1)^2`` neighbourhood is valid and inside the image.

    Args:
        mask: ``[B, 1, H, W]`` bool/float validity.
        radius: Neighbourhood half-size in pixels (1 = 3x3).

    Returns:
        Bool mask ``[B, 1, H, W]``; outside the image counts as invalid, so the border band is dropped.
    """
    invalid = (~_as_bool(mask)).to(torch.float32)
    invalid = F.pad(invalid, (radius,) * 4, value=1.0)
    return F.max_pool2d(invalid, kernel_size=2 * radius + 1, stride=1) == 0


def _min_pool2(mask: Tensor) -> Tensor:
    """Halve a bool mask ``[B, 1, H, W]`` -> ``[B, 1, H//2, W//2]``: valid iff all four children are valid."""
    invalid = (~_as_bool(mask)).to(torch.float32)
    return F.max_pool2d(invalid, kernel_size=2) == 0


def _per_sample(value: float | Tensor, like: Tensor) -> Tensor:
    """A scalar or per-sample ``[B]`` value as a ``[B or 1, 1, 1, 1]`` tensor matching ``like``'s dtype/device."""
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    return t.reshape(-1, 1, 1, 1)


# ------------------------------------------------------------------------------------------- gradients


def sobel(x: Float[Tensor, "b c h w"]) -> tuple[Float[Tensor, "b c h w"], Float[Tensor, "b c h w"]]:
    """Image gradients with the unnormalised 3x3 Sobel kernels and replicate padding.

    ``gx`` uses ``[[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]`` (derivative along ``u``, the last axis) and ``gy``
    its transpose (along ``v``). The kernels are not normalised: on a ramp of slope ``s`` per pixel the
    response is ``8 s``; divide by 8 for a per-pixel derivative.

    Args:
        x: ``[B, C, H, W]``.

    Returns:
        ``(gx, gy)``, each ``[B, C, H, W]`` (same units as ``x``, times 8 per pixel).
    """
    c = x.shape[1]
    smooth = torch.tensor([1.0, 2.0, 1.0], dtype=x.dtype, device=x.device)
    diff = torch.tensor([-1.0, 0.0, 1.0], dtype=x.dtype, device=x.device)
    kx = torch.outer(smooth, diff).expand(c, 1, 3, 3)
    ky = torch.outer(diff, smooth).expand(c, 1, 3, 3)
    xp = F.pad(x, (1, 1, 1, 1), mode="replicate")
    return F.conv2d(xp, kx, groups=c), F.conv2d(xp, ky, groups=c)


def sobel_magnitude(x: Float[Tensor, "b c h w"], eps: float = 1e-6) -> Float[Tensor, "b c h w"]:
    """``sqrt(gx^2 + gy^2 + eps)`` of :func:`sobel` (``eps`` keeps the gradient finite on flat areas).

    Args:
        x: ``[B, C, H, W]``.
        eps: Added under the square root.

    Returns:
        ``[B, C, H, W]``.
    """
    gx, gy = sobel(x)
    return torch.sqrt(gx * gx + gy * gy + eps)


def edge_loss(
    pred: Float[Tensor, "b 1 h w"], target: Float[Tensor, "b 1 h w"], mask: Shaped[Tensor, "b 1 h w"]
) -> Float[Tensor, ""]:
    """L1 distance between the Sobel gradients of ``pred`` and ``target``.

    ``gx`` and ``gy`` are compared separately (``|dgx| + |dgy|``), so an edge in the wrong direction or at
    the wrong place costs, not just one of the wrong strength. Only pixels whose 3x3 neighbourhood is fully
    valid count (the mask is eroded), so no Sobel response there touches a hole.

    Args:
        pred: ``[B, 1, H, W]`` predicted depth-like map.
        target: ``[B, 1, H, W]`` reference.
        mask: ``[B, 1, H, W]`` validity.

    Returns:
        Scalar: mean over interior valid pixels, in units of the input times 8 per pixel (see :func:`sobel`).
    """
    inner = erode_mask(mask)
    pgx, pgy = sobel(pred)
    tgx, tgy = sobel(target)
    return masked_mean((pgx - tgx).abs() + (pgy - tgy).abs(), inner)


# ------------------------------------------------------------------------------------------------ SSIM


def _window_1d(window: int, gaussian: bool, sigma: float, like: Tensor) -> Tensor:
    """Normalised 1-D window of ``window`` taps: box, or a Gaussian of std ``sigma`` pixels."""
    if gaussian:
        r = torch.arange(window, dtype=like.dtype, device=like.device) - (window - 1) / 2
        w = torch.exp(-0.5 * (r / sigma) ** 2)
    else:
        w = torch.ones(window, dtype=like.dtype, device=like.device)
    return w / w.sum()


def _filter(x: Tensor, w1d: Tensor) -> Tensor:
    """Separable filtering of ``[B, C, H, W]`` with zero padding (same size)."""
    c, k = x.shape[1], w1d.numel()
    x = F.conv2d(x, w1d.reshape(1, 1, 1, k).expand(c, 1, 1, k), padding=(0, k // 2), groups=c)
    return F.conv2d(x, w1d.reshape(1, 1, k, 1).expand(c, 1, k, 1), padding=(k // 2, 0), groups=c)


def ssim_map(
    x: Float[Tensor, "b c h w"],
    y: Float[Tensor, "b c h w"],
    window: int = 7,
    data_range: float = 1.0,
    gaussian: bool = False,
    sigma: float = 1.5,
    mask: Shaped[Tensor, "b 1 h w"] | None = None,
) -> Float[Tensor, "b c h w"]:
    """Per-pixel SSIM (Wang et al. 2004) with local statistics over a box or Gaussian window.

    Local means, variances and covariance are normalised convolutions over the valid pixels of the window:
    pixels outside the image or outside ``mask`` are left out (not zero-filled), so holes never influence
    the statistics of their neighbours. With ``gaussian=False`` the variances use the sample-covariance
    factor ``N / (N - 1)`` (``N = window^2``), which matches ``skimage.metrics.structural_similarity`` with
    its defaults (``win_size=window``) away from the border; ``gaussian=True, window=11, sigma=1.5`` matches
    ``structural_similarity(..., gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``.

    Args:
        x: ``[B, C, H, W]``.
        y: ``[B, C, H, W]``.
        window: Odd window size in pixels.
        data_range: Dynamic range of the values (sets the stabilising constants ``(0.01 L)^2``, ``(0.03 L)^2``).
        gaussian: Gaussian instead of box window.
        sigma: Gaussian std in pixels (only with ``gaussian``).
        mask: Optional ``[B, 1, H, W]`` validity; values outside it are ignored.

    Returns:
        ``[B, C, H, W]`` SSIM in ``[-1, 1]`` (1 = identical); meaningless at invalid pixels.
    """
    if window % 2 != 1:
        raise ValueError(f"SSIM window must be odd, got {window}")
    m = torch.ones_like(x[:, :1]) if mask is None else _as_bool(mask).to(x.dtype)
    m = m.expand_as(x)
    zero = torch.zeros_like(x)
    valid = m > 0
    x = torch.where(valid, x, zero)
    y = torch.where(valid, y, zero)
    w1d = _window_1d(window, gaussian, sigma, x)
    den = _filter(m, w1d).clamp_min(1e-6)

    def local_mean(v: Tensor) -> Tensor:
        return _filter(v * m, w1d) / den

    mu_x, mu_y = local_mean(x), local_mean(y)
    cov_norm = 1.0 if gaussian else window * window / (window * window - 1.0)
    var_x = cov_norm * (local_mean(x * x) - mu_x * mu_x)
    var_y = cov_norm * (local_mean(y * y) - mu_y * mu_y)
    cov_xy = cov_norm * (local_mean(x * y) - mu_x * mu_y)
    c1 = (_SSIM_K1 * data_range) ** 2
    c2 = (_SSIM_K2 * data_range) ** 2
    num = (2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)
    den_ssim = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    return num / den_ssim


def ms_ssim_loss(
    pred: Float[Tensor, "b 1 h w"],
    target: Float[Tensor, "b 1 h w"],
    mask: Shaped[Tensor, "b 1 h w"],
    scales: int = 3,
    window: int = 7,
    data_range: float = 1.0,
) -> Float[Tensor, ""]:
    """``1 - mean SSIM`` over ``scales`` dyadic scales: a structural loss that needs no pretrained weights.

    At each scale the masked SSIM map (:func:`ssim_map` with ``mask``) is averaged over valid pixels; the
    images are then 2x average-pooled and the mask 2x min-pooled (a coarse pixel is valid only if all four
    children are). The scales are averaged with equal weights (not Wang et al.'s product of powers, which is
    ill-defined for negative SSIM); scales without valid pixels, or smaller than 2x2, are skipped.

    Args:
        pred: ``[B, 1, H, W]`` predicted depth-like map.
        target: ``[B, 1, H, W]`` reference.
        mask: ``[B, 1, H, W]`` validity.
        scales: Number of scales (1 = plain SSIM).
        window: Box window size in pixels at every scale.
        data_range: Dynamic range of the values (see :func:`ssim_map`).

    Returns:
        Scalar in ``[0, 2]``; 0 for identical inputs or an empty mask.
    """
    m = _as_bool(mask)
    zero = torch.zeros_like(pred)
    pred = torch.where(m, pred, zero)
    target = torch.where(m, target, zero)
    losses, weights = [], []
    for s in range(scales):
        if s > 0:
            if min(pred.shape[-2:]) < 4:
                break
            pred, target, m = F.avg_pool2d(pred, 2), F.avg_pool2d(target, 2), _min_pool2(m)
        ssim = ssim_map(pred, target, window=window, data_range=data_range, mask=m)
        losses.append(masked_mean(1.0 - ssim, m))
        weights.append(m.any().to(pred.dtype))
    w = torch.stack(weights)
    return (torch.stack(losses) * w).sum() / w.sum().clamp_min(1.0)


# --------------------------------------------------------------------------------------------- normals


def normals_from_depth(
    depth: Float[Tensor, "b 1 h w"],
    focal_px: float | Float[Tensor, " b"] = 1.0,
    principal_point: tuple[float, float] | Float[Tensor, "b 2"] | None = None,
) -> Float[Tensor, "b 3 h w"]:
    """Unit surface normals of a z-depth map seen by a pinhole camera.

    With ray ``r = ((u - cx) / f, (v - cy) / f, 1)`` the surface point is ``P = z r``; the cross product of
    its tangents ``dP/du x dP/dv``, scaled by ``f^2 / z^2``, is exactly::

        n ∝ (-g_u, -g_v, 1 + x g_u + y g_v),   g_u = f z_u / z,  g_v = f z_v / z,  x = (u-cx)/f,  y = (v-cy)/f

    Without ``principal_point`` the approximation ``x = y = 0`` (each pixel treated as if on the optical
    axis) gives ``n ∝ (-g_u, -g_v, 1)``; its error grows with the field angle (exact at the image centre).
    Either way only ``z_u / z`` and ``z_v / z`` enter, so the normals are invariant to a global depth scale.
    Derivatives are Sobel responses divided by 8 (per-pixel slope, smoothed across), replicate-padded; depth
    is clamped to ``>= 1e-6`` so holes (``z = 0``) give finite, meaningless normals (mask them out).

    Orientation: the normal points away from the camera (``n . P > 0``); a fronto-parallel plane gives
    ``(0, 0, 1)``. This is the opposite of :func:`models.camera.normals_from_depth` (towards the camera).

    Args:
        depth: ``[B, 1, H, W]`` z-depth (metres or any global rescaling).
        focal_px: Focal length in pixels at this resolution; a scalar or per-sample ``[B]``.
        principal_point: Optional ``(cx, cy)`` in pixels, or a per-sample ``[B, 2]`` tensor, for the exact
            formula.

    Returns:
        ``[B, 3, H, W]`` unit normals (camera axes).
    """
    f = _per_sample(focal_px, depth)
    z = depth.clamp_min(_MIN_DEPTH)
    zu, zv = sobel(z)
    gu = f * zu / (8.0 * z)
    gv = f * zv / (8.0 * z)
    nz = torch.ones_like(z)
    if principal_point is not None:
        pp = torch.as_tensor(principal_point, dtype=depth.dtype, device=depth.device).reshape(-1, 2)
        h, w = depth.shape[-2:]
        u = torch.arange(w, dtype=depth.dtype, device=depth.device).reshape(1, 1, 1, w)
        v = torch.arange(h, dtype=depth.dtype, device=depth.device).reshape(1, 1, h, 1)
        x = (u - pp[:, 0].reshape(-1, 1, 1, 1)) / f
        y = (v - pp[:, 1].reshape(-1, 1, 1, 1)) / f
        nz = nz + x * gu + y * gv
    n = torch.cat([-gu, -gv, nz], dim=1)
    return F.normalize(n, dim=1, eps=1e-12)


def normal_loss(
    pred: Float[Tensor, "b 1 h w"],
    target: Float[Tensor, "b 1 h w"],
    mask: Shaped[Tensor, "b 1 h w"],
    focal_px: float | Float[Tensor, " b"] = 1.0,
    principal_point: tuple[float, float] | Float[Tensor, "b 2"] | None = None,
) -> Float[Tensor, ""]:
    """Mean ``1 - cos`` of the angle between predicted and reference normals.

    Only pixels whose 3x3 neighbourhood is valid count (eroded mask), so normals never see a hole.

    Args:
        pred: ``[B, 1, H, W]`` predicted depth (metres or any global rescaling; must be positive where valid).
        target: ``[B, 1, H, W]`` reference depth, same units.
        mask: ``[B, 1, H, W]`` validity.
        focal_px: Focal length in pixels at this resolution, scalar or ``[B]``.
        principal_point: Optional ``(cx, cy)`` / ``[B, 2]`` for exact normals (see :func:`normals_from_depth`).

    Returns:
        Scalar in ``[0, 2]``.
    """
    inner = erode_mask(mask)
    n_pred = normals_from_depth(pred, focal_px, principal_point)
    n_target = normals_from_depth(target, focal_px, principal_point)
    cos = (n_pred * n_target).sum(dim=1, keepdim=True)
    return masked_mean(1.0 - cos, inner)


# ------------------------------------------------------------------------------------------------ total


def depth_refinement_loss(
    pred_x0: Float[Tensor, "b 1 h w"],
    target_x0: Float[Tensor, "b 1 h w"],
    mask: Shaped[Tensor, "b 1 h w"],
    weights: LossWeights,
    focal_px: float | Float[Tensor, " b"] = 1.0,
    principal_point: tuple[float, float] | Float[Tensor, "b 2"] | None = None,
    ssim_scales: int = 3,
    data_range: float = 1.0,
) -> dict[str, Float[Tensor, ""]]:
    """The auxiliary (non-MSE) losses on an x0 estimate and their weighted sum.

    Args:
        pred_x0: ``[B, 1, H, W]`` predicted depth, decoded to positive depth (metres, or scale-free such as
            ``d / median`` = ``exp(log_scale * y)``; normals need ``z > 0`` with the true offset).
        target_x0: ``[B, 1, H, W]`` reference depth, same units.
        mask: ``[B, 1, H, W]`` validity of the reference.
        weights: Term weights (``mse`` is not used here).
        focal_px: Focal length in pixels at this resolution, scalar or ``[B]``.
        principal_point: Optional ``(cx, cy)`` / ``[B, 2]`` for exact normals.
        ssim_scales: Scales of :func:`ms_ssim_loss`.
        data_range: SSIM dynamic range in the units of the depth maps.

    Returns:
        ``{"edge", "ssim", "normal", "total_aux"}`` scalar tensors; ``total_aux`` is the weighted sum.
    """
    out = {
        "edge": edge_loss(pred_x0, target_x0, mask),
        "ssim": ms_ssim_loss(pred_x0, target_x0, mask, scales=ssim_scales, data_range=data_range),
        "normal": normal_loss(pred_x0, target_x0, mask, focal_px, principal_point),
    }
    out["total_aux"] = weights.edge * out["edge"] + weights.ssim * out["ssim"] + weights.normal * out["normal"]
    return out
