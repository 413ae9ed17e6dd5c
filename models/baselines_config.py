"""The config of the classical depth-refinement baselines, apart from their implementation
(:mod:`models.baselines`) so that params parsing (:mod:`tasks.config`) does not import OpenCV, SciPy or the
baselines. :mod:`models.baselines` re-exports it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from models.config import StrictConfig

__all__ = ["BaselineConfig", "InpaintMethod"]

InpaintMethod = Literal["ns", "telea"]


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
        median_ksize: Window size (pixels, odd, 3 to 9) of the median filter.
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
    median_ksize: int = Field(default=5, ge=3, le=9)

    @field_validator("median_ksize")
    @classmethod
    def _odd_ksize(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError(f"median_ksize must be odd (3, 5, 7 or 9), got {value}")
        return value
