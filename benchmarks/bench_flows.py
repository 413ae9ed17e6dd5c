"""Orchestration benchmark: scene-parallel speed-up and Prefect overhead for refine and fit_nerf.

    python benchmarks/bench_flows.py --data DIR --model MODEL_DIR [--nerf-steps 200] [--repeats 1]

``DIR`` holds ``scenes.zarr`` and ``noisy.zarr`` (e.g. the default synthetic run's ``data/``); ``MODEL_DIR``
a trained refiner. Measured side by side in one run, caching off, against a real local Prefect server
(started here, as ``dnerf server`` would be):

- ``plain``: the stage functions scene after scene, no Prefect, torch using every core;
- ``flow, 1 worker`` / ``flow, 2 workers``: the Prefect flow with the thread runner (torch threads split
  across workers); ``dask, 2 workers``: a local 2-process Dask cluster.

The overhead is ``flow, 1 worker`` minus ``plain``; the speed-up is ``flow, 1 worker`` over each parallel run.
A temporary server's start-up (what a stage pays without ``PREFECT_API_URL``) is timed separately.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from flows.server import LocalServer, configure_prefect_env


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def temporary_server_startup() -> float:
    """Seconds for a trivial flow in a fresh process with no PREFECT_API_URL (Prefect's temporary server)."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    code = "from prefect import flow\n@flow\ndef f():\n    return 1\nf()"
    empty = [sys.executable, "-c", "import prefect"]
    base = timed(lambda: subprocess.run(empty, env=env, check=True, capture_output=True))
    full = timed(lambda: subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True))
    return full - base


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--nerf-steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--skip-dask", action="store_true")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-flows-"))
    configure_prefect_env(work)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.stages import run_flow
    from tasks.config import load_params
    from tasks.fit_nerf import run_fit_nerf
    from tasks.refine import run_refine

    base = [f"paths.scenes={args.data / 'scenes.zarr'}", f"paths.noisy={args.data / 'noisy.zarr'}",
            f"paths.diffusion={args.model}", f"paths.refined={work / 'refined.zarr'}",
            f"paths.nerf={work / 'nerf'}", f"paths.nerf_checkpoints={work / 'ck'}",
            f"paths.nerf_metrics={work / 'nerf.json'}", f"orchestration.results={work / 'results'}",
            "orchestration.cache=false", f"nerf.train.steps={args.nerf_steps}"]
    configs = {"plain": None, "flow, 1 worker": ["orchestration.workers=1"],
               "flow, 2 workers": ["orchestration.workers=2"]}
    if not args.skip_dask:
        configs["dask, 2 workers"] = ["orchestration.runner=dask", "orchestration.workers=2"]

    def clean():
        for p in ("refined.zarr", "nerf", "ck"):
            shutil.rmtree(work / p, ignore_errors=True)

    times: dict[tuple[str, str], list[float]] = {}
    cores = os.cpu_count() or 1
    with LocalServer(work / "prefect") as server, temporary_settings({PREFECT_API_URL: server.api_url}):
        os.environ["PREFECT_API_URL"] = server.api_url
        for _ in range(args.repeats):
            for name, extra in configs.items():
                params = load_params(None, base + (extra or []))
                clean()
                for stage, plain_fn in (("refine", run_refine), ("fit_nerf", run_fit_nerf)):
                    if extra is None:
                        torch.set_num_threads(cores)
                        t = timed(lambda fn=plain_fn, p=params: fn(p, progress=False))
                    else:
                        t = timed(lambda stage=stage, p=params: run_flow(stage, p))
                    times.setdefault((stage, name), []).append(t)
                    Console().log(f"{stage} {name}: {t:.1f} s")
        os.environ.pop("PREFECT_API_URL", None)
    startup = temporary_server_startup()
    shutil.rmtree(work, ignore_errors=True)

    table = Table(title=f"refine + fit_nerf ({args.nerf_steps} steps) on {args.data}, {cores} cores, "
                        f"median of {args.repeats}")
    for col in ("stage", "run", "seconds", "speed-up vs flow, 1 worker", "overhead vs plain"):
        table.add_column(col, justify="right")
    for stage in ("refine", "fit_nerf"):
        one = statistics.median(times[stage, "flow, 1 worker"])
        plain = statistics.median(times[stage, "plain"])
        for name in configs:
            t = statistics.median(times[stage, name])
            table.add_row(stage, name, f"{t:.1f}", f"{one / t:.2f}x",
                          f"{(t - plain) / plain:+.0%}" if name == "flow, 1 worker" else "")
    Console().print(table)
    print(f"temporary Prefect server start-up (no PREFECT_API_URL), paid once per stage command: {startup:.1f} s")


if __name__ == "__main__":
    main()
