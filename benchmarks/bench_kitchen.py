"""Kitchen fits and renders, variant by variant: what the encoding backend and bf16 autocast do to a default-size
training step, and whether early ray termination pays in renders.

    python benchmarks/bench_kitchen.py --kitchen ../shared/data/rgbd/7scenes-redkitchen [--steps 1500]

The 7-Scenes kitchen at 320x240 with nerfstudio's interval split (43 train / 7 eval views) and sensor-depth
supervision, as in the suite's peer section. Each variant is one fit of ``--steps`` steps with the default
ray batch (it adapts to about 16k network samples per step): median step time, train time, eval PSNR / SSIM.
Then the fp32 fit's field renders one eval view (RGB + depth) with and without early ray termination
(``render_rays(stop_below=1e-4)``), interleaved ``--repeats`` times: median seconds and the network
evaluations each needed. Results go to ``benchmarks/results/<UTC time>-kitchen.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.nerf.rendering import rays_from_camera, render_rays  # noqa: E402
from models.nerf.sampling import near_far  # noqa: E402
from tasks.config import load_params  # noqa: E402
from tasks.corrupt import run_corrupt  # noqa: E402
from tasks.download import run_download  # noqa: E402
from tasks.fit_nerf import fit_scene  # noqa: E402
from tasks.nerf_data import open_scene  # noqa: E402
from tasks.nerf_export import evaluate_views  # noqa: E402

VARIANTS = {
    "fused kernel, fp32 (default)": [],
    "PyTorch encoding, fp32": ["nerf.field.encoding.backend=torch"],
    "fused kernel, bf16 autocast": ["nerf.train.amp=bf16"],
}


def kitchen_params(kitchen: Path, work: Path, steps: int, overrides: list[str]):
    return load_params(ROOT / "params.yaml", [
        "data.source=sevenscenes", f"data.path={kitchen}", "data.height=240", "data.width=320", "data.test_every=8",
        "data.test_offset=0", f"paths.scenes={work / 'k.zarr'}", f"paths.noisy={work / 'kn.zarr'}",
        "noise.mode=sensor", "nerf.depth_source=noisy", f"nerf.train.steps={steps}", "nerf.train.device=cpu",
        *overrides])


def fit_variant(frames, params) -> tuple[dict, tuple]:
    with tempfile.TemporaryDirectory() as tmp:
        field_, grid, state, aabb = fit_scene(frames, params.nerf, Path(tmp), "bench", progress=False)
    box = torch.from_numpy(aabb)
    scores, _ = evaluate_views(field_, grid, frames, frames.test, box, params.nerf, torch.device("cpu"))
    steps = [b["seconds"] - a["seconds"] for a, b in zip(state.curve[10:], state.curve[11:], strict=False)]
    row = {"step_ms": round(1000 * statistics.median(steps), 1), "train_s": round(state.seconds, 1),
           "psnr": round(scores["psnr"], 2), "ssim": round(scores["ssim"], 3),
           "depth_rmse": round(scores["depth_rmse"], 3)}
    return row, (field_, grid, box)


@torch.no_grad()
def render_timings(frames, params, model, repeats: int) -> list[dict]:
    field_, grid, box = model
    field_.eval()
    tc = params.nerf.train
    h, w = frames.shape
    i = frames.test[0]
    o, d, zs = rays_from_camera(frames.K[i], frames.c2w[i], h, w)
    near, far = near_far(o, d, box, tc.near)
    times: dict[float, list[float]] = {0.0: [], 1e-4: []}
    evals, images = {}, {}
    for _ in range(repeats):
        for stop, taken in times.items():
            t0 = time.perf_counter()
            out = render_rays(field_, o, d, near, far, n_coarse=tc.n_coarse, n_fine=tc.n_fine, occupancy=grid,
                              chunk=tc.chunk, z_scale=zs, stop_below=stop)
            taken.append(time.perf_counter() - t0)
            evals[stop], images[stop] = out.n_evaluated, out.rgb
    return [{"render": "early ray termination (stop below 1e-4)" if stop else "every sample in occupied cells",
             "median_s": round(statistics.median(t), 3), "evaluations_per_ray": round(evals[stop] / (h * w), 2),
             "max_rgb_change": round(float((images[stop] - images[0.0]).abs().max()), 6)}
            for stop, t in times.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kitchen", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base = kitchen_params(args.kitchen.resolve(), work, args.steps, [])
        run_download(base, progress=False)
        run_corrupt(base, progress=False)
        fits, model = [], None
        for name, overrides in VARIANTS.items():
            params = kitchen_params(args.kitchen.resolve(), work, args.steps, overrides)
            frames = open_scene(params.paths.scenes, "7scenes-redkitchen", "noisy", params.paths.noisy, None)
            row, fitted = fit_variant(frames, params)
            fits.append({"variant": name, **row})
            model = model or fitted
        renders = render_timings(frames, base, model, args.repeats)

    console = Console()
    for title, rows in ((f"kitchen fits, {args.steps} steps, sensor depth, 7 eval views", fits),
                        (f"one 320x240 eval view, fp32 fit, {args.repeats} interleaved renders", renders)):
        table = Table(title=title)
        for col in rows[0]:
            table.add_column(col, justify="right")
        for r in rows:
            table.add_row(*(str(v) for v in r.values()))
        console.print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{datetime.now(UTC).strftime('%Y-%m-%dT%H%M%S')}-kitchen.json"
    path.write_text(json.dumps({"argv": sys.argv[1:], "steps": args.steps, "fits": fits, "renders": renders},
                               indent=2))
    print(f"written {path}")


if __name__ == "__main__":
    main()
