"""Refining one frame with a trained diffusion refiner: tiled DDIM sampling, the mean and spread of a few
samples, and the calibrated uncertainty. Pure computation (no files): the refine stage and the validation
calibration in train_diffusion both call :class:`DiffusionRefiner`.

Frames larger than ``tile`` are denoised in overlapping tiles whose outputs are blended at every sampler step
(so the whole frame follows one consistent diffusion trajectory) and memory stays bounded.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Bool, Float, UInt8

from models.diffusion.calibration import Calibration, bound_to_base, calibrated_std
from models.diffusion.pipeline import DiffusionConfig, Observation, make_scheduler, normalise, observe, sample
from models.noise import SensorPrior

# ------------------------------------------------------------------------------------------ tiling


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length ``tile`` covering ``[0, size)`` with at least ``overlap`` overlap."""
    if size <= tile:
        return [0]
    stride = tile - overlap
    n = int(np.ceil((size - tile) / stride)) + 1
    return [round(i * (size - tile) / (n - 1)) for i in range(n)]


def blend_window(h: int, w: int, overlap: int) -> Float[torch.Tensor, "h w"]:
    """``[h, w]`` weights ramping linearly over ``overlap`` pixels at each border (never exactly 0)."""

    def ramp(n: int) -> torch.Tensor:
        r = torch.ones(n)
        if overlap > 0:
            k = min(overlap, n // 2)
            edge = (torch.arange(k, dtype=torch.float32) + 1) / (k + 1)
            r[:k], r[n - k :] = edge, edge.flip(0)
        return r

    return ramp(h)[:, None] * ramp(w)[None, :]


def tiled(model: Callable, tile: int, overlap: int) -> Callable:
    """Wrap ``model(x, t, cond)`` so that inputs larger than ``tile`` are processed in blended tiles."""

    def run(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h <= tile and w <= tile:
            return model(x, t, cond)
        out = torch.zeros_like(x)
        total = torch.zeros((h, w), dtype=x.dtype, device=x.device)
        for y0 in tile_starts(h, tile, overlap):
            for x0 in tile_starts(w, tile, overlap):
                sl = (..., slice(y0, y0 + tile), slice(x0, x0 + tile))
                o = model(x[sl], t, cond[sl])
                wgt = blend_window(o.shape[-2], o.shape[-1], overlap).to(x)
                out[sl] += o * wgt
                total[sl[1:]] += wgt
        return out / total

    return run


# ------------------------------------------------------------------------------------------ refiner


@dataclass(frozen=True)
class Refined:
    """One refined frame, ``[H, W]`` float32 metres: the mean of the (edge-bounded) samples, the raw samples'
    spread around it (:meth:`DiffusionRefiner.summarise`) and the calibrated standard deviation; plus the
    observation's expected sensor sigma and trusted mask."""

    depth: Float[np.ndarray, "h w"]
    spread: Float[np.ndarray, "h w"]
    std: Float[np.ndarray, "h w"]
    sigma: Float[np.ndarray, "h w"]
    trusted: Bool[np.ndarray, "h w"]


@dataclass(frozen=True)
class Draw:
    """The raw samples of one frame ``[S, H, W]`` (metres) before the edge bound, the observation they refine
    and the measured untrusted pixels ``[H, W]`` the bound applies to."""

    samples: Float[np.ndarray, "s h w"]
    observation: Observation
    edges: Bool[np.ndarray, "h w"]


class DiffusionRefiner:
    """Refines one frame: ``samples`` DDIM samples of ``steps`` steps each, kept within the calibration's edge
    bound, their mean and calibrated spread."""

    name = "diffusion"

    def __init__(
        self,
        model: torch.nn.Module,
        schedule: DiffusionConfig,
        sensor: SensorPrior,
        calibration: Calibration,
        steps: int = 2,
        samples: int = 2,
        tile: int = 640,
        overlap: int = 32,
        device: torch.device | str = "cpu",
    ):
        self.model, self.schedule, self.sensor, self.calibration = model, schedule, sensor, calibration
        self.steps, self.samples, self.device = steps, samples, torch.device(device)
        self.scheduler = make_scheduler(schedule)
        self.net = tiled(model, tile, overlap)

    def with_calibration(self, calibration: Calibration) -> DiffusionRefiner:
        """This refiner (same network and sampling) with another calibration: edge bound and uncertainty."""
        other = copy.copy(self)
        other.calibration = calibration
        return other

    @torch.inference_mode()
    def draw(
        self, rgb: UInt8[np.ndarray, "h w 3"], noisy: Float[np.ndarray, "h w"], focal_px: float, seed: int
    ) -> Draw:
        """The unbounded samples of one frame: ``rgb`` uint8 [H,W,3], ``noisy`` float32 [H,W] metres (0 = hole),
        the focal length in pixels."""
        s, dev = self.samples, self.device
        obs = observe(noisy, focal_px, self.sensor, self.schedule)

        def t(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.array(a, dtype=np.float32))[None, None].to(dev)

        rgb_t = torch.from_numpy(np.array(rgb, dtype=np.float32)).permute(2, 0, 1)[None].div(255).to(dev)
        norm = normalise(rgb_t, t(noisy), t(obs.base), t(obs.sigma), t(obs.trusted), self.schedule)
        g = torch.Generator().manual_seed(seed)
        noise = torch.randn((s, 1, *noisy.shape), generator=g).to(dev)
        x0 = sample(self.net, norm.cond.expand(s, -1, -1, -1), self.scheduler, self.steps, init_noise=noise)
        depth = norm.depth(x0, self.schedule)[:, 0].float().cpu().numpy()
        return Draw(samples=depth, observation=obs, edges=(noisy > 0) & ~obs.trusted)

    def summarise(self, draw: Draw) -> Refined:
        """The frame from its samples: each kept within the calibration's edge bound, their mean, the raw
        samples' spread around it and the calibrated standard deviation.

        The spread is the raw samples' RMS deviation from the reported depth: their standard deviation where
        nothing is bounded, and where the bound holds a pixel at the first guess, how far the network would
        have moved it, so a first guess the network disagrees with is reported as uncertain."""
        obs, cal = draw.observation, self.calibration
        mean = bound_to_base(draw.samples, obs.base, obs.sigma, draw.edges, cal.untrusted_bound).mean(0)
        spread = np.sqrt(np.mean((draw.samples - mean) ** 2, axis=0))
        mean, spread = mean.astype(np.float32), spread.astype(np.float32)
        std = calibrated_std(spread, obs.sigma, obs.trusted, cal)
        return Refined(depth=mean, spread=spread, std=std, sigma=obs.sigma, trusted=obs.trusted)

    def refine(
        self, rgb: UInt8[np.ndarray, "h w 3"], noisy: Float[np.ndarray, "h w"], focal_px: float, seed: int
    ) -> Refined:
        """``rgb`` uint8 [H,W,3], ``noisy`` float32 [H,W] metres (0 = hole), the focal length in pixels."""
        return self.summarise(self.draw(rgb, noisy, focal_px, seed))
