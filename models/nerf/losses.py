"""NeRF training losses: colour, uncertainty-weighted depth, DS-NeRF ray termination, patch depth edges.

Depth terms compare z-depths (distance along the optical axis, what depth sensors report) unless stated;
``valid`` masks pixels that have a depth reference (``z > 0``). Every loss is a scalar and is 0 when
nothing is valid.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor


def _masked_mean(x: Tensor, valid: Tensor) -> Tensor:
    n = valid.sum()
    return torch.where(valid, x, torch.zeros_like(x)).sum() / n.clamp_min(1)


def rgb_loss(pred: Float[Tensor, "n 3"], target: Float[Tensor, "n 3"]) -> Float[Tensor, ""]:
    """Mean squared colour error, ``[n, 3]`` in [0, 1]."""
    return torch.mean((pred - target) ** 2)


def depth_nll_loss(
    z_pred: Float[Tensor, " n"], z_ref: Float[Tensor, " n"], sigma_ref: Float[Tensor, " n"], sigma_floor: float
) -> Float[Tensor, ""]:
    """Gaussian negative log-likelihood of the reference depth (constant terms dropped), in the spirit of
    Dense Depth Priors (Roessle et al. 2022): ``mean((z_pred - z_ref)^2 / (sigma_ref^2 + sigma_floor^2))``.

    Confident pixels (small ``sigma_ref``) pull with weight ``1 / sigma_floor^2``; uncertain ones little.

    Args:
        z_pred, z_ref, sigma_ref: ``[n]`` metres; ``z_ref = 0`` marks no reference.
        sigma_floor: metres, ``> 0``: the least uncertainty any reference is trusted with.
    """
    valid = z_ref > 0
    var = sigma_ref**2 + sigma_floor**2
    return _masked_mean((z_pred - z_ref) ** 2 / var, valid)


def ds_nerf_loss(
    weights: Float[Tensor, "n s"],
    t_mid: Float[Tensor, "n s"],
    deltas: Float[Tensor, "n s"],
    t_ref: Float[Tensor, " n"],
    sigma_t: Float[Tensor, " n"],
) -> Float[Tensor, ""]:
    """DS-NeRF (Deng et al. 2022) ray-termination loss: ``-sum_i log(w_i) * N(t_i; t_ref, sigma) * delta_i``,
    which concentrates the termination distribution around the reference distance along the ray.

    Args:
        weights, t_mid, deltas: ``[n, s]`` rendering weights, sample distances and bin lengths along the ray.
        t_ref, sigma_t: ``[n]`` reference distance along the ray and its spread (``t_ref = 0``: none).
    """
    valid = t_ref > 0
    s = sigma_t.clamp_min(1e-3)[:, None]
    gauss = torch.exp(-0.5 * ((t_mid - t_ref[:, None]) / s) ** 2) / (s * (2 * torch.pi) ** 0.5)
    per_ray = -(torch.log(weights + 1e-6) * gauss * deltas).sum(-1)
    return _masked_mean(per_ray, valid)


def patch_edge_loss(z_pred: Float[Tensor, " n"], z_ref: Float[Tensor, " n"], patch: int) -> Float[Tensor, ""]:
    """Edge-aware depth term: depth differences between neighbouring pixels of each ``patch x patch`` ray
    patch agree with the reference's (so the rendering has the reference's edges, not blurred ones).

    Args:
        z_pred, z_ref: ``[n_patches * patch * patch]`` z-depths, patches in row-major pixel order.
    """
    if patch < 2:
        return z_pred.new_zeros(())
    zp = z_pred.reshape(-1, patch, patch)
    zr = z_ref.reshape(-1, patch, patch)
    terms = []
    for dim in (1, 2):
        dp, dr = torch.diff(zp, dim=dim), torch.diff(zr, dim=dim)
        both = (zr.narrow(dim, 0, patch - 1) > 0) & (zr.narrow(dim, 1, patch - 1) > 0)
        terms.append((torch.abs(dp - dr), both))
    err = torch.cat([t.reshape(-1) for t, _ in terms])
    valid = torch.cat([m.reshape(-1) for _, m in terms])
    return _masked_mean(err, valid)
