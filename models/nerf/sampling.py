"""Sample placement along rays: stratified bins, inverse-CDF (importance) sampling, box clipping and
empty-space filtering. Plain functions; ray parameters ``t`` are in units of ``|rays_d|`` (distances for unit
directions), a sample at ``t`` is the point ``rays_o + t * rays_d``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from jaxtyping import Bool, Float

if TYPE_CHECKING:  # only for annotations: sampling does not depend on the grid's module at runtime
    from models.nerf.occupancy import OccupancyGrid

Tensor = torch.Tensor

__all__ = ["gaussian_samples", "near_far", "occupancy_filter", "ray_aabb_intersect", "sample_pdf", "stratified_samples"]


def require_generator(generator: torch.Generator | None, what: str) -> torch.Generator:
    """``generator``, or a ValueError: random draws come from an explicit generator, never the global RNG (so
    two fits in two threads cannot take each other's numbers)."""
    if generator is None:
        raise ValueError(f"{what} draws random numbers: pass an explicit torch.Generator (the global RNG is not used)")
    return generator


def _per_ray(v: Tensor | float, like: Tensor) -> Tensor:
    """A scalar or ``[n]`` / ``[n, 1]`` value as ``[n]`` on ``like``'s device and dtype."""
    v = torch.as_tensor(v, device=like.device, dtype=like.dtype)
    return v.reshape(-1).expand(like.shape[0]) if v.numel() == 1 else v.reshape(like.shape[0])


def stratified_samples(
    rays_o: Float[Tensor, "n 3"],
    rays_d: Float[Tensor, "n 3"],
    near: Float[Tensor, " n"] | float,
    far: Float[Tensor, " n"] | float,
    n_samples: int,
    perturb: bool,
    generator: torch.Generator | None = None,
) -> tuple[Float[Tensor, "n s"], Float[Tensor, "n s"]]:
    """Cut ``[near, far]`` of every ray into ``n_samples`` contiguous bins.

    Without ``perturb`` the bins are equal. With it, each interior edge is drawn uniformly between the
    midpoints of its neighbouring equal bins (the edges stay sorted, the bins still tile ``[near, far]``
    exactly), so bin midpoints -- the sample positions -- cover the ray continuously over iterations.

    Args:
        rays_o: ``[n, 3]`` origins (only device / dtype / batch size are used).
        rays_d: ``[n, 3]`` directions.
        near, far: ``[n]`` or scalars, ray parameters of the interval.
        n_samples: Bins per ray.
        perturb: Jitter the interior edges.
        generator: For the jitter (required with ``perturb``).

    Returns:
        t_starts, t_ends: ``[n, n_samples]``; ``t_ends[:, i] == t_starts[:, i + 1]``.
    """
    del rays_d
    n = rays_o.shape[0]
    near_t, far_t = _per_ray(near, rays_o), _per_ray(far, rays_o)
    s = torch.linspace(0.0, 1.0, n_samples + 1, device=rays_o.device, dtype=rays_o.dtype).expand(n, -1)
    if perturb:
        require_generator(generator, "stratified_samples(perturb=True)")
    if perturb and n_samples > 1:
        mids = 0.5 * (s[:, 1:] + s[:, :-1])  # [n, m]
        lo, hi = mids[:, :-1], mids[:, 1:]  # around interior edges 1 .. m-1
        u = torch.rand(lo.shape, device=rays_o.device, dtype=rays_o.dtype, generator=generator)
        s = torch.cat([s[:, :1], lo + (hi - lo) * u, s[:, -1:]], dim=-1)
    edges = near_t[:, None] + (far_t - near_t)[:, None] * s  # [n, m + 1]
    return edges[:, :-1].contiguous(), edges[:, 1:].contiguous()


@torch.no_grad()
def sample_pdf(
    bins: Float[Tensor, "n e"],
    weights: Float[Tensor, "n m"],
    n_samples: int,
    deterministic: bool,
    generator: torch.Generator | None = None,
    eps: float = 1e-5,
) -> Float[Tensor, "n k"]:
    """Inverse-CDF samples from the piecewise-constant density that puts mass ``weights`` in each bin.

    The pdf is ``(max(w, 0) + eps) / sum`` per bin (``eps`` keeps the CDF strictly increasing, so a ray with all
    weights 0 samples uniformly), the CDF ``cdf [n, m+1]`` starts at exactly 0 and ends at exactly 1. Each
    ``u`` is located in the *whole* CDF row with ``searchsorted`` and mapped linearly inside its bin.

    ``u`` is stratified: ``u_k = (k + xi_k) / n_samples`` with ``xi_k ~ U[0, 1)``, or ``xi_k = 1/2`` when
    ``deterministic`` (the CDF's quantiles at probabilities ``(k + 1/2) / n_samples``). With one sample per ray
    the random samples are i.i.d. from the pdf.

    Args:
        bins: ``[n, m + 1]`` sorted bin edges.
        weights: ``[n, m]`` non-negative bin weights (any scale).
        n_samples: Samples per ray.
        deterministic: Use quantiles instead of random draws.
        generator: For the draws (required unless ``deterministic``).
        eps: Weight added to every bin.

    Returns:
        ``[n, n_samples]`` sorted samples in ``[bins[:, 0], bins[:, -1]]`` (no gradient).
    """
    n, m = weights.shape
    if bins.shape != (n, m + 1):
        raise ValueError(f"bins must be [n, m + 1] = [{n}, {m + 1}], got {list(bins.shape)}")
    w = weights.float().clamp_min(0.0) + eps
    pdf = w / w.sum(dim=-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, dim=-1)], dim=-1)  # [n, m + 1]
    cdf[:, -1] = 1.0
    cdf = torch.minimum(cdf, torch.ones_like(cdf))

    k = torch.arange(n_samples, device=weights.device, dtype=cdf.dtype)
    if deterministic:
        xi = torch.full((n, n_samples), 0.5, device=weights.device, dtype=cdf.dtype)
    else:
        generator = require_generator(generator, "sample_pdf(deterministic=False)")
        xi = torch.rand(n, n_samples, device=weights.device, dtype=cdf.dtype, generator=generator)
    u = ((k + xi) / n_samples).clamp(0.0, 1.0 - 1e-7).contiguous()  # [n, k], sorted along the row

    idx = torch.searchsorted(cdf, u, right=True)  # [n, k] in [1, m]: cdf[idx - 1] <= u < cdf[idx]
    below = (idx - 1).clamp(0, m - 1)
    above = below + 1
    cdf0, cdf1 = cdf.gather(1, below), cdf.gather(1, above)
    b = bins.to(cdf.dtype)
    b0, b1 = b.gather(1, below), b.gather(1, above)
    frac = ((u - cdf0) / (cdf1 - cdf0).clamp_min(1e-12)).clamp(0.0, 1.0)
    t = b0 + frac * (b1 - b0)
    return torch.sort(t, dim=-1).values.to(bins.dtype)


@torch.no_grad()
def gaussian_samples(
    center: Float[Tensor, " n"],
    std: Float[Tensor, " n"],
    near: Float[Tensor, " n"] | float,
    far: Float[Tensor, " n"] | float,
    n_samples: int,
    deterministic: bool,
    generator: torch.Generator | None = None,
) -> Float[Tensor, "n k"]:
    """Stratified samples of the normal ``N(center, std^2)`` truncated to ``[near, far]`` (depth-guided
    sampling, as in Dense Depth Priors, Roessle et al. 2022); rays without a guide sample ``[near, far]``
    uniformly.

    With ``a = Phi((near - c) / s)`` and ``b = Phi((far - c) / s)`` the samples are the inverse CDF
    ``c + s * Phi^-1(a + u (b - a))`` at stratified ``u_k = (k + xi_k) / n_samples`` (``xi = 1/2`` when
    ``deterministic``), so they follow the truncated normal exactly and never leave ``[near, far]``.

    Args:
        center: ``[n]`` guide ray parameter (e.g. the reference depth as a distance along the ray);
            ``<= 0`` means no guide.
        std: ``[n]`` spread in the same units, ``> 0`` where there is a guide.
        near, far: ``[n]`` or scalars.
        n_samples: Samples per ray.
        deterministic: Use the quantiles instead of random draws.
        generator: For the draws (required unless ``deterministic``).

    Returns:
        ``[n, n_samples]`` sorted samples in ``[near, far]`` (no gradient).
    """
    n = center.shape[0]
    near_t, far_t = _per_ray(near, center).float(), _per_ray(far, center).float()
    guided = center > 0
    c = torch.where(guided, center.float(), 0.5 * (near_t + far_t))
    s = torch.where(guided, std.float().clamp_min(1e-6), torch.ones_like(c))
    k = torch.arange(n_samples, device=center.device, dtype=torch.float32)
    if deterministic:
        xi = torch.full((n, n_samples), 0.5, device=center.device)
    else:
        generator = require_generator(generator, "gaussian_samples(deterministic=False)")
        xi = torch.rand(n, n_samples, device=center.device, generator=generator)
    u = (k + xi) / n_samples  # [n, k] in [0, 1), sorted along the row
    lo = torch.special.ndtr((near_t - c) / s)[:, None]
    hi = torch.special.ndtr((far_t - c) / s)[:, None]
    p = (lo + u * (hi - lo)).clamp(1e-7, 1.0 - 1e-7)
    t_gauss = c[:, None] + s[:, None] * torch.special.ndtri(p)
    t_uniform = near_t[:, None] + u * (far_t - near_t)[:, None]
    t = torch.where(guided[:, None], t_gauss, t_uniform)
    t = torch.minimum(torch.maximum(t, near_t[:, None]), far_t[:, None])
    return t.to(center.dtype)


def ray_aabb_intersect(
    rays_o: Float[Tensor, "n 3"], rays_d: Float[Tensor, "n 3"], aabb: Float[Tensor, "2 3"]
) -> tuple[Float[Tensor, " n"], Float[Tensor, " n"], Bool[Tensor, " n"]]:
    """Slab test of rays against an axis-aligned box.

    Args:
        rays_o: ``[n, 3]`` origins.
        rays_d: ``[n, 3]`` directions (any length; zero components allowed).
        aabb: ``[2, 3]`` box ``(min, max)``.

    Returns:
        t_near: ``[n]`` entry parameter, clamped at 0 (an origin inside the box starts at 0).
        t_far: ``[n]`` exit parameter.
        hit: ``[n]`` bool, ``t_far > t_near``; where False the ``t`` values are meaningless.
    """
    tiny = 1e-10
    d = torch.where(rays_d.abs() < tiny, torch.full_like(rays_d, tiny), rays_d)
    t0 = (aabb[0] - rays_o) / d
    t1 = (aabb[1] - rays_o) / d
    t_near = torch.minimum(t0, t1).amax(dim=-1).clamp_min(0.0)
    t_far = torch.maximum(t0, t1).amin(dim=-1)
    return t_near, t_far, t_far > t_near


def near_far(
    rays_o: Float[Tensor, "n 3"], rays_d: Float[Tensor, "n 3"], aabb: Float[Tensor, "2 3"], near_min: float
) -> tuple[Float[Tensor, " n"], Float[Tensor, " n"]]:
    """``[n]`` near and far ray parameters inside the box ``aabb`` (:func:`ray_aabb_intersect`), the near one no
    closer than ``near_min`` (world units along ``rays_d``). Rays that miss the box get ``far <= near``."""
    t0, t1, _ = ray_aabb_intersect(rays_o, rays_d, aabb)
    return t0.clamp_min(near_min), t1


@torch.no_grad()
def occupancy_filter(
    rays_o: Float[Tensor, "n 3"],
    rays_d: Float[Tensor, "n 3"],
    t_mid: Float[Tensor, "n s"],
    occupancy: OccupancyGrid | None,
) -> Bool[Tensor, "n s"]:
    """Which samples the network must evaluate.

    Args:
        rays_o, rays_d: ``[n, 3]``.
        t_mid: ``[n, s]`` sample positions (bin midpoints).
        occupancy: The grid; ``None`` keeps every sample.

    Returns:
        ``[n, s]`` bool, True where the sample lies in an occupied cell (False outside the grid's box).
    """
    if occupancy is None:
        return torch.ones(t_mid.shape, dtype=torch.bool, device=t_mid.device)
    x = rays_o[:, None, :] + t_mid[..., None] * rays_d[:, None, :]  # [n, s, 3]
    return occupancy.query(x)
