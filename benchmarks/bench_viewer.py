"""How fast is ``dnerf view``'s live NeRF render? Renders per second at preview widths, on this machine.

    python benchmarks/bench_viewer.py                               # fits a synthetic scene first (below)
    python benchmarks/bench_viewer.py --params params.yaml --scene synthetic_000   # a finished fit
        [--widths 96,160,240] [--repeats 5] [--poses 8] [--aspect 1.333] [--set key=value ...]

Each width is timed as the viewer renders it (:func:`tasks.viewer.live_frame`: the fitted field from one camera
at ``width x width / aspect`` pixels with the scene's vertical field of view, early ray termination, uint8 out),
from ``--poses`` cameras on an orbit around the scene box (:func:`tasks.render.camera_path`, as a user circles
the scene), ``--repeats`` times each after one warm-up render; the table gives the median and renders/s.

Without ``--scene`` the fit is made first in a temporary folder: one synthetic room at ``params.yaml``'s size and
NeRF settings (hash grid, samples, occupancy grid), ground-truth depth, ``--steps`` steps (default 300: past the
occupancy grid's warm-up, so empty space is skipped as in a finished fit). Results go to
``benchmarks/results/<UTC time>-viewer.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tasks.config import Params, load_params  # noqa: E402
from tasks.render import FittedScene, camera_path, load_fit, scene_view  # noqa: E402
from tasks.viewer import live_frame, preview_camera, vertical_fov  # noqa: E402

SCENE = "synthetic_000"


def fresh_fit(folder: Path, params_file: Path, steps: int, extra: list[str]) -> Params:
    """Params of one synthetic room fitted for ``steps`` steps with ground-truth depth, everything in ``folder``."""
    from tasks.corrupt import run_corrupt
    from tasks.download import run_download
    from tasks.fit_nerf import run_fit_nerf

    params = load_params(params_file, [
        f"paths.raw={folder / 'raw'}", f"paths.scenes={folder / 'scenes.zarr'}", f"paths.noisy={folder / 'noisy.zarr'}",
        f"paths.nerf={folder / 'nerf'}", f"paths.nerf_checkpoints={folder / 'ck'}",
        f"paths.nerf_metrics={folder / 'nerf.json'}", "data.synthetic.n_scenes=1",
        "data.synthetic.refiner_train_scenes=1", "data.synthetic.refiner_val_scenes=1",
        "data.synthetic.refiner_frames=1", "data.synthetic.refiner_sizes=[[160, 120]]",
        "nerf.depth_source=gt", "nerf.ablation_sources=[]", f"nerf.train.steps={steps}", "nerf.train.device=cpu",
        *extra])
    run_download(params, progress=False)
    run_corrupt(params, progress=False)
    run_fit_nerf(params, progress=False)
    return params


def time_width(fitted: FittedScene, fov_y: float, aspect: float, width: int, poses: np.ndarray,
               repeats: int) -> dict:
    """Median seconds of one live render at ``width`` over ``poses [n, 4, 4]`` x ``repeats``."""
    K, hw = preview_camera(fov_y, aspect, width)
    live_frame(fitted, K, hw, poses[0])  # warm-up
    times = []
    for _ in range(repeats):
        for pose in poses:
            start = time.perf_counter()
            live_frame(fitted, K, hw, pose)
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"width": width, "height": hw[0], "rays": hw[0] * hw[1], "median_ms": round(median * 1000, 1),
            "p90_ms": round(float(np.percentile(times, 90)) * 1000, 1), "renders_per_s": round(1.0 / median, 2),
            "renders": len(times)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--set", action="append", default=[], help="params override, dotted.key=value")
    ap.add_argument("--scene", help="a finished fit under paths.nerf (default: fit a synthetic room first)")
    ap.add_argument("--steps", type=int, default=300, help="steps of the fit made without --scene")
    ap.add_argument("--widths", default="96,160,240")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--poses", type=int, default=8)
    ap.add_argument("--aspect", type=float, default=4 / 3, help="browser canvas width / height")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    console = Console()

    with tempfile.TemporaryDirectory() as tmp:
        if args.scene:
            params, scene = load_params(args.params, args.set), args.scene
        else:
            start = time.perf_counter()
            params, scene = fresh_fit(Path(tmp), args.params, args.steps, args.set), SCENE
            console.log(f"fitted {scene} ({args.steps} steps) in {time.perf_counter() - start:.0f} s")
        folder = Path(params.paths.nerf) / scene
        fitted = load_fit(folder)
        view = scene_view(params, scene)
        K, c2w = view.group["K"][:], view.group["c2w"][:]
        train = view.indices("train")
        poses = camera_path(c2w[train], "orbit", args.poses, fitted.aabb)
        fov_y = vertical_fov(K[train[0]], view.shape[0])
        metrics = json.loads((folder / "metrics.json").read_text()) if (folder / "metrics.json").is_file() else {}
        rows = [time_width(fitted, fov_y, args.aspect, int(w), poses, args.repeats) for w in args.widths.split(",")]

    tc = fitted.cfg.train
    table = Table(title=f"live NeRF render ({scene}, {view.shape[1]}x{view.shape[0]} capture, "
                        f"{tc.n_coarse}+{tc.n_fine} samples/ray, occupied {fitted.grid.occupied_fraction:.0%}; "
                        f"{os.cpu_count()} cores, {torch.get_num_threads()} torch threads)")
    for col in ("preview", "rays", "median ms", "p90 ms", "renders/s", ">= 2/s"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(f"{r['width']}x{r['height']}", str(r["rays"]), f"{r['median_ms']:.0f}", f"{r['p90_ms']:.0f}",
                      f"{r['renders_per_s']:.2f}", "yes" if r["renders_per_s"] >= 2 else "no")
    console.print(table)

    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%S")
    record = {
        "command": " ".join(["python benchmarks/bench_viewer.py", *sys.argv[1:]]),
        "scene": scene, "capture": f"{view.shape[1]}x{view.shape[0]}", "aspect": round(args.aspect, 4),
        "fit": {"steps": metrics.get("steps"), "test_psnr": metrics.get("test_psnr"),
                "occupied_fraction": fitted.grid.occupied_fraction, "n_coarse": tc.n_coarse, "n_fine": tc.n_fine},
        "machine": {"cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
        "poses": args.poses, "repeats": args.repeats, "widths": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{stamp}-viewer.json"
    path.write_text(json.dumps(record, indent=2, default=float))
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
