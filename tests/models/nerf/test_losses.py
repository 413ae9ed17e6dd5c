"""NeRF losses against hand-computed values."""

from __future__ import annotations

import torch

from models.nerf.losses import depth_nll_loss, ds_nerf_loss, patch_edge_loss, rgb_loss


def test_rgb_loss_is_mse():
    assert rgb_loss(torch.zeros(2, 3), torch.full((2, 3), 0.5)).item() == 0.25


def test_depth_nll_weights_by_uncertainty_and_ignores_missing():
    z_pred = torch.tensor([2.1, 2.1, 5.0])
    z_ref = torch.tensor([2.0, 2.0, 0.0])  # last pixel has no reference
    sigma = torch.tensor([0.0, 0.1, 0.0])
    loss = depth_nll_loss(z_pred, z_ref, sigma, sigma_floor=0.1)
    expected = (0.01 / 0.01 + 0.01 / 0.02) / 2
    torch.testing.assert_close(loss, torch.tensor(expected), rtol=1e-5, atol=1e-6)
    assert depth_nll_loss(z_pred, torch.zeros(3), sigma, 0.1).item() == 0.0


def test_ds_loss_prefers_termination_at_the_reference():
    t = torch.linspace(0.05, 3.95, 40)[None]
    deltas = torch.full_like(t, 0.1)
    at_ref = torch.exp(-0.5 * ((t - 2.0) / 0.05) ** 2)
    at_ref = at_ref / at_ref.sum()
    elsewhere = torch.exp(-0.5 * ((t - 3.0) / 0.05) ** 2)
    elsewhere = elsewhere / elsewhere.sum()
    ref, s = torch.tensor([2.0]), torch.tensor([0.05])
    assert ds_nerf_loss(at_ref, t, deltas, ref, s) < ds_nerf_loss(elsewhere, t, deltas, ref, s)
    assert ds_nerf_loss(at_ref, t, deltas, torch.zeros(1), s).item() == 0.0


def test_patch_edge_loss_sees_blurred_edges_only():
    ref = torch.tensor([[1.0, 3.0], [1.0, 3.0]]).reshape(-1)  # one 2x2 patch with a vertical edge
    assert patch_edge_loss(ref.clone(), ref, 2).item() == 0.0
    assert patch_edge_loss(ref + 0.7, ref, 2).item() == 0.0, "an offset keeps the edges"
    blurred = torch.tensor([[1.5, 2.5], [1.5, 2.5]]).reshape(-1)
    # horizontal differences: 1 vs 2 (x2 rows); vertical: 0 vs 0 (x2 columns) -> mean |.| = 0.5
    torch.testing.assert_close(patch_edge_loss(blurred, ref, 2), torch.tensor(0.5))
    holes = ref.clone()
    holes[1] = 0
    # pairs touching the hole are left out: bottom row |1 - 2| and left column |0 - 0| remain
    torch.testing.assert_close(patch_edge_loss(blurred, holes, 2), torch.tensor(0.5))
    assert patch_edge_loss(blurred, ref, 1).item() == 0.0
