"""The original NeRF field (Mildenhall et al. 2020) as a reference baseline for benchmarks.

Positional encoding of position (10 frequencies) and view direction (4), an 8 x 256 ReLU MLP with a skip
connection into the fifth layer, density from the trunk and colour from a 128-wide branch conditioned on
the encoded direction. It plugs into :func:`models.nerf.rendering.render_rays` like
:class:`models.nerf.field.NeRFField` (one network for the coarse and fine passes, as mip-NeRF does), so
speed-ups are measured against the same renderer, data and machine.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from pydantic import Field
from torch import Tensor, nn

from models.config import StrictConfig
from models.nerf.field import init_linear_, linear, normalize_to_aabb


class VanillaNeRFConfig(StrictConfig):
    """Architecture of :class:`VanillaNeRF` (defaults: the paper's)."""

    n_freq_xyz: int = Field(default=10, ge=0)
    n_freq_dir: int = Field(default=4, ge=0)
    depth: int = Field(default=8, ge=2)
    width: int = Field(default=256, ge=8)
    skip_layer: int = Field(default=4, ge=1)


def positional_encoding(x: Float[Tensor, "*batch d"], n_freqs: int) -> Float[Tensor, "*batch e"]:
    """``[..., d] -> [..., d * (1 + 2 * n_freqs)]``: ``x`` followed by ``sin(2^k pi x), cos(2^k pi x)``."""
    if n_freqs == 0:
        return x
    freqs = (2.0 ** torch.arange(n_freqs, device=x.device, dtype=x.dtype)) * torch.pi  # [F]
    angles = x[..., None, :] * freqs[:, None]  # [..., F, d]
    enc = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-2)  # [..., 2F, d]
    return torch.cat([x, enc.flatten(-2)], dim=-1)


class VanillaNeRF(nn.Module):
    """``forward(x [n, 3] world, d [n, 3] unit) -> (rgb [n, 3], sigma [n])``; zero density outside ``aabb``.

    ``generator`` draws the initial weights (PyTorch's ``nn.Linear`` default, :meth:`init_weights`), never the
    global RNG; ``None``: a generator seeded 0.
    """

    aabb: Tensor  # buffer

    def __init__(self, cfg: VanillaNeRFConfig | None = None, aabb: Tensor | None = None,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or VanillaNeRFConfig()
        aabb = torch.as_tensor(aabb if aabb is not None else [[-1.0] * 3, [1.0] * 3], dtype=torch.float32)
        self.register_buffer("aabb", aabb)
        in_xyz = 3 * (1 + 2 * cfg.n_freq_xyz)
        in_dir = 3 * (1 + 2 * cfg.n_freq_dir)
        layers = []
        for i in range(cfg.depth):
            fan_in = in_xyz if i == 0 else cfg.width + (in_xyz if i == cfg.skip_layer else 0)
            layers.append(linear(fan_in, cfg.width))
        self.trunk = nn.ModuleList(layers)
        self.sigma = linear(cfg.width, 1)
        self.feature = linear(cfg.width, cfg.width)
        self.color = nn.Sequential(linear(cfg.width + in_dir, cfg.width // 2), nn.ReLU(), linear(cfg.width // 2, 3))
        self.init_weights(generator if generator is not None else torch.Generator().manual_seed(0))

    def init_weights(self, generator: torch.Generator) -> None:
        """Draw every layer from ``generator`` (on the parameters' device), in registration order."""
        init_linear_(self, generator)

    def _trunk(self, x: Tensor) -> tuple[Tensor, Tensor]:
        unit, inside = normalize_to_aabb(x, self.aabb)
        enc = positional_encoding(unit * 2 - 1, self.cfg.n_freq_xyz)
        h = enc
        for i, layer in enumerate(self.trunk):
            if i == self.cfg.skip_layer:
                h = torch.cat([h, enc], dim=-1)
            h = torch.relu(layer(h))
        sigma = torch.relu(self.sigma(h)[..., 0]) * inside
        return h, sigma

    def density(self, x: Float[Tensor, "*batch 3"]) -> Float[Tensor, "*batch"]:
        return self._trunk(x)[1]

    def forward(
        self, x: Float[Tensor, "*batch 3"], d: Float[Tensor, "*batch 3"]
    ) -> tuple[Float[Tensor, "*batch 3"], Float[Tensor, "*batch"]]:
        h, sigma = self._trunk(x)
        rgb = torch.sigmoid(self.color(torch.cat([self.feature(h), positional_encoding(d, self.cfg.n_freq_dir)], -1)))
        return rgb, sigma
