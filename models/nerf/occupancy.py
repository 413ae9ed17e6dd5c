"""Occupancy grid for empty-space skipping (nerfacc style): state in buffers, a no-grad ``update``.

The scene box is cut into ``R x R x R`` cells. ``density[i, j, k]`` holds a running estimate of the largest
density in the cell (``i`` along x, ``j`` along y, ``k`` along z); ``binary`` says which cells the renderer
must sample. Update rule, for every evaluated cell::

    density <- max(decay * density, max over n_samples_per_cell random points in the cell of density_fn)

(cells not evaluated in a call keep their value), then::

    binary  <- density > min(threshold, mean(density))      (after warm-up)
    binary  <- True everywhere                             (while step < warmup_steps)

Guarantee: a cell whose current estimate exceeds ``threshold`` is occupied, since
``min(threshold, mean) <= threshold``; the ``mean`` term only ever adds cells (it keeps low-density scenes from
going fully empty). ``threshold`` is in the units of ``density_fn``: pass ``lambda x: field.density(x) * dt``
to threshold opacity per step ``dt`` instead (nerfacc's convention).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from jaxtyping import Bool, Float
from torch import nn

from models.nerf.config import OccupancyGridConfig

if TYPE_CHECKING:
    import numpy as np

Tensor = torch.Tensor

__all__ = ["OccupancyGrid", "OccupancyGridConfig"]


class OccupancyGrid(nn.Module):
    """Binary occupancy over an axis-aligned box.

    Args:
        aabb: ``[2, 3]`` box ``(min, max)`` in world units.
        resolution: Cells per axis ``R``.

    Buffers:
        aabb: ``[2, 3]``.
        density: ``[R, R, R]`` float32 running max-density estimate (starts at 0).
        binary: ``[R, R, R]`` bool occupancy (starts all True).
    """

    aabb: Tensor  # buffers
    density: Tensor
    binary: Tensor

    def __init__(self, aabb: Tensor | np.ndarray | Sequence, resolution: int = 128) -> None:
        super().__init__()
        box = torch.as_tensor(aabb, dtype=torch.float32)
        if box.shape != (2, 3) or not bool((box[1] > box[0]).all()):
            raise ValueError(f"aabb must be [2, 3] with max > min on every axis, got {box.tolist()}")
        if resolution < 1:
            raise ValueError(f"resolution must be >= 1, got {resolution}")
        self.resolution = int(resolution)
        r = self.resolution
        self.register_buffer("aabb", box.clone())
        self.register_buffer("density", torch.zeros(r, r, r))
        self.register_buffer("binary", torch.ones(r, r, r, dtype=torch.bool))

    @classmethod
    def from_config(cls, cfg: OccupancyGridConfig, aabb: Tensor | np.ndarray | Sequence) -> OccupancyGrid:
        return cls(aabb, cfg.resolution)

    @property
    def occupied_fraction(self) -> float:
        """Fraction of cells marked occupied."""
        return float(self.binary.float().mean())

    def cell_size(self) -> Float[Tensor, " 3"]:
        """``[3]`` edge lengths of one cell in world units."""
        return (self.aabb[1] - self.aabb[0]) / self.resolution

    def _cell_indices(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``[n, 3]`` world points -> ``[n]`` flat cell index (clamped) and ``[n]`` inside-box mask."""
        u = (x - self.aabb[0]) / (self.aabb[1] - self.aabb[0])
        inside = ((u >= 0.0) & (u <= 1.0)).all(dim=-1)
        ijk = (u * self.resolution).floor().long().clamp(0, self.resolution - 1)
        r = self.resolution
        return (ijk[:, 0] * r + ijk[:, 1]) * r + ijk[:, 2], inside

    @torch.no_grad()
    def query(self, x: Float[Tensor, "*batch 3"]) -> Bool[Tensor, "*batch"]:
        """Occupancy of world points.

        Args:
            x: ``[..., 3]`` world points.

        Returns:
            ``[...]`` bool; False outside the box.
        """
        lead = x.shape[:-1]
        flat, inside = self._cell_indices(x.reshape(-1, 3).to(self.aabb.dtype))
        return (self.binary.view(-1)[flat] & inside).reshape(lead)

    @torch.no_grad()
    def update(
        self,
        step: int,
        density_fn: Callable[[Tensor], Tensor],
        warmup_steps: int = 256,
        decay: float = 0.95,
        threshold: float = 0.01,
        n_samples_per_cell: int = 1,
        *,
        n_cells: int | None = None,
        generator: torch.Generator | None = None,
        chunk: int = 2**18,
    ) -> None:
        """Refresh the density estimates and the occupancy (rule in the module docstring).

        Args:
            step: Training step; ``step < warmup_steps`` is warm-up (all cells evaluated, all occupied).
            density_fn: ``[k, 3]`` world points -> ``[k]`` density.
            warmup_steps, decay, threshold, n_samples_per_cell: See the module docstring.
            n_cells: After warm-up, evaluate only this many random cells plus as many random occupied ones
                (``None``: every cell).
            generator: For the random points and cells (on the grid's device); required, the global RNG is
                never used.
            chunk: Points per ``density_fn`` call.
        """
        if generator is None:
            raise ValueError("OccupancyGrid.update draws random points: pass an explicit torch.Generator")
        r3 = self.resolution**3
        dev = self.density.device
        if step < warmup_steps or n_cells is None:
            cells = torch.arange(r3, device=dev)
        else:
            rand = torch.randint(0, r3, (n_cells,), device=dev, generator=generator)
            occ = self.binary.view(-1).nonzero().squeeze(-1)
            if occ.numel():
                pick = torch.randint(0, occ.numel(), (n_cells,), device=dev, generator=generator)
                rand = torch.cat([rand, occ[pick]])
            cells = torch.unique(rand)

        r = self.resolution
        ijk = torch.stack([cells // (r * r), (cells // r) % r, cells % r], dim=-1).to(self.aabb.dtype)  # [c, 3]
        new = torch.zeros(cells.numel(), device=dev)
        size = self.cell_size()
        per_chunk = max(1, chunk // n_samples_per_cell)
        for start in range(0, cells.numel(), per_chunk):
            c = ijk[start : start + per_chunk]
            jitter = torch.rand(c.shape[0], n_samples_per_cell, 3, device=dev, generator=generator)
            x = self.aabb[0] + (c[:, None, :] + jitter) * size  # [c, s, 3]
            sigma = density_fn(x.reshape(-1, 3)).reshape(c.shape[0], n_samples_per_cell).float()
            new[start : start + per_chunk] = sigma.amax(dim=1).clamp_min(0.0)

        flat = self.density.view(-1)
        flat[cells] = torch.maximum(flat[cells] * decay, new)
        if step < warmup_steps:
            self.binary.fill_(True)
        else:
            cutoff = torch.clamp(self.density.mean(), max=threshold)
            self.binary.copy_(self.density > cutoff)
