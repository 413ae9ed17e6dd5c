"""The config of the depth-sensor noise model (:class:`NoiseModelConfig` and its per-effect settings) and the
:class:`SensorPrior` a refiner assumes, apart from their implementation (:mod:`models.noise`) so that params
parsing (:mod:`tasks.config`) does not import OpenCV or the noise model. :mod:`models.noise` re-exports them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from models.config import StrictConfig

__all__ = [
    "AxialNoiseConfig",
    "DarkSurfaceConfig",
    "DropoutConfig",
    "FlyingPixelConfig",
    "GrazingConfig",
    "LateralNoiseConfig",
    "NoiseModelConfig",
    "QuantizationConfig",
    "RangeConfig",
    "SensorPrior",
    "ShadowConfig",
]


class AxialNoiseConfig(StrictConfig):
    """Depth-dependent Gaussian noise along the viewing axis.

    Attributes:
        enabled: Apply the effect.
        scale: Multiplier of the Nguyen et al. sigma (1 = Kinect v1).
    """

    enabled: bool = True
    scale: float = Field(default=1.0, ge=0.0)


class QuantizationConfig(StrictConfig):
    """Disparity quantisation.

    Attributes:
        enabled: Apply the effect.
        subpixel: Disparity resolution in pixels (Kinect v1: 1/8 px).
    """

    enabled: bool = True
    subpixel: float = Field(default=0.125, gt=0.0)


class LateralNoiseConfig(StrictConfig):
    """Lateral (in-image) jitter of where depth is sampled; makes edges jagged.

    Attributes:
        enabled: Apply the effect.
        sigma_px: Lateral sigma at normal incidence in pixels (Nguyen et al.: 0.8 px).
    """

    enabled: bool = True
    sigma_px: float = Field(default=0.8, ge=0.0)


class FlyingPixelConfig(StrictConfig):
    """Flying pixels: values interpolated between the two sides of a depth discontinuity.

    Attributes:
        enabled: Apply the effect.
        prob: Probability that an edge pixel becomes a flying pixel.
        edge_threshold_m: Depth jump (metres) between 4-neighbours that counts as a discontinuity.
    """

    enabled: bool = True
    prob: float = Field(default=0.5, ge=0.0, le=1.0)
    edge_threshold_m: float = Field(default=0.1, gt=0.0)


class ShadowConfig(StrictConfig):
    """Projector shadows: surfaces the camera sees but the projector does not illuminate.

    Attributes:
        enabled: Apply the effect.
        side: Side of the camera (in the image) the projector sits on.
    """

    enabled: bool = True
    side: Literal["left", "right"] = "right"


class GrazingConfig(StrictConfig):
    """Dropout at grazing incidence angles.

    Attributes:
        enabled: Apply the effect.
        start_deg: Incidence angle (degrees) where dropout starts (probability 0).
        full_deg: Incidence angle (degrees) from which every pixel is dropped (probability 1).
    """

    enabled: bool = True
    start_deg: float = Field(default=70.0, ge=0.0, le=90.0)
    full_deg: float = Field(default=85.0, ge=0.0, le=90.0)

    @model_validator(mode="after")
    def _check_order(self) -> GrazingConfig:
        if not self.start_deg < self.full_deg:
            raise ValueError(f"start_deg ({self.start_deg}) must be < full_deg ({self.full_deg})")
        return self


class DarkSurfaceConfig(StrictConfig):
    """Dropout on dark (low-albedo) surfaces, which return too little IR; needs an RGB image.

    Attributes:
        enabled: Apply the effect (ignored when no RGB image is given).
        threshold: Luma in ``[0, 1]`` below which a pixel counts as dark.
        prob: Probability that a dark pixel is dropped.
    """

    enabled: bool = True
    threshold: float = Field(default=0.06, ge=0.0, le=1.0)
    prob: float = Field(default=0.5, ge=0.0, le=1.0)


class DropoutConfig(StrictConfig):
    """Independent random pixel dropout.

    Attributes:
        enabled: Apply the effect.
        prob: Per-pixel dropout probability.
    """

    enabled: bool = True
    prob: float = Field(default=0.005, ge=0.0, le=1.0)


class RangeConfig(StrictConfig):
    """Working range of the sensor; depth outside it becomes a hole.

    Attributes:
        enabled: Apply the effect.
        min_m: Nearest measurable depth in metres.
        max_m: Farthest measurable depth in metres.
    """

    enabled: bool = True
    min_m: float = Field(default=0.5, ge=0.0)
    max_m: float = Field(default=4.5, gt=0.0)

    @model_validator(mode="after")
    def _check_order(self) -> RangeConfig:
        if not self.min_m < self.max_m:
            raise ValueError(f"min_m ({self.min_m}) must be < max_m ({self.max_m})")
        return self


class NoiseModelConfig(StrictConfig):
    """All settings of :func:`simulate_sensor_noise`; ``NoiseModelConfig()`` is a Kinect v1 at defaults.

    Attributes:
        baseline_m: Projector-camera baseline in metres.
        sensor_focal_px: Focal length of the simulated sensor's depth camera at its native resolution
            (Kinect v1: about 580 px). Disparity quantisation and lateral jitter are properties of the sensor,
            so they are computed at this focal length and converted to the image's pixels: a frame stored at
            160x120 gets the same metric noise as at 640x480. ``None`` uses the image's own focal length.
        axial: Axial noise settings.
        quantization: Disparity quantisation settings.
        lateral: Lateral jitter settings.
        flying_pixels: Flying-pixel settings.
        shadow: Projector-shadow settings.
        grazing: Grazing-angle dropout settings.
        dark: Dark-surface dropout settings.
        dropout: Random dropout settings.
        range: Working-range settings.
    """

    baseline_m: float = Field(default=0.075, gt=0.0)
    sensor_focal_px: float | None = Field(default=580.0, gt=0.0)
    axial: AxialNoiseConfig = Field(default_factory=AxialNoiseConfig)
    quantization: QuantizationConfig = Field(default_factory=QuantizationConfig)
    lateral: LateralNoiseConfig = Field(default_factory=LateralNoiseConfig)
    flying_pixels: FlyingPixelConfig = Field(default_factory=FlyingPixelConfig)
    shadow: ShadowConfig = Field(default_factory=ShadowConfig)
    grazing: GrazingConfig = Field(default_factory=GrazingConfig)
    dark: DarkSurfaceConfig = Field(default_factory=DarkSurfaceConfig)
    dropout: DropoutConfig = Field(default_factory=DropoutConfig)
    range: RangeConfig = Field(default_factory=RangeConfig)


class SensorPrior(StrictConfig):
    """What a refiner may assume about the sensor's measurement noise: the expected spread of a *measured*
    depth at each distance (axial noise and disparity quantisation of :func:`simulate_sensor_noise`), and
    what counts as a depth discontinuity, near which lateral jitter and flying pixels make any error possible.

    Attributes:
        baseline_m: Projector-camera baseline in metres.
        sensor_focal_px: Focal length of the sensor's depth camera at its native resolution, in pixels.
        axial_scale: Multiplier on the Nguyen et al. axial sigma (0 = no axial noise).
        subpixel: Disparity quantisation step in pixels (0 = no quantisation).
        edge_threshold_m: Smallest depth jump between neighbours that is a discontinuity.
    """

    baseline_m: float = Field(default=0.075, gt=0.0)
    sensor_focal_px: float = Field(default=580.0, gt=0.0)
    axial_scale: float = Field(default=1.0, ge=0.0)
    subpixel: float = Field(default=0.125, ge=0.0)
    edge_threshold_m: float = Field(default=0.1, gt=0.0)

    @classmethod
    def from_noise(cls, cfg: NoiseModelConfig, image_focal_px: float | None = None) -> SensorPrior:
        """The prior implied by a noise model (disabled effects contribute nothing)."""
        return cls(
            baseline_m=cfg.baseline_m,
            sensor_focal_px=cfg.sensor_focal_px or image_focal_px or 580.0,
            axial_scale=cfg.axial.scale if cfg.axial.enabled else 0.0,
            subpixel=cfg.quantization.subpixel if cfg.quantization.enabled else 0.0,
            edge_threshold_m=cfg.flying_pixels.edge_threshold_m,
        )
