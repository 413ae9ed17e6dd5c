"""NeRF benchmark: the hash-grid NeRF with occupancy grid against the original NeRF, side by side on the same
scene, renderer and machine, with equal supervision; time-to-PSNR.

    python benchmarks/bench_nerf.py [--scenes data/scenes.zarr --scene synthetic_000] [--seconds 120]
                                    [--variants colour depth]

Two like-for-like variants, each fitting both fields for the same wall-clock budget with ``params.nerf.train``
settings (the vanilla NeRF with lr 5e-4, as in the paper, and no occupancy grid):

- ``colour``: colour supervision only for both; both sample hierarchically (coarse pass + importance samples);
- ``depth``: the same depth supervision (``--depth-source``) *and* the same depth-guided sampling for both.

PSNR is measured on a fixed subset of test-view pixels at geometrically spaced steps (1, 2, 3, ..., then
about 12 % apart; evaluation time excluded from the clocks). The table reports the final PSNRs, the time
each needed to reach the vanilla NeRF's final PSNR and their ratio (the time-to-PSNR speed-up).
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from models.metrics import psnr
from models.nerf.rendering import rays_from_camera, render_rays
from models.nerf.sampling import near_far
from models.nerf.vanilla import VanillaNeRF
from tasks.config import load_params
from tasks.fit_nerf import fit_scene
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


def eval_steps(limit: int = 10**7, growth: float = 1.12) -> set[int]:
    """Steps 1, 2, 3, ... then about ``growth`` apart: fine early, where a fast method crosses the target."""
    steps, x = set(), 1.0
    while x < limit:
        steps.add(int(x))
        x = max(x * growth, x + 1)
    return steps


def run(frames, cfg, make_field, use_occupancy, seconds, probe, aabb) -> list[tuple[float, int, float]]:
    """Fit for ``seconds`` of training time; returns (train seconds, step, probe PSNR) samples."""
    curve = []
    o, d, target = probe
    when = eval_steps()

    def on_step(step, field_, grid):
        if step == 0:  # called before the first step: the training clock starts after the setup
            on_step.start = time.perf_counter()
            return
        state_seconds = time.perf_counter() - on_step.start - on_step.excluded
        if step in when or state_seconds > seconds:
            t0 = time.perf_counter()
            with torch.no_grad():
                near, far = near_far(o, d, aabb, cfg.train.near)
                out = render_rays(field_, o, d, near, far, n_coarse=cfg.train.n_coarse, n_fine=cfg.train.n_fine,
                                  occupancy=grid, chunk=cfg.train.chunk)
            curve.append((state_seconds, step, psnr(out.rgb.clamp(0, 1).numpy(), target.numpy())))
            on_step.excluded += time.perf_counter() - t0
        if state_seconds > seconds:
            raise BudgetReached

    on_step.start, on_step.excluded = time.perf_counter(), 0.0
    with tempfile.TemporaryDirectory() as tmp, contextlib.suppress(BudgetReached):
        fit_scene(frames, cfg, Path(tmp) / "ck", "bench", progress=False, on_step=on_step,
                  make_field=make_field, use_occupancy=use_occupancy)
    return curve


def vanilla_config(cfg):
    """``cfg`` as the original NeRF trains: its learning rate (5e-4, as in the paper); the supervision and the
    sampling (depth-guided or hierarchical) stay those of ``cfg``, so both methods get the same."""
    train = cfg.train.model_copy(update={"lr": 5e-4, "lr_final": 5e-5})
    return cfg.model_copy(update={"train": train})


def variant_config(cfg, variant: str, depth_source: str):
    """``colour``: no depth at all; ``depth``: ``depth_source`` supervision and depth-guided sampling."""
    if variant == "colour":
        return cfg.model_copy(update={"depth_source": "none"}), "none"
    if cfg.train.guide_spread <= 0:
        raise ValueError("the depth variant needs nerf.train.guide_spread > 0 (depth-guided sampling)")
    return cfg.model_copy(update={"depth_source": depth_source}), depth_source


def time_to(curve, level: float) -> float:
    return next((t for t, _, p in curve if p >= level), float("nan"))


def compare(frames_for, cfg, variant: str, depth_source: str, seconds: float, probe_n: int = 2048) -> dict:
    """One like-for-like variant: both fields fitted for ``seconds``; the vanilla NeRF's final PSNR (best of
    its last three evaluations) and when each method first reached it."""
    cfg, source = variant_config(cfg, variant, depth_source)
    frames = frames_for(source)
    aabb = torch.from_numpy(scene_bounds(frames, cfg.bounds_padding, seed=cfg.seed))
    probe = probe_rays(frames, probe_n)
    ours = run(frames, cfg, None, True, seconds, probe, aabb)
    base = run(frames, vanilla_config(cfg), lambda box: VanillaNeRF(aabb=box), False, seconds, probe, aabb)
    target = max(p for _, _, p in base[-3:])
    t_ours, t_base = time_to(ours, target), time_to(base, target)
    return {"variant": variant, "supervision": "colour" if source == "none" else f"colour + {source} depth, guided",
            "budget_s": seconds, "ours_steps": ours[-1][1], "vanilla_steps": base[-1][1],
            "vanilla_final_psnr": round(target, 2), "ours_final_psnr": round(ours[-1][2], 2),
            "ours_time_to_vanilla_s": round(t_ours, 2), "vanilla_time_s": round(t_base, 1),
            "speedup": round(t_base / t_ours, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--scenes", type=Path, default=Path("data/scenes.zarr"))
    ap.add_argument("--scene", default="synthetic_000")
    ap.add_argument("--depth-source", default="gt", help="depth of the depth variant (gt needs a synthetic scene)")
    ap.add_argument("--seconds", type=float, default=120.0, help="training time budget per method")
    ap.add_argument("--variants", nargs="+", default=["colour", "depth"], choices=["colour", "depth"])
    ap.add_argument("--probe-rays", type=int, default=2048)
    args = ap.parse_args()

    params = load_params(args.params, [f"paths.scenes={args.scenes}", "nerf.train.steps=1000000"])
    paths = params.paths

    def frames_for(source: str):
        return open_scene(paths.scenes, args.scene, source, paths.noisy, paths.refined)

    rows = [compare(frames_for, params.nerf, v, args.depth_source, args.seconds, args.probe_rays)
            for v in args.variants]
    table = Table(title=f"NeRF fits on {args.scene}, {args.seconds:.0f} s of training each, probe PSNR on test pixels")
    for col in rows[0]:
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(*(str(v) for v in r.values()))
    Console().print(table)


if __name__ == "__main__":
    main()
