"""Tests of the multi-resolution hash encoding (models/nerf/encoding.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from models.nerf.encoding import HashEncoding, HashEncodingConfig

# 4 levels of resolution 4, 8, 16, 32 with T = 2^10 rows: (N+1)^3 = 125, 729 fit; 4913, 35937 do not.
MIXED = HashEncodingConfig(n_levels=4, features_per_level=2, log2_hashmap_size=10, base_resolution=4, max_resolution=32)
# Two dense levels (4 and 8 cells: 125 and 729 vertices <= 1024 rows).
DENSE = HashEncodingConfig(n_levels=2, features_per_level=3, log2_hashmap_size=10, base_resolution=4, max_resolution=8)


def _corner_vertices(x: np.ndarray, n: int) -> list[tuple[int, int, int]]:
    """The 8 integer vertices of the level-``n`` cell containing ``x`` (x = 1 in the last cell)."""
    cell = np.minimum(np.floor(x * n), n - 1).astype(np.int64)
    return [(cell[0] + i, cell[1] + j, cell[2] + k) for k in (0, 1) for j in (0, 1) for i in (0, 1)]


def _row(v: tuple[int, int, int], n: int, dense: bool, t: int) -> int:
    """Reference row: dense index, or the paper's uint32 hash (wrapping arithmetic) mod T."""
    x, y, z = (np.uint32(c) for c in v)
    if dense:
        return int(v[0] + v[1] * (n + 1) + v[2] * (n + 1) ** 2)
    with np.errstate(over="ignore"):
        h = (x * np.uint32(1)) ^ (y * np.uint32(2654435761)) ^ (z * np.uint32(805459861))
    return int(h % np.uint32(t))


@pytest.mark.parametrize(
    "cfg",
    [
        HashEncodingConfig(),
        HashEncodingConfig(n_levels=16, base_resolution=16, max_resolution=2048),
        HashEncodingConfig(n_levels=5, base_resolution=3, max_resolution=50),
        MIXED,
    ],
)
def test_level_resolutions_follow_formula(cfg: HashEncodingConfig) -> None:
    enc = HashEncoding(cfg)
    b = math.exp((math.log(cfg.max_resolution) - math.log(cfg.base_resolution)) / (cfg.n_levels - 1))
    assert enc.growth_factor == pytest.approx(b, rel=1e-12)
    expected = [math.floor(cfg.base_resolution * b**level + 1e-6) for level in range(cfg.n_levels)]
    assert list(enc.resolutions) == expected
    assert enc.resolutions[0] == cfg.base_resolution and enc.resolutions[-1] == cfg.max_resolution


def test_default_resolutions_and_known_growth_factors() -> None:
    assert HashEncoding().resolutions == (16, 23, 34, 49, 72, 105, 154, 225, 329, 480, 701, 1024)
    assert HashEncoding(MIXED).resolutions == (4, 8, 16, 32)
    assert HashEncoding(MIXED).growth_factor == pytest.approx(2.0)
    single = HashEncoding(HashEncodingConfig(n_levels=1, base_resolution=8, max_resolution=64))
    assert single.resolutions == (8,)


def test_config_validation_names_the_key() -> None:
    with pytest.raises(ValidationError, match="max_resolution"):
        HashEncodingConfig(base_resolution=64, max_resolution=64)
    with pytest.raises(ValidationError, match="n_level"):
        HashEncodingConfig(n_level=4)


def test_dense_vs_hashed_level_selection_and_rows() -> None:
    enc = HashEncoding(MIXED)
    assert enc.is_dense == (True, True, False, False)
    default = HashEncoding()  # T = 2^17: dense while (N+1)^3 <= 131072, i.e. N <= 49
    assert default.is_dense == tuple(n <= 49 for n in default.resolutions)

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(20, 3, generator=gen)
    x[0] = torch.tensor([1.0, 0.0, 1.0])  # faces of the cube
    rows, weights = enc.corner_rows_and_weights(x)
    assert rows.shape == (20, 4, 8) and weights.shape == (20, 4, 8)
    torch.testing.assert_close(weights.sum(-1), torch.ones(20, 4))
    for i in range(x.shape[0]):
        for level, (n, dense) in enumerate(zip(enc.resolutions, enc.is_dense, strict=True)):
            verts = _corner_vertices(x[i].double().numpy(), n)
            expected = [_row(v, n, dense, enc.table_size) for v in verts]
            assert rows[i, level].tolist() == expected
            # The reference form agrees with the vectorised lookup.
            vt = torch.tensor(verts)[:, None, :].expand(8, 4, 3)
            assert enc.vertex_rows(vt)[:, level].tolist() == expected


def test_output_shape_and_dtype() -> None:
    enc = HashEncoding(MIXED)
    out = enc(torch.rand(2, 5, 3))
    assert out.shape == (2, 5, 8) and out.dtype == torch.float32
    assert enc(torch.rand(0, 3)).shape == (0, 8)
    # Points outside the cube are clamped onto it.
    torch.testing.assert_close(enc(torch.tensor([[1.5, -0.5, 0.5]])), enc(torch.tensor([[1.0, 0.0, 0.5]])))


def test_init_range() -> None:
    enc = HashEncoding(HashEncodingConfig(n_levels=2, log2_hashmap_size=12, base_resolution=4, max_resolution=8))
    assert enc.tables.shape == (2, 4096, 2)
    assert enc.tables.abs().max() <= 1e-4 and enc.tables.std() > 3e-5


def test_gradients_reach_only_the_eight_corner_rows() -> None:
    enc = HashEncoding(MIXED)
    x = torch.tensor([[0.3141, 0.5926, 0.5358]])
    coeff = torch.randn(enc.output_dim, generator=torch.Generator().manual_seed(1))
    (enc(x)[0] * coeff).sum().backward()
    grad = enc.tables.grad
    assert grad is not None
    for level, (n, dense) in enumerate(zip(enc.resolutions, enc.is_dense, strict=True)):
        expected = {_row(v, n, dense, enc.table_size) for v in _corner_vertices(x[0].double().numpy(), n)}
        nonzero = set(torch.nonzero(grad[level].abs().sum(-1)).squeeze(-1).tolist())
        assert nonzero == expected
        if dense:
            assert len(nonzero) == 8


@pytest.mark.parametrize("level", [0, 1])
def test_trilinear_interpolation_is_exact_for_linear_tables(level: int) -> None:
    enc = HashEncoding(DENSE)
    n = enc.resolutions[level]
    a = torch.tensor([[0.7, -1.3, 2.1], [0.0, 0.5, -0.25], [-2.0, 1.0, 0.3]])  # [F, 3]
    c = torch.tensor([0.1, -0.2, 0.3])
    idx = torch.arange(n + 1, dtype=torch.float64)
    zz, yy, xx = torch.meshgrid(idx, idx, idx, indexing="ij")  # row = x + y (n+1) + z (n+1)^2
    verts = torch.stack([xx, yy, zz], dim=-1).reshape(-1, 3) / n
    with torch.no_grad():
        enc.tables[level, : (n + 1) ** 3] = (verts @ a.double().T + c.double()).float()
    x = torch.rand(50, 3, generator=torch.Generator().manual_seed(2))
    x[0] = torch.tensor([1.0, 1.0, 0.0])
    f = enc.features_per_level
    got = enc(x)[:, level * f : (level + 1) * f]
    torch.testing.assert_close(got, x @ a.T + c, atol=1e-5, rtol=1e-5)


def test_tables_come_from_the_generator_only() -> None:
    rng = torch.random.get_rng_state()
    a = HashEncoding(MIXED, torch.Generator().manual_seed(1))
    b = HashEncoding(MIXED, torch.Generator().manual_seed(1))
    c = HashEncoding(MIXED, torch.Generator().manual_seed(2))
    assert torch.equal(torch.random.get_rng_state(), rng)  # the global RNG is never drawn from
    assert torch.equal(a.tables, b.tables) and not torch.equal(a.tables, c.tables)
    assert float(a.tables.detach().abs().max()) <= MIXED.init_scale
    assert torch.equal(HashEncoding(MIXED).tables, HashEncoding(MIXED, torch.Generator().manual_seed(0)).tables)
    c.init_weights(torch.Generator().manual_seed(1))
    assert torch.equal(c.tables, a.tables)
