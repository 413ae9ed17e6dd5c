"""NeRF benchmark: the hash-grid NeRF with occupancy grid against the original NeRF, side by side on the same
scene, renderer and machine; time-to-PSNR and evaluated samples per ray.

    python benchmarks/bench_nerf.py [--scenes data/scenes.zarr --scene synthetic_000] [--seconds 120]

Both fields are fitted for the same wall-clock budget with ``params.nerf.train`` settings (the vanilla NeRF
with lr 5e-4, as in the paper, its own coarse + fine sampling and no occupancy grid). Every ``--eval-every`` steps, PSNR is measured on a
fixed subset of test-view pixels (evaluation time excluded from the clocks). The table reports the final
PSNRs, the time each needed to reach the vanilla NeRF's final PSNR and their ratio (the speed-up), and the
samples per ray each evaluated in its last steps.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from models.metrics import psnr
from models.nerf.rendering import rays_from_camera, render_rays
from models.nerf.vanilla import VanillaNeRF
from tasks.config import load_params
from tasks.fit_nerf import fit_scene, near_far
from tasks.nerf_data import open_scene, scene_bounds


class BudgetReached(Exception):
    pass


def probe_rays(frames, n: int, seed: int = 0):
    """A fixed random subset of test-view pixels: rays and their colours."""
    rng = np.random.default_rng(seed)
    h, w = frames.shape
    views = frames.test or frames.train[:1]
    o, d, rgb = [], [], []
    for i in views:
        pix = torch.from_numpy(rng.choice(h * w, size=n // len(views), replace=False))
        oi, di, _ = rays_from_camera(frames.K[i], frames.c2w[i], h, w, pix)
        o.append(oi)
        d.append(di)
        rgb.append(torch.from_numpy(frames.view.group["rgb"][i].reshape(-1, 3)[pix.numpy()] / 255.0).float())
    return torch.cat(o), torch.cat(d), torch.cat(rgb)


def run(frames, cfg, make_field, use_occupancy, seconds, eval_every, probe, aabb) -> list[tuple[float, int, float]]:
    """Fit for ``seconds`` of training time; returns (train seconds, step, probe PSNR) samples."""
    curve = []
    o, d, target = probe

    def on_step(step, field_, grid):
        state_seconds = time.perf_counter() - on_step.start - on_step.excluded
        if step % eval_every == 0:
            t0 = time.perf_counter()
            with torch.no_grad():
                near, far = near_far(o, d, aabb, cfg.train.near)
                out = render_rays(field_, o, d, near, far, n_coarse=cfg.train.n_coarse, n_fine=cfg.train.n_fine,
                                  occupancy=grid, chunk=cfg.train.chunk)
            curve.append((state_seconds, step, psnr(out["rgb"].clamp(0, 1).numpy(), target.numpy())))
            on_step.excluded += time.perf_counter() - t0
        if state_seconds > seconds:
            raise BudgetReached

    on_step.start, on_step.excluded = time.perf_counter(), 0.0
    with tempfile.TemporaryDirectory() as tmp:
        try:
            fit_scene(frames, cfg, Path(tmp) / "ck", "bench", progress=False, on_step=on_step,
                      make_field=make_field, use_occupancy=use_occupancy)
        except BudgetReached:
            pass
    return curve


def vanilla_config(cfg):
    """``cfg`` as the original NeRF trains: its learning rate (5e-4, as in the paper) and its own coarse + fine
    sampling, not the depth-guided sampling of ours (same depth loss and budget)."""
    train = cfg.train.model_copy(update={"lr": 5e-4, "lr_final": 5e-5, "guide_spread": 0.0})
    return cfg.model_copy(update={"train": train})


def time_to(curve, level: float) -> float:
    return next((t for t, _, p in curve if p >= level), float("nan"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--scenes", type=Path, default=Path("data/scenes.zarr"))
    ap.add_argument("--scene", default="synthetic_000")
    ap.add_argument("--depth-source", default="gt", help="supervision for both fits (gt needs a synthetic scene)")
    ap.add_argument("--seconds", type=float, default=120.0, help="training time budget per method")
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--probe-rays", type=int, default=2048)
    args = ap.parse_args()

    params = load_params(args.params, [f"paths.scenes={args.scenes}", f"nerf.depth_source={args.depth_source}",
                                       "nerf.train.steps=1000000"])
    frames = open_scene(params.paths.scenes, args.scene, args.depth_source, params.paths.noisy, params.paths.refined)
    aabb = torch.from_numpy(scene_bounds(frames, params.nerf.bounds_padding, seed=params.nerf.seed))
    probe = probe_rays(frames, args.probe_rays)
    hash_cfg = params.nerf
    vanilla_cfg = vanilla_config(params.nerf)
    curves = {
        "hash grid + occupancy": run(frames, hash_cfg, None, True, args.seconds, args.eval_every, probe, aabb),
        "vanilla NeRF (8x256, PE)": run(
            frames, vanilla_cfg, lambda box: VanillaNeRF(aabb=box), False, args.seconds, args.eval_every, probe, aabb
        ),
    }
    target = max(p for _, _, p in curves["vanilla NeRF (8x256, PE)"][-3:])
    table = Table(title=f"NeRF fits on {args.scene}, {args.seconds:.0f} s of training each, probe PSNR on test pixels")
    for col in ("method", "steps", "final PSNR", f"time to {target:.2f} dB (s)"):
        table.add_column(col, justify="right")
    times = {}
    for name, curve in curves.items():
        times[name] = time_to(curve, target)
        table.add_row(name, str(curve[-1][1]), f"{curve[-1][2]:.2f}", f"{times[name]:.1f}")
    Console().print(table)
    h, v = times["hash grid + occupancy"], times["vanilla NeRF (8x256, PE)"]
    print(f"time-to-PSNR speed-up (vanilla / hash): {v / h:.1f}x")


if __name__ == "__main__":
    main()
