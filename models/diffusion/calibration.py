"""What a trained refiner fits on its validation frames: the bound on its edge corrections and the calibration
of its per-pixel uncertainty.

**Edge bound.** Measured pixels that are not trusted (near holes and depth discontinuities,
:func:`models.noise.trusted_measurements`) are free in the network's parametrisation, and there the robust first
guess it corrects (hole filling + median, the ``base``) is hard to beat: a network that learned the edges of its
training rooms can move them by centimetres on a room it has never seen. Each sample is therefore kept within
``k`` expected sensor sigmas of the base on those pixels (smooth tanh clamp; ``k = 0`` is the base itself)::

    d' = base + k sigma tanh((d - base) / (k sigma))      on measured, untrusted pixels

with ``k`` chosen on validation frames from :data:`BOUND_GRID` (``None``, free, wins ties), so a network that
helps there stays free. Holes stay free: filling them is where the network is best.

**Uncertainty.** The spread of a few diffusion samples is a noisy, usually over-confident estimate of the
error, and it says little on measured pixels whose correction is bounded. The calibrated standard deviation
combines it with the sensor model's expected spread ``sigma`` (:func:`models.noise.expected_sigma`),
separately on trusted measurements and on the other pixels (holes, edges), where errors are of a different
kind::

    std = sqrt((a_c * spread)^2 + (b_c * sigma)^2),     c = trusted or free

The spread is the raw samples' RMS deviation from the reported depth: on a pixel the edge bound holds at the
first guess, how far the network would have moved it, so a first guess the network disagrees with stays uncertain
(a class of its own for bounded pixels, fitted for Gaussian coverage, made them far more certain than that: a few
large errors at depth edges hide behind many small ones, and the NeRF, which weights its depth loss by this
standard deviation, lost 0.3-0.5 dB of colour PSNR to it).

``(a_c, b_c)`` are chosen on validation frames so that the fractions of errors within 1 and 2 standard
deviations come as close as possible to a Gaussian's 0.6827 and 0.9545 (least squares over a log grid).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from jaxtyping import Float, Shaped
from pydantic import Field

from models.config import StrictConfig

GAUSSIAN_WITHIN = (0.6827, 0.9545)
BOUND_GRID: tuple[float | None, ...] = (None, 8.0, 4.0, 2.0, 1.0, 0.5, 0.0)  # None = free, first so it wins ties
_GRID = np.concatenate([[0.0], np.logspace(-1.5, 2.0, 36)])


class Calibration(StrictConfig):
    """What was fitted on validation frames: the edge bound (``None``: free, as in models fitted before it
    existed) and the coefficients of the calibrated standard deviation (the identity on the sample spread by
    default)."""

    untrusted_bound: float | None = Field(
        default=None, ge=0, description="sigmas around the base on measured untrusted pixels (None = free)"
    )
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


def bound_to_base(
    depth: Float[np.ndarray, "*s h w"], base: Float[np.ndarray, "h w"], sigma: Float[np.ndarray, "h w"],
    mask: Shaped[np.ndarray, "h w"], k: float | None,
) -> Float[np.ndarray, "*s h w"]:
    """``depth`` (metres, any number of leading sample dims) kept within ``k * sigma`` of ``base`` where ``mask``
    (smooth tanh clamp; ``k = 0``: the base; ``None``: unchanged)."""
    if k is None:
        return depth
    if k == 0:
        return np.where(mask, base, depth).astype(depth.dtype)
    s = np.maximum(k * sigma, 1e-9)
    return np.where(mask, base + s * np.tanh((depth - base) / s), depth).astype(depth.dtype)


def select_untrusted_bound(
    frames: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
) -> tuple[float | None, dict[str, float]]:
    """The :data:`BOUND_GRID` value whose bounded sample mean has the least squared error on validation frames.

    Args:
        frames: per frame ``(samples [S, H, W], base, sigma, mask, clean)``: the refiner's unbounded samples, its
            base and expected sigma, the measured untrusted pixels and the reference depth (0 = none), metres.

    Returns:
        The bound and the RMSE (metres) on the masked pixels with a reference for every grid value
        (``"free"`` for ``None``); ``(None, {})`` when no masked pixel has a reference.
    """
    sse = dict.fromkeys(BOUND_GRID, 0.0)
    n = 0
    for samples, base, sigma, mask, clean in frames:
        m = mask & (clean > 0)
        if not m.any():
            continue
        n += int(m.sum())
        for k in BOUND_GRID:
            mean = bound_to_base(samples, base, sigma, mask, k).mean(0)
            sse[k] += float(np.sum((mean[m] - clean[m]) ** 2))
    if not n:
        return None, {}
    best = min(BOUND_GRID, key=lambda k: sse[k])  # min keeps the first of equals: free before any bound
    return best, {("free" if k is None else f"{k:g}"): float(np.sqrt(v / n)) for k, v in sse.items()}


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
