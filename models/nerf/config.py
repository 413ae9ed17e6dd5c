"""The configs of the NeRF's hash encoding, field and occupancy grid, apart from their implementation
(:mod:`models.nerf.encoding`, :mod:`models.nerf.field`, :mod:`models.nerf.occupancy`) so that params parsing
(:mod:`tasks.config`) does not import PyTorch or the NeRF modules. Those modules re-export these classes.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from models.config import StrictConfig

__all__ = ["HashEncodingConfig", "NeRFFieldConfig", "OccupancyGridConfig"]


class HashEncodingConfig(StrictConfig):
    """Size of the hash grid.

    Attributes:
        n_levels: Number of resolution levels ``L``.
        features_per_level: Feature entries ``F`` per vertex and level.
        log2_hashmap_size: ``log2`` of the rows ``T`` of each level's table.
        base_resolution: Coarsest resolution ``N_min`` (cells per axis).
        max_resolution: Finest resolution ``N_max``; must exceed ``base_resolution``.
        init_scale: Table entries start uniform in ``[-init_scale, init_scale]``.
        backend: ``fused``: the compiled CPU kernel (:mod:`models.nerf.kernels`; an error where it cannot be
            built); ``torch``: the pure-PyTorch reference; ``auto``: the kernel for CPU tensors where it builds,
            PyTorch otherwise (CUDA, no compiler). The backends agree to float rounding.
    """

    n_levels: int = Field(default=12, ge=1, le=64)
    features_per_level: int = Field(default=2, ge=1)
    log2_hashmap_size: int = Field(default=17, ge=1, le=30)
    base_resolution: int = Field(default=16, ge=1)
    max_resolution: int = Field(default=1024, ge=2, le=2**20)
    init_scale: float = Field(default=1e-4, gt=0.0)
    backend: Literal["auto", "fused", "torch"] = "auto"

    @model_validator(mode="after")
    def _check_resolutions(self) -> HashEncodingConfig:
        if self.max_resolution <= self.base_resolution:
            raise ValueError(
                f"max_resolution ({self.max_resolution}) must be greater than base_resolution "
                f"({self.base_resolution})"
            )
        return self


class NeRFFieldConfig(StrictConfig):
    """Architecture of :class:`NeRFField`.

    Attributes:
        encoding: The hash grid.
        hidden_dim: Width of both MLPs.
        geo_features: Features ``G`` passed from the density MLP to the colour MLP.
        n_density_layers: Hidden layers of the density MLP.
        n_color_layers: Hidden layers of the colour MLP.
        sh_degree: Bands of the view-direction SH encoding (4 -> 16 coefficients).
        density_bias: Added to the raw density before ``trunc_exp`` (-1: initial density ~ e^-1 per unit).
        gradient_checkpointing: In training mode with autograd on, recompute encoding + MLPs in the backward
            pass (``torch.utils.checkpoint``, non-reentrant) instead of storing their activations.
    """

    encoding: HashEncodingConfig = HashEncodingConfig()
    hidden_dim: int = Field(default=64, ge=1)
    geo_features: int = Field(default=15, ge=0)
    n_density_layers: int = Field(default=1, ge=0)
    n_color_layers: int = Field(default=2, ge=0)
    sh_degree: int = Field(default=4, ge=1, le=4)
    density_bias: float = -1.0
    gradient_checkpointing: bool = False


class OccupancyGridConfig(StrictConfig):
    """Settings of :class:`OccupancyGrid` and of its updates (for a training loop to pass on).

    Attributes:
        resolution: Cells per axis ``R``.
        update_every: Training steps between updates.
        warmup_steps: Every cell counts as occupied before this step.
        decay: EMA decay of the per-cell maximum.
        threshold: Density above which a cell is always occupied.
        n_samples_per_cell: Random points per cell and update.
        n_cells: ``None``: evaluate every cell at every update; an integer ``k``: after warm-up, ``k`` random
            cells plus ``k`` random occupied cells per update (nerfacc's scheme, cheaper for large ``R``).
    """

    resolution: int = Field(default=128, ge=1)
    update_every: int = Field(default=16, ge=1)
    warmup_steps: int = Field(default=256, ge=0)
    decay: float = Field(default=0.95, ge=0.0, le=1.0)
    threshold: float = Field(default=0.01, ge=0.0)
    n_samples_per_cell: int = Field(default=1, ge=1)
    n_cells: int | None = Field(default=None, ge=1)
