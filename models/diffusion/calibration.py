"""Calibration of the refiner's per-pixel uncertainty.

The spread of a few diffusion samples is a noisy, usually over-confident estimate of the error, and it says
little on measured pixels whose correction is bounded. The calibrated standard deviation combines it with the
sensor model's expected spread ``sigma`` (:func:`models.noise.expected_sigma`), separately on trusted
measurements and on the other pixels (holes, edges), where errors are of a different kind::

    std = sqrt((a_c * spread)^2 + (b_c * sigma)^2),     c = trusted or free

``(a_c, b_c)`` are chosen on validation frames so that the fractions of errors within 1 and 2 standard
deviations come as close as possible to a Gaussian's 0.6827 and 0.9545 (least squares over a log grid).
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Float, Shaped
from pydantic import Field

from models.config import StrictConfig

GAUSSIAN_WITHIN = (0.6827, 0.9545)
_GRID = np.concatenate([[0.0], np.logspace(-1.5, 2.0, 36)])


class Calibration(StrictConfig):
    """Coefficients of the calibrated standard deviation (the identity on the sample spread by default)."""

    spread_trusted: float = Field(default=1.0, ge=0)
    sigma_trusted: float = Field(default=0.0, ge=0)
    spread_free: float = Field(default=1.0, ge=0)
    sigma_free: float = Field(default=0.0, ge=0)
    pixels: int = Field(default=0, ge=0, description="validation pixels it was fitted on (0 = not fitted)")
    within_1sigma: float | None = None
    within_2sigma: float | None = None


def calibrated_std(
    spread: Float[np.ndarray, "*shape"], sigma: Float[np.ndarray, "*shape"], trusted: Shaped[np.ndarray, "*shape"],
    cal: Calibration,
) -> Float[np.ndarray, "*shape"]:
    """The calibrated standard deviation ``[H, W]`` (metres) from the sample spread and expected sensor sigma."""
    a = np.where(trusted, cal.spread_trusted, cal.spread_free)
    b = np.where(trusted, cal.sigma_trusted, cal.sigma_free)
    return np.sqrt((a * spread) ** 2 + (b * sigma) ** 2).astype(np.float32)


def _fit_pair(err: np.ndarray, spread: np.ndarray, sigma: np.ndarray) -> tuple[float, float, float, float]:
    """Best ``(a, b, within_1, within_2)`` on one class of pixels (all 1-D arrays of equal length)."""
    best = (np.inf, 1.0, 0.0, np.nan, np.nan)
    s2, g2, e = spread**2, sigma**2, np.abs(err)
    for a in _GRID:
        for b in _GRID:
            if a == 0 and b == 0:
                continue
            std = np.sqrt(a * a * s2 + b * b * g2)
            w1, w2 = float(np.mean(e <= std)), float(np.mean(e <= 2 * std))
            loss = (w1 - GAUSSIAN_WITHIN[0]) ** 2 + (w2 - GAUSSIAN_WITHIN[1]) ** 2
            if loss < best[0]:
                best = (loss, float(a), float(b), w1, w2)
    return best[1:]


def fit_calibration(
    err: np.ndarray, spread: np.ndarray, sigma: np.ndarray, trusted: np.ndarray, max_pixels: int = 100_000,
    seed: int = 0,
) -> Calibration:
    """Fit :class:`Calibration` to validation errors.

    Args:
        err: refined minus reference depth (metres) on pixels with a reference, any shape.
        spread, sigma, trusted: the sample spread, expected sensor sigma and trusted mask, same shape.
        max_pixels: at most this many pixels per class are used (a fixed random subset).

    Raises:
        ValueError: no pixel to fit on.
    """
    err, spread, sigma = (np.asarray(a, dtype=np.float64).ravel() for a in (err, spread, sigma))
    trusted = np.asarray(trusted, dtype=bool).ravel()
    if err.size == 0:
        raise ValueError("no validation pixels to calibrate the uncertainty on")
    rng = np.random.default_rng(seed)
    coef = {}
    for cls, mask in (("trusted", trusted), ("free", ~trusted)):
        idx = np.flatnonzero(mask)
        if idx.size > max_pixels:
            idx = rng.choice(idx, max_pixels, replace=False)
        coef[cls] = _fit_pair(err[idx], spread[idx], sigma[idx]) if idx.size else (1.0, 0.0, np.nan, np.nan)
    cal = Calibration(
        spread_trusted=coef["trusted"][0], sigma_trusted=coef["trusted"][1],
        spread_free=coef["free"][0], sigma_free=coef["free"][1], pixels=int(err.size),
    )
    std = calibrated_std(spread, sigma, trusted, cal)
    return cal.model_copy(update={
        "within_1sigma": float(np.mean(np.abs(err) <= std)), "within_2sigma": float(np.mean(np.abs(err) <= 2 * std)),
    })
