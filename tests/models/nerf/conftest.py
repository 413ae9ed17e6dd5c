"""Analytic fields shared by the NeRF tests (callables with the NeRFField interface)."""

from __future__ import annotations

import pytest
import torch


class SphereField:
    """Constant density ``sigma`` and colour ``rgb`` inside a ball, nothing outside."""

    def __init__(self, center=(0.0, 0.0, 0.0), radius: float = 0.5, sigma: float = 2.0, rgb=(0.2, 0.6, 0.9)):
        self.center = torch.tensor(center, dtype=torch.float32)
        self.radius, self.sigma = radius, sigma
        self.rgb = torch.tensor(rgb, dtype=torch.float32)
        self.n_calls = 0

    def density(self, x: torch.Tensor) -> torch.Tensor:
        self.n_calls += x.shape[0]
        inside = (x - self.center).norm(dim=-1) <= self.radius
        return torch.where(inside, torch.full_like(x[..., 0], self.sigma), torch.zeros_like(x[..., 0]))

    def __call__(self, x: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rgb.expand_as(x), self.density(x)


class HalfSpaceField:
    """Opaque white matter where ``dot(x - origin, normal) >= offset``."""

    def __init__(self, origin, normal, offset: float, sigma: float = 1e3):
        self.origin = torch.as_tensor(origin, dtype=torch.float32)
        self.normal = torch.as_tensor(normal, dtype=torch.float32)
        self.offset, self.sigma = offset, sigma

    def density(self, x: torch.Tensor) -> torch.Tensor:
        s = ((x - self.origin) * self.normal).sum(-1)
        return torch.where(s >= self.offset, torch.full_like(s, self.sigma), torch.zeros_like(s))

    def __call__(self, x: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.ones_like(x), self.density(x)


@pytest.fixture
def sphere_field():
    return SphereField


@pytest.fixture
def half_space_field():
    return HalfSpaceField
