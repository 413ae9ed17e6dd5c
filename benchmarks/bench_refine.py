"""Depth-refinement benchmark: quality of the diffusion refiner against the noisy input and the classical
baselines, side by side, plus refinement speed and peak memory at 640x480.

    python benchmarks/bench_refine.py --model artifacts/diffusion \\
        [--scenes data/scenes.zarr --noisy data/noisy.zarr] [--kitchen ../shared/data/rgbd/7scenes-redkitchen] \\
        [--tune-on VAL_SCENES.zarr VAL_NOISY.zarr [--tune-frames 8]]

Quality is measured on the test views of the given stores (the synthetic default: exact reference depth)
and, with ``--kitchen``, on real 7-Scenes frames corrupted by the same noise model (reference = the real
sensor depth where it is valid). Metrics: RMSE / MAE (m), AbsRel, delta<1.25, edge F1 (depth
discontinuities within 2 px) and coverage (fraction of reference pixels with a refined value).
Speed: seconds to refine one 640x480 frame with the params' default steps and samples (median of
``--repeats``), peak resident memory of that process, and per-frame time of each baseline.

Baseline parameters: ``refine.baselines`` of the params file as given, or, with ``--tune-on``, chosen by
:func:`models.baselines.tune_baselines` (grid search, lowest pooled RMSE) on frames of a separate validation
store pair (its scenes with role ``val``, as ``evaluate`` picks them); the chosen values are printed and
every table then scores the tuned baselines. Tune on other scenes than those scored.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from models.baselines import BASELINE_NAMES, TuningFrame, make_baselines, tune_baselines
from models.metrics import aggregate, depth_metrics, edge_f1
from tasks.config import load_params
from tasks.corrupt import run_corrupt
from tasks.download import run_download
from tasks.evaluate import validation_frames
from tasks.refine import diffusion_refiner, frame_seed
from tasks.store import SceneView, open_store, scene_names

COLUMNS = ["rmse", "rmse_measured", "rmse_holes", "mae", "abs_rel", "delta1", "edge_f1", "coverage"]


def frame_scores(pred: np.ndarray, gt: np.ndarray, noisy: np.ndarray) -> dict[str, float]:
    """Metrics on every reference pixel, plus RMSE split into pixels the sensor measured and its holes
    (the noisy input itself is scored on the measured pixels only: that is its coverage)."""
    m = depth_metrics(pred, gt)
    measured = noisy > 0
    return {
        **m,
        "rmse_measured": depth_metrics(pred, gt, valid=measured)["rmse"],
        "rmse_holes": depth_metrics(pred, gt, valid=~measured)["rmse"],
        "edge_f1": edge_f1(pred, gt, tolerance_px=2)["f1"],
    }


def evaluate(scenes_path: Path, noisy_path: Path, refiners: dict, split: str, max_frames: int) -> dict[str, dict]:
    scenes, noisy = open_store(scenes_path, "scenes"), open_store(noisy_path, "noisy")
    rows: dict[str, list[dict]] = {"noisy": [], **{k: [] for k in refiners}}
    seconds: dict[str, list[float]] = {k: [] for k in refiners}
    for name in scene_names(scenes):
        view = SceneView(scenes[name])
        idx = view.indices(split) or list(range(view.n_frames))
        for i in idx[:max_frames]:
            gt, rgb, K = view.group["depth"][i], view.group["rgb"][i], view.group["K"][i]
            d = noisy[name]["depth_noisy"][i]
            rows["noisy"].append(frame_scores(d, gt, d))
            for key, refine in refiners.items():
                t0 = time.perf_counter()
                out = refine(rgb, d, K, frame_seed(0, name, i))
                seconds[key].append(time.perf_counter() - t0)
                rows[key].append(frame_scores(out, gt, d))
    result = {k: aggregate(v) for k, v in rows.items()}
    for k, s in seconds.items():
        result[k]["s/frame"] = statistics.median(s)
    return result


def tuning_frames(params_file: str, scenes_path: Path, noisy_path: Path, max_frames: int) -> list[TuningFrame]:
    """At most ``max_frames`` frames ``(rgb, noisy, reference, K)`` of the store pair's ``val`` scenes, chosen
    as ``evaluate`` chooses them (:func:`tasks.evaluate.validation_frames`)."""
    params = load_params(params_file, [f"paths.scenes={scenes_path}", f"paths.noisy={noisy_path}",
                                       f"evaluate.tune_frames={max_frames}"])
    frames, _ = validation_frames(params)
    if not frames:
        raise SystemExit(f"{scenes_path}: no scene with role 'val' and a reference depth to tune the baselines on")
    return frames


def tuning_table(scores: dict[str, dict], n_frames: int) -> Table:
    t = Table(title=f"baseline parameters tuned on {n_frames} validation frames (pooled RMSE, m)")
    for c in ("baseline", "chosen", "RMSE tuned", "RMSE untuned", "settings tried"):
        t.add_column(c, justify="left" if c in ("baseline", "chosen") else "right")
    for name, s in scores.items():
        chosen = ", ".join(f"{k}={v}" for k, v in s["params"].items())
        t.add_row(name, chosen, f"{s['rmse']:.4f}", f"{s['base_rmse']:.4f}", str(len(s["grid"])))
    return t


def build_kitchen(kitchen: Path, workdir: Path, frames: int) -> tuple[Path, Path]:
    overrides = [
        "data.source=sevenscenes", f"data.path={kitchen}", f"data.max_frames={frames}", "data.stride=5",
        "data.test_every=1", f"paths.scenes={workdir / 'kitchen.zarr'}",
        f"paths.noisy={workdir / 'kitchen_noisy.zarr'}",
    ]
    params = load_params(None, overrides)
    run_download(params, progress=False)
    run_corrupt(params, progress=False)
    return params.paths.scenes, params.paths.noisy


def table(title: str, result: dict[str, dict]) -> Table:
    t = Table(title=title)
    t.add_column("method")
    for c in [*COLUMNS, "s/frame", "measured RMSE vs noisy"]:
        t.add_column(c, justify="right")
    base = result["noisy"]["rmse_measured"]
    for method, r in result.items():
        t.add_row(
            method,
            *(f"{r[c]:.4f}" for c in COLUMNS),
            f"{r['s/frame']:.3f}" if "s/frame" in r else "-",
            f"{r['rmse_measured'] / base:.2f}x",
        )
    return t


SPEED_SNIPPET = """
import json, resource, statistics, sys, time
import numpy as np, torch
from tasks.config import load_params
from tasks.refine import diffusion_refiner
params = load_params(sys.argv[1], [f"paths.diffusion={sys.argv[2]}"])
ref = diffusion_refiner(params.paths.diffusion, params.refine)
rng = np.random.default_rng(0)
rgb = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
depth = (2.0 + 0.3 * rng.standard_normal((480, 640))).clip(0.5, 4).astype(np.float32)
depth[rng.random(depth.shape) < 0.1] = 0
times = []
for k in range(int(sys.argv[3]) + 1):
    t0 = time.perf_counter(); ref.refine(rgb, depth, 525.0, k); times.append(time.perf_counter() - t0)
print(json.dumps({"median_s": statistics.median(times[1:]),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "steps": params.refine.steps, "samples": params.refine.samples, "threads": torch.get_num_threads()}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", type=Path, default=Path("artifacts/diffusion"))
    ap.add_argument("--scenes", type=Path, default=Path("data/scenes.zarr"))
    ap.add_argument("--noisy", type=Path, default=Path("data/noisy.zarr"))
    ap.add_argument("--kitchen", type=Path, default=None, help="a 7-Scenes folder to also evaluate on")
    ap.add_argument("--kitchen-frames", type=int, default=6)
    ap.add_argument("--max-frames", type=int, default=8, help="test frames per scene")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    ap.add_argument("--tune-on", nargs=2, type=Path, default=None, metavar=("SCENES", "NOISY"),
                    help="tune the baselines' parameters on this validation store pair before scoring")
    ap.add_argument("--tune-frames", type=int, default=8, help="validation frames used by --tune-on")
    args = ap.parse_args()

    params = load_params(args.params, [f"paths.diffusion={args.model}"])
    console = Console(width=160)
    report = {}
    baseline_cfg = params.refine.baselines
    if args.tune_on is not None:
        if args.tune_on[0].resolve() == args.scenes.resolve():
            console.print("[yellow]warning: tuning on the scored store: the baselines' scores are optimistic[/]")
        frames = tuning_frames(args.params, *args.tune_on, args.tune_frames)
        t0 = time.perf_counter()
        baseline_cfg, scores = tune_baselines(frames, BASELINE_NAMES, base=baseline_cfg)
        console.print(tuning_table(scores, len(frames)))
        console.print(f"tuned in {time.perf_counter() - t0:.1f} s; refine.baselines to reproduce: "
                      f"{json.dumps(baseline_cfg.model_dump())}")
        report["tuning"] = {"frames": len(frames), "params": baseline_cfg.model_dump(),
                            "scores": {n: {k: s[k] for k in ("params", "rmse", "base_rmse")}
                                       for n, s in scores.items()}}
    diffusion = diffusion_refiner(args.model, params.refine)
    refiners = {name: (lambda rgb, d, K, seed, r=r: r(rgb, d, K)) for name, r in make_baselines(baseline_cfg).items()}
    refiners["diffusion"] = lambda rgb, d, K, seed: diffusion.refine(rgb, d, float(K[0, 0]), seed).depth

    result = evaluate(args.scenes, args.noisy, refiners, "test", args.max_frames)
    report["synthetic"] = result
    console.print(table(f"refinement quality: {args.scenes} (test views)", result))
    if args.kitchen is not None:
        with tempfile.TemporaryDirectory() as tmp:
            ks, kn = build_kitchen(args.kitchen, Path(tmp), args.kitchen_frames)
            result = evaluate(ks, kn, refiners, "test", args.kitchen_frames)
        report["kitchen"] = result
        console.print(table(f"refinement quality: {args.kitchen} (real depth + simulated noise, 640x480)", result))

    out = subprocess.run(
        [sys.executable, "-c", SPEED_SNIPPET, args.params, str(args.model), str(args.repeats)],
        capture_output=True, text=True, check=True,
    )
    speed = json.loads(out.stdout.strip().splitlines()[-1])
    report["speed_640x480"] = speed
    console.print(
        f"diffusion refine, one 640x480 frame, {speed['steps']} steps x {speed['samples']} samples on "
        f"{speed['threads']} threads: median {speed['median_s']:.2f} s, peak RSS {speed['peak_rss_mb']:.0f} MB"
    )
    console.print(f"(this process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=float))


if __name__ == "__main__":
    main()
