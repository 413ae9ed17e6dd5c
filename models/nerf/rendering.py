"""Volume rendering: weights, compositing, depth, camera rays and the hierarchical ray renderer.

Quadrature (Max 1995; Mildenhall et al. 2020). For samples ``i`` with density ``sigma_i`` over a bin of world
length ``delta_i``::

    tau_i   = sigma_i * delta_i                      optical thickness of the bin
    alpha_i = 1 - exp(-tau_i)                        opacity of the bin
    T_i     = exp(-sum_{j<i} tau_j) = prod_{j<i} (1 - alpha_j)     transmittance up to the bin
    w_i     = T_i * alpha_i                          sum_i w_i = 1 - T_after_last <= 1

The exclusive cumulative sum of ``tau`` is used (no products of many ``(1 - alpha)`` factors), and
``alpha = -expm1(-tau)`` stays accurate for tiny ``tau``.

Depth conventions: the renderer's ``depth`` is the ray parameter ``t`` (distance along the ray for unit
directions); sensors measure *z-depth*, the distance along the camera's optical (forward) axis ``f``. A point
``o + t d`` has z-depth ``t * dot(d, f)`` for any ``d`` (unit or not), hence ``z = t * z_scale`` with
``z_scale = dot(d, f)``; for camera-frame directions ``d = (x, y, 1)`` (unit z component) ``t`` *is* z-depth.
:func:`rays_from_camera` returns unit directions and their ``z_scale``, so ``t = z_depth / z_scale``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch
from jaxtyping import Float, Int

from models.nerf.sampling import gaussian_samples, occupancy_filter, require_generator, sample_pdf, stratified_samples

if TYPE_CHECKING:
    from models.nerf.occupancy import OccupancyGrid

Tensor = torch.Tensor


@runtime_checkable
class RadianceField(Protocol):
    """What :func:`render_rays` needs: ``field(x [k, 3], d [k, 3]) -> (rgb [k, 3], sigma [k])``.

    A ``density(x [k, 3]) -> [k]`` method, when present, is used where colour is not needed.
    """

    def __call__(
        self, x: Float[Tensor, "k 3"], d: Float[Tensor, "k 3"]
    ) -> tuple[Float[Tensor, "k 3"], Float[Tensor, " k"]]: ...


@dataclass(frozen=True)
class RenderOutput:
    """What :func:`render_rays` returns for ``n`` rays of ``s = n_coarse + n_fine`` bins each.

    Ray parameters ``t`` (depths, bin edges) are in units of ``|rays_d|``: world units for unit directions.

    Attributes:
        rgb: ``[n, 3]`` composited colour, plus ``(1 - opacity) * background`` when a background is given.
        depth: ``[n]`` expected ``t`` of the termination point, normalised by the opacity.
        depth_var: ``[n]`` variance of ``t`` about ``depth`` under the weights (normalised), units of ``t`` squared.
        opacity: ``[n]`` ``sum_i w_i`` in ``[0, 1]``.
        weights: ``[n, s]`` compositing weights of the final bins (for losses).
        t_starts, t_ends: ``[n, s]`` edges of the final bins.
        n_evaluated: Network evaluations, those of the coarse pass included.
        n_samples: Evaluations there would have been without the occupancy grid.
        weights_coarse: ``[n, n_coarse]`` weights of the coarse pass (no gradient); ``None`` unless ``n_fine > 0``
            and no guide.
        t_starts_coarse, t_ends_coarse: ``[n, n_coarse]`` the coarse bins; ``None`` when ``weights_coarse`` is.
        z_depth: ``[n]`` ``depth * z_scale``, the z-depth for unit directions; ``None`` unless ``z_scale`` is given.
    """

    rgb: Float[Tensor, "n 3"]
    depth: Float[Tensor, " n"]
    depth_var: Float[Tensor, " n"]
    opacity: Float[Tensor, " n"]
    weights: Float[Tensor, "n s"]
    t_starts: Float[Tensor, "n s"]
    t_ends: Float[Tensor, "n s"]
    n_evaluated: int
    n_samples: int
    weights_coarse: Float[Tensor, "n n_coarse"] | None = None
    t_starts_coarse: Float[Tensor, "n n_coarse"] | None = None
    t_ends_coarse: Float[Tensor, "n n_coarse"] | None = None
    z_depth: Float[Tensor, " n"] | None = None


__all__ = [
    "RadianceField",
    "RenderOutput",
    "accumulated_opacity",
    "composite",
    "depth_variance",
    "dilate_weights",
    "expected_depth",
    "ray_distance_to_z",
    "rays_from_camera",
    "render_rays",
    "render_weights",
    "z_to_ray_distance",
]


# ------------------------------------------------------------------------------------------- quadrature


def render_weights(
    sigma: Float[Tensor, "*batch s"], deltas: Float[Tensor, "*batch s"]
) -> tuple[Float[Tensor, "*batch s"], Float[Tensor, "*batch s"]]:
    """Per-sample compositing weights.

    Args:
        sigma: ``[..., n_samples]`` densities (>= 0).
        deltas: ``[..., n_samples]`` bin lengths in world units.

    Returns:
        weights: ``[..., n_samples]`` ``T_i * alpha_i``.
        transmittance: ``[..., n_samples]`` ``T_i``, the light reaching bin ``i`` (``T_0 = 1``).
    """
    tau = sigma * deltas
    alpha = -torch.expm1(-tau)
    excl = torch.cumsum(tau, dim=-1) - tau  # sum_{j<i} tau_j
    transmittance = torch.exp(-excl)
    return transmittance * alpha, transmittance


def composite(weights: Float[Tensor, "*batch s"], values: Float[Tensor, "*batch s c"]) -> Float[Tensor, "*batch c"]:
    """``sum_i w_i v_i``: ``weights [..., s]``, ``values [..., s, c]`` -> ``[..., c]``."""
    return torch.einsum("...s,...sc->...c", weights, values)


def accumulated_opacity(weights: Float[Tensor, "*batch s"]) -> Float[Tensor, "*batch"]:
    """``sum_i w_i = 1 - transmittance after the last sample``: ``[..., s]`` -> ``[...]``."""
    return weights.sum(dim=-1)


def expected_depth(
    weights: Float[Tensor, "*batch s"], t_mid: Float[Tensor, "*batch s"], normalize: bool = True, eps: float = 1e-10
) -> Float[Tensor, "*batch"]:
    """Expected ray parameter of the termination point.

    Args:
        weights: ``[..., s]``.
        t_mid: ``[..., s]`` sample positions.
        normalize: Divide by the opacity (depth of the visible surface, independent of how opaque it is);
            otherwise ``sum_i w_i t_i`` (transparent rays tend to 0).
        eps: Guards the division for empty rays.

    Returns:
        ``[...]``.
    """
    d = (weights * t_mid).sum(dim=-1)
    return d / accumulated_opacity(weights).clamp_min(eps) if normalize else d


def depth_variance(
    weights: Float[Tensor, "*batch s"],
    t_mid: Float[Tensor, "*batch s"],
    depth: Float[Tensor, "*batch"],
    normalize: bool = True,
    eps: float = 1e-10,
) -> Float[Tensor, "*batch"]:
    """``sum_i w_i (t_i - depth)^2`` (divided by the opacity if ``normalize``): ``[..., s]`` -> ``[...]``."""
    v = (weights * (t_mid - depth[..., None]) ** 2).sum(dim=-1)
    return v / accumulated_opacity(weights).clamp_min(eps) if normalize else v


def dilate_weights(weights: Float[Tensor, "*batch s"]) -> Float[Tensor, "*batch s"]:
    """mip-NeRF's 2-tap max then 2-tap blur of per-bin weights, ``[..., s]`` -> ``[..., s]``.

    A coarse sample only sees the density at its bin's midpoint, so a surface in the first half of a bin is
    credited to the *next* bin; spreading half of each bin's weight to its neighbours lets the fine samples
    reach the bin that really holds the surface.
    """
    padded = torch.cat([weights[..., :1], weights, weights[..., -1:]], dim=-1)  # [..., s + 2]
    pair_max = torch.maximum(padded[..., :-1], padded[..., 1:])  # [..., s + 1]
    return 0.5 * (pair_max[..., :-1] + pair_max[..., 1:])


# ---------------------------------------------------------------------------------------- camera rays


def _z_scale(rays_d: Tensor, forward: Tensor) -> Tensor:
    return (rays_d * forward.to(rays_d).expand_as(rays_d)).sum(dim=-1)


def ray_distance_to_z(
    t: Float[Tensor, " n"], rays_d: Float[Tensor, "n 3"], forward: Float[Tensor, " 3"] | Float[Tensor, "n 3"]
) -> Float[Tensor, " n"]:
    """z-depth of the points at ray parameter ``t``: ``t * dot(d, f)``.

    Args:
        t: ``[n]`` ray parameters (distances if ``rays_d`` is unit).
        rays_d: ``[n, 3]`` world ray directions, any length.
        forward: ``[3]`` or ``[n, 3]`` the camera's unit optical axis in world coordinates (``c2w[:3, 2]``).

    Returns:
        ``[n]`` z-depth.
    """
    return t * _z_scale(rays_d, forward)


def z_to_ray_distance(
    z: Float[Tensor, " n"], rays_d: Float[Tensor, "n 3"], forward: Float[Tensor, " 3"] | Float[Tensor, "n 3"]
) -> Float[Tensor, " n"]:
    """Inverse of :func:`ray_distance_to_z`: ``z / dot(d, f)``, ``[n]`` -> ``[n]``."""
    return z / _z_scale(rays_d, forward)


def rays_from_camera(
    K: Float[Tensor, "3 3"] | Float[np.ndarray, "3 3"],
    c2w: Float[Tensor, "4 4"] | Float[np.ndarray, "4 4"],
    height: int,
    width: int,
    pixel_indices: Int[Tensor, " n"] | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Float[Tensor, "n 3"], Float[Tensor, "n 3"], Float[Tensor, " n"]]:
    """World rays through pixel centres (OpenCV axes, pixel ``(u, v)`` centred at integer coordinates).

    Args:
        K: ``[3, 3]`` intrinsics (tensor or array).
        c2w: ``[4, 4]`` camera-to-world (tensor or array).
        height, width: Image size.
        pixel_indices: ``[n]`` flat row-major indices ``v * width + u``; ``None``: all ``height * width``
            pixels in row-major order.
        dtype: Output dtype.

    Returns:
        origins: ``[n, 3]`` the camera centre.
        directions: ``[n, 3]`` unit world directions.
        z_scale: ``[n]`` ``dot(direction, camera forward)`` in ``(0, 1]``: ``t = z_depth / z_scale``.
    """
    c2w_t = torch.as_tensor(c2w)
    device = c2w_t.device
    K_t = torch.as_tensor(K, device=device).to(torch.float64)
    c2w_t = c2w_t.to(torch.float64)
    if pixel_indices is None:
        pixel_indices = torch.arange(height * width, device=device)
    pixel_indices = torch.as_tensor(pixel_indices, device=device).long().reshape(-1)
    v = torch.div(pixel_indices, width, rounding_mode="floor").to(torch.float64)
    u = (pixel_indices % width).to(torch.float64)
    cam = torch.stack([(u - K_t[0, 2]) / K_t[0, 0], (v - K_t[1, 2]) / K_t[1, 1], torch.ones_like(u)], dim=-1)
    d = cam @ c2w_t[:3, :3].T  # [n, 3], z component (camera frame) 1
    norm = d.norm(dim=-1, keepdim=True)
    directions = d / norm
    z_scale = 1.0 / norm[:, 0]  # dot(d / |d|, f) with dot(d, f) = 1
    origins = c2w_t[:3, 3].expand_as(directions)
    return origins.to(dtype).contiguous(), directions.to(dtype), z_scale.to(dtype)


# ------------------------------------------------------------------------------------------ renderer


def _density_fn(field: RadianceField) -> Callable[[Tensor, Tensor], Tensor]:
    """``(x [k,3], d [k,3]) -> sigma [k]``: the field's ``density`` method if it has one."""
    density = getattr(field, "density", None)
    if density is not None:
        return lambda x, d: density(x)
    return lambda x, d: field(x, d)[1]


def _evaluate(
    fn: Callable[[Tensor, Tensor], Any], x: Tensor, d: Tensor, mask: Tensor, with_rgb: bool
) -> tuple[Tensor | None, Tensor]:
    """Evaluate ``fn`` only where ``mask`` (``[n, s]``) is True; zeros (sigma and rgb) elsewhere.

    ``x``, ``d``: ``[n, s, 3]``. Returns ``rgb [n, s, 3]`` (or None) and ``sigma [n, s]``.
    """
    sigma = torch.zeros(mask.shape, device=x.device, dtype=x.dtype)
    rgb = torch.zeros(*mask.shape, 3, device=x.device, dtype=x.dtype) if with_rgb else None
    if bool(mask.any()):
        out = fn(x[mask], d[mask])
        if with_rgb:
            rgb_k, sigma_k = out
            rgb = rgb.masked_scatter(mask[..., None], rgb_k.to(x.dtype))  # type: ignore[union-attr]
        else:
            sigma_k = out
        sigma = sigma.masked_scatter(mask, sigma_k.to(x.dtype))
    return rgb, sigma


def _evaluate_front_to_back(
    fn: Callable[[Tensor, Tensor], Any],
    x: Tensor,
    d: Tensor,
    mask: Tensor,
    deltas: Tensor,
    with_rgb: bool,
    stop_below: float,
    segments: int,
) -> tuple[Tensor | None, Tensor, Tensor]:
    """:func:`_evaluate` with early ray termination: the samples are evaluated in ``segments`` groups from
    front to back, and a ray whose transmittance has fallen below ``stop_below`` evaluates no further
    samples (they get sigma 0; their weights would have been below ``stop_below`` in total).

    ``deltas``: ``[n, s]`` bin lengths in world units. Returns ``rgb``, ``sigma`` and the ``[n, s]`` mask of
    the samples actually evaluated.
    """
    n, s = mask.shape
    sigma = torch.zeros(mask.shape, device=x.device, dtype=x.dtype)
    rgb = torch.zeros(*mask.shape, 3, device=x.device, dtype=x.dtype) if with_rgb else None
    evaluated = torch.zeros_like(mask)
    tau = torch.zeros(n, device=x.device, dtype=x.dtype)  # optical depth in front of the segment
    tau_stop = -math.log(stop_below)
    bounds = torch.linspace(0, s, segments + 1).round().long().tolist()
    for a, b in itertools.pairwise(bounds):
        if b <= a:
            continue
        m = mask[:, a:b] & (tau < tau_stop)[:, None]
        evaluated[:, a:b] = m
        rgb_seg, sigma_seg = _evaluate(fn, x[:, a:b], d[:, a:b], m, with_rgb)
        sigma[:, a:b] = sigma_seg
        if with_rgb:
            rgb[:, a:b] = rgb_seg  # type: ignore[index]
        tau = tau + (sigma_seg * deltas[:, a:b]).sum(dim=-1)
        if not bool((tau < tau_stop).any()):
            break
    return rgb, sigma, evaluated


def _evaluate_pass(
    fn: Callable[[Tensor, Tensor], Any],
    x: Tensor,
    d: Tensor,
    keep: Tensor,
    deltas: Tensor,
    with_rgb: bool,
    stop_below: float,
) -> tuple[Tensor | None, Tensor, int]:
    """One pass of the renderer: early ray termination where no gradient is needed (renders, the coarse
    pass) and ``stop_below > 0``; every kept sample otherwise. Returns rgb, sigma and the evaluation count."""
    if stop_below > 0 and not torch.is_grad_enabled():
        rgb, sigma, evaluated = _evaluate_front_to_back(fn, x, d, keep, deltas, with_rgb, stop_below, 4)
        return rgb, sigma, int(evaluated.sum())
    rgb, sigma = _evaluate(fn, x, d, keep, with_rgb)
    return rgb, sigma, int(keep.sum())


def _fine_edges(
    field: RadianceField,
    rays_o: Tensor,
    rays_d: Tensor,
    near: Tensor,
    far: Tensor,
    t_starts_c: Tensor,
    t_ends_c: Tensor,
    n_fine: int,
    occupancy: OccupancyGrid | None,
    perturb: bool,
    generator: torch.Generator | None,
    guide: tuple[Tensor, Tensor] | None,
    stop_below: float,
) -> tuple[Tensor, Tensor | None, int]:
    """Bin edges ``[n, n_coarse + n_fine + 1]``: the coarse bins refined by ``n_fine`` extra edges, drawn from the
    guide's truncated normal when given, otherwise from the coarse pass's weights (evaluated here, density
    only, without autograd). Also returns those weights ``[n, n_coarse]`` (``None`` with a guide) and the
    coarse pass's network evaluations."""
    bins_c = torch.cat([t_starts_c, t_ends_c[:, -1:]], dim=-1)  # [n, n_coarse + 1]
    weights_c, n_eval = None, 0
    with torch.no_grad():
        if guide is not None:
            t_fine = gaussian_samples(guide[0], guide[1], near, far, n_fine, not perturb, generator)
        else:
            d_len = rays_d.norm(dim=-1, keepdim=True)
            t_mid_c = 0.5 * (t_starts_c + t_ends_c)
            keep_c = occupancy_filter(rays_o, rays_d, t_mid_c, occupancy)
            x_c = rays_o[:, None, :] + t_mid_c[..., None] * rays_d[:, None, :]
            deltas_c = (t_ends_c - t_starts_c) * d_len
            _, sigma_c, n_eval = _evaluate_pass(_density_fn(field), x_c, rays_d[:, None, :].expand_as(x_c), keep_c,
                                                deltas_c, False, stop_below)
            weights_c, _ = render_weights(sigma_c, deltas_c)
            t_fine = sample_pdf(
                bins_c, dilate_weights(weights_c), n_fine, deterministic=not perturb, generator=generator
            )
        return torch.sort(torch.cat([bins_c, t_fine], dim=-1), dim=-1).values, weights_c, n_eval


def _render_chunk(
    field: RadianceField,
    rays_o: Tensor,
    rays_d: Tensor,
    near: Tensor,
    far: Tensor,
    n_coarse: int,
    n_fine: int,
    occupancy: OccupancyGrid | None,
    perturb: bool,
    generator: torch.Generator | None,
    guide: tuple[Tensor, Tensor] | None = None,
    stop_below: float = 0.0,
) -> RenderOutput:
    """:func:`render_rays` on one chunk of rays, without the background and the z-depth."""
    d_len = rays_d.norm(dim=-1, keepdim=True)  # world length per unit of t
    t_starts_c, t_ends_c = stratified_samples(rays_o, rays_d, near, far, n_coarse, perturb, generator)
    weights_c, n_eval_c = None, 0
    if n_fine > 0:
        edges, weights_c, n_eval_c = _fine_edges(field, rays_o, rays_d, near, far, t_starts_c, t_ends_c, n_fine,
                                                 occupancy, perturb, generator, guide, stop_below)
        t_starts, t_ends = edges[:, :-1], edges[:, 1:]
    else:
        t_starts, t_ends = t_starts_c, t_ends_c

    t_mid = 0.5 * (t_starts + t_ends)
    keep = occupancy_filter(rays_o, rays_d, t_mid, occupancy)
    x = rays_o[:, None, :] + t_mid[..., None] * rays_d[:, None, :]  # [n, s, 3]
    deltas = (t_ends - t_starts) * d_len
    rgb_s, sigma, n_eval = _evaluate_pass(field, x, rays_d[:, None, :].expand_as(x), keep, deltas, True, stop_below)
    assert rgb_s is not None  # with_rgb=True
    weights, _ = render_weights(sigma, deltas)
    depth = expected_depth(weights, t_mid)
    coarse = weights_c is not None
    return RenderOutput(
        rgb=composite(weights, rgb_s),
        depth=depth,
        depth_var=depth_variance(weights, t_mid, depth),
        opacity=accumulated_opacity(weights),
        weights=weights,
        t_starts=t_starts,
        t_ends=t_ends,
        n_evaluated=n_eval_c + n_eval,
        n_samples=(t_starts_c.numel() if coarse else 0) + keep.numel(),
        weights_coarse=weights_c,
        t_starts_coarse=t_starts_c if coarse else None,
        t_ends_coarse=t_ends_c if coarse else None,
    )


def _join_chunks(parts: Sequence[RenderOutput]) -> RenderOutput:
    """The chunks' outputs as one, in ray order: tensors concatenated along the rays, counters summed."""
    if len(parts) == 1:
        return parts[0]
    joined: dict[str, Any] = {}
    for f in dataclasses.fields(RenderOutput):
        values = [getattr(p, f.name) for p in parts]
        if values[0] is None:
            joined[f.name] = None
        elif isinstance(values[0], Tensor):
            joined[f.name] = torch.cat(values, dim=0)
        else:
            joined[f.name] = sum(values)
    return RenderOutput(**joined)


def render_rays(
    field: RadianceField,
    rays_o: Float[Tensor, "n 3"],
    rays_d: Float[Tensor, "n 3"],
    near: Float[Tensor, " n"] | float,
    far: Float[Tensor, " n"] | float,
    *,
    n_coarse: int = 64,
    n_fine: int = 64,
    occupancy: OccupancyGrid | None = None,
    perturb: bool = False,
    chunk: int = 4096,
    background: Float[Tensor, " 3"] | Float[Tensor, "n 3"] | None = None,
    z_scale: Float[Tensor, " n"] | None = None,
    generator: torch.Generator | None = None,
    guide: tuple[Float[Tensor, " n"], Float[Tensor, " n"]] | None = None,
    stop_below: float = 0.0,
) -> RenderOutput:
    """Render rays hierarchically with empty-space skipping (and optional early ray termination).

    1. ``n_coarse`` stratified bins over ``[near, far]``; samples whose midpoint lies in an empty cell of
       ``occupancy`` get sigma 0 and are *not* passed to the network; the others are evaluated with
       ``field.density`` (no autograd).
    2. ``n_fine`` inverse-CDF samples from the coarse weights (dilated by :func:`dilate_weights`) are
       inserted as extra bin edges, giving ``n_coarse + n_fine`` bins that still tile ``[near, far]``,
       finest where the coarse pass saw matter (``n_fine = 0`` skips the coarse pass). With a depth ``guide``
       the coarse pass is skipped and the ``n_fine`` edges follow the guide's normal instead
       (:func:`models.nerf.sampling.gaussian_samples`; depth-guided sampling for training rays).
    3. The field gives colour and density at those bins' midpoints (again only in occupied cells); the
       result is composited. Gradients flow through this pass only.

    With ``stop_below > 0``, passes without autograd (the coarse pass, and every pass of a render under
    ``torch.no_grad``) evaluate their samples front to back in four groups and stop a ray once its
    transmittance is below ``stop_below`` (early ray termination; the skipped samples carry less than
    ``stop_below`` of the weight). With autograd on, every sample in an occupied cell is evaluated, so gradients
    are exact. Off by default: on CPU with a warmed occupancy grid it removed under 0.1 % of the evaluations and did not
    make renders measurably faster (``benchmarks/bench_kitchen.py``).

    Args:
        field: ``field(x [k, 3], d [k, 3]) -> (rgb [k, 3], sigma [k])``; ``field.density(x) -> [k]`` is used
            for the coarse pass when present. E.g. a :class:`models.nerf.field.NeRFField`.
        rays_o: ``[n, 3]`` origins.
        rays_d: ``[n, 3]`` directions; ``t`` is in units of their length (densities are per world unit).
        near, far: ``[n]`` or scalars (e.g. from :func:`models.nerf.sampling.ray_aabb_intersect`); ``far`` is
            raised to ``near`` where smaller, so rays that miss the scene box render empty.
        n_coarse, n_fine: Samples per ray of each pass.
        occupancy: An :class:`models.nerf.occupancy.OccupancyGrid` or ``None``.
        perturb: Jitter the coarse bins and draw the fine samples at random (training); otherwise both are
            deterministic.
        chunk: Rays per batch, bounding peak memory.
        background: ``[3]`` or ``[n, 3]`` colour behind the scene; ``None`` = black.
        z_scale: ``[n]`` ``dot(unit d, camera forward)``; when given, ``z_depth = depth * z_scale`` is added
            (assumes unit ``rays_d``).
        generator: For the jitter and the fine samples; required with ``perturb`` (no global RNG is used).
        guide: ``(center [n], std [n])`` in units of ``t``: where the surface is expected (``center <= 0``:
            unknown, the fine edges are then uniform) and how sure that is.
        stop_below: Transmittance at which ray marching stops where no gradient is needed; 0 = never.

    Returns:
        A :class:`RenderOutput`: colour, depth and opacity per ray, the final bins and their weights (for losses),
        the coarse pass's (if ``n_fine > 0`` and no guide), the z-depth (if ``z_scale``) and the evaluation counts.
    """
    if perturb:
        require_generator(generator, "render_rays(perturb=True)")
    n = rays_o.shape[0]
    near_t = torch.as_tensor(near, device=rays_o.device, dtype=rays_o.dtype)
    far_t = torch.as_tensor(far, device=rays_o.device, dtype=rays_o.dtype)
    near_t = near_t.reshape(-1).expand(n) if near_t.numel() == 1 else near_t.reshape(n)
    far_t = far_t.reshape(-1).expand(n) if far_t.numel() == 1 else far_t.reshape(n)
    far_t = torch.maximum(far_t, near_t)

    parts = [
        _render_chunk(
            field,
            rays_o[i : i + chunk],
            rays_d[i : i + chunk],
            near_t[i : i + chunk],
            far_t[i : i + chunk],
            n_coarse,
            n_fine,
            occupancy,
            perturb,
            generator,
            None if guide is None else (guide[0][i : i + chunk], guide[1][i : i + chunk]),
            stop_below,
        )
        for i in range(0, max(n, 1), chunk)
    ]
    out = _join_chunks(parts)
    rgb, z_depth = out.rgb, None
    if background is not None:
        bg = torch.as_tensor(background, device=rays_o.device, dtype=out.rgb.dtype)
        rgb = out.rgb + (1.0 - out.opacity)[:, None] * bg.expand_as(out.rgb)
    if z_scale is not None:
        z_depth = out.depth * torch.as_tensor(z_scale, device=rays_o.device, dtype=out.depth.dtype)
    return dataclasses.replace(out, rgb=rgb, z_depth=z_depth)
