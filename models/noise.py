"""Structured-light (Kinect v1 class) depth-sensor noise applied to clean depth.

The model turns a clean z-depth map into what a structured-light sensor would report: jagged edges (lateral
noise), flying pixels at depth discontinuities, depth-dependent axial noise, disparity quantisation and holes
(projector shadows, grazing angles, dark surfaces, random dropout, working range).

References:
    * Nguyen, Izadi & Lovell 2012, "Modeling Kinect Sensor Noise for Improved 3D Reconstruction and
      Tracking": axial sigma ``0.0012 + 0.0019 (z - 0.4)^2`` m plus a grazing-angle term, lateral sigma
      ``0.8 + 0.035 theta / (pi/2 - theta)`` px.
    * Khoshelham & Elberink 2012, "Accuracy and Resolution of Kinect Depth Data": depth is measured through
      disparity ``d = f b / z``, so a disparity step is a depth step of ``z^2 s / (f b)``.

Conventions follow :mod:`models.camera`: OpenCV camera axes, depth is z-depth in metres, ``0`` = no measurement.
All randomness comes from a caller-supplied :class:`numpy.random.Generator`; there is no global state.
"""

from __future__ import annotations

import zlib
from typing import Literal

import cv2
import numpy as np

from models.camera import incidence_angle
from models.noise_config import (  # noqa: F401 (re-exported)
    AxialNoiseConfig,
    DarkSurfaceConfig,
    DropoutConfig,
    FlyingPixelConfig,
    GrazingConfig,
    LateralNoiseConfig,
    NoiseModelConfig,
    QuantizationConfig,
    RangeConfig,
    SensorPrior,
    ShadowConfig,
)

# Incidence angles are clipped to this (radians) before entering the Nguyen formulas, which diverge at
# pi/2 and were fitted on angles up to about 80 degrees. Normals estimated across a depth discontinuity
# come out near 90 degrees; the clip keeps their noise finite (grazing dropout handles true grazing).
_MAX_MODEL_ANGLE = float(np.deg2rad(80.0))


# ------------------------------------------------------------------------------------------ noise laws


def axial_sigma(z: np.ndarray | float, theta: np.ndarray | float = 0.0) -> np.ndarray:
    """Axial (depth) noise standard deviation of a Kinect v1 (Nguyen, Izadi & Lovell 2012).

    ``sigma_z = 0.0012 + 0.0019 (z - 0.4)^2 + 0.0001 / sqrt(z) * theta^2 / (pi/2 - theta)^2``.

    Args:
        z: Depth in metres, any shape (``> 0``).
        theta: Incidence angle in radians (``0 <= theta < pi/2``), broadcastable against ``z``.

    Returns:
        Sigma in metres, float64, the broadcast shape of ``z`` and ``theta``.
    """
    z = np.asarray(z, dtype=np.float64)
    theta = np.asarray(theta, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        angle_term = 0.0001 / np.sqrt(z) * theta**2 / (np.pi / 2 - theta) ** 2
    return 0.0012 + 0.0019 * (z - 0.4) ** 2 + angle_term


def lateral_sigma_px(theta: np.ndarray | float, base_px: float = 0.8) -> np.ndarray:
    """Lateral noise standard deviation in pixels (Nguyen, Izadi & Lovell 2012).

    ``(0.8 + 0.035 theta / (pi/2 - theta)) * base_px / 0.8``.

    Args:
        theta: Incidence angle in radians (``0 <= theta < pi/2``), any shape.
        base_px: Sigma at normal incidence in pixels.

    Returns:
        Sigma in pixels, float64, same shape as ``theta``.
    """
    theta = np.asarray(theta, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (0.8 + 0.035 * theta / (np.pi / 2 - theta)) * (base_px / 0.8)


def disparity_step_depth(
    z: np.ndarray | float, focal_px: float, baseline_m: float, subpixel: float
) -> np.ndarray:
    """Depth change of one disparity step at depth ``z`` (Khoshelham & Elberink 2012): ``z^2 s / (f b)``.

    Args:
        z: Depth in metres, any shape.
        focal_px: Focal length in pixels.
        baseline_m: Projector-camera baseline in metres.
        subpixel: Disparity step in pixels.

    Returns:
        Depth step in metres, float64, same shape as ``z``.
    """
    z = np.asarray(z, dtype=np.float64)
    return z**2 * subpixel / (focal_px * baseline_m)


def quantize_depth(z: np.ndarray, focal_px: float, baseline_m: float, subpixel: float) -> np.ndarray:
    """Round depth to the nearest representable disparity ``d = f b / z`` (multiples of ``subpixel``).

    Args:
        z: Depth in metres, any shape; ``0`` (no measurement) stays ``0``.
        focal_px: Focal length in pixels.
        baseline_m: Projector-camera baseline in metres.
        subpixel: Disparity step in pixels.

    Returns:
        Quantised depth in metres, float64, same shape as ``z``. Depths so far that their disparity rounds to
        zero become ``0``.
    """
    z = np.asarray(z, dtype=np.float64)
    fb = focal_px * baseline_m
    valid = z > 0
    out = np.zeros_like(z)
    d = np.round(fb / z[valid] / subpixel) * subpixel
    with np.errstate(divide="ignore"):
        out[valid] = np.where(d > 0, fb / d, 0.0)
    return out


# Floor of :func:`expected_sigma` (metres): depth is never known better than this.
SIGMA_FLOOR_M = 5e-4


def expected_sigma(z: np.ndarray, prior: SensorPrior) -> np.ndarray:
    """Expected standard deviation (metres) of a measured depth ``z`` about the true one, at normal incidence.

    ``sqrt((axial_scale * sigma_axial(z))^2 + step(z)^2 / 12)`` with the Nguyen et al. axial sigma and the
    disparity step ``z^2 s / (f b)`` of :func:`disparity_step_depth` (rounding to a step of width ``q`` has
    variance ``q^2 / 12``), at least :data:`SIGMA_FLOOR_M`.

    Args:
        z: Depth in metres, any shape; values ``<= 0`` give the floor.

    Returns:
        float32 array of the shape of ``z``.
    """
    z = np.maximum(np.asarray(z, dtype=np.float64), 0.0)
    axial = prior.axial_scale * axial_sigma(np.maximum(z, 1e-3))
    step = disparity_step_depth(z, prior.sensor_focal_px, prior.baseline_m, prior.subpixel)
    sigma = np.sqrt(axial**2 + step**2 / 12.0)
    return np.where(z > 0, np.maximum(sigma, SIGMA_FLOOR_M), SIGMA_FLOOR_M).astype(np.float32)


def trusted_measurements(depth: np.ndarray, focal_px: float, prior: SensorPrior) -> np.ndarray:
    """Measured pixels whose error the sensor model bounds: away from holes and depth discontinuities.

    A pixel is *not* trusted when it is a hole, or lies within ``r`` pixels of a hole or of a jump between
    4-neighbours larger than ``max(edge_threshold_m, 6 * expected_sigma)`` (two independent measurements of
    one surface differ by more than that with probability < 3e-5). ``r = max(1, round(focal_px /
    sensor_focal_px))``: one native sensor pixel, where lateral jitter (0.8 px) and flying pixels live, at this
    image's resolution.

    Args:
        depth: Observed z-depth ``[H, W]`` in metres, ``0`` = hole.
        focal_px: Focal length of this image in pixels.

    Returns:
        Boolean mask ``[H, W]``.
    """
    depth = np.asarray(depth, dtype=np.float32)
    valid = depth > 0
    sigma = expected_sigma(depth, prior)
    thr = np.maximum(prior.edge_threshold_m, 6.0 * sigma)
    bad = ~valid
    jump_h = np.abs(depth[:, 1:] - depth[:, :-1]) > np.minimum(thr[:, 1:], thr[:, :-1])
    jump_v = np.abs(depth[1:, :] - depth[:-1, :]) > np.minimum(thr[1:, :], thr[:-1, :])
    bad[:, 1:] |= jump_h
    bad[:, :-1] |= jump_h
    bad[1:, :] |= jump_v
    bad[:-1, :] |= jump_v
    r = max(1, round(focal_px / prior.sensor_focal_px))
    bad = cv2.dilate(bad.astype(np.uint8), np.ones((2 * r + 1, 2 * r + 1), np.uint8)) > 0
    return valid & ~bad


# ------------------------------------------------------------------------------------- geometry masks


def _projector_shadow_mask_right(depth: np.ndarray, focal_px: float, baseline_m: float) -> np.ndarray:
    """Shadow mask for a projector to the right of the camera; see :func:`projector_shadow_mask`."""
    _h, w = depth.shape
    valid = depth > 0
    u = np.arange(w, dtype=np.float64)[None, :]
    with np.errstate(divide="ignore"):
        p = np.where(valid, u - focal_px * baseline_m / np.where(valid, depth, 1.0), np.inf)
    # Smallest projector column among the pixels strictly to the right of each pixel.
    suffix_min = np.minimum.accumulate(p[:, ::-1], axis=1)[:, ::-1]
    right_min = np.full_like(p, np.inf)
    right_min[:, :-1] = suffix_min[:, 1:]
    return valid & (p >= right_min)


def projector_shadow_mask(
    depth: np.ndarray, K: np.ndarray, baseline_m: float, side: Literal["left", "right"]
) -> np.ndarray:
    """Pixels the camera sees but the projector cannot illuminate (structured light returns no depth there).

    Rectified geometry: the projector sits ``baseline_m`` to the ``side`` of the camera along the camera x axis,
    so a pixel at column ``u`` with depth ``z`` maps to projector column ``p = u - f b / z`` (projector on the
    right; ``+`` for the left). Along a row, a pixel is shadowed when some pixel farther towards the projector
    maps to a projector column at or beyond it (the projector ray to it is blocked by a closer surface). For a
    projector on the right the shadow therefore falls on the background just left of a foreground object, with
    a width of ``f b (1/z_near - 1/z_far)`` pixels.

    Args:
        depth: Z-depth ``[H, W]`` in metres, ``0`` = no measurement (holes cast no shadow and are not marked).
        K: Intrinsics ``[3, 3]``; only ``K[0, 0]`` is used.
        baseline_m: Projector-camera baseline in metres.
        side: ``"right"`` or ``"left"``: where the projector is, seen from the camera.

    Returns:
        Boolean mask ``[H, W]``, True where the projector is occluded.
    """
    depth = np.asarray(depth, dtype=np.float64)
    if depth.ndim != 2:
        raise ValueError(f"depth must be [H, W], got shape {depth.shape}")
    focal = float(K[0, 0])
    if side == "right":
        return _projector_shadow_mask_right(depth, focal, baseline_m)
    if side == "left":
        # Mirroring the image swaps the projector's side: u -> W-1-u turns p = u + fb/z into W-1 - (u' - fb/z).
        return _projector_shadow_mask_right(depth[:, ::-1], focal, baseline_m)[:, ::-1]
    raise ValueError(f"side must be 'left' or 'right', got {side!r}")


def depth_edges(depth: np.ndarray, threshold_m: float) -> np.ndarray:
    """Pixels next to a depth discontinuity.

    Args:
        depth: Z-depth ``[H, W]`` in metres, ``0`` = no measurement.
        threshold_m: A jump larger than this (metres) between two valid 4-neighbours is a discontinuity.

    Returns:
        Boolean mask ``[H, W]``: True on both valid pixels of every such pair; holes are never marked and a
        jump to a hole does not count.
    """
    depth = np.asarray(depth, dtype=np.float64)
    valid = depth > 0
    edges = np.zeros(depth.shape, dtype=bool)
    jump_h = valid[:, 1:] & valid[:, :-1] & (np.abs(depth[:, 1:] - depth[:, :-1]) > threshold_m)
    jump_v = valid[1:, :] & valid[:-1, :] & (np.abs(depth[1:, :] - depth[:-1, :]) > threshold_m)
    edges[:, 1:] |= jump_h
    edges[:, :-1] |= jump_h
    edges[1:, :] |= jump_v
    edges[:-1, :] |= jump_v
    return edges


def _neighbourhood_min_max(depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Min and max of valid depth (``> 0``) over each pixel's 3x3 neighbourhood, each ``[H, W]``.

    Pixels without any valid neighbour get ``+inf`` / ``-inf``.
    """
    valid = depth > 0
    lo = np.pad(np.where(valid, depth, np.inf), 1, constant_values=np.inf)
    hi = np.pad(np.where(valid, depth, -np.inf), 1, constant_values=-np.inf)
    win_lo = np.lib.stride_tricks.sliding_window_view(lo, (3, 3))
    win_hi = np.lib.stride_tricks.sliding_window_view(hi, (3, 3))
    return win_lo.min(axis=(-2, -1)), win_hi.max(axis=(-2, -1))


def _luma(rgb: np.ndarray) -> np.ndarray:
    """Luma ``[H, W]`` in ``[0, 1]`` of a uint8 RGB image ``[H, W, 3]`` (Rec. 601 weights)."""
    rgb = rgb.astype(np.float64)
    return (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]) / 255.0


def _grazing_drop_prob(theta: np.ndarray, start_deg: float, full_deg: float) -> np.ndarray:
    """Dropout probability ``[H, W]`` ramping linearly from 0 at ``start_deg`` to 1 at ``full_deg``; NaN -> 0."""
    deg = np.degrees(np.nan_to_num(theta, nan=0.0))
    return np.clip((deg - start_deg) / (full_deg - start_deg), 0.0, 1.0)


# ------------------------------------------------------------------------------------------- effects


def _lateral_jitter(depth: np.ndarray, sigma_px: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Resample ``depth [H, W]`` at nearest-neighbour positions offset by ``N(0, sigma_px [H, W])`` pixels."""
    h, w = depth.shape
    offsets = rng.standard_normal((2, h, w)) * sigma_px
    v, u = np.mgrid[0:h, 0:w]
    vv = np.clip(v + np.rint(offsets[0]).astype(np.int64), 0, h - 1)
    uu = np.clip(u + np.rint(offsets[1]).astype(np.int64), 0, w - 1)
    return depth[vv, uu]


def _flying_pixels(
    depth: np.ndarray, edges: np.ndarray, prob: float, rng: np.random.Generator
) -> np.ndarray:
    """Replace edge pixels, with probability ``prob``, by ``alpha z_near + (1 - alpha) z_far``, alpha ~ U(0, 1).

    ``z_near`` / ``z_far`` are the min / max valid depth of the pixel's 3x3 neighbourhood in ``depth``.
    """
    near, far = _neighbourhood_min_max(depth)
    pick = rng.random(depth.shape) < prob
    alpha = rng.random(depth.shape)
    chosen = edges & pick & (depth > 0) & np.isfinite(near) & np.isfinite(far) & (far > near)
    out = depth.copy()
    out[chosen] = alpha[chosen] * near[chosen] + (1.0 - alpha[chosen]) * far[chosen]
    return out


def _check_inputs(depth: np.ndarray, K: np.ndarray, rgb: np.ndarray | None) -> None:
    """Raise ``ValueError`` on inputs of the wrong shape or kind."""
    if depth.ndim != 2:
        raise ValueError(f"depth must be [H, W], got shape {depth.shape}")
    if np.shape(K) != (3, 3):
        raise ValueError(f"K must be [3, 3], got shape {np.shape(K)}")
    if rgb is not None:
        if rgb.shape != (*depth.shape, 3):
            raise ValueError(f"rgb must be [H, W, 3] matching depth {depth.shape}, got shape {rgb.shape}")
        if rgb.dtype != np.uint8:
            raise ValueError(f"rgb must be uint8, got {rgb.dtype}")


def simulate_sensor_noise(
    depth: np.ndarray,
    K: np.ndarray,
    cfg: NoiseModelConfig,
    rng: np.random.Generator,
    rgb: np.ndarray | None = None,
) -> np.ndarray:
    """Simulate a structured-light depth sensor on clean depth.

    Geometry (incidence angle, projector shadow, depth edges) is computed from the clean depth first; then, in
    order: lateral jitter, flying pixels, axial noise, disparity quantisation, holes (shadow, grazing angle,
    dark surface, random dropout, working range). Each effect is skipped when its ``enabled`` is False; with all
    of them disabled the output equals the input. Input holes stay holes.

    Args:
        depth: Clean z-depth ``[H, W]`` in metres (any float dtype), ``0`` = no measurement; non-finite or
            negative values are treated as holes. Not modified.
        K: Intrinsics ``[3, 3]`` in pixels.
        cfg: Noise settings.
        rng: Source of all randomness.
        rgb: Optional uint8 RGB image ``[H, W, 3]`` aligned with ``depth``; needed for dark-surface dropout
            (skipped without it).

    Returns:
        Noisy z-depth ``[H, W]`` float32 in metres, ``0`` = hole.
    """
    depth = np.asarray(depth)
    K = np.asarray(K, dtype=np.float64)
    _check_inputs(depth, K, rgb)
    clean = depth.astype(np.float64)  # a copy: the caller's array is never written
    valid_in = np.isfinite(clean) & (clean > 0)
    clean[~valid_in] = 0.0

    need_theta = cfg.lateral.enabled or cfg.axial.enabled or cfg.grazing.enabled
    theta = incidence_angle(clean, K) if need_theta else None
    theta_model = None
    if theta is not None:
        theta_model = np.clip(np.nan_to_num(theta, nan=0.0), 0.0, _MAX_MODEL_ANGLE)
    shadow = (
        projector_shadow_mask(clean, K, cfg.baseline_m, cfg.shadow.side) if cfg.shadow.enabled else None
    )
    edges = depth_edges(clean, cfg.flying_pixels.edge_threshold_m) if cfg.flying_pixels.enabled else None

    focal = float(K[0, 0])
    sensor_focal = cfg.sensor_focal_px or focal
    z = clean
    if cfg.lateral.enabled:
        assert theta_model is not None  # need_theta
        sigma_px = lateral_sigma_px(theta_model, cfg.lateral.sigma_px) * (focal / sensor_focal)
        z = _lateral_jitter(z, sigma_px, rng)
    if cfg.flying_pixels.enabled:
        assert edges is not None
        z = _flying_pixels(z, edges, cfg.flying_pixels.prob, rng)
    if cfg.axial.enabled:
        assert theta_model is not None  # need_theta
        sigma = cfg.axial.scale * axial_sigma(np.where(z > 0, z, 1.0), theta_model)
        z = np.where(z > 0, z + sigma * rng.standard_normal(z.shape), 0.0)
        z[z <= 0] = 0.0
    if cfg.quantization.enabled:
        z = quantize_depth(z, sensor_focal, cfg.baseline_m, cfg.quantization.subpixel)

    drop = ~valid_in
    if shadow is not None:
        drop |= shadow
    if cfg.grazing.enabled:
        assert theta is not None  # need_theta
        p = _grazing_drop_prob(theta, cfg.grazing.start_deg, cfg.grazing.full_deg)
        drop |= rng.random(z.shape) < p
    if cfg.dark.enabled and rgb is not None:
        dark = _luma(rgb) < cfg.dark.threshold
        drop |= dark & (rng.random(z.shape) < cfg.dark.prob)
    if cfg.dropout.enabled:
        drop |= rng.random(z.shape) < cfg.dropout.prob
    if cfg.range.enabled:
        drop |= (z < cfg.range.min_m) | (z > cfg.range.max_m)

    out = np.where(drop, 0.0, z).astype(np.float32)
    return out


def frame_rng(seed: int, scene: str, frame_index: int) -> np.random.Generator:
    """Independent generator for one frame, the same whichever worker draws it or in which order.

    Args:
        seed: Global seed.
        scene: Scene name (hashed with CRC32).
        frame_index: Index of the frame within the scene (``>= 0``).

    Returns:
        ``np.random.default_rng(SeedSequence([seed, crc32(scene), frame_index]))``.
    """
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(scene.encode()), frame_index]))
