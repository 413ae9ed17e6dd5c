"""Does the fused hash-grid kernel change what a fit learns? The same NeRF fits with the PyTorch encoding and
with the fused kernel, over several seeds, side by side: test PSNR / SSIM / depth RMSE and train time.

    python benchmarks/bench_backends.py [--data data] [--scene synthetic_000] [--source refined] [--seeds 0 1 2]

The two backends agree to float rounding per call, but summation order differs, so two fits drift apart
like two seeds do; the question is whether the fused fits are worse on average, measured against the spread
over seeds. Reads the stores of a finished ``dvc repro`` (``--data``: the folder with ``scenes.zarr``,
``noisy.zarr``, ``refined.zarr``) and uses ``params.yaml``'s NeRF settings. Results go to
``benchmarks/results/<UTC time>-backends.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tasks.config import load_params  # noqa: E402
from tasks.fit_nerf import fit_scene  # noqa: E402
from tasks.nerf_data import open_scene  # noqa: E402
from tasks.nerf_export import evaluate_views  # noqa: E402

KEYS = ("psnr", "ssim", "depth_rmse")


def fit_and_score(frames, cfg) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        field_, grid, state, aabb = fit_scene(frames, cfg, Path(tmp), "bench", progress=False)
    scores, _ = evaluate_views(field_, grid, frames, frames.test, torch.from_numpy(aabb), cfg, torch.device("cpu"))
    return {**{k: scores[k] for k in KEYS}, "train_s": state.seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("data"))
    ap.add_argument("--scene", default="synthetic_000")
    ap.add_argument("--source", default="refined", help="depth supervision (none | noisy | refined | gt)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()

    d = args.data
    params = load_params(ROOT / "params.yaml", [f"paths.scenes={d / 'scenes.zarr'}", f"paths.noisy={d / 'noisy.zarr'}",
                                                f"paths.refined={d / 'refined.zarr'}", "nerf.train.device=cpu"])
    frames = open_scene(params.paths.scenes, args.scene, args.source, params.paths.noisy, params.paths.refined)
    runs: dict[str, list[dict]] = {}
    for seed in args.seeds:  # interleaved, so a slow moment of the machine hits both backends
        for backend in ("torch", "fused"):
            enc = params.nerf.field.encoding.model_copy(update={"backend": backend})
            cfg = params.nerf.model_copy(update={
                "seed": seed, "depth_source": args.source,
                "field": params.nerf.field.model_copy(update={"encoding": enc})})
            runs.setdefault(backend, []).append({"seed": seed, **fit_and_score(frames, cfg)})

    table = Table(title=f"{args.scene}, {args.source} depth, {params.nerf.train.steps} steps, seeds {args.seeds}: "
                        "mean ± sd over seeds")
    for col in ("encoding", *KEYS, "train s"):
        table.add_column(col, justify="right")
    summary = {}
    for backend, rows in runs.items():
        summary[backend] = {}
        for k in (*KEYS, "train_s"):
            values = [r[k] for r in rows]
            summary[backend][k] = {"mean": statistics.mean(values),
                                   "sd": statistics.stdev(values) if len(values) > 1 else 0.0}
        table.add_row(backend, *(f"{summary[backend][k]['mean']:.3f} ± {summary[backend][k]['sd']:.3f}"
                                 for k in (*KEYS, "train_s")))
    Console().print(table)
    speedup = summary["torch"]["train_s"]["mean"] / summary["fused"]["train_s"]["mean"]
    print(f"train time, PyTorch / fused: {speedup:.2f}x")
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%S")
    path = args.out / f"{stamp}-backends.json"
    path.write_text(json.dumps({"argv": sys.argv[1:], "scene": args.scene, "source": args.source,
                                "steps": params.nerf.train.steps, "runs": runs, "summary": summary,
                                "train_speedup": speedup}, indent=2))
    print(f"written {path}")


if __name__ == "__main__":
    main()
