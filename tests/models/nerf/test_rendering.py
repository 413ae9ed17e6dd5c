"""Tests of volume rendering (models/nerf/rendering.py) against analytic densities."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.camera import camera_rays, intrinsics_from_fov, look_at
from models.nerf.rendering import (
    accumulated_opacity,
    composite,
    depth_variance,
    dilate_weights,
    expected_depth,
    ray_distance_to_z,
    rays_from_camera,
    render_rays,
    render_weights,
    z_to_ray_distance,
)
from models.nerf.sampling import ray_aabb_intersect


def _slab(sigma: float, a: float, b: float, t_max: float = 5.0, n: int = 500) -> tuple[torch.Tensor, ...]:
    """Equal bins over [0, t_max] (edges on a and b) with density sigma between a and b."""
    edges = torch.linspace(0.0, t_max, n + 1, dtype=torch.float64)
    mid = 0.5 * (edges[1:] + edges[:-1])
    dens = torch.where((mid > a) & (mid < b), torch.full_like(mid, sigma), torch.zeros_like(mid))
    return edges, mid, dens


@pytest.mark.parametrize("sigma", [0.3, 2.0, 7.5])
def test_slab_transmittance_is_analytic(sigma: float) -> None:
    a, b = 1.0, 2.5
    edges, mid, dens = _slab(sigma, a, b)
    weights, trans = render_weights(dens[None], (edges[1:] - edges[:-1])[None])
    after = int((mid > b).nonzero()[0])
    expected = math.exp(-sigma * (b - a))
    assert trans[0, after].item() == pytest.approx(expected, rel=1e-9)
    assert trans[0, -1].item() == pytest.approx(expected, rel=1e-9)
    assert accumulated_opacity(weights)[0].item() == pytest.approx(1 - expected, rel=1e-9)
    assert trans[0, 0].item() == 1.0
    # Transmittance inside the slab decays exponentially from a.
    inside = (mid > a) & (mid < b)
    t_in = edges[:-1][inside]
    torch.testing.assert_close(trans[0, inside], torch.exp(-sigma * (t_in - a)))


def test_opaque_slab_depth_is_its_front_face() -> None:
    a, b = 1.3, 2.5
    edges, mid, dens = _slab(1e4, a, b)
    weights, _ = render_weights(dens[None], (edges[1:] - edges[:-1])[None])
    depth = expected_depth(weights, mid[None])
    assert depth.item() == pytest.approx(a, abs=0.01)  # within one bin (0.01)
    assert depth_variance(weights, mid[None], depth).item() < 1e-4
    assert not torch.isnan(weights).any() and weights.sum().item() == pytest.approx(1.0)


def test_render_weights_agrees_with_the_product_form_and_is_stable() -> None:
    gen = torch.Generator().manual_seed(0)
    sigma = torch.rand(6, 40, generator=gen, dtype=torch.float64) * 3
    deltas = torch.rand(6, 40, generator=gen, dtype=torch.float64) * 0.2
    weights, trans = render_weights(sigma, deltas)
    alpha = 1 - torch.exp(-sigma * deltas)
    t_prod = torch.cumprod(torch.cat([torch.ones(6, 1, dtype=torch.float64), 1 - alpha[:, :-1]], dim=-1), dim=-1)
    torch.testing.assert_close(trans, t_prod)
    torch.testing.assert_close(weights, t_prod * alpha)
    # Huge densities: no NaN, weights still sum to <= 1 and the first dense sample takes it all.
    big = torch.tensor([[0.0, 1e30, 1e30, 5.0]])
    w, _ = render_weights(big, torch.full_like(big, 0.1))
    assert not torch.isnan(w).any()
    torch.testing.assert_close(w, torch.tensor([[0.0, 1.0, 0.0, 0.0]]))
    # Tiny tau: alpha ~ tau (no cancellation to 0 in float32).
    w, _ = render_weights(torch.tensor([[1e-9]]), torch.tensor([[1e-2]]))
    assert w.item() == pytest.approx(1e-11, rel=1e-4)


def test_composite_depth_and_variance() -> None:
    weights = torch.tensor([[0.0, 0.25, 0.25, 0.0]])
    t_mid = torch.tensor([[1.0, 2.0, 4.0, 8.0]])
    values = torch.arange(12, dtype=torch.float32).view(1, 4, 3)
    torch.testing.assert_close(composite(weights, values), 0.25 * (values[:, 1] + values[:, 2]))
    assert accumulated_opacity(weights).item() == 0.5
    depth = expected_depth(weights, t_mid)
    assert depth.item() == pytest.approx(3.0)
    assert expected_depth(weights, t_mid, normalize=False).item() == pytest.approx(1.5)
    assert depth_variance(weights, t_mid, depth).item() == pytest.approx(1.0)
    assert expected_depth(torch.zeros(1, 4), t_mid).item() == 0.0  # empty ray: no NaN


def test_dilate_weights_spreads_half_to_the_neighbours() -> None:
    w = torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0, 0.5]])
    expected = torch.tensor([[0.0, 0.5, 1.0, 0.5, 0.0], [1.0, 0.5, 0.0, 0.25, 0.5]])
    torch.testing.assert_close(dilate_weights(w), expected)


def _rays_towards_sphere(impact: list[float], radius_dir=(0.0, 1.0, 0.0)) -> tuple[torch.Tensor, torch.Tensor]:
    b = torch.tensor(impact)[:, None]
    rays_o = torch.tensor([0.0, 0.0, -3.0]) + b * torch.tensor(radius_dir)
    rays_d = torch.tensor([0.0, 0.0, 1.0]).expand_as(rays_o)
    return rays_o.contiguous(), rays_d.contiguous()


def test_sphere_opacity_matches_chord_length(sphere_field) -> None:
    radius, sigma = 0.8, 1.5
    field = sphere_field(radius=radius, sigma=sigma)
    impact = [0.0, 0.3, 0.5, 0.7, 0.79, 0.9]
    rays_o, rays_d = _rays_towards_sphere([b * 1.0 for b in impact])
    chord = np.sqrt(np.clip(radius**2 - np.array(impact) ** 2, 0, None)) * 2
    expected = torch.tensor(1 - np.exp(-sigma * chord), dtype=torch.float32)
    out = render_rays(field, rays_o, rays_d, 1.0, 5.0, n_coarse=64, n_fine=64)
    # Hierarchical: errors come from bins straddling the sphere's boundary (midpoint quadrature).
    torch.testing.assert_close(out.opacity, expected, atol=0.02, rtol=0)
    uniform = render_rays(field, rays_o, rays_d, 1.0, 5.0, n_coarse=4096, n_fine=0)
    torch.testing.assert_close(uniform.opacity, expected, atol=2e-3, rtol=0)
    torch.testing.assert_close(out.opacity, uniform.opacity, atol=0.02, rtol=0)
    # Colour: the sphere's colour times its opacity (black background), or plus the background.
    torch.testing.assert_close(out.rgb, out.opacity[:, None] * field.rgb, atol=1e-5, rtol=0)
    bg = torch.tensor([1.0, 0.0, 0.5])
    out_bg = render_rays(field, rays_o, rays_d, 1.0, 5.0, n_coarse=64, n_fine=64, background=bg)
    torch.testing.assert_close(out_bg.rgb, out.rgb + (1 - out.opacity)[:, None] * bg)
    assert out.weights.shape == out.t_starts.shape == (6, 128)
    assert out.weights_coarse.shape == (6, 64)


def test_fine_samples_concentrate_on_the_surface(sphere_field) -> None:
    """Hierarchical sampling: an opaque sphere's depth is much more accurate than the coarse spacing."""
    field = sphere_field(radius=0.5, sigma=500.0)
    rays_o, rays_d = _rays_towards_sphere([0.0, 0.2, 0.4])
    out = render_rays(field, rays_o, rays_d, 1.0, 5.0, n_coarse=16, n_fine=64)  # coarse spacing 0.25
    expected = 3.0 - np.sqrt(0.25 - np.array([0.0, 0.2, 0.4]) ** 2)
    np.testing.assert_allclose(out.depth.numpy(), expected, atol=0.03)
    coarse_only = render_rays(field, rays_o, rays_d, 1.0, 5.0, n_coarse=16, n_fine=0)
    assert np.abs(coarse_only.depth.numpy() - expected).max() > 0.05


def test_depth_guided_sampling_skips_the_coarse_pass_and_finds_the_surface(sphere_field) -> None:
    """With a guide at the surface, the fine samples sit around it without a coarse density pass; a guide
    that is off by much more than its spread misses the surface (the guide really places the samples)."""
    impact = np.array([0.0, 0.2, 0.4])
    expected = 3.0 - np.sqrt(0.25 - impact**2)
    rays_o, rays_d = _rays_towards_sphere(impact.tolist())
    field = sphere_field(radius=0.5, sigma=500.0)
    center, std = torch.tensor(expected, dtype=torch.float32), torch.full((3,), 0.02)
    out = render_rays(field, rays_o, rays_d, 1.0, 5.0, n_coarse=16, n_fine=64, guide=(center, std))
    np.testing.assert_allclose(out.depth.numpy(), expected, atol=0.01)
    assert field.n_calls == out.n_evaluated == 3 * (16 + 64)  # one pass: the fine one
    assert out.weights_coarse is None
    wrong = render_rays(sphere_field(radius=0.5, sigma=500.0), rays_o, rays_d, 1.0, 5.0, n_coarse=16, n_fine=64,
                        guide=(center + 0.6, std))
    assert np.abs(wrong.depth.numpy() - expected).max() > 0.05
    # Rays without a guide (center 0) fall back to uniform fine edges, still inside [near, far].
    none = render_rays(field, rays_o, rays_d, 1.0, 5.0, n_coarse=16, n_fine=64, guide=(torch.zeros(3), std))
    assert bool((none.t_starts >= 1.0).all()) and bool((none.t_ends <= 5.0).all())


def test_chunking_and_direction_length_do_not_change_the_result(sphere_field) -> None:
    field = sphere_field(radius=0.8, sigma=1.5)
    rays_o, rays_d = _rays_towards_sphere(list(np.linspace(0, 1, 11)))
    full = render_rays(field, rays_o, rays_d, 1.0, 5.0, n_coarse=16, n_fine=16, chunk=1000)
    chunked = render_rays(field, rays_o, rays_d, 1.0, 5.0, n_coarse=16, n_fine=16, chunk=3)
    for key in ("rgb", "depth", "opacity", "weights", "t_starts"):
        torch.testing.assert_close(getattr(full, key), getattr(chunked, key))
    assert full.n_evaluated == chunked.n_evaluated == 11 * (16 + 32)
    # Directions twice as long: same opacity, t (in units of |d|) halves.
    double = render_rays(field, rays_o, 2 * rays_d, 0.5, 2.5, n_coarse=16, n_fine=16)
    torch.testing.assert_close(double.opacity, full.opacity, atol=1e-5, rtol=0)
    torch.testing.assert_close(double.depth, full.depth / 2, atol=1e-5, rtol=0)


def test_perturbed_rendering_is_seeded_and_unbiased(sphere_field) -> None:
    field = sphere_field(radius=0.8, sigma=1.5)
    rays_o, rays_d = _rays_towards_sphere([0.3] * 200)
    kw = {"n_coarse": 16, "n_fine": 16, "perturb": True}
    a = render_rays(field, rays_o, rays_d, 1.0, 5.0, generator=torch.Generator().manual_seed(0), **kw)
    b = render_rays(field, rays_o, rays_d, 1.0, 5.0, generator=torch.Generator().manual_seed(0), **kw)
    torch.testing.assert_close(a.rgb, b.rgb)
    assert a.t_starts.std(dim=0).max() > 0  # different rays got different samples
    with pytest.raises(ValueError, match=r"explicit torch\.Generator"):  # never the global RNG
        render_rays(field, rays_o, rays_d, 1.0, 5.0, **kw)
    expected = 1 - math.exp(-1.5 * 2 * math.sqrt(0.64 - 0.09))
    assert a.opacity.mean().item() == pytest.approx(expected, abs=0.01)


def test_rays_from_camera_match_the_numpy_camera() -> None:
    h, w = 6, 8
    K = intrinsics_from_fov(w, h, 70.0)
    c2w = look_at(np.array([1.0, -0.5, 2.0]), np.array([0.0, 0.3, -1.0]), np.array([0.0, 0.0, 1.0]))
    origins, dirs, z_scale = rays_from_camera(torch.tensor(K), torch.tensor(c2w), h, w)
    ref = camera_rays(K, h, w).reshape(-1, 3) @ c2w[:3, :3].T
    ref /= np.linalg.norm(ref, axis=-1, keepdims=True)
    np.testing.assert_allclose(dirs.numpy(), ref, atol=1e-6)
    np.testing.assert_allclose(origins.numpy(), np.broadcast_to(c2w[:3, 3], (h * w, 3)), atol=1e-6)
    np.testing.assert_allclose(z_scale.numpy(), ref @ c2w[:3, 2], atol=1e-6)
    idx = torch.tensor([0, 7, 8 * 5 + 3])
    _o2, d2, z2 = rays_from_camera(K, c2w, h, w, pixel_indices=idx)
    torch.testing.assert_close(d2, dirs[idx])
    torch.testing.assert_close(z2, z_scale[idx])


def test_z_depth_vs_ray_distance_on_a_fronto_parallel_plane(half_space_field) -> None:
    """A plane 2 m in front of a (rotated) camera: ray distance grows to the corners, z-depth is 2."""
    h, w = 6, 8
    K = intrinsics_from_fov(w, h, 90.0)
    eye = np.array([0.5, -1.0, 0.3])
    c2w = look_at(eye, np.array([2.0, 1.0, -0.5]), np.array([0.0, 0.0, 1.0]))
    forward = torch.tensor(c2w[:3, 2], dtype=torch.float32)
    rays_o, rays_d, z_scale = rays_from_camera(K, c2w, h, w)

    t_plane = 2.0 / z_scale  # analytic intersection with the plane dot(x - eye, f) = 2
    corners = torch.tensor([0, w - 1, (h - 1) * w, h * w - 1])
    assert bool((t_plane[corners] > 2.5).all())
    torch.testing.assert_close(ray_distance_to_z(t_plane, rays_d, forward), torch.full((h * w,), 2.0))
    torch.testing.assert_close(z_to_ray_distance(ray_distance_to_z(t_plane, rays_d, forward), rays_d, forward), t_plane)
    # Unnormalised directions with unit camera z: t equals z-depth.
    d_cam = rays_d / z_scale[:, None]
    torch.testing.assert_close(ray_distance_to_z(torch.full((h * w,), 2.0), d_cam, forward), torch.full((h * w,), 2.0))

    field = half_space_field(eye, forward, 2.0)
    out = render_rays(field, rays_o, rays_d, 0.5, 6.0, n_coarse=32, n_fine=64, z_scale=z_scale)
    torch.testing.assert_close(out.z_depth, torch.full((h * w,), 2.0), atol=0.03, rtol=0)
    torch.testing.assert_close(out.depth, t_plane, atol=0.05, rtol=0)
    assert bool((out.depth[corners] > 2.5).all())


def test_near_far_from_the_box_and_empty_batch(sphere_field) -> None:
    field = sphere_field(radius=0.8, sigma=1.5)
    rays_o, rays_d = _rays_towards_sphere([0.0, 0.5])
    t_near, t_far, hit = ray_aabb_intersect(rays_o, rays_d, torch.tensor([[-1.0] * 3, [1.0] * 3]))
    assert bool(hit.all())
    a = render_rays(field, rays_o, rays_d, t_near, t_far, n_coarse=64, n_fine=64)
    b = render_rays(field, rays_o, rays_d, 1.0, 5.0, n_coarse=64, n_fine=64)
    torch.testing.assert_close(a.opacity, b.opacity, atol=0.01, rtol=0)
    empty = render_rays(field, rays_o[:0], rays_d[:0], 1.0, 5.0, n_coarse=4, n_fine=4)
    assert empty.rgb.shape == (0, 3) and empty.n_evaluated == 0


def test_early_ray_termination_skips_samples_behind_an_opaque_wall(half_space_field) -> None:
    """Rays into an opaque half-space: without autograd, marching stops behind the wall's front face (fewer
    evaluations, the same image to within ``stop_below``); with autograd every sample is evaluated."""
    field = half_space_field(origin=(0.0, 0.0, 0.0), normal=(0.0, 0.0, 1.0), offset=0.5, sigma=1e3)
    n = 64
    rays_o = torch.zeros(n, 3)
    rays_d = torch.nn.functional.normalize(torch.cat([0.2 * torch.rand(n, 2) - 0.1, torch.ones(n, 1)], -1), dim=-1)
    kwargs = {"n_coarse": 32, "n_fine": 16}
    with torch.no_grad():
        full = render_rays(field, rays_o, rays_d, 0.0, 2.0, stop_below=0.0, **kwargs)
        early = render_rays(field, rays_o, rays_d, 0.0, 2.0, stop_below=1e-4, **kwargs)
    assert early.n_evaluated < 0.7 * full.n_evaluated
    torch.testing.assert_close(early.rgb, full.rgb, atol=1e-4, rtol=0)
    torch.testing.assert_close(early.depth, full.depth, atol=1e-3, rtol=0)
    # with autograd the fine pass evaluates every sample (the coarse pass, never differentiated, still stops)
    fine_all = render_rays(field, rays_o, rays_d, 0.0, 2.0, stop_below=1e-4, **kwargs)
    assert fine_all.n_evaluated - early.n_evaluated > 0
    assert fine_all.n_evaluated <= full.n_evaluated

