"""Tests of the occupancy grid (models/nerf/occupancy.py) and of its use by the renderer."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from models.nerf.occupancy import OccupancyGrid, OccupancyGridConfig
from models.nerf.rendering import rays_from_camera, render_rays
from models.nerf.sampling import ray_aabb_intersect

AABB = [[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]


def _cellwise(table: torch.Tensor):
    """A density constant within each grid cell (``table [R, R, R]`` over AABB), so estimates are exact."""
    r = table.shape[0]

    def density_fn(x: torch.Tensor) -> torch.Tensor:
        ijk = ((x + 1.0) / 2.0 * r).floor().long().clamp(0, r - 1)
        return table[ijk[:, 0], ijk[:, 1], ijk[:, 2]]

    return density_fn


def test_warmup_keeps_everything_occupied() -> None:
    grid = OccupancyGrid(AABB, resolution=8)
    assert grid.occupied_fraction == 1.0
    calls = []

    def zero(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return torch.zeros(x.shape[0])

    gen = torch.Generator().manual_seed(0)
    for step in range(0, 10, 3):
        grid.update(step, zero, warmup_steps=10, n_samples_per_cell=2, generator=gen)
        assert grid.occupied_fraction == 1.0
        assert bool(grid.binary.all())
    assert sum(calls) == 4 * 8**3 * 2  # warm-up evaluates every cell
    grid.update(10, zero, warmup_steps=10, generator=gen)
    with pytest.raises(ValueError, match=r"explicit torch\.Generator"):  # never the global RNG
        grid.update(11, zero, warmup_steps=10)
    assert grid.occupied_fraction == 0.0  # a scene with no density at all is empty after warm-up


@pytest.mark.parametrize("n_cells", [None, 40])
def test_cells_above_threshold_are_never_marked_empty(n_cells: int | None) -> None:
    r, threshold = 8, 0.5
    gen = torch.Generator().manual_seed(0)
    grid = OccupancyGrid(AABB, resolution=r)
    for step in range(8):
        # Random sparse fields: most cells 0, some below and some above the threshold.
        table = torch.rand(r, r, r, generator=gen) * 2.0 * (torch.rand(r, r, r, generator=gen) < 0.2)
        grid.update(step + 2, _cellwise(table), warmup_steps=2, decay=0.8, threshold=threshold,
                    n_cells=n_cells, generator=gen)
        # The guarantee, on the grid's own estimate ...
        assert bool(grid.binary[grid.density > threshold].all())
        assert bool(((grid.density > torch.clamp(grid.density.mean(), max=threshold)) == grid.binary).all())
        if n_cells is None:
            # ... and on the true field, whose maximum per cell the estimate bounds from above.
            assert bool((grid.density >= table - 1e-6).all())
            assert bool(grid.binary[table > threshold].all())
    assert 0.0 < grid.occupied_fraction < 1.0


def test_decay_forgets_density_that_went_away() -> None:
    grid = OccupancyGrid(AABB, resolution=4)
    gen = torch.Generator().manual_seed(0)
    table = torch.zeros(4, 4, 4)
    table[1, 2, 3] = 1.0
    grid.update(0, _cellwise(table), warmup_steps=0, decay=0.5, threshold=0.1, generator=gen)
    assert grid.binary[1, 2, 3] and grid.binary.sum() == 1
    # The cell stays occupied while its estimate exceeds min(threshold, mean) ...
    later = torch.zeros(4, 4, 4)
    later[2:] = 0.3  # ... so give the scene a mean (~0.15) above the threshold.
    for step in range(1, 5):
        grid.update(step, _cellwise(later), warmup_steps=0, decay=0.5, threshold=0.1, generator=gen)
    assert grid.density[1, 2, 3].item() == pytest.approx(0.5**4)
    assert not bool(grid.binary[1, 2, 3])
    assert bool(grid.binary[2:].all()) and not bool(grid.binary[:2].any())


def test_query_maps_points_to_cells_and_rejects_outside() -> None:
    grid = OccupancyGrid([[0.0, 0.0, 0.0], [2.0, 4.0, 8.0]], resolution=4)
    grid.binary.zero_()
    grid.binary[3, 0, 1] = True  # x in [1.5, 2], y in [0, 1], z in [2, 4]
    x = torch.tensor([[1.9, 0.5, 3.0], [1.4, 0.5, 3.0], [2.0, 0.99, 2.0], [2.1, 0.5, 3.0], [1.9, 0.5, -0.1]])
    assert grid.query(x).tolist() == [True, False, True, False, False]
    assert grid.query(x.view(5, 1, 3)).shape == (5, 1)
    assert grid.occupied_fraction == pytest.approx(1 / 64)
    assert {"aabb", "density", "binary"} <= set(grid.state_dict())


def test_config_validation() -> None:
    assert OccupancyGridConfig().resolution == 128
    with pytest.raises(ValidationError, match="decay"):
        OccupancyGridConfig(decay=1.5)
    with pytest.raises(ValueError, match="aabb"):
        OccupancyGrid([[0.0, 0.0, 0.0], [0.0, 1.0, 1.0]])


def test_grid_cuts_network_evaluations_without_changing_the_image(sphere_field) -> None:
    field = sphere_field(center=(0.2, -0.1, 0.1), radius=0.2, sigma=20.0)
    grid = OccupancyGrid(AABB, resolution=32)
    gen = torch.Generator().manual_seed(0)
    for step in range(4):
        grid.update(100 + step, field.density, warmup_steps=100, n_samples_per_cell=4, generator=gen)
    assert grid.occupied_fraction < 0.02

    K = torch.tensor([[16.0, 0.0, 7.5], [0.0, 16.0, 7.5], [0.0, 0.0, 1.0]])
    c2w = torch.eye(4)
    c2w[2, 3] = -3.0  # looking along +z at the box
    rays_o, rays_d, _ = rays_from_camera(K, c2w, 16, 16)
    near, far, hit = ray_aabb_intersect(rays_o, rays_d, grid.aabb)
    assert bool(hit.all())
    kw = {"n_coarse": 32, "n_fine": 32}
    field.n_calls = 0
    full = render_rays(field, rays_o, rays_d, near, far, **kw)
    calls_full, field.n_calls = field.n_calls, 0
    skipped = render_rays(field, rays_o, rays_d, near, far, occupancy=grid, **kw)
    calls_skipped = field.n_calls

    assert full.n_evaluated == full.n_samples == calls_full == 256 * (32 + 64)
    assert skipped.n_evaluated == calls_skipped  # the count is what the network really saw
    assert skipped.n_samples == full.n_samples
    assert calls_full >= 3 * calls_skipped
    assert full.opacity.max() > 0.5  # the sphere is in view
    assert (skipped.rgb - full.rgb).abs().max() < 0.02
    assert (skipped.opacity - full.opacity).abs().mean() < 1e-3
