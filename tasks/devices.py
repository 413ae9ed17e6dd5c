"""Compute devices and mixed precision for the stages that run networks (train_diffusion, refine, fit_nerf)."""

from __future__ import annotations

import torch

from tasks.errors import DataError


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when there is one, else CPU), ``cpu``, ``cuda`` or ``cuda:N``; CUDA asked for but missing is an
    error naming ``device``."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DataError("device", "CUDA was requested but is not available")
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else ("cpu" if name == "auto" else name))


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """Mixed-precision dtype: bf16 on CUDA by default; off on CPU, where autocast costs more than it saves."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    return torch.float16 if amp == "fp16" else torch.bfloat16
