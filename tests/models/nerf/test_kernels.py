"""The fused CPU hash-grid kernel (models/nerf/kernels.py, csrc/hashgrid.cpp) against the pure-PyTorch
reference encoding: values and gradients to float tolerance, gradcheck in double precision, and the fallback
on a machine without a compiler."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.nerf.encoding import HashEncoding, HashEncodingConfig
from models.nerf.kernels import fused_hash_encoding, fused_hashgrid_available

ROOT = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.skipif(not fused_hashgrid_available(), reason="the kernel cannot be built here")

# Dense and hashed levels, odd resolutions, three features: every code path of the kernel.
CFG = HashEncodingConfig(n_levels=6, features_per_level=3, log2_hashmap_size=12, base_resolution=3,
                         max_resolution=97, init_scale=1.0)


def pair(cfg: HashEncodingConfig, dtype=torch.float32) -> tuple[HashEncoding, HashEncoding]:
    """The reference and the fused encoding with the same random tables."""
    ref = HashEncoding(cfg.model_copy(update={"backend": "torch"}), torch.Generator().manual_seed(0)).to(dtype)
    fused = HashEncoding(cfg.model_copy(update={"backend": "fused"})).to(dtype)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def border_points(enc: HashEncoding, n_random: int = 500) -> torch.Tensor:
    """Random points, points exactly on the cell borders of every level (vertices, faces, the cube's faces
    x = 0 and x = 1) and points just outside the cube."""
    g = torch.Generator().manual_seed(1)
    pts = [torch.rand(n_random, 3, generator=g)]
    for res in enc.resolutions:
        k = torch.randint(0, res + 1, (64, 3), generator=g).float() / res  # vertices of this level
        mixed = torch.where(torch.rand(64, 3, generator=g) < 0.5, k, torch.rand(64, 3, generator=g))
        pts += [k, mixed]
    pts.append(torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.5], [-0.2, 1.3, 0.5]]))
    return torch.cat(pts)


def outputs_and_grads(enc: HashEncoding, x: torch.Tensor, grad: torch.Tensor):
    enc.zero_grad()
    xx = x.clone().requires_grad_(True)
    out = enc(xx)
    (out * grad).sum().backward()
    return out.detach(), xx.grad, enc.tables.grad.clone()


def test_fused_matches_the_reference_on_values_and_gradients():
    ref, fused = pair(CFG)
    assert fused.uses_fused_kernel(torch.zeros(1, 3)) and not ref.uses_fused_kernel(torch.zeros(1, 3))
    x = border_points(ref)
    grad = torch.randn(x.shape[0], ref.output_dim, generator=torch.Generator().manual_seed(2))
    out_r, gx_r, gt_r = outputs_and_grads(ref, x, grad)
    out_f, gx_f, gt_f = outputs_and_grads(fused, x, grad)
    torch.testing.assert_close(out_f, out_r, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gt_f, gt_r, rtol=1e-5, atol=1e-4)
    # the point gradient scales with the resolution (up to 97 per unit): compare relative to its size
    torch.testing.assert_close(gx_f, gx_r, rtol=1e-4, atol=1e-4 * float(gx_r.abs().max()))
    # the gradient reaches exactly the rows the reference touches, at every level
    assert torch.equal(gt_f != 0, gt_r != 0)


@pytest.mark.parametrize("level", range(CFG.n_levels))
def test_each_level_alone_matches(level):
    """Zero every other level's table: the output of that level alone, dense or hashed, agrees."""
    ref, fused = pair(CFG)
    with torch.no_grad():
        for enc in (ref, fused):
            keep = torch.zeros_like(enc.tables)
            keep[level] = 1.0
            enc.tables.mul_(keep)
    x = border_points(ref, 200)
    torch.testing.assert_close(fused(x), ref(x), rtol=1e-5, atol=1e-5)


def test_batched_shapes_nan_and_empty_input():
    ref, fused = pair(CFG)
    x = torch.rand(2, 5, 3)
    x[0, 0, 1] = float("nan")  # NaN is looked up as 0 by both
    torch.testing.assert_close(fused(x), ref(x), rtol=1e-5, atol=1e-5)
    assert fused(x).shape == (2, 5, CFG.n_levels * CFG.features_per_level)
    assert fused(torch.zeros(0, 3)).shape == (0, fused.output_dim)


def test_gradcheck_double_precision():
    """Analytic against finite-difference gradients (tables and points), away from cell borders where the
    trilinear blend is smooth."""
    cfg = HashEncodingConfig(n_levels=2, features_per_level=2, log2_hashmap_size=6, base_resolution=2,
                             max_resolution=5, init_scale=1.0)
    _, fused = pair(cfg, torch.float64)
    assert fused.is_dense == (True, False)
    res = torch.tensor(fused.resolutions, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(400, 3, generator=g, dtype=torch.float64)
    # keep points whose coordinates are at least 0.05 cells from a border of both levels
    cells = (x[:, None, :] * res[None, :, None]).frac()
    x = x[((cells > 0.05) & (cells < 0.95)).flatten(1).all(dim=1)][:6].clone().requires_grad_(True)
    assert x.shape == (6, 3)
    tables = fused.tables.detach().clone().requires_grad_(True)

    def fn(x_, t_):
        return fused_hash_encoding(x_, t_, fused.resolutions, sum(fused.is_dense))

    assert torch.autograd.gradcheck(fn, (x, tables), eps=1e-6, atol=1e-6)


def test_without_a_compiler_the_encoding_falls_back_with_one_notice(tmp_path):
    """A fresh extension cache and no C++ compiler: one logged line, the PyTorch path, and a clear error only
    for an explicit ``backend=fused``."""
    code = (
        "import logging, torch; logging.basicConfig(level=logging.WARNING, format='%(message)s')\n"
        "from models.nerf.encoding import HashEncoding, HashEncodingConfig\n"
        "enc = HashEncoding(HashEncodingConfig()); x = torch.rand(10, 3)\n"
        "assert not enc.uses_fused_kernel(x); enc(x).sum().backward(); enc(x)\n"
        "try:\n"
        "    HashEncoding(HashEncodingConfig(backend='fused'))(x)\n"
        "except RuntimeError as e:\n"
        "    print('ERROR:', e)\n"
    )
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path), "CXX": str(tmp_path / "no-such-g++"),
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                          cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr
    notices = [line for line in proc.stderr.splitlines() if "fused hash-grid kernel unavailable" in line]
    assert len(notices) == 1, proc.stderr
    assert "ERROR: nerf.field.encoding.backend=fused, but the kernel could not be built" in proc.stdout
