"""The ablation the project exists to answer: does diffusion-refined depth give a better NeRF?

    python benchmarks/bench_ablation.py --data data [--scene synthetic_000 --scene synthetic_001]
        [--sources none,noisy,refined,gt] [--views 10,all] [--set nerf.train.steps=600]

For every scene, number of train views and depth source, one NeRF is fitted with ``params.nerf`` settings
(the same seed, steps and field for every source) and scored on the held-out test views: colour PSNR / SSIM
and rendered-depth RMSE against the scene store's depth (the ground truth for synthetic scenes, the sensor
depth for real ones). ``--data`` is a folder with ``scenes.zarr``, ``noisy.zarr`` and ``refined.zarr``; for a
real scene corrupted in ``sensor`` mode, ``noisy`` is the sensor depth itself. The last table gives refined
against noisy: the PSNR gain and the relative depth-RMSE reduction. Every fit of a scene gets the same scene box
(from the cameras and the observed depth), whatever its depth source. The numbers are written to
``benchmarks/results/<UTC time>-ablation.json`` (``--out`` to change the folder).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from tasks.config import load_params
from tasks.devices import resolve_device
from tasks.fit_nerf import fit_scene
from tasks.nerf_data import open_scene, sparse_views
from tasks.nerf_export import evaluate_views


def fit_and_score(params, scene: str, source: str, views: int | None) -> dict:
    """Fit ``scene`` with ``source`` depth on ``views`` train views; the test-view scores and fit time."""
    cfg = params.nerf.model_copy(update={"depth_source": source, "train_views": views})
    frames = open_scene(params.paths.scenes, scene, source, params.paths.noisy, params.paths.refined)
    frames = sparse_views(frames, views)
    with tempfile.TemporaryDirectory() as tmp:
        field_, grid, state, aabb = fit_scene(frames, cfg, Path(tmp), "ablation", progress=False)
    device = resolve_device(cfg.train.device)
    scores, _ = evaluate_views(field_, grid, frames, frames.test, torch.from_numpy(aabb).to(device), cfg, device)
    return {**scores, "seconds": state.seconds, "train_views": len(frames.train)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", type=Path, default=Path("data"), help="folder with scenes/noisy/refined .zarr")
    ap.add_argument("--scene", action="append", help="scene name (repeatable); default: synthetic_000")
    ap.add_argument("--sources", default="none,noisy,refined,gt")
    ap.add_argument("--views", default="10,all", help="comma-separated train-view counts; 'all' = every train view")
    ap.add_argument("--set", action="append", default=[], help="params override, dotted.key=value")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()

    paths = [f"paths.{k}={args.data / f'{k}.zarr'}" for k in ("scenes", "noisy", "refined")]
    params = load_params(args.params, paths + args.set)
    scenes = args.scene or ["synthetic_000"]
    sources = args.sources.split(",")
    view_counts = [None if v == "all" else int(v) for v in args.views.split(",")]
    console = Console()
    results: dict[tuple, dict] = {}
    for scene in scenes:
        for views in view_counts:
            for source in sources:
                r = fit_and_score(params, scene, source, views)
                results[scene, views, source] = r
                console.log(f"{scene} views={r['train_views']} {source}: PSNR {r['psnr']:.2f} dB, "
                            f"SSIM {r['ssim']:.3f}, depth RMSE {r['depth_rmse']:.3f} m, {r['seconds']:.0f} s")

    steps = params.nerf.train.steps
    for metric, fmt, title in (("psnr", "{:.2f}", "test PSNR (dB)"), ("ssim", "{:.3f}", "test SSIM"),
                               ("depth_rmse", "{:.3f}", "rendered-depth RMSE (m)")):
        table = Table(title=f"{title}, {steps} steps per fit")
        for col in ("scene", "train views", *sources):
            table.add_column(col, justify="right")
        for views in view_counts:
            rows = [(scene, results[scene, views, sources[0]]["train_views"],
                     [results[scene, views, s][metric] for s in sources]) for scene in scenes]
            for scene, n, vals in rows:
                table.add_row(scene, str(n), *(fmt.format(v) for v in vals))
            if len(scenes) > 1:
                means = np.mean([vals for _, _, vals in rows], axis=0)
                table.add_row("mean", "all" if views is None else str(views), *(fmt.format(v) for v in means))
        console.print(table)

    if {"noisy", "refined"} <= set(sources):
        table = Table(title="refined against noisy depth supervision (mean over scenes)")
        for col in ("train views", "PSNR gain (dB)", "depth RMSE reduction", "SSIM gain"):
            table.add_column(col, justify="right")
        for views in view_counts:
            n, r = ([results[s, views, k] for s in scenes] for k in ("noisy", "refined"))
            gain = np.mean([b["psnr"] - a["psnr"] for a, b in zip(n, r, strict=True)])
            red = np.mean([1 - b["depth_rmse"] / a["depth_rmse"] for a, b in zip(n, r, strict=True)])
            sgain = np.mean([b["ssim"] - a["ssim"] for a, b in zip(n, r, strict=True)])
            table.add_row("all" if views is None else str(views), f"{gain:+.2f}", f"{red:.0%}", f"{sgain:+.3f}")
        console.print(table)

    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H%M%S")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [{"scene": sc, "views": "all" if v is None else v, "source": so, **r} for (sc, v, so), r in results.items()]
    record = {"command": "python benchmarks/bench_ablation.py " + " ".join(sys.argv[1:]), "steps": steps, "fits": rows}
    path = args.out / f"{stamp}-ablation.json"
    path.write_text(json.dumps(record, indent=2, default=float))
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
