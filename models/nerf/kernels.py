"""Compiled CPU kernels: the fused hash-grid encoding (``csrc/hashgrid.cpp``).

Built on first use with PyTorch's C++ extension tooling (``torch.utils.cpp_extension.load``: ``g++`` and
``ninja``, under half a minute on 2 cores) into ``$TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``);
later processes load the cached build in well under a second, and a changed source is rebuilt. Concurrent
first uses (parallel workers) wait on PyTorch's build lock. Where no compiler is available the build fails
once, one line is logged and :func:`fused_hashgrid_available` is False: the encoding then falls back to its
pure-PyTorch path (same results, slower).

Threads: the kernel is compiled with ``-fopenmp`` (ATen's ``parallel_for`` is an inline OpenMP loop). Its
``libgomp.so.1`` resolves to the copy PyTorch has already loaded, so there is one OpenMP pool and
``torch.set_num_threads`` (e.g. the ``threads`` runner's share per worker) governs the kernel too.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from types import ModuleType

import torch
from jaxtyping import Float
from torch.autograd.function import once_differentiable

log = logging.getLogger(__name__)

Tensor = torch.Tensor

__all__ = ["fused_hash_encoding", "fused_hashgrid_available", "load_hashgrid"]

CSRC = Path(__file__).resolve().parent / "csrc"
DISABLE_ENV = "DNERF_NO_KERNELS"


@functools.cache
def load_hashgrid() -> ModuleType | None:
    """The compiled extension, built (or loaded from the cache) once per process; ``None`` when it cannot
    be built (the reason is logged once) or when ``DNERF_NO_KERNELS=1``."""
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return None
    try:
        from torch.utils.cpp_extension import load

        # torch annotates load() as module-or-path; with is_python_module=True (the default) it is the module
        return load(name="dnerf_hashgrid", sources=[str(CSRC / "hashgrid.cpp")], extra_cflags=["-O3", "-fopenmp"],
                    extra_ldflags=["-fopenmp"], verbose=False)  # pyright: ignore[reportReturnType]
    except Exception as exc:  # noqa: BLE001 - no compiler, no ninja, no headers: all mean "use the PyTorch path"
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        log.warning("fused hash-grid kernel unavailable (%s); using the pure-PyTorch encoding", reason[:200])
        return None


def fused_hashgrid_available() -> bool:
    """Whether the CPU kernel is built and loadable here."""
    return load_hashgrid() is not None


class _FusedHashGrid(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, tables: Tensor, resolutions: tuple[int, ...], n_dense: int) -> Tensor:  # type: ignore[override]
        ext = load_hashgrid()
        assert ext is not None, "fused_hash_encoding is only called when fused_hashgrid_available()"
        ctx.save_for_backward(x, tables)
        ctx.resolutions, ctx.n_dense = list(resolutions), n_dense
        return ext.forward(x, tables, list(resolutions), n_dense)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, tables = ctx.saved_tensors
        need_x, need_tables = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        ext = load_hashgrid()
        assert ext is not None, "fused_hash_encoding is only called when fused_hashgrid_available()"
        gx, gt = ext.backward(grad, x, tables, ctx.resolutions, ctx.n_dense, need_x, need_tables)
        return (gx if need_x else None), (gt if need_tables else None), None, None


def fused_hash_encoding(
    x: Float[Tensor, "n 3"], tables: Float[Tensor, "L T F"], resolutions: tuple[int, ...], n_dense: int
) -> Float[Tensor, "n L*F"]:
    """The hash-grid encoding by the fused kernel (call only when :func:`fused_hashgrid_available`).

    Args:
        x: ``[n, 3]`` points in ``[0, 1]^3`` (clamped; NaN -> 0), CPU, the tables' dtype (float32 or float64).
        tables: ``[L, T, F]`` feature tables, ``T`` a power of two.
        resolutions: ``N_l`` per level.
        n_dense: The first ``n_dense`` levels are indexed densely, the others hashed.

    Returns:
        ``[n, L * F]`` level-major features; differentiable in ``x`` and ``tables`` (once).
    """
    return _FusedHashGrid.apply(x.contiguous(), tables, tuple(resolutions), int(n_dense))
