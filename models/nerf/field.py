"""The radiance field: hash-grid density and a spherical-harmonics-conditioned colour MLP (nerfacto-like).

Layout::

    x_world --(aabb)--> x in [0,1]^3 --HashEncoding--> density MLP --> [raw sigma | geo features (G)]
                                                                          |             |
                                                        sigma = trunc_exp(raw + bias)   |
    d_world --normalise--> SH basis (sh_degree**2) -----------------------------> colour MLP --> sigmoid --> rgb

Points outside the axis-aligned box ``aabb [2, 3]`` have zero density (and the colour of the clamped point).
Density uses ``trunc_exp``: ``exp`` forward, gradient ``exp(min(x, 15))`` so a large pre-activation cannot
blow up the backward pass (as in nerfacc / torch-ngp).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import torch
from jaxtyping import Bool, Float
from torch import nn
from torch.nn.utils import skip_init
from torch.utils.checkpoint import checkpoint

from models.nerf.config import NeRFFieldConfig
from models.nerf.encoding import HashEncoding

if TYPE_CHECKING:
    import numpy as np

Tensor = torch.Tensor

__all__ = ["NeRFField", "NeRFFieldConfig", "normalize_to_aabb", "spherical_harmonics", "trunc_exp"]

_TRUNC_EXP_MAX = 15.0


class _TruncExp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x.clamp(max=_TRUNC_EXP_MAX))


def trunc_exp(x: Float[Tensor, "*batch"]) -> Float[Tensor, "*batch"]:
    """``exp(x)`` whose gradient is ``exp(min(x, 15))`` (clamped backward, same shape as ``x``)."""
    return _TruncExp.apply(x)


# Real spherical harmonics, orthonormal on the unit sphere (same basis and ordering as tiny-cuda-nn / nerfstudio).
_C0 = 0.28209479177387814  # 1/2 sqrt(1/pi)
_C1 = 0.4886025119029199  # 1/2 sqrt(3/pi)
_C2 = (1.0925484305920792, 0.9461746957575601, 0.31539156525251999, 0.5462742152960396)
_C3 = (0.5900435899266435, 2.890611442640554, 0.4570457994644658, 0.3731763325901154, 1.445305721320277)


def spherical_harmonics(d: Float[Tensor, "*batch 3"], degree: int) -> Float[Tensor, "*batch basis"]:
    """Real spherical-harmonic basis of unit directions, bands ``l = 0 .. degree - 1``.

    ``degree`` counts bands like tiny-cuda-nn's ``SphericalHarmonics`` encoding: ``degree = 4`` gives the
    ``16`` functions of ``l <= 3``. The functions are orthonormal: ``∫ Y_i Y_j dΩ = δ_ij``.

    Args:
        d: ``[..., 3]`` directions (normalised here).
        degree: Number of bands, 1 to 4.

    Returns:
        ``[..., degree**2]``.
    """
    if not 1 <= degree <= 4:
        raise ValueError(f"sh_degree must be in 1..4, got {degree}")
    d = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    x, y, z = d.unbind(-1)
    out = [torch.full_like(x, _C0)]
    if degree > 1:
        out += [_C1 * y, _C1 * z, _C1 * x]
    if degree > 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [
            _C2[0] * x * y,
            _C2[0] * y * z,
            _C2[1] * zz - _C2[2],
            _C2[0] * x * z,
            _C2[3] * (xx - yy),
        ]
        if degree > 3:
            out += [
                _C3[0] * y * (3 * xx - yy),
                _C3[1] * x * y * z,
                _C3[2] * y * (5 * zz - 1),
                _C3[3] * z * (5 * zz - 3),
                _C3[2] * x * (5 * zz - 1),
                _C3[4] * z * (xx - yy),
                _C3[0] * x * (xx - 3 * yy),
            ]
    return torch.stack(out, dim=-1)


def normalize_to_aabb(
    x: Float[Tensor, "*batch 3"], aabb: Float[Tensor, "2 3"]
) -> tuple[Float[Tensor, "*batch 3"], Bool[Tensor, "*batch"]]:
    """Map world points into the box's unit cube.

    Args:
        x: ``[..., 3]`` world points.
        aabb: ``[2, 3]`` box ``(min, max)``.

    Returns:
        x_unit: ``[..., 3]`` ``(x - min) / (max - min)`` (not clamped).
        inside: ``[...]`` bool, whether the point lies in the closed box.
    """
    x_unit = (x - aabb[0]) / (aabb[1] - aabb[0])
    inside = ((x_unit >= 0.0) & (x_unit <= 1.0)).all(dim=-1)
    return x_unit, inside


def linear(in_dim: int, out_dim: int) -> nn.Linear:
    """An ``nn.Linear`` whose parameters are allocated but not drawn (its constructor would draw them from the
    global RNG): initialise it with :func:`init_linear_`."""
    return cast(nn.Linear, skip_init(nn.Linear, in_dim, out_dim))


@torch.no_grad()
def init_linear_(module: nn.Module, generator: torch.Generator) -> None:
    """PyTorch's default ``nn.Linear`` initialisation for every linear layer of ``module`` (in registration
    order), drawn from ``generator``: weights ``kaiming_uniform_(a=sqrt(5))`` (``U(-1/sqrt(fan_in),
    1/sqrt(fan_in))``), biases ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
            if layer.bias is not None:
                bound = 1 / math.sqrt(layer.in_features) if layer.in_features > 0 else 0.0
                nn.init.uniform_(layer.bias, -bound, bound, generator=generator)


def _mlp(in_dim: int, hidden: int, n_hidden: int, out_dim: int) -> nn.Sequential:
    """``n_hidden`` ReLU hidden layers of width ``hidden`` then a linear output layer (not initialised)."""
    layers: list[nn.Module] = []
    d = in_dim
    for _ in range(n_hidden):
        layers += [linear(d, hidden), nn.ReLU(inplace=True)]
        d = hidden
    layers.append(linear(d, out_dim))
    return nn.Sequential(*layers)


class NeRFField(nn.Module):
    """Density and view-dependent colour inside an axis-aligned box.

    Args:
        cfg: Architecture.
        aabb: ``[2, 3]`` scene box ``(min, max)`` in world units; registered as a buffer.
        generator: Draws the initial parameters (:meth:`init_weights`), never the global RNG; ``None``: a
            generator seeded 0, so the same arguments always build the same field.
    """

    aabb: Tensor  # buffer

    def __init__(
        self,
        cfg: NeRFFieldConfig | None = None,
        aabb: Tensor | np.ndarray | Sequence | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        cfg = cfg or NeRFFieldConfig()
        self.cfg = cfg
        box = torch.as_tensor(aabb if aabb is not None else [[-1.0] * 3, [1.0] * 3], dtype=torch.float32)
        if box.shape != (2, 3) or not bool((box[1] > box[0]).all()):
            raise ValueError(f"aabb must be [2, 3] with max > min on every axis, got {box.tolist()}")
        self.register_buffer("aabb", box.clone())
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.encoding = HashEncoding(cfg.encoding, generator)
        self.density_mlp = _mlp(self.encoding.output_dim, cfg.hidden_dim, cfg.n_density_layers, 1 + cfg.geo_features)
        self.color_mlp = _mlp(cfg.geo_features + cfg.sh_degree**2, cfg.hidden_dim, cfg.n_color_layers, 3)
        init_linear_(self, generator)

    def init_weights(self, generator: torch.Generator) -> None:
        """Draw every parameter from ``generator`` (on the parameters' device), in a fixed order: the hash
        tables (``U(-init_scale, init_scale)``), then the density and colour MLPs' layers (PyTorch's
        ``nn.Linear`` default, :func:`init_linear_`). Construction with a generator draws exactly this."""
        self.encoding.init_weights(generator)
        init_linear_(self, generator)

    # ------------------------------------------------------------------------------------------ helpers

    def _maybe_checkpoint(self, fn, *args: Tensor) -> Tensor:
        if self.cfg.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def _geometry(self, x_unit: Tensor) -> Tensor:
        """``[n, 3]`` unit-cube points -> ``[n, 1 + G]`` raw density and geometry features."""
        return self.density_mlp(self.encoding(x_unit))

    def _density_and_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x_unit, inside = normalize_to_aabb(x, self.aabb)
        h = self._maybe_checkpoint(self._geometry, x_unit.clamp(0.0, 1.0))
        sigma = trunc_exp(h[..., 0].float() + self.cfg.density_bias)
        sigma = torch.where(inside, sigma, torch.zeros_like(sigma))
        return sigma, h[..., 1:]

    # ---------------------------------------------------------------------------------------------- API

    def density(self, x: Float[Tensor, "*batch 3"]) -> Float[Tensor, "*batch"]:
        """Volume density.

        Args:
            x: ``[..., 3]`` world points.

        Returns:
            ``[...]`` sigma >= 0 per world unit of length, exactly 0 outside ``aabb``.
        """
        lead = x.shape[:-1]
        sigma, _ = self._density_and_features(x.reshape(-1, 3))
        return sigma.reshape(lead)

    def geometry(self, x: Float[Tensor, "*batch 3"]) -> tuple[Float[Tensor, " k"], Float[Tensor, "k G"]]:
        """Density and the geometry features the colour MLP reads (the first half of :meth:`forward`).

        Args:
            x: ``[..., 3]`` world points, flattened to ``k`` rows.

        Returns:
            sigma: ``[k]`` >= 0, 0 outside ``aabb``.
            geo: ``[k, G]``.
        """
        return self._density_and_features(x.reshape(-1, 3))

    def color(self, geo: Float[Tensor, "k G"], d: Float[Tensor, "*batch 3"]) -> Float[Tensor, "k 3"]:
        """View-dependent colour from :meth:`geometry`'s features (the second half of :meth:`forward`).

        Args:
            geo: ``[k, G]``.
            d: ``[..., 3]`` viewing directions (any length), ``k`` of them in the row order of ``geo``.

        Returns:
            ``[k, 3]`` rgb in ``[0, 1]``.
        """
        sh = spherical_harmonics(d.reshape(-1, 3).to(geo.dtype), self.cfg.sh_degree)
        return torch.sigmoid(self._maybe_checkpoint(self.color_mlp, torch.cat([geo, sh], dim=-1)))

    def forward(
        self, x: Float[Tensor, "*batch 3"], d: Float[Tensor, "*batch 3"]
    ) -> tuple[Float[Tensor, "*batch 3"], Float[Tensor, "*batch"]]:
        """Colour and density.

        Args:
            x: ``[..., 3]`` world points.
            d: ``[..., 3]`` viewing directions (any length; normalised here).

        Returns:
            rgb: ``[..., 3]`` in ``[0, 1]``.
            sigma: ``[...]`` >= 0, 0 outside ``aabb``.
        """
        lead = x.shape[:-1]
        sigma, geo = self.geometry(x)
        rgb = self.color(geo, d)
        return rgb.reshape(*lead, 3), sigma.reshape(lead)
