"""Diffusion depth refinement: depth parametrisation, noise scheduler, x0 estimate and the sampling loop.

What the diffusion model generates
----------------------------------
Metric depth is first normalised per frame so one network serves rooms and close-ups alike, with metric
scale recoverable from the *observed* depth alone::

    s    = median of the observed (noisy) valid depth                      [B]   metres
    y(d) = log(d / s) / log_scale                                          unitless

The observed depth with its holes filled by a classical inpainting and a ``base_median`` x ``base_median``
median on top (``base``, the strongest classical refiner on real captures) is a good first guess, so the
network generates the *residual* from it (``target="residual"``, the default), in per-pixel units ``u``::

    x0 = (y(d_clean) - y(d_base)) / u
    u  = sigma_y = expected_sigma(z_obs) / (z_obs * log_scale)   on trusted measured pixels
    u  = residual_scale                                          elsewhere (holes, near holes and edges)

``expected_sigma`` is the sensor model's spread of a measurement at its depth (axial noise + disparity
quantisation, :func:`models.noise.expected_sigma`), and *trusted* pixels are measured ones away from holes
and depth discontinuities (:func:`models.noise.trusted_measurements`), where that model bounds the error.
On them ``x0`` is the error in units of the sensor's expected spread, so the network works at one scale at
every distance, and decoding **bounds** the result there to ``measured_bound`` sigmas *around the
observation* (a smooth tanh clamp): whatever the network outputs, a trusted measurement moves by less than
``measured_bound * sigma``. Near holes and edges (lateral jitter, flying pixels, shadows) the result is free.
The network sees ``log(u / residual_scale)``, the trusted mask and the observation's deviation from the base
in its own units ``(y_obs - y_base) / u`` as conditioning, so it knows each pixel's unit and noise level
(which the scale-free ``y`` alone would hide: sensor noise grows with absolute distance) and gets the
measurement's noise at a scale it can learn from. ``target="depth"`` generates ``y(d_clean)`` itself instead
(no units, no bound). Decoding: ``y = y_base + u * x0``, then on trusted pixels
``y = y_obs + k u tanh((y - y_obs) / (k u))`` with ``k = measured_bound``; ``d = s * exp(log_scale * y)``.

Prediction type: v (Salimans & Ho 2022). With a cosine schedule the terminal steps have almost no signal;
ε-prediction then recovers x0 by dividing by √ᾱ → 0 and amplifies errors, while v-prediction keeps the
x0 estimate ``x0 = √ᾱ·x_t − √(1−ᾱ)·v`` well conditioned at every t, which matters for the few-step DDIM
sampling used at inference and for the losses computed on the x0 estimate during training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from jaxtyping import Bool, Float, Shaped
from torch import Tensor

from models.baselines import fill_holes, median_filter
from models.diffusion.config import COND_CHANNELS, DiffusionConfig, PredictionType  # noqa: F401 (re-exported)
from models.noise import SensorPrior, expected_sigma, trusted_measurements

if TYPE_CHECKING:
    from diffusers.schedulers.scheduling_ddim import DDIMScheduler


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


def _bcast(a: Tensor, like: Tensor) -> Tensor:
    return a.reshape(-1, *([1] * (like.ndim - 1))).to(like)


def predict_x0(
    x_t: Float[Tensor, " b *rest"],
    model_output: Float[Tensor, " b *rest"],
    alpha_bar: Float[Tensor, " b"],
    prediction_type: PredictionType,
) -> Float[Tensor, " b *rest"]:
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


def training_target(
    x0: Float[Tensor, " b *rest"],
    noise: Float[Tensor, " b *rest"],
    alpha_bar: Float[Tensor, " b"],
    prediction_type: PredictionType,
) -> Float[Tensor, " b *rest"]:
    """What the network should output for ``(x0, noise, t)``: v, ε or x0, like ``x0`` ``[B, ...]``."""
    a = _bcast(alpha_bar, x0)
    if prediction_type == "v_prediction":
        return a.sqrt() * noise - (1 - a).sqrt() * x0
    if prediction_type == "epsilon":
        return noise
    return x0


def add_noise(
    x0: Float[Tensor, " b *rest"], noise: Float[Tensor, " b *rest"], alpha_bar: Float[Tensor, " b"]
) -> Float[Tensor, " b *rest"]:
    """``x_t = √ᾱ·x0 + √(1−ᾱ)·ε``, ``[B, ...]`` with ᾱ per sample ``[B]``."""
    a = _bcast(alpha_bar, x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


# ------------------------------------------------------------------------------------- parametrisation


def depth_scale(observed: Float[Tensor, "b 1 h w"]) -> Float[Tensor, " b"]:
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


def to_log(
    depth: Float[Tensor, "b 1 h w"], scale: Float[Tensor, " b"], cfg: DiffusionConfig
) -> Float[Tensor, "b 1 h w"]:
    """``y = log(d / s) / log_scale`` where ``d > 0``; 0 elsewhere (depth and scale in metres)."""
    s = _bcast(scale, depth)
    y = torch.log(depth.clamp_min(1e-6) / s) / cfg.log_scale
    return torch.where(depth > 0, y, torch.zeros_like(y))


def from_log(y: Float[Tensor, "b 1 h w"], scale: Float[Tensor, " b"], cfg: DiffusionConfig) -> Float[Tensor, "b 1 h w"]:
    """Inverse of :func:`to_log`: metres."""
    return _bcast(scale, y) * torch.exp(y * cfg.log_scale)


def encode_x0(
    y_clean: Float[Tensor, "b 1 h w"],
    y_base: Float[Tensor, "b 1 h w"],
    unit: Float[Tensor, "b 1 h w"],
    cfg: DiffusionConfig,
) -> Float[Tensor, "b 1 h w"]:
    """The diffusion sample for a clean log-depth, given the base guess and the per-pixel unit ``u``."""
    return (y_clean - y_base) / unit if cfg.target == "residual" else y_clean


def decode_x0(
    x0: Float[Tensor, "b 1 h w"],
    y_base: Float[Tensor, "b 1 h w"],
    y_obs: Float[Tensor, "b 1 h w"],
    unit: Float[Tensor, "b 1 h w"],
    trusted: Float[Tensor, "b 1 h w"],
    cfg: DiffusionConfig,
) -> Float[Tensor, "b 1 h w"]:
    """Log-depth ``y`` from a diffusion sample (inverse of :func:`encode_x0` within the bound): trusted pixels
    end within ``measured_bound`` units of the observation (smooth tanh clamp), the others are free."""
    if cfg.target != "residual":
        return x0
    y = y_base + unit * x0
    k = cfg.measured_bound
    if k <= 0:
        return y
    bounded = y_obs + k * unit * torch.tanh((y - y_obs) / (k * unit))
    return torch.where(trusted > 0, bounded, y)


@dataclass(frozen=True)
class Observation:
    """What the refiner derives from one observed frame, as numpy arrays ``[H, W]``.

    Attributes:
        base: the observed depth with holes inpainted, then median filtered (metres).
        sigma: the sensor model's expected spread at the base depth, metres.
        trusted: measured pixels away from holes and discontinuities (their correction is bounded).
    """

    base: Float[np.ndarray, "h w"]
    sigma: Float[np.ndarray, "h w"]
    trusted: Bool[np.ndarray, "h w"]


def observe(noisy: Float[np.ndarray, "h w"], focal_px: float, sensor: SensorPrior, cfg: DiffusionConfig) -> Observation:
    """The base, expected noise and trusted mask of an observed depth ``[H, W]`` (metres, 0 = hole)."""
    base = fill_holes(noisy)
    if cfg.base_median > 1 and base.any():
        base = median_filter(base, cfg.base_median)
    return Observation(
        base=base, sigma=expected_sigma(base, sensor), trusted=trusted_measurements(noisy, focal_px, sensor)
    )


@dataclass(frozen=True)
class Normalised:
    """A batch in the network's units (all ``[B, 1, H, W]`` unless noted): ``cond [B, C, H, W]``, the base
    log-depth, the per-pixel unit of ``x0``, the trusted mask and the per-frame scale ``[B]`` (metres)."""

    cond: Float[Tensor, "b c h w"]
    y_base: Float[Tensor, "b 1 h w"]
    y_obs: Float[Tensor, "b 1 h w"]
    unit: Float[Tensor, "b 1 h w"]
    trusted: Float[Tensor, "b 1 h w"]
    scale: Float[Tensor, " b"]

    def depth(self, x0: Float[Tensor, "kb 1 h w"], cfg: DiffusionConfig) -> Float[Tensor, "kb 1 h w"]:
        """Metric depth ``[B, 1, H, W]`` of diffusion samples ``x0`` (the batch may repeat: ``B = k * B0``)."""
        rep = x0.shape[0] // self.y_base.shape[0]
        y_base, y_obs, unit, trusted = (a.repeat(rep, 1, 1, 1)
                                        for a in (self.y_base, self.y_obs, self.unit, self.trusted))
        y = decode_x0(x0, y_base, y_obs, unit, trusted, cfg)
        return from_log(y, self.scale.repeat(rep), cfg)


def normalise(
    rgb: Float[Tensor, "b 3 h w"],
    noisy: Float[Tensor, "b 1 h w"],
    base: Float[Tensor, "b 1 h w"],
    sigma: Float[Tensor, "b 1 h w"],
    trusted: Shaped[Tensor, "b 1 h w"],
    cfg: DiffusionConfig,
) -> Normalised:
    """Put a batch into the network's units and build its conditioning.

    Args:
        rgb: ``[B, 3, H, W]`` in [0, 1].
        noisy: observed depth ``[B, 1, H, W]`` metres, 0 at holes.
        base, sigma: the :class:`Observation`'s inpainted depth and expected spread, ``[B, 1, H, W]`` metres.
        trusted: ``[B, 1, H, W]`` 1 (or True) on trusted measurements.

    The conditioning ``[B, 9, H, W]``: RGB in [−1, 1], observed log-depth (0 at holes), base log-depth, the
    validity mask, ``log(u / residual_scale)``, the trusted mask and ``(y_obs - y_base) / u`` where measured
    (clipped to ±10).
    """
    scale = depth_scale(noisy)
    y_obs, y_base = to_log(noisy, scale, cfg), to_log(base, scale, cfg)
    trusted = trusted.to(noisy.dtype)
    sigma_y = sigma / base.clamp_min(1e-3) / cfg.log_scale
    unit = torch.where(trusted > 0, sigma_y.clamp(max=cfg.residual_scale), torch.full_like(sigma_y, cfg.residual_scale))
    valid = (noisy > 0).to(noisy.dtype)
    deviation = ((y_obs - y_base) / unit).clamp(-10, 10) * valid
    cond = torch.cat([rgb * 2 - 1, y_obs, y_base, valid, torch.log(unit / cfg.residual_scale), trusted, deviation], 1)
    return Normalised(cond=cond, y_base=y_base, y_obs=y_obs, unit=unit, trusted=trusted, scale=scale)


@torch.no_grad()
def sample(
    model: Callable[[Tensor, Tensor, Tensor], Tensor],
    cond: Float[Tensor, "b c h w"],
    scheduler: DDIMScheduler,
    steps: int,
    generator: torch.Generator | None = None,
    init_noise: Float[Tensor, "b 1 h w"] | None = None,
) -> Float[Tensor, "b 1 h w"]:
    """Deterministic DDIM (η = 0) from pure noise to an x0 sample ``[B, 1, H, W]``.

    Args:
        model: ``model(x_t, t, cond)`` returning the scheduler's prediction type.
        cond: conditioning ``[B, C, H, W]``.
        steps: number of denoising steps (1 to num_train_timesteps).
        generator: seeds the initial noise (ignored when ``init_noise`` is given).
        init_noise: the initial noise ``[B, 1, H, W]`` instead of a draw.
    """
    b, _, h, w = cond.shape
    x = init_noise if init_noise is not None else torch.randn(
        (b, 1, h, w), generator=generator, dtype=cond.dtype, device=cond.device
    )
    scheduler.set_timesteps(steps, device=cond.device)
    for t in scheduler.timesteps:
        out = model(x, t.expand(b), cond)
        # diffusers' annotations: timestep int (a 0-d tensor works) and a tuple or the output (the output here)
        x = scheduler.step(out, t, x, eta=0.0).prev_sample  # pyright: ignore[reportArgumentType, reportAttributeAccessIssue]
    return x


def seeded_generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int(np.uint64(seed) % np.uint64(2**63)))
    return g
