"""Classical depth-refinement baselines (hole filling + edge-aware smoothing) behind one interface.

The diffusion refiner is compared against these. Every baseline is a :class:`Refiner`: a small frozen
dataclass with a ``name`` that maps ``(rgb, depth, K)`` to refined depth. All of them are pure functions of
their inputs and config (no module state, no randomness) and are built on OpenCV:

================== ======================================================================================
``inpaint``        :func:`fill_holes` only (``cv2.inpaint``, Navier-Stokes by default).
``bilateral``      fill holes, then ``cv2.bilateralFilter`` on the float32 depth (range sigma in metres).
``joint_bilateral`` fill holes, then ``cv2.ximgproc.jointBilateralFilter`` with the RGB image as the guide
                   (range sigma in 8-bit colour units).
``guided``         fill holes, then ``cv2.ximgproc.guidedFilter`` with the RGB image (scaled to ``[0, 1]``)
                   as the guide; ``eps`` is a variance on that normalised guide.
================== ======================================================================================

Conventions follow :mod:`models.camera`: ``depth`` is z-depth in metres, ``0`` = hole. ``K`` is part of the
interface (the diffusion refiner and later baselines may need it); these baselines only validate it.

Notes on ``cv2.inpaint`` with float32 depth (measured with OpenCV 5.0, see ``tests/models/test_baselines.py``):

* It accepts 32-bit float single-channel images, so depth is inpainted in metres without a uint16 round trip.
* ``INPAINT_NS`` is scale-invariant in practice and accurate on smooth surfaces (sub-centimetre on a slanted
  plane with 10 % random holes plus 8x8 px blocks).
* ``INPAINT_TELEA`` is *not* scale-invariant: on depth in metres it returns values off by ~1 m. It behaves
  once the values are in millimetres, so ``method="telea"`` inpaints ``depth * 1000`` and divides back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import cv2
import numpy as np
from pydantic import Field

from models.config import StrictConfig

InpaintMethod = Literal["ns", "telea"]

_CV_INPAINT = {"ns": cv2.INPAINT_NS, "telea": cv2.INPAINT_TELEA}
# Depth is multiplied by this before INPAINT_TELEA (metres -> millimetres); see the module docstring.
_TELEA_SCALE = 1000.0


# ----------------------------------------------------------------------------------------------- config


class BaselineConfig(StrictConfig):
    """Settings of every classical baseline.

    Attributes:
        bilateral_d: Window diameter (pixels) of the plain bilateral filter on depth.
        bilateral_sigma_color_m: Range sigma of the plain bilateral filter, in metres of depth.
        bilateral_sigma_space: Spatial sigma (pixels) of the plain bilateral filter.
        joint_sigma_color: Range sigma of the joint bilateral filter, in 8-bit colour units of the RGB guide.
        joint_sigma_space: Spatial sigma (pixels) of the joint bilateral filter.
        joint_d: Window diameter (pixels) of the joint bilateral filter.
        guided_radius: Window radius (pixels) of the guided filter.
        guided_eps: Regularisation of the guided filter: a variance on the guide normalised to ``[0, 1]``
            (larger = smoother, less edge-preserving).
        inpaint_radius: Neighbourhood radius (pixels) of ``cv2.inpaint``.
        inpaint_method: ``"ns"`` (Navier-Stokes, the default) or ``"telea"``.
    """

    bilateral_d: int = Field(default=5, ge=1, le=31)
    bilateral_sigma_color_m: float = Field(default=0.05, gt=0.0, le=10.0)
    bilateral_sigma_space: float = Field(default=3.0, gt=0.0, le=100.0)
    joint_sigma_color: float = Field(default=20.0, gt=0.0, le=1000.0)
    joint_sigma_space: float = Field(default=5.0, gt=0.0, le=100.0)
    joint_d: int = Field(default=7, ge=1, le=31)
    guided_radius: int = Field(default=4, ge=1, le=64)
    guided_eps: float = Field(default=1e-2, gt=0.0, le=10.0)
    inpaint_radius: int = Field(default=5, ge=1, le=50)
    inpaint_method: InpaintMethod = "ns"


# -------------------------------------------------------------------------------------------- interface


@runtime_checkable
class Refiner(Protocol):
    """A depth refiner: ``refined = refiner(rgb, depth, K)``.

    Args (of ``__call__``):
        rgb: uint8 RGB image ``[H, W, 3]`` aligned with ``depth``.
        depth: Noisy sensor depth ``[H, W]`` in metres (float), ``0`` = hole; must be finite and ``>= 0``.
        K: Intrinsics ``[3, 3]`` in pixels.

    Returns:
        Refined depth ``[H, W]`` float32 in metres. Holes are filled where possible; a refiner may leave ``0``
        where it cannot fill (every baseline here fills all holes unless the frame has no valid pixel, in which
        case it returns zeros).
    """

    name: str

    def __call__(self, rgb: np.ndarray, depth: np.ndarray, K: np.ndarray) -> np.ndarray: ...


# ---------------------------------------------------------------------------------------------- helpers


def _check_depth(depth: np.ndarray) -> np.ndarray:
    """Validated float32 copy-or-view of ``depth [H, W]``; raises ``ValueError`` naming the problem."""
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise ValueError(f"depth must be [H, W], got shape {depth.shape}")
    if not np.issubdtype(depth.dtype, np.floating):
        raise ValueError(f"depth must be a float array in metres, got dtype {depth.dtype}")
    if np.isnan(depth).any():
        raise ValueError(f"depth contains {int(np.isnan(depth).sum())} NaN values; use 0 for holes")
    if not np.isfinite(depth).all():
        raise ValueError("depth contains infinite values; use 0 for holes")
    if (depth < 0).any():
        raise ValueError(f"depth contains negative values (min {float(depth.min())}); use 0 for holes")
    return depth.astype(np.float32, copy=False)


def _check_inputs(rgb: np.ndarray, depth: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate a refiner's inputs; returns ``(rgb, depth as float32)``."""
    depth = _check_depth(depth)
    rgb = np.asarray(rgb)
    if rgb.shape != (*depth.shape, 3):
        raise ValueError(f"rgb must be [H, W, 3] matching depth {depth.shape}, got shape {rgb.shape}")
    if rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be uint8, got {rgb.dtype}")
    if np.shape(K) != (3, 3):
        raise ValueError(f"K must be [3, 3], got shape {np.shape(K)}")
    return rgb, depth


def fill_holes(depth: np.ndarray, radius: int = 5, method: InpaintMethod = "ns") -> np.ndarray:
    """Fill the holes (``0``) of a depth map with ``cv2.inpaint``.

    Valid pixels (``> 0``) are returned bit-for-bit unchanged; only holes are written. Filled values are clipped
    to ``[min, max]`` of the valid input, so inpainting never extrapolates beyond the observed depth range.
    Every hole is filled unless the frame has no valid pixel, in which case zeros are returned.

    Args:
        depth: Depth ``[H, W]`` in metres (float), ``0`` = hole; must be finite and ``>= 0``.
        radius: Neighbourhood radius in pixels considered by ``cv2.inpaint``.
        method: ``"ns"`` (``cv2.INPAINT_NS``, on metres) or ``"telea"`` (``cv2.INPAINT_TELEA``, run on
            millimetres because it is not scale-invariant).

    Returns:
        Filled depth ``[H, W]`` float32 in metres.

    Raises:
        ValueError: Depth of the wrong shape / dtype, NaN, infinite or negative values, or a bad method / radius.
    """
    depth = _check_depth(depth)
    if method not in _CV_INPAINT:
        raise ValueError(f"method must be one of {sorted(_CV_INPAINT)}, got {method!r}")
    if radius < 1:
        raise ValueError(f"radius must be >= 1, got {radius}")
    holes = depth <= 0
    if not holes.any():
        return depth.copy()
    if holes.all():
        return np.zeros_like(depth)
    scale = _TELEA_SCALE if method == "telea" else 1.0
    filled = cv2.inpaint(depth * np.float32(scale), holes.astype(np.uint8), float(radius), _CV_INPAINT[method])
    filled = filled / np.float32(scale)
    valid = depth[~holes]
    filled = np.clip(filled, valid.min(), valid.max())
    return np.where(holes, filled, depth).astype(np.float32)


# --------------------------------------------------------------------------------------------- refiners


@dataclass(frozen=True)
class InpaintRefiner:
    """Holes filled by :func:`fill_holes`, nothing else; the filtering refiners below smooth the result."""

    cfg: BaselineConfig
    name: str = field(default="inpaint", init=False)

    def __call__(self, rgb: np.ndarray, depth: np.ndarray, K: np.ndarray) -> np.ndarray:
        rgb, depth = _check_inputs(rgb, depth, K)
        filled = fill_holes(depth, self.cfg.inpaint_radius, self.cfg.inpaint_method)
        return self.smooth(rgb, filled) if filled.any() else filled

    def smooth(self, rgb: np.ndarray, filled: np.ndarray) -> np.ndarray:
        """Filter the hole-filled depth ``[H, W]`` float32 (identity here)."""
        return filled


@dataclass(frozen=True)
class BilateralRefiner(InpaintRefiner):
    """Holes filled, then a plain bilateral filter on the float32 depth (range sigma in metres)."""

    name: str = field(default="bilateral", init=False)

    def smooth(self, rgb: np.ndarray, filled: np.ndarray) -> np.ndarray:
        c = self.cfg
        return cv2.bilateralFilter(filled, c.bilateral_d, c.bilateral_sigma_color_m, c.bilateral_sigma_space)


@dataclass(frozen=True)
class JointBilateralRefiner(InpaintRefiner):
    """Holes filled, then a joint (cross) bilateral filter whose range kernel is computed on the RGB image."""

    name: str = field(default="joint_bilateral", init=False)

    def smooth(self, rgb: np.ndarray, filled: np.ndarray) -> np.ndarray:
        c = self.cfg
        # jointBilateralFilter needs guide and source of the same depth (CV_8U or CV_32F): a float32 guide
        # keeps 8-bit units, so sigma_color is in 8-bit colour levels.
        guide = rgb.astype(np.float32)
        return cv2.ximgproc.jointBilateralFilter(guide, filled, c.joint_d, c.joint_sigma_color, c.joint_sigma_space)


@dataclass(frozen=True)
class GuidedRefiner(InpaintRefiner):
    """Holes filled, then He et al.'s guided filter with the RGB image (in ``[0, 1]``) as a colour guide."""

    name: str = field(default="guided", init=False)

    def smooth(self, rgb: np.ndarray, filled: np.ndarray) -> np.ndarray:
        guide = rgb.astype(np.float32) / np.float32(255.0)
        out = cv2.ximgproc.guidedFilter(guide, filled, self.cfg.guided_radius, self.cfg.guided_eps)
        return out.astype(np.float32, copy=False)


def inpaint_refiner(cfg: BaselineConfig) -> Refiner:
    """The ``"inpaint"`` baseline: holes filled only."""
    return InpaintRefiner(cfg)


def bilateral_refiner(cfg: BaselineConfig) -> Refiner:
    """The ``"bilateral"`` baseline: holes filled, then ``cv2.bilateralFilter`` on depth."""
    return BilateralRefiner(cfg)


def joint_bilateral_refiner(cfg: BaselineConfig) -> Refiner:
    """The ``"joint_bilateral"`` baseline: holes filled, then ``cv2.ximgproc.jointBilateralFilter`` (RGB guide)."""
    return JointBilateralRefiner(cfg)


def guided_refiner(cfg: BaselineConfig) -> Refiner:
    """The ``"guided"`` baseline: holes filled, then ``cv2.ximgproc.guidedFilter`` (RGB guide)."""
    return GuidedRefiner(cfg)


def make_baselines(cfg: BaselineConfig) -> dict[str, Refiner]:
    """Every baseline by name: ``inpaint``, ``bilateral``, ``joint_bilateral``, ``guided`` (in that order)."""
    refiners = (inpaint_refiner(cfg), bilateral_refiner(cfg), joint_bilateral_refiner(cfg), guided_refiner(cfg))
    return {r.name: r for r in refiners}
