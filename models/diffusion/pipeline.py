"""Diffusion depth refinement: depth parametrisation, noise scheduler, x0 estimate and the sampling loop.

What the diffusion model generates
----------------------------------
Metric depth is first normalised per frame so one network serves rooms and close-ups alike, with metric
scale recoverable from the *observed* depth alone::

    s    = median of the observed (noisy) valid depth                      [B]   metres
    y(d) = log(d / s) / log_scale                                          unitless

The observed depth with its holes filled by a classical inpainting (``base``) is a good first guess, so the
network generates the *residual* from it (``target="residual"``, the default)::

    x0 = (y(d_clean) - y(d_base)) / residual_scale

which is near zero where the sensor was right and large only where it was wrong (holes, flying pixels,
edges). ``target="depth"`` generates ``y(d_clean)`` itself instead. Either way decoding is exact:
``d = s * exp(log_scale * (y_base + residual_scale * x0))``.

Prediction type: v (Salimans & Ho 2022). With a cosine schedule the terminal steps have almost no signal;
ε-prediction then recovers x0 by dividing by √ᾱ → 0 and amplifies errors, while v-prediction keeps the
x0 estimate ``x0 = √ᾱ·x_t − √(1−ᾱ)·v`` well conditioned at every t, which matters for the few-step DDIM
sampling used at inference and for the losses computed on the x0 estimate during training.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from pydantic import Field

from models.config import StrictConfig

if TYPE_CHECKING:
    from diffusers.schedulers.scheduling_ddim import DDIMScheduler

PredictionType = Literal["v_prediction", "epsilon", "sample"]


class DiffusionConfig(StrictConfig):
    """Noise schedule and depth parametrisation (shared by training and sampling; saved with the weights)."""

    num_train_timesteps: int = Field(1000, ge=10)
    prediction_type: PredictionType = "v_prediction"
    target: Literal["residual", "depth"] = "residual"
    log_scale: float = Field(0.5, gt=0, description="y = log(d / median) / log_scale")
    residual_scale: float = Field(0.1, gt=0, description="x0 = (y_clean - y_base) / residual_scale")


def make_scheduler(cfg: DiffusionConfig) -> DDIMScheduler:
    """A cosine (``squaredcos_cap_v2``) DDIM scheduler with trailing timestep spacing.

    Trailing spacing makes a few-step schedule start at the last training timestep (pure noise), which
    short schedules need (Lin et al. 2024, "Common diffusion noise schedules and sample steps are flawed").
    """
    # Imported here (diffusers pulls in torch._dynamo, ~2 s at start-up), from its module rather than through
    # the package's lazy attribute lookup, which is not thread-safe (scenes are refined in parallel threads).
    from diffusers.schedulers.scheduling_ddim import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule="squaredcos_cap_v2",
        prediction_type=cfg.prediction_type,
        clip_sample=False,
        set_alpha_to_one=True,
        timestep_spacing="trailing",
    )


def _bcast(a: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return a.reshape(-1, *([1] * (like.ndim - 1))).to(like)


def predict_x0(
    x_t: torch.Tensor, model_output: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: PredictionType
) -> torch.Tensor:
    """The clean-sample estimate implied by a model output.

    With ``x_t = √ᾱ·x0 + √(1−ᾱ)·ε`` and ``v = √ᾱ·ε − √(1−ᾱ)·x0``:
    ε-prediction gives ``x0 = (x_t − √(1−ᾱ)·ε̂) / √ᾱ``; v-prediction gives ``x0 = √ᾱ·x_t − √(1−ᾱ)·v̂``.

    Args:
        x_t: noisy samples ``[B, ...]``.
        model_output: ε̂, v̂ or x̂0, same shape.
        alpha_bar: ᾱ_t per sample ``[B]``.
    """
    a = _bcast(alpha_bar, x_t)
    if prediction_type == "v_prediction":
        return a.sqrt() * x_t - (1 - a).sqrt() * model_output
    if prediction_type == "epsilon":
        return (x_t - (1 - a).sqrt() * model_output) / a.sqrt()
    return model_output


def training_target(x0: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: PredictionType):
    """What the network should output for ``(x0, noise, t)``: v, ε or x0."""
    a = _bcast(alpha_bar, x0)
    if prediction_type == "v_prediction":
        return a.sqrt() * noise - (1 - a).sqrt() * x0
    if prediction_type == "epsilon":
        return noise
    return x0


def add_noise(x0: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """``x_t = √ᾱ·x0 + √(1−ᾱ)·ε``."""
    a = _bcast(alpha_bar, x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


# ------------------------------------------------------------------------------------- parametrisation


def depth_scale(observed: torch.Tensor) -> torch.Tensor:
    """Per-frame robust scale ``[B]``: the median of the valid (``> 0``) observed depth ``[B, 1, H, W]``.

    Frames without a single valid pixel get scale 1 (their depth cannot be recovered anyway).
    """
    flat = observed.flatten(1)
    out = torch.ones(flat.shape[0], dtype=flat.dtype, device=flat.device)
    for b in range(flat.shape[0]):
        v = flat[b][flat[b] > 0]
        if v.numel():
            out[b] = v.median()
    return out


def to_log(depth: torch.Tensor, scale: torch.Tensor, cfg: DiffusionConfig) -> torch.Tensor:
    """``y = log(d / s) / log_scale`` where ``d > 0``; 0 elsewhere."""
    s = _bcast(scale, depth)
    y = torch.log(depth.clamp_min(1e-6) / s) / cfg.log_scale
    return torch.where(depth > 0, y, torch.zeros_like(y))


def from_log(y: torch.Tensor, scale: torch.Tensor, cfg: DiffusionConfig) -> torch.Tensor:
    """Inverse of :func:`to_log`: metres."""
    return _bcast(scale, y) * torch.exp(y * cfg.log_scale)


def encode_x0(y_clean: torch.Tensor, y_base: torch.Tensor, cfg: DiffusionConfig) -> torch.Tensor:
    """The diffusion sample for a clean log-depth, given the base guess."""
    return (y_clean - y_base) / cfg.residual_scale if cfg.target == "residual" else y_clean


def decode_x0(x0: torch.Tensor, y_base: torch.Tensor, cfg: DiffusionConfig) -> torch.Tensor:
    """Log-depth ``y`` from a diffusion sample (inverse of :func:`encode_x0`)."""
    return y_base + cfg.residual_scale * x0 if cfg.target == "residual" else x0


def condition(rgb: torch.Tensor, y_obs: torch.Tensor, y_base: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The UNet's conditioning ``[B, 5, H, W]``: RGB in [−1, 1], observed log-depth (0 at holes), the
    hole-filled base log-depth, and the validity mask.

    Args:
        rgb: ``[B, 3, H, W]`` in [0, 1].
        y_obs: ``[B, 1, H, W]`` normalised observed depth, 0 at holes.
        y_base: ``[B, 1, H, W]`` normalised hole-filled depth.
        valid: ``[B, 1, H, W]`` 1 where the sensor measured depth.
    """
    return torch.cat([rgb * 2 - 1, y_obs, y_base, valid.to(rgb.dtype)], dim=1)


COND_CHANNELS = 6


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    cond: torch.Tensor,
    scheduler: DDIMScheduler,
    steps: int,
    generator: torch.Generator | None = None,
    init_noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Deterministic DDIM (η = 0) from pure noise to an x0 sample ``[B, 1, H, W]``.

    Args:
        model: ``model(x_t, t, cond)`` returning the scheduler's prediction type.
        cond: conditioning ``[B, C, H, W]``.
        steps: number of denoising steps (1 to num_train_timesteps).
        generator: seeds the initial noise (ignored when ``init_noise`` is given).
    """
    b, _, h, w = cond.shape
    x = init_noise if init_noise is not None else torch.randn(
        (b, 1, h, w), generator=generator, dtype=cond.dtype, device=cond.device
    )
    scheduler.set_timesteps(steps, device=cond.device)
    for t in scheduler.timesteps:
        out = model(x, t.expand(b), cond)
        x = scheduler.step(out, t, x, eta=0.0).prev_sample
    return x


def seeded_generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int(np.uint64(seed) % np.uint64(2**63)))
    return g
