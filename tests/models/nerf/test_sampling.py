"""Tests of ray sampling (models/nerf/sampling.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from models.nerf.occupancy import OccupancyGrid
from models.nerf.sampling import (
    gaussian_samples,
    occupancy_filter,
    ray_aabb_intersect,
    sample_pdf,
    stratified_samples,
)

# A piecewise-constant pdf with unequal bin widths: mass 0.2 on [0, 1], 0.5 on [1, 3], 0.3 on [3, 4].
EDGES = np.array([0.0, 1.0, 3.0, 4.0])
MASS = np.array([0.2, 0.5, 0.3])


def _cdf(t: np.ndarray) -> np.ndarray:
    """The analytic, piecewise-linear CDF of EDGES / MASS."""
    cum = np.concatenate([[0.0], np.cumsum(MASS)])
    return np.interp(t, EDGES, cum)


def _quantile(p: np.ndarray) -> np.ndarray:
    cum = np.concatenate([[0.0], np.cumsum(MASS)])
    return np.interp(p, cum, EDGES)


def _rays(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(n, 3), torch.tensor([0.0, 0.0, 1.0]).expand(n, 3)


@pytest.mark.parametrize("perturb", [False, True])
def test_stratified_bins_tile_near_far(perturb: bool) -> None:
    rays_o, rays_d = _rays(5)
    near = torch.tensor([0.0, 1.0, 2.0, 0.5, 3.0])
    far = near + torch.tensor([1.0, 2.0, 4.0, 0.5, 8.0])
    gen = torch.Generator().manual_seed(0)
    starts, ends = stratified_samples(rays_o, rays_d, near, far, 16, perturb, gen)
    assert starts.shape == ends.shape == (5, 16)
    torch.testing.assert_close(starts[:, 0], near)
    torch.testing.assert_close(ends[:, -1], far)
    torch.testing.assert_close(starts[:, 1:], ends[:, :-1])
    assert bool((ends > starts).all())
    equal = near[:, None] + (far - near)[:, None] * torch.arange(16) / 16
    if perturb:
        assert not torch.allclose(starts, equal)
        # Interior edges stay within half a bin of the equal edges.
        width = ((far - near) / 16)[:, None]
        assert bool(((starts - equal).abs() <= 0.5 * width + 1e-6).all())
        # Another draw gives other edges.
        assert not torch.allclose(starts, stratified_samples(rays_o, rays_d, near, far, 16, True, gen)[0])
    else:
        torch.testing.assert_close(starts, equal)


def test_random_draws_need_an_explicit_generator() -> None:
    rays_o, rays_d = _rays(3)
    bins, weights = torch.linspace(0, 1, 5).expand(3, 5), torch.ones(3, 4)
    with pytest.raises(ValueError, match=r"explicit torch\.Generator"):
        stratified_samples(rays_o, rays_d, 2.0, 6.0, 4, True)
    with pytest.raises(ValueError, match=r"explicit torch\.Generator"):
        sample_pdf(bins, weights, 4, deterministic=False)
    with pytest.raises(ValueError, match=r"explicit torch\.Generator"):
        gaussian_samples(torch.ones(3), torch.ones(3), 0.5, 2.0, 4, deterministic=False)


def test_stratified_scalar_near_far() -> None:
    starts, ends = stratified_samples(*_rays(3), 2.0, 6.0, 4, False)
    torch.testing.assert_close(starts, torch.tensor([[2.0, 3.0, 4.0, 5.0]]).expand(3, 4))
    torch.testing.assert_close(ends, starts + 1.0)


def _pdf_inputs(n_rays: int) -> tuple[torch.Tensor, torch.Tensor]:
    bins = torch.tensor(EDGES, dtype=torch.float32).expand(n_rays, 4)
    # Weights in any scale: the pdf is normalised per ray.
    weights = torch.tensor(MASS, dtype=torch.float32).expand(n_rays, 3) * torch.linspace(0.5, 3.0, n_rays)[:, None]
    return bins, weights


def test_sample_pdf_matches_the_analytic_cdf_ks() -> None:
    gen = torch.Generator().manual_seed(1)
    bins, weights = _pdf_inputs(4000)
    # One sample per ray: i.i.d. draws.
    t = sample_pdf(bins, weights, 1, deterministic=False, generator=gen)
    assert t.shape == (4000, 1)
    assert stats.kstest(t.numpy().ravel(), _cdf).pvalue > 0.01
    # Many (stratified) samples per ray, pooled.
    t = sample_pdf(bins[:200], weights[:200], 32, deterministic=False, generator=gen)
    assert stats.kstest(t.numpy().ravel(), _cdf).pvalue > 0.01
    # The middle bin is twice as wide but has the highest mass: 50 % of the samples fall in [1, 3].
    frac_mid = float(((t >= 1) & (t < 3)).float().mean())
    assert frac_mid == pytest.approx(0.5, abs=0.02)


def test_sample_pdf_deterministic_samples_are_quantiles() -> None:
    bins, weights = _pdf_inputs(3)
    t = sample_pdf(bins, weights, 10, deterministic=True)
    expected = _quantile((np.arange(10) + 0.5) / 10)
    np.testing.assert_allclose(t.numpy(), np.broadcast_to(expected, (3, 10)), atol=1e-3)
    torch.testing.assert_close(t, sample_pdf(bins, weights, 10, deterministic=True))


@pytest.mark.parametrize("deterministic", [True, False])
def test_sample_pdf_one_hot_weight_puts_all_samples_in_that_bin(deterministic: bool) -> None:
    n, m = 8, 32
    bins = torch.linspace(2.0, 6.0, m + 1).expand(n, m + 1)
    hot = torch.arange(n) * 3 + 1  # a different bin per ray
    weights = torch.zeros(n, m)
    weights[torch.arange(n), hot] = 1.0
    t = sample_pdf(bins, weights, 64, deterministic, generator=torch.Generator().manual_seed(2))
    lo, hi = bins[0, hot][:, None], bins[0, hot + 1][:, None]
    assert bool(((t >= lo) & (t <= hi)).all())
    # Spread over the bin, not collapsed onto an edge.
    assert bool((t.std(dim=-1) > 0.2 * (hi - lo).squeeze(-1)).all())


def test_sample_pdf_zero_weights_give_uniform_samples() -> None:
    n, m = 4, 8
    bins = torch.linspace(1.0, 5.0, m + 1).expand(n, m + 1)
    t = sample_pdf(bins, torch.zeros(n, m), 16, deterministic=True)
    torch.testing.assert_close(t, (1.0 + 4.0 * (torch.arange(16) + 0.5) / 16).expand(n, 16), atol=1e-4, rtol=0)
    t = sample_pdf(bins[:1].expand(2000, m + 1), torch.zeros(2000, m), 1, False, torch.Generator().manual_seed(3))
    assert stats.kstest(t.numpy().ravel(), stats.uniform(loc=1.0, scale=4.0).cdf).pvalue > 0.01


def test_sample_pdf_output_sorted_and_within_bins() -> None:
    gen = torch.Generator().manual_seed(4)
    n, m = 50, 12
    bins = torch.sort(torch.rand(n, m + 1, generator=gen) * 10, dim=-1).values
    weights = torch.rand(n, m, generator=gen) ** 4
    weights[::7] = 0.0
    for det in (True, False):
        t = sample_pdf(bins, weights, 40, det, generator=gen)
        assert t.shape == (n, 40)
        assert bool((t[:, 1:] >= t[:, :-1]).all())
        assert bool(((t >= bins[:, :1]) & (t <= bins[:, -1:])).all())
    with pytest.raises(ValueError, match="bins"):
        sample_pdf(bins[:, :-1], weights, 4, True)


def test_ray_aabb_intersect() -> None:
    aabb = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
    rays_o = torch.tensor(
        [
            [-3.0, 0.0, 0.0],  # along +x through the centre
            [-3.0, 0.5, 0.2],  # along +x, off-centre (zero y, z components)
            [0.0, 0.0, 0.0],  # from inside
            [-3.0, 2.0, 0.0],  # along +x, passes above
            [3.0, 0.0, 0.0],  # along +x, box behind
            [-3.0, -3.0, 0.0],  # diagonal (unnormalised) through the corner edge region
        ]
    )
    rays_d = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 0, 1.0], [1.0, 0, 0], [1.0, 0, 0], [2.0, 2.0, 0.0]])
    t_near, t_far, hit = ray_aabb_intersect(rays_o, rays_d, aabb)
    assert hit.tolist() == [True, True, True, False, False, True]
    torch.testing.assert_close(t_near[:3], torch.tensor([2.0, 2.0, 0.0]))
    torch.testing.assert_close(t_far[:3], torch.tensor([4.0, 4.0, 1.0]))
    torch.testing.assert_close(t_near[5], torch.tensor(1.0))  # t in units of |d|: (-1,-1) at t = 1
    torch.testing.assert_close(t_far[5], torch.tensor(2.0))


def test_occupancy_filter_uses_the_grid() -> None:
    grid = OccupancyGrid([[-1.0] * 3, [1.0] * 3], resolution=4)
    grid.binary.zero_()
    grid.binary[2:] = True  # x >= 0 occupied
    rays_o = torch.tensor([[-2.0, 0.1, 0.1], [0.0, 5.0, 0.1]])
    rays_d = torch.tensor([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    t_mid = torch.tensor([[0.5, 1.5, 2.5, 3.5], [1.0, 4.5, 5.5, 7.0]])
    mask = occupancy_filter(rays_o, rays_d, t_mid, grid)
    # Ray 0: x = -1.5 (outside), -0.5 (empty), 0.5 (occupied), 1.5 (outside).
    # Ray 1 (x = 0, an occupied cell): y = 4 (outside), 0.5, -0.5 (inside), -2 (outside).
    assert mask.tolist() == [[False, False, True, False], [False, True, True, False]]
    assert bool(occupancy_filter(rays_o, rays_d, t_mid, None).all())


def test_gaussian_samples_follow_the_truncated_normal_ks() -> None:
    gen = torch.Generator().manual_seed(5)
    n = 3000
    center, std = torch.full((n,), 2.0), torch.full((n,), 0.3)
    # Truncated on the near side: [1.8, 6.0] cuts the normal at -2/3 sigma.
    t = gaussian_samples(center, std, 1.8, 6.0, 1, deterministic=False, generator=gen)
    ref = stats.truncnorm(a=(1.8 - 2.0) / 0.3, b=(6.0 - 2.0) / 0.3, loc=2.0, scale=0.3)
    assert t.shape == (n, 1)
    assert stats.kstest(t.numpy().ravel(), ref.cdf).pvalue > 0.01
    # Stratified draws, pooled over rays, follow it too; rows are sorted and inside [near, far].
    t = gaussian_samples(center[:200], std[:200], 1.8, 6.0, 16, deterministic=False, generator=gen)
    assert stats.kstest(t.numpy().ravel(), ref.cdf).pvalue > 0.01
    assert bool((t[:, 1:] >= t[:, :-1]).all()) and bool(((t >= 1.8) & (t <= 6.0)).all())


def test_gaussian_samples_deterministic_quantiles_and_unguided_rays() -> None:
    center = torch.tensor([3.0, 0.0, 10.0])  # guided, no guide, guide beyond far
    std = torch.tensor([0.1, 0.1, 0.1])
    near, far = torch.tensor([1.0, 1.0, 1.0]), torch.tensor([5.0, 5.0, 5.0])
    t = gaussian_samples(center, std, near, far, 8, deterministic=True)
    q = (np.arange(8) + 0.5) / 8
    np.testing.assert_allclose(t[0].numpy(), stats.norm(3.0, 0.1).ppf(q), atol=1e-4)
    np.testing.assert_allclose(t[1].numpy(), 1.0 + 4.0 * q, atol=1e-5)  # uniform over [near, far]
    assert bool(((t[2] >= 4.5) & (t[2] <= 5.0)).all())  # piled up at far, never beyond
