"""Tests of the radiance field (models/nerf/field.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.nerf.encoding import HashEncodingConfig
from models.nerf.field import NeRFField, NeRFFieldConfig, spherical_harmonics, trunc_exp
from models.nerf.rendering import render_rays

TINY = NeRFFieldConfig(
    encoding=HashEncodingConfig(
        n_levels=4, features_per_level=2, log2_hashmap_size=10, base_resolution=4, max_resolution=32
    ),
    hidden_dim=16,
    geo_features=7,
)
AABB = [[-1.0, -2.0, -1.0], [1.0, 2.0, 3.0]]


def _field(seed: int = 0, **kw) -> NeRFField:
    return NeRFField(TINY.model_copy(update=kw), aabb=AABB, generator=torch.Generator().manual_seed(seed))


def test_shapes_ranges_and_zero_density_outside_box() -> None:
    field = _field()
    gen = torch.Generator().manual_seed(0)
    lo, hi = torch.tensor(AABB[0]), torch.tensor(AABB[1])
    x_in = lo + (hi - lo) * torch.rand(64, 3, generator=gen)
    x_out = x_in.clone()
    x_out[:32, 0] = 1.01  # just beyond the max x face
    x_out[32:, 2] = -1.5
    d = torch.randn(64, 3, generator=gen)
    rgb, sigma = field(x_in, d)
    assert rgb.shape == (64, 3) and sigma.shape == (64,)
    assert bool(((rgb >= 0) & (rgb <= 1)).all()) and bool((sigma > 0).all())
    _, sigma_out = field(x_out, d)
    assert bool((sigma_out == 0).all())
    torch.testing.assert_close(field.density(x_in), sigma)
    assert field.density(x_in.view(8, 8, 3)).shape == (8, 8)
    rgb2, sigma2 = field(x_in.view(4, 16, 3), d.view(4, 16, 3))
    assert rgb2.shape == (4, 16, 3) and sigma2.shape == (4, 16)
    # The box is a buffer: saved with the weights, moved with the module.
    assert "aabb" in field.state_dict()
    torch.testing.assert_close(field.aabb, torch.tensor(AABB))


def test_trunc_exp_clamps_the_backward_only() -> None:
    x = torch.tensor([0.0, 1.0, 20.0], requires_grad=True)
    y = trunc_exp(x)
    torch.testing.assert_close(y, torch.exp(x.detach()))
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([1.0, float(np.e), float(np.exp(15.0))]))


def _sphere_quadrature(n_z: int = 12, n_phi: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    """Directions and weights integrating polynomials of degree < 2 n_z exactly over the unit sphere."""
    z, wz = np.polynomial.legendre.leggauss(n_z)
    phi = (np.arange(n_phi) + 0.5) * 2 * np.pi / n_phi
    zz, pp = np.meshgrid(z, phi, indexing="ij")
    r = np.sqrt(1 - zz**2)
    dirs = np.stack([r * np.cos(pp), r * np.sin(pp), zz], axis=-1).reshape(-1, 3)
    w = (wz[:, None] * np.full(n_phi, 2 * np.pi / n_phi)[None, :]).reshape(-1)
    return torch.tensor(dirs), torch.tensor(w)


@pytest.mark.parametrize("degree", [1, 2, 3, 4])
def test_spherical_harmonics_are_orthonormal(degree: int) -> None:
    dirs, w = _sphere_quadrature()
    y = spherical_harmonics(dirs * 3.0, degree)  # unnormalised input is normalised
    assert y.shape == (dirs.shape[0], degree**2)
    gram = (y * w[:, None]).T @ y
    torch.testing.assert_close(gram, torch.eye(degree**2, dtype=gram.dtype), atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match="sh_degree"):
        spherical_harmonics(dirs, 5)


def test_view_dependence_can_be_fitted() -> None:
    """At one point, colour red seen along +z and blue seen along -z (needs the SH input)."""
    field = _field(1)
    x = torch.zeros(2, 3) + 0.1
    d = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]])
    target = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    opt = torch.optim.Adam(field.parameters(), lr=1e-2)
    for _ in range(60):
        loss = ((field(x, d)[0] - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 1e-3


def test_gradient_checkpointing_gives_same_outputs_and_grads() -> None:
    plain, ckpt = _field(3), _field(3, gradient_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    plain.train()
    ckpt.train()
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(128, 3, generator=gen) * 1.8 - 0.9
    d = torch.randn(128, 3, generator=gen)
    outs = []
    for f in (plain, ckpt):
        rgb, sigma = f(x, d)
        (rgb.square().sum() + sigma.sum()).backward()
        outs.append((rgb, sigma, {k: p.grad.clone() for k, p in f.named_parameters()}))
    torch.testing.assert_close(outs[0][0], outs[1][0])
    torch.testing.assert_close(outs[0][1], outs[1][1])
    assert outs[0][2].keys() == outs[1][2].keys()
    for k in outs[0][2]:
        torch.testing.assert_close(outs[0][2][k], outs[1][2][k], msg=k)
    assert any(g.abs().sum() > 0 for g in outs[0][2].values())


def test_fit_constant_colour_through_the_renderer() -> None:
    field = _field(5)
    gen = torch.Generator().manual_seed(6)
    n = 32
    rays_o = torch.tensor([0.0, 0.0, -3.0]).expand(n, 3)
    rays_d = torch.randn(n, 3, generator=gen) * 0.1 + torch.tensor([0.0, 0.0, 1.0])
    rays_d = rays_d / rays_d.norm(dim=-1, keepdim=True)
    target = torch.tensor([0.8, 0.3, 0.1])
    opt = torch.optim.Adam(field.parameters(), lr=1e-2)
    losses = []
    for _ in range(100):
        out = render_rays(field, rays_o, rays_d, 2.0, 6.0, n_coarse=8, n_fine=4, perturb=True, generator=gen)
        loss = ((out.rgb - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]
    assert losses[-1] < 2e-3


def test_the_init_comes_from_the_generator_only() -> None:
    """Fields built with generators seeded alike are equal, another seed gives another field, and building
    them leaves the global RNG untouched (two fits in two threads cannot take each other's numbers)."""
    rng = torch.random.get_rng_state()
    a, b = _field(seed=5), _field(seed=5)
    c = _field(seed=6)
    assert torch.equal(torch.random.get_rng_state(), rng)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys() == sc.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name
        assert name == "aabb" or not torch.equal(sa[name], sc[name]), name
    # Without a generator a field is that of seed 0, still without touching the global RNG.
    default = NeRFField(TINY, aabb=AABB)
    assert all(torch.equal(v, _field(seed=0).state_dict()[k]) for k, v in default.state_dict().items())
    assert torch.equal(torch.random.get_rng_state(), rng)
    # init_weights redraws exactly what construction drew.
    c.init_weights(torch.Generator().manual_seed(5))
    assert all(torch.equal(v, sa[k]) for k, v in c.state_dict().items())


def test_the_init_uses_pytorchs_default_distributions() -> None:
    """Tables ~ U(-init_scale, init_scale); each linear layer as nn.Linear draws it after manual_seed (weights
    kaiming_uniform(a=sqrt(5)), biases U(+-1/sqrt(fan_in))), in construction order."""
    field = _field(seed=11)
    saved = torch.random.get_rng_state()
    try:
        torch.manual_seed(11)
        tables = torch.empty_like(field.encoding.tables).uniform_(-TINY.encoding.init_scale, TINY.encoding.init_scale)
        layers = [torch.nn.Linear(m.in_features, m.out_features) for m in field.modules()
                  if isinstance(m, torch.nn.Linear)]
    finally:
        torch.random.set_rng_state(saved)
    assert torch.equal(field.encoding.tables, tables)
    mine = [m for m in field.modules() if isinstance(m, torch.nn.Linear)]
    assert len(mine) == len(layers) > 0
    for m, ref in zip(mine, layers, strict=True):
        assert torch.equal(m.weight, ref.weight) and torch.equal(m.bias, ref.bias)
