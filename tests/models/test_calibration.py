"""What the refiner fits on validation frames: the edge bound, and uncertainty coefficients that give Gaussian
coverage on fresh draws."""

from __future__ import annotations

import numpy as np
import pytest

from models.diffusion.calibration import (
    BOUND_GRID,
    Calibration,
    bound_to_base,
    calibrated_std,
    fit_calibration,
    select_untrusted_bound,
)


def draws(rng: np.random.Generator, n: int):
    sigma = rng.uniform(0.002, 0.02, n)
    spread = rng.uniform(0.0, 0.01, n)
    trusted = rng.random(n) < 0.7
    true_std = np.where(trusted, 1.8 * sigma, np.hypot(3 * spread, 2 * sigma))
    return true_std * rng.standard_normal(n), spread, sigma, trusted


def test_fit_gives_gaussian_coverage_on_fresh_errors():
    rng = np.random.default_rng(0)
    cal = fit_calibration(*draws(rng, 150_000))
    err, spread, sigma, trusted = draws(rng, 150_000)
    std = calibrated_std(spread, sigma, trusted, cal)
    for mask in (trusted, ~trusted):
        within1 = np.mean(np.abs(err[mask]) <= std[mask])
        within2 = np.mean(np.abs(err[mask]) <= 2 * std[mask])
        assert within1 == pytest.approx(0.683, abs=0.03) and within2 == pytest.approx(0.954, abs=0.02)
    assert cal.pixels == 150_000 and cal.within_1sigma == pytest.approx(0.683, abs=0.03)
    # the raw spread alone is badly over-confident on these errors
    raw = calibrated_std(spread, sigma, trusted, Calibration())
    assert np.mean(np.abs(err) <= raw) < 0.4


def test_identity_calibration_is_the_spread_and_empty_input_is_refused():
    spread = np.array([0.01, 0.02])
    np.testing.assert_allclose(calibrated_std(spread, np.ones(2), np.array([True, False]), Calibration()), spread)
    with pytest.raises(ValueError, match="no validation pixels"):
        fit_calibration(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0, bool))


def test_edge_bound_keeps_masked_samples_near_the_base_and_leaves_the_rest():
    rng = np.random.default_rng(1)
    base = rng.uniform(1.0, 3.0, (6, 7)).astype(np.float32)
    sigma = np.full_like(base, 0.01)
    mask = rng.random((6, 7)) < 0.5
    samples = (base + rng.normal(0.0, 0.2, (3, 6, 7))).astype(np.float32)
    assert bound_to_base(samples, base, sigma, mask, None) is samples
    np.testing.assert_array_equal(bound_to_base(samples, base, sigma, mask, 0.0), np.where(mask, base, samples))
    for k in (0.5, 2.0):
        out = bound_to_base(samples, base, sigma, mask, k)
        assert out.dtype == np.float32 and out.shape == samples.shape
        np.testing.assert_array_equal(out[:, ~mask], samples[:, ~mask])
        assert np.all(np.abs(out - base)[:, mask] <= k * 0.01 + 1e-6)
        # the clamp is monotonic and keeps the side: a sample above the base stays above it
        assert np.all(np.sign(out - base)[:, mask] == np.sign(samples - base)[:, mask])
    # far inside the bound it is the identity to first order
    near = base + 1e-4
    np.testing.assert_allclose(bound_to_base(near[None], base, sigma, mask, 8.0)[0], near, atol=1e-6)


def test_edge_bound_selection_picks_free_for_a_good_network_and_the_base_for_a_bad_one():
    rng = np.random.default_rng(2)
    clean = rng.uniform(1.0, 3.0, (2, 32, 32)).astype(np.float32)
    clean[:, :4] = 0  # no reference there: not scored
    base = clean + rng.normal(0.0, 0.004, clean.shape).astype(np.float32)
    sigma = np.full_like(clean, 0.01)
    mask = np.zeros(clean.shape, bool)
    mask[:, :, 10:20] = True

    def frames(samples):
        return [(samples[i], base[i], sigma[i], mask[i], clean[i]) for i in range(2)]

    exact = np.repeat(clean[:, None], 2, 1)  # samples equal to the reference: nothing beats free
    bound, rmse = select_untrusted_bound(frames(exact))
    assert bound is None and rmse["free"] == 0.0 and rmse["0"] == pytest.approx(0.004, rel=0.05)
    wild = exact + rng.normal(0.0, 0.05, exact.shape).astype(np.float32)  # far worse than the base
    bound, rmse = select_untrusted_bound(frames(wild))
    assert bound == 0.0 and rmse["0"] < rmse["1"] < rmse["4"] < rmse["free"]
    assert set(rmse) == {"free" if k is None else f"{k:g}" for k in BOUND_GRID}
    assert select_untrusted_bound([(wild[0], base[0], sigma[0], np.zeros_like(mask[0]), clean[0])]) == (None, {})
