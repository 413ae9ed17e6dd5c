"""Tests of the depth-refinement auxiliary losses (models/diffusion/losses.py) on tiny synthetic maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from scipy.ndimage import gaussian_filter
from skimage.metrics import structural_similarity

from models.diffusion.losses import (
    LossWeights,
    depth_refinement_loss,
    edge_loss,
    erode_mask,
    masked_mean,
    ms_ssim_loss,
    normal_loss,
    normals_from_depth,
    sobel,
    sobel_magnitude,
    ssim_map,
)

H, W = 24, 32


def t(a: np.ndarray) -> torch.Tensor:
    """``[H, W]`` array -> ``[1, 1, H, W]`` float64 tensor."""
    return torch.as_tensor(np.asarray(a, dtype=np.float64))[None, None]


def step(blur: float = 0.0, col: int = W // 2) -> np.ndarray:
    """Vertical depth step from 1 m to 2 m at ``col``, optionally Gaussian-blurred along rows."""
    z = np.where(np.arange(W)[None, :] < col, 1.0, 2.0) * np.ones((H, 1))
    return gaussian_filter(z, sigma=(0, blur), mode="nearest") if blur else z


def full_mask() -> torch.Tensor:
    return torch.ones(1, 1, H, W, dtype=torch.bool)


def rng_depth(seed: int = 0) -> torch.Tensor:
    """Smooth positive random depth ``[2, 1, H, W]``."""
    g = np.random.default_rng(seed)
    z = 2.0 + gaussian_filter(g.normal(size=(2, H, W)), sigma=(0, 2, 2)) * 3
    return torch.as_tensor(z)[:, None]


# --------------------------------------------------------------------------------------------- helpers


def test_masked_mean_ignores_invalid_even_nan():
    x = torch.tensor([[[[1.0, 3.0], [float("nan"), 100.0]]]])
    m = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    assert masked_mean(x, m).item() == 2.0
    assert masked_mean(x, torch.zeros_like(m)).item() == 0.0


def test_erode_mask_drops_border_and_hole_neighbours():
    m = torch.ones(1, 1, 6, 6, dtype=torch.bool)
    m[0, 0, 3, 3] = False
    e = erode_mask(m)[0, 0]
    assert not e[0].any() and not e[:, 0].any() and not e[-1].any()
    assert not e[2:5, 2:5].any()
    assert e[1, 1] and e[1, 4]


# ---------------------------------------------------------------------------------------------- Sobel


def test_sobel_on_ramp_is_8_times_slope_in_interior():
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    gx, gy = sobel(t(0.3 * u - 0.7 * v))
    inner = (0, 0, slice(1, -1), slice(1, -1))
    assert torch.allclose(gx[inner], torch.tensor(8 * 0.3, dtype=torch.float64))
    assert torch.allclose(gy[inner], torch.tensor(8 * -0.7, dtype=torch.float64))
    assert gx.shape == gy.shape == (1, 1, H, W)
    mag = sobel_magnitude(t(0.3 * u - 0.7 * v), eps=0.0)
    assert torch.allclose(mag[inner], torch.tensor(8 * np.hypot(0.3, 0.7), dtype=torch.float64))


# ------------------------------------------------------------------------------------------ edge loss


def test_edge_loss_zero_when_identical_and_grows_with_blur():
    sharp = t(step())
    assert edge_loss(sharp, sharp, full_mask()).item() == 0.0
    l1 = edge_loss(t(step(blur=1.0)), sharp, full_mask()).item()
    l3 = edge_loss(t(step(blur=3.0)), sharp, full_mask()).item()
    assert 0 < l1 < l3


def test_edge_loss_penalises_wrong_direction():
    ramp = t(np.arange(W)[None, :] * np.ones((H, 1)) * 0.1)
    flipped = torch.flip(ramp, dims=[-1])
    assert edge_loss(flipped, ramp, full_mask()).item() > 1.0


def test_edge_loss_ignores_pixels_outside_mask():
    target = t(step())
    pred = t(step(blur=1.0))
    mask = full_mask()
    mask[..., 5:10, 3:8] = False
    base = edge_loss(pred, target, mask)
    pred2 = pred.clone()
    pred2[..., 5:10, 3:8] = torch.randn(5, 5, dtype=torch.float64) * 100
    assert edge_loss(pred2, target, mask).item() == pytest.approx(base.item(), abs=1e-12)


# ----------------------------------------------------------------------------------------------- SSIM


def test_ssim_map_identical_is_one_and_drops_with_noise():
    x = rng_depth()
    assert torch.allclose(ssim_map(x, x), torch.ones_like(x))
    g = torch.Generator().manual_seed(0)
    s_small = ssim_map(x, x + 0.05 * torch.randn(x.shape, generator=g, dtype=x.dtype)).mean()
    s_big = ssim_map(x, x + 0.3 * torch.randn(x.shape, generator=g, dtype=x.dtype)).mean()
    assert 1 > s_small > s_big


@pytest.mark.parametrize(
    ("ours", "skimage_kw"),
    [
        ({"window": 7}, {"win_size": 7}),
        (
            {"window": 11, "gaussian": True, "sigma": 1.5},
            {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False},
        ),
    ],
)
def test_ssim_map_matches_skimage_in_interior(ours, skimage_kw):
    g = np.random.default_rng(1)
    a = gaussian_filter(g.random((H, W)), 1.0)
    b = np.clip(a + 0.05 * g.normal(size=(H, W)), 0, 1)
    _, ref = structural_similarity(a, b, data_range=1.0, full=True, **skimage_kw)
    mine = ssim_map(t(a), t(b), data_range=1.0, **ours)[0, 0].numpy()
    r = ours["window"] // 2
    inner = (slice(r, -r), slice(r, -r))
    assert np.abs(mine[inner] - ref[inner]).max() < 1e-6
    assert abs(mine[inner].mean() - ref[inner].mean()) < 0.02


def test_ms_ssim_loss_zero_for_identical_positive_otherwise_and_ignores_holes():
    x = rng_depth()
    mask = torch.ones_like(x, dtype=torch.bool)
    assert ms_ssim_loss(x, x, mask).item() == pytest.approx(0.0, abs=1e-12)
    noisy = x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype)
    assert ms_ssim_loss(noisy, x, mask).item() > 0.01
    mask[:, :, 4:9, 6:12] = False
    base = ms_ssim_loss(noisy, x, mask)
    noisy2 = noisy.clone()
    noisy2[:, :, 4:9, 6:12] = 1e3
    assert ms_ssim_loss(noisy2, x, mask).item() == pytest.approx(base.item(), abs=1e-12)


# -------------------------------------------------------------------------------------------- normals


def test_normals_of_fronto_parallel_plane():
    n = normals_from_depth(t(np.full((H, W), 2.5)), focal_px=50.0, principal_point=(W / 2, H / 2))
    expected = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).reshape(1, 3, 1, 1)
    assert torch.allclose(n, expected.expand_as(n))


def test_normals_of_depth_ramp_match_formula_without_principal_point():
    f, a, b = 40.0, 2.0, 0.01
    u = np.arange(W)[None, :] * np.ones((H, 1))
    z = a + b * u
    n = normals_from_depth(t(z), focal_px=f)[0].numpy()
    expected = np.stack([-f * b / z, np.zeros_like(z), np.ones_like(z)])
    expected /= np.linalg.norm(expected, axis=0)
    assert np.abs(n[:, 1:-1, 1:-1] - expected[:, 1:-1, 1:-1]).max() < 1e-9


def test_normals_of_tilted_3d_plane_exact_with_principal_point():
    f, cx, cy = 30.0, (W - 1) / 2, (H - 1) / 2
    normal = np.array([0.3, -0.2, 1.0])
    normal /= np.linalg.norm(normal)
    d = 2.0  # plane n . P = d, P = z ((u - cx) / f, (v - cy) / f, 1)
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    z = d / (normal[0] * (u - cx) / f + normal[1] * (v - cy) / f + normal[2])
    n = normals_from_depth(t(z), focal_px=f, principal_point=(cx, cy))[0].numpy()
    err = np.abs(n[:, 1:-1, 1:-1] - normal[:, None, None]).max()
    assert err < 2e-3  # finite differences on 1/z-linear depth
    approx = normals_from_depth(t(z), focal_px=f)[0].numpy()
    assert np.abs(approx[:, H // 2, W // 2] - normal).max() < 2e-3  # exact at the principal point only


def test_normals_scale_invariant_and_per_sample_focal():
    z = rng_depth()
    n1 = normals_from_depth(z, focal_px=torch.tensor([20.0, 30.0]), principal_point=(W / 2, H / 2))
    n2 = normals_from_depth(3.7 * z, focal_px=torch.tensor([20.0, 30.0]), principal_point=(W / 2, H / 2))
    assert n1.shape == (2, 3, H, W)
    assert torch.allclose(n1, n2)
    assert torch.allclose(n1.norm(dim=1), torch.ones(2, H, W, dtype=z.dtype))
    assert torch.allclose(n1[1:], normals_from_depth(z[1:], focal_px=30.0, principal_point=(W / 2, H / 2)))


def test_normal_loss_zero_for_identical_positive_for_tilt_and_scale_free():
    z = rng_depth()
    mask = torch.ones_like(z, dtype=torch.bool)
    assert normal_loss(z, z, mask, focal_px=20.0).item() == pytest.approx(0.0, abs=1e-12)
    assert normal_loss(2 * z, z, mask, focal_px=20.0).item() == pytest.approx(0.0, abs=1e-12)
    u = torch.arange(W, dtype=z.dtype)
    assert normal_loss(z + 0.05 * u, z, mask, focal_px=20.0).item() > 0.01


# ------------------------------------------------------------------------------------ all the losses


LOSSES = {
    "edge": edge_loss,
    "ssim": ms_ssim_loss,
    "normal": lambda p, q, m: normal_loss(p, q, m, focal_px=20.0),
    "total_aux": lambda p, q, m: depth_refinement_loss(p, q, m, LossWeights(), focal_px=20.0)["total_aux"],
}


@pytest.mark.parametrize("name", list(LOSSES))
def test_losses_have_finite_gradients_with_holes_and_zero_on_empty_mask(name):
    target = rng_depth()
    pred = (target + 0.1 * torch.randn(target.shape, generator=torch.Generator().manual_seed(2), dtype=target.dtype))
    mask = torch.ones_like(target, dtype=torch.bool)
    mask[:, :, 3:7, 5:9] = False
    target = torch.where(mask, target, torch.zeros_like(target))  # holes are 0 in the reference
    pred = torch.where(mask, pred, torch.zeros_like(pred)).requires_grad_(True)
    loss = LOSSES[name](pred, target, mask)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert torch.isfinite(pred.grad).all()
    assert (pred.grad[~mask] == 0).all()  # holes get no gradient

    pred.grad = None
    empty = LOSSES[name](pred, target, torch.zeros_like(mask))
    assert empty.item() == 0.0
    empty.backward()
    assert torch.isfinite(pred.grad).all() and (pred.grad == 0).all()


def test_depth_refinement_loss_keys_and_weighted_sum():
    target = rng_depth()
    pred = target * (1 + 0.05 * torch.sin(torch.arange(W, dtype=target.dtype)))
    mask = torch.ones_like(target)  # float mask accepted
    w = LossWeights(edge=1.0, ssim=2.0, normal=3.0)
    out = depth_refinement_loss(pred, target, mask, w, focal_px=20.0)
    assert set(out) == {"edge", "ssim", "normal", "total_aux"}
    expected = out["edge"] + 2 * out["ssim"] + 3 * out["normal"]
    assert torch.allclose(out["total_aux"], expected)


def test_loss_weights_validated():
    assert LossWeights().mse == 1.0
    with pytest.raises(ValidationError):
        LossWeights(edge=-1.0)
    with pytest.raises(ValidationError):
        LossWeights(edges=1.0)
