"""Uncertainty calibration: fitted coefficients give Gaussian coverage on fresh draws."""

from __future__ import annotations

import numpy as np
import pytest

from models.diffusion.calibration import Calibration, calibrated_std, fit_calibration


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
