"""The CUDA path: the same code on a GPU gives what it gives on the CPU, and every stage that runs a network runs there.

Skipped where there is no CUDA device (CI has none); ``benchmarks/gpu.sh`` runs this file on a machine that has one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from models.nerf.config import NeRFFieldConfig
from models.nerf.field import NeRFField
from models.nerf.occupancy import OccupancyGrid
from models.nerf.rendering import render_rays
from tasks.config import load_params
from tasks.fit_nerf import run_fit_nerf
from tasks.refine import run_refine
from tasks.train_diffusion import train_diffusion

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

TINY_NET = [
    "diffusion.unet.base_channels=8", "diffusion.unet.channel_mults=[1, 2]", "diffusion.unet.attention_heads=2",
    "diffusion.train.crop=16", "diffusion.train.batch_size=4", "diffusion.train.val_crops=4",
]
FAST_NERF = [
    "data.synthetic.n_scenes=1", "data.synthetic.n_frames=8", "data.test_every=4", "nerf.depth_source=gt",
    "nerf.train.target_samples=4096", "nerf.train.n_coarse=24", "nerf.train.n_fine=8",
    "nerf.occupancy.warmup_steps=16", "nerf.occupancy.resolution=32", "nerf.occupancy.n_cells=2048",
    "nerf.export.mesh_resolution=32", "nerf.train.checkpoint_every=20", "nerf.train.lr=0.02",
    "nerf.ablation_sources=[]", "nerf.train.steps=120",
]


def _rays(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` rays from just outside the unit box, pointing roughly through it (CPU)."""
    o = torch.tensor([0.0, 0.0, -1.6]) + 0.2 * torch.randn(n, 3, generator=gen)
    d = torch.tensor([0.0, 0.0, 1.0]) + 0.3 * torch.randn(n, 3, generator=gen)
    return o, d / d.norm(dim=-1, keepdim=True)


def test_field_and_renderer_give_the_cpu_result_and_gradient_on_cuda():
    """Same parameters, same rays, deterministic samples: the CUDA render and its gradient equal the CPU's (the
    CPU path runs the fused hash-encoding kernel, CUDA the PyTorch one, so this also checks one against the other)."""
    gen = torch.Generator().manual_seed(0)
    cpu = NeRFField(NeRFFieldConfig(), [[-1.0] * 3, [1.0] * 3], gen)
    with torch.no_grad():  # a field with structure: the zero-mean init renders almost nothing
        for table in cpu.encoding.parameters():
            table.uniform_(-1.0, 1.0, generator=gen)
    gpu = NeRFField(NeRFFieldConfig(), [[-1.0] * 3, [1.0] * 3]).cuda()
    gpu.load_state_dict(cpu.state_dict())
    o, d = _rays(512, gen)
    outs = {}
    for name, field, dev in (("cpu", cpu, "cpu"), ("cuda", gpu, "cuda")):
        field.zero_grad()
        r = render_rays(field, o.to(dev), d.to(dev), 0.1, 3.2, n_coarse=32, n_fine=16)
        (r["rgb"].square().sum() + r["depth"].sum()).backward()
        grads = {k: p.grad.detach().cpu() for k, p in field.named_parameters()}
        outs[name] = ({k: getattr(r, k).detach().cpu() for k in ("rgb", "depth", "opacity")}, grads, r.n_evaluated)
    (a, ga, na), (b, gb, nb) = outs["cpu"], outs["cuda"]
    assert na == nb
    assert float(a["opacity"].mean()) > 0.05, "the field renders something"
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=2e-4, rtol=1e-3, msg=k)
    for k in ga:
        scale = float(ga[k].abs().max()) + 1e-12
        assert float((gb[k] - ga[k]).abs().max()) <= 2e-3 * scale, k


def test_occupancy_grid_update_runs_on_cuda_and_skips_empty_space():
    """The grid finds a ball of density on CUDA, and rays through empty cells cost no network evaluation."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    grid = OccupancyGrid(torch.tensor([[-1.0] * 3, [1.0] * 3]), 32).cuda()
    grid.update(0, lambda x: 10.0 * (x.norm(dim=-1) < 0.5).float(), 0, 0.95, 0.01, 4, generator=gen)
    ball = (4 / 3) * np.pi * 0.5**3 / 8  # share of the box
    assert ball < grid.occupied_fraction < 1.6 * ball
    empty = OccupancyGrid(grid.aabb, 16).cuda()
    empty.update(0, lambda x: torch.zeros(len(x), device=x.device), 0, 0.95, 0.01, 1, generator=gen)
    assert empty.occupied_fraction == 0.0
    field = NeRFField(NeRFFieldConfig(), [[-1.0] * 3, [1.0] * 3]).cuda()
    o, d = _rays(64, torch.Generator().manual_seed(1))
    r = render_rays(field, o.cuda(), d.cuda(), 0.1, 3.2, n_coarse=16, n_fine=8, occupancy=empty)
    assert r.n_evaluated == 0 and float(r.opacity.abs().max()) == 0.0


@pytest.fixture
def stores(make_stores, tmp_path) -> list[str]:
    return make_stores(TINY_NET + [
        f"paths.diffusion={tmp_path / 'model'}", f"paths.diffusion_checkpoints={tmp_path / 'ckpt'}",
        f"paths.refined={tmp_path / 'refined.zarr'}",
    ])


@pytest.mark.parametrize("amp", ["off", "bf16", "fp16"])
def test_refiner_trains_on_cuda_and_refines_like_the_cpu(stores, tmp_path, amp):
    """Training on CUDA under each precision lowers the loss; the trained model refines on CUDA to what the CPU gives
    with the same weights and the same (CPU-drawn) noise."""
    params = load_params(None, stores + ["diffusion.train.max_steps=60", "diffusion.train.val_every=20",
                                         "diffusion.train.lr=0.005", "diffusion.train.device=cuda",
                                         f"diffusion.train.amp={amp}"])
    out = train_diffusion(params, progress=False)
    rows = (out / "curve.csv").read_text().splitlines()
    col = rows[0].split(",").index("total")
    total = [float(r.split(",")[col]) for r in rows[1:]]
    assert all(np.isfinite(total))
    assert np.mean(total[-15:]) < 0.9 * np.mean(total[:15]), total
    refined = {}
    for dev in ("cuda", "cpu"):
        p = load_params(None, stores + [f"refine.device={dev}", f"paths.refined={tmp_path / dev}.zarr"])
        run_refine(p, progress=False)
        g = zarr.open_group(str(tmp_path / f"{dev}.zarr"), mode="r")
        refined[dev] = np.stack([g[s]["depth_refined"][:] for s in sorted(g.group_keys())])
    assert np.isfinite(refined["cuda"]).all()
    # cuDNN convolutions may run in TF32 (10-bit mantissa): the same frames to a few millimetres, not bit for bit
    np.testing.assert_allclose(refined["cuda"], refined["cpu"], atol=5e-3, rtol=5e-3)


@pytest.mark.parametrize("amp", ["off", "bf16", "fp16"])
def test_nerf_fits_on_cuda_under_each_precision(make_stores, tmp_path, amp):
    """The fit stage on CUDA (autocast bf16, fp16 with loss scaling, or fp32) learns the scene and exports it."""
    overrides = make_stores([
        *FAST_NERF, f"paths.nerf={tmp_path / 'nerf'}", f"paths.nerf_checkpoints={tmp_path / 'ck'}",
        f"paths.nerf_metrics={tmp_path / 'nerf.json'}", "nerf.train.device=cuda", f"nerf.train.amp={amp}",
    ])
    run_fit_nerf(load_params(None, overrides), progress=False)
    out = Path(tmp_path / "nerf" / "synthetic_000")
    m = json.loads((out / "metrics.json").read_text())
    assert np.isfinite(m["test_psnr"]) and m["test_psnr"] > 14.0, m
    assert m["test_depth_rmse"] < 0.3, m
    assert (out / "mesh.ply").stat().st_size > 0 and (out / "field.safetensors").is_file()
    rows = (out / "curve.csv").read_text().splitlines()
    col = rows[0].split(",").index("psnr")
    psnr = [float(r.split(",")[col]) for r in rows[1:]]
    assert np.all(np.isfinite(psnr)) and np.mean(psnr[-10:]) > np.mean(psnr[:10]) + 3, psnr
