"""Multi-resolution hash encoding (Instant-NGP, Müller et al. 2022), pure PyTorch.

A point ``x`` in the unit cube is looked up in ``L`` grids of increasing resolution. Level ``l`` has
``N_l = floor(N_min * b**l)`` cells per axis (``N_l + 1`` vertices), with the growth factor
``b = exp((ln N_max - ln N_min) / (L - 1))`` (``b = 1`` for a single level). Each grid vertex owns a
feature vector of ``F`` entries in that level's table of ``T = 2**log2_hashmap_size`` rows:

* dense level, when ``(N_l + 1)**3 <= T``: row ``x + y * (N_l + 1) + z * (N_l + 1)**2`` (one-to-one);
* hashed level otherwise: row ``(x * 1  XOR  y * 2654435761  XOR  z * 805459861) mod T``.

The hash is computed in int64: the products cannot overflow (``N_l < 2**31``), and since ``T`` is a power of
two the low ``log2 T`` bits equal those of the paper's wrapping uint32 arithmetic, so ``mod T`` is a mask.
The features of the 8 cell corners are blended trilinearly and the ``L`` levels concatenated.

All levels share one parameter tensor ``tables [L, T, F]``; a dense level uses only its first
``(N_l + 1)**3`` rows (the rest never receive gradients). Lookups are vectorised over points *and* levels;
the forward pass holds ``[n, L, 8]`` rows and weights and ``[n, L, 8, F]`` gathered features, so callers
bound ``n`` (the renderer works in chunks of rays).
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float, Int
from torch import nn

from models.nerf.config import HashEncodingConfig
from models.nerf.kernels import fused_hash_encoding, fused_hashgrid_available

Tensor = torch.Tensor

__all__ = ["HASH_PRIMES", "HashEncoding", "HashEncodingConfig", "level_resolutions"]

# The spatial-hash primes of Instant-NGP (Teschner et al. 2003, with 1 for the first axis for coherence).
HASH_PRIMES = (1, 2654435761, 805459861)


def growth_factor(cfg: HashEncodingConfig) -> float:
    """``b = exp((ln N_max - ln N_min) / (L - 1))``; 1 when there is a single level."""
    if cfg.n_levels == 1:
        return 1.0
    return math.exp((math.log(cfg.max_resolution) - math.log(cfg.base_resolution)) / (cfg.n_levels - 1))


def level_resolutions(cfg: HashEncodingConfig) -> tuple[int, ...]:
    """``N_l = floor(N_min * b**l)`` for ``l = 0 .. L-1``.

    A relative tolerance of ``1e-9`` inside the floor absorbs float rounding, so that the last level is
    exactly ``N_max`` (``16 * b**11`` evaluates to ``1023.9999...`` otherwise).
    """
    b = growth_factor(cfg)
    return tuple(math.floor(cfg.base_resolution * b**level * (1.0 + 1e-9)) for level in range(cfg.n_levels))


class HashEncoding(nn.Module):
    """Multi-resolution hash encoding of points in ``[0, 1]^3``.

    ``generator`` draws the initial tables (:meth:`init_weights`); without one they are those of seed 0.

    Attributes:
        resolutions: ``N_l`` per level (cells per axis).
        growth_factor: ``b``.
        is_dense: Per level, whether it is stored densely (``(N_l + 1)**3 <= T``) instead of hashed.
        table_size: ``T``.
        output_dim: ``L * F``.
        tables: Parameter ``[L, T, F]``.
    """

    _res: Tensor  # buffers
    _dense: Tensor
    _row_offset: Tensor
    _primes: Tensor

    def __init__(self, cfg: HashEncodingConfig | None = None, generator: torch.Generator | None = None) -> None:
        super().__init__()
        cfg = cfg or HashEncodingConfig()
        self.cfg = cfg
        self.n_levels = cfg.n_levels
        self.features_per_level = cfg.features_per_level
        self.table_size = 2**cfg.log2_hashmap_size
        self.growth_factor = growth_factor(cfg)
        self.resolutions = level_resolutions(cfg)
        self.is_dense = tuple((n + 1) ** 3 <= self.table_size for n in self.resolutions)
        assert list(self.is_dense) == sorted(self.is_dense, reverse=True), "dense levels must be a prefix"
        self.output_dim = cfg.n_levels * cfg.features_per_level

        self.tables = nn.Parameter(torch.empty(cfg.n_levels, self.table_size, cfg.features_per_level))
        self.init_weights(generator)

        # Per-level constants as non-persistent buffers: they follow .to(device) and stay out of state_dict.
        res = torch.tensor(self.resolutions, dtype=torch.int64)
        self.register_buffer("_res", res, persistent=False)  # [L]
        self.register_buffer("_dense", torch.tensor(self.is_dense), persistent=False)  # [L] bool
        self.register_buffer("_row_offset", torch.arange(cfg.n_levels) * self.table_size, persistent=False)
        self.register_buffer("_primes", torch.tensor(HASH_PRIMES, dtype=torch.int64), persistent=False)

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """Draw the tables from ``U(-init_scale, init_scale)`` with ``generator`` (on the tables' device), never
        the global RNG; ``None``: a generator seeded 0, so the same config always builds the same tables."""
        if generator is None:
            generator = torch.Generator(device=self.tables.device).manual_seed(0)
        nn.init.uniform_(self.tables, -self.cfg.init_scale, self.cfg.init_scale, generator=generator)

    def extra_repr(self) -> str:
        return (
            f"levels={self.n_levels}, F={self.features_per_level}, T=2^{self.cfg.log2_hashmap_size}, "
            f"resolutions={self.resolutions[0]}..{self.resolutions[-1]}, dense_levels={sum(self.is_dense)}"
        )

    def vertex_rows(self, vertices: Int[Tensor, "*batch L 3"]) -> Int[Tensor, "*batch L"]:
        """Table row of integer grid vertices, per level (reference form of the lookup, used by tests).

        Args:
            vertices: ``[..., L, 3]`` int64 vertex coordinates of level ``l`` in ``[0, N_l]``.

        Returns:
            ``[..., L]`` int64 rows in ``[0, T)`` of each level's own table.
        """
        side = self._res + 1  # [L]
        x, y, z = vertices.unbind(-1)
        dense = x + y * side + z * side * side
        p = self._primes
        hashed = ((x * p[0]) ^ (y * p[1]) ^ (z * p[2])) & (self.table_size - 1)
        return torch.where(self._dense, dense, hashed)

    def corner_rows_and_weights(
        self, x: Float[Tensor, "n 3"]
    ) -> tuple[Int[Tensor, "n L 8"], Float[Tensor, "n L 8"]]:
        """Rows and trilinear weights of the 8 cell corners of every point at every level.

        Corner ``c`` has offsets ``(c & 1, (c >> 1) & 1, (c >> 2) & 1)`` along ``(x, y, z)``. Per-axis terms
        are computed once for the two vertex coordinates of the cell and combined by broadcasting; dense
        levels form a prefix of the levels (resolutions grow), so each level is indexed one way only.

        Args:
            x: ``[n, 3]`` points, clamped to ``[0, 1]``.

        Returns:
            rows: ``[n, L, 8]`` int64 rows into each level's table.
            weights: ``[n, L, 8]`` trilinear weights (sum to 1 over the corners).
        """
        n = x.shape[0]
        x = torch.nan_to_num(x.float(), nan=0.0).clamp(0.0, 1.0)  # NaN would index out of the table
        res = self._res.to(x.dtype)  # [L]
        pos = x[:, None, :] * res[None, :, None]  # [n, L, 3]
        # Cell index in [0, N_l - 1]: x = 1 falls in the last cell with fraction 1.
        cell = torch.minimum(torch.floor(pos), (res - 1.0)[None, :, None])
        frac = pos - cell  # [n, L, 3]
        v = cell.long()[..., None] + torch.arange(2, device=x.device)  # [n, L, 3, 2] two vertex coords per axis
        wa = torch.stack([1.0 - frac, frac], dim=-1)  # [n, L, 3, 2] per-axis linear weights

        def combine(a: Tensor, op) -> Tensor:  # [n, l, 3, 2] -> [n, l, 8], corner = x + 2 y + 4 z
            xs, ys, zs = a.unbind(2)
            out = op(op(zs[..., :, None, None], ys[..., None, :, None]), xs[..., None, None, :])
            return out.reshape(*a.shape[:2], 8)

        weights = combine(wa, torch.mul)
        nd = sum(self.is_dense)
        parts = []
        if nd:
            side = (self._res[:nd] + 1)[None, :, None, None]  # [1, nd, 1, 1]
            scale = torch.cat([torch.ones_like(side), side, side * side], dim=2)  # [1, nd, 3, 1]
            parts.append(combine(v[:, :nd] * scale, torch.add))
        if nd < self.n_levels:
            hashed = combine(v[:, nd:] * self._primes[None, None, :, None], torch.bitwise_xor)
            parts.append(hashed & (self.table_size - 1))
        rows = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        return rows.reshape(n, self.n_levels, 8), weights

    def uses_fused_kernel(self, x: Tensor) -> bool:
        """Whether :meth:`forward` takes the compiled kernel for points like ``x`` (see ``cfg.backend``)."""
        backend = self.cfg.backend
        if backend == "torch":
            return False
        fits = x.device.type == "cpu" and self.tables.dtype in (torch.float32, torch.float64)
        if backend == "fused":
            if not fits:
                raise ValueError(f"nerf.field.encoding.backend=fused needs CPU float tables, got "
                                 f"{self.tables.dtype} on {x.device}; use backend=auto")
            if not fused_hashgrid_available():
                raise RuntimeError("nerf.field.encoding.backend=fused, but the kernel could not be built "
                                   "(see the log line above); use backend=auto or torch")
            return True
        return fits and fused_hashgrid_available()

    def forward(self, x: Float[Tensor, "*batch 3"]) -> Float[Tensor, "*batch features"]:
        """Encode points.

        Args:
            x: ``[..., 3]`` points in ``[0, 1]^3`` (values outside are clamped onto the cube).

        Returns:
            ``[..., L * F]`` features, level-major (level 0's ``F`` entries first), in the tables' dtype.
        """
        lead = x.shape[:-1]
        x = x.reshape(-1, 3)
        if self.uses_fused_kernel(x):
            out = fused_hash_encoding(x.to(self.tables.dtype), self.tables, self.resolutions, sum(self.is_dense))
            return out.reshape(*lead, self.output_dim)
        rows, weights = self.corner_rows_and_weights(x)
        flat = self.tables.view(-1, self.features_per_level)  # [L * T, F]
        gidx = (rows + self._row_offset[None, :, None]).reshape(-1)
        # index_select: its backward (index_add) is several times faster on CPU than embedding's.
        feats = flat.index_select(0, gidx).view(*rows.shape, self.features_per_level)  # [n, L, 8, F]
        out = torch.einsum("nlc,nlcf->nlf", weights.to(feats.dtype), feats)  # [n, L, F]
        return out.reshape(*lead, self.output_dim)
