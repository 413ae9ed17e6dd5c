"""The configs of the diffusion refiner (noise schedule and depth parametrisation, UNet architecture, loss
weights) and the number of conditioning channels, apart from their implementation (:mod:`models.diffusion.pipeline`,
:mod:`models.diffusion.unet`, :mod:`models.diffusion.losses`) so that params parsing (:mod:`tasks.config`) does not
import PyTorch, OpenCV or the refiner. Those modules re-export these names.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from models.config import StrictConfig

__all__ = ["COND_CHANNELS", "DiffusionConfig", "LossWeights", "PredictionType", "UNetConfig"]

PredictionType = Literal["v_prediction", "epsilon", "sample"]

#: Channels of the conditioning image built by :func:`models.diffusion.pipeline.normalise`.
COND_CHANNELS = 9


class DiffusionConfig(StrictConfig):
    """Noise schedule and depth parametrisation (shared by training and sampling; saved with the weights)."""

    num_train_timesteps: int = Field(default=1000, ge=10)
    prediction_type: PredictionType = "v_prediction"
    target: Literal["residual", "depth"] = "residual"
    log_scale: float = Field(default=0.5, gt=0, description="y = log(d / median) / log_scale")
    residual_scale: float = Field(
        default=0.1, gt=0, description="x0 = (y_clean - y_base) / residual_scale at untrusted pixels"
    )
    measured_bound: float = Field(
        default=2.5, ge=0,
        description="largest correction of a trusted measurement, in expected sensor sigmas (0 = none)"
    )
    base_median: int = Field(default=5, ge=1, le=9, description="median window on the hole-filled base (1 = none)")

    @field_validator("base_median")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(f"base_median must be odd (1 = no median), got {v}")
        return v


class UNetConfig(StrictConfig):
    """Architecture of :class:`DepthUNet`.

    Attributes:
        in_channels: Channels of the noisy sample ``x_t`` (normalised depth: 1).
        cond_channels: Channels of the conditioning image. The refiner's has :data:`COND_CHANNELS` (9, built by
            :func:`models.diffusion.pipeline.normalise`; ``tasks.config`` requires it); the default 5 only sizes a
            standalone network.
        out_channels: Channels of the prediction.
        base_channels: Channels at full resolution (times ``channel_mults[0]``); divisible by ``groups``.
            16 keeps a 640x480 forward pass on 2 CPU cores at about 0.45 s (32: about 1.3 s, 4x the
            convolution FLOPs).
        channel_mults: One entry per resolution level; level ``l`` has ``base_channels * channel_mults[l]``
            channels at ``1 / 2**l`` of the input size.
        num_res_blocks: Residual blocks per level, in the encoder and in the decoder.
        groups: GroupNorm groups.
        attention_heads: Heads of the bottleneck self-attention; must divide the bottleneck channels.
        attention_max_tokens: The attention's keys/values are average-pooled to at most this many positions
            (queries stay at full bottleneck resolution); bottlenecks with no more positions than this get
            exact global attention.
        dropout: Dropout probability inside the residual blocks.
        enhance_skips: Put CBAM-style feature-enhancement blocks (channel then spatial attention) on the
            skip connections.
        gradient_checkpointing: In training mode, recompute each residual block in the backward pass
            (``torch.utils.checkpoint``, non-reentrant) instead of storing its activations.
    """

    in_channels: int = Field(default=1, ge=1)
    cond_channels: int = Field(default=5, ge=0)
    out_channels: int = Field(default=1, ge=1)
    base_channels: int = Field(default=16, ge=8)
    channel_mults: tuple[int, ...] = Field(default=(1, 2, 4), min_length=1)
    num_res_blocks: int = Field(default=1, ge=1)
    groups: int = Field(default=8, ge=1)
    attention_heads: int = Field(default=4, ge=1)
    attention_max_tokens: int = Field(default=1024, ge=1)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    enhance_skips: bool = True
    gradient_checkpointing: bool = False

    @model_validator(mode="after")
    def _check_channels(self) -> UNetConfig:
        if any(m < 1 for m in self.channel_mults):
            raise ValueError(f"channel_mults must all be >= 1, got {self.channel_mults}")
        if self.base_channels % self.groups:
            raise ValueError(f"base_channels ({self.base_channels}) must be divisible by groups ({self.groups})")
        bottleneck = self.base_channels * self.channel_mults[-1]
        if bottleneck % self.attention_heads:
            raise ValueError(
                f"attention_heads ({self.attention_heads}) must divide the bottleneck channels "
                f"(base_channels * channel_mults[-1] = {bottleneck})"
            )
        return self

    def channels(self, level: int) -> int:
        """Channels of resolution level ``level``."""
        return self.base_channels * self.channel_mults[level]


class LossWeights(StrictConfig):
    """Weights of the refinement losses (all ``>= 0``; 0 disables a term's contribution).

    Attributes:
        mse: Diffusion MSE (applied by the trainer).
        edge: :func:`edge_loss`.
        ssim: :func:`ms_ssim_loss`.
        normal: :func:`normal_loss`.
    """

    mse: float = Field(default=1.0, ge=0.0)
    edge: float = Field(default=0.5, ge=0.0)
    ssim: float = Field(default=0.2, ge=0.0)
    normal: float = Field(default=0.1, ge=0.0)
