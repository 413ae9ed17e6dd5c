"""Orchestration overhead on a 2-worker Dask cluster with the stores on S3 (issue 18's target: at most 15 %).

    python benchmarks/bench_cluster.py --model data/models/default [--repeats 1]

Builds the default synthetic evaluation scenes (two rooms, 32 frames of 160x120; the refiner rooms shrunk to one
train and one val room, which these stages skip) on an S3-compatible server started here on loopback (moto's
server mode), then measures, side by side in one run (caching off, one NeRF fit per scene, default sizes
otherwise: ``refine.method=diffusion`` with ``--model``, ``nerf.train.steps`` as in params.yaml):

- ``per-scene work``: each scene's refine (:func:`tasks.refine.refine_one_scene`) and fit
  (:func:`tasks.fit_nerf.fit_one_scene`) called directly, the two scenes at once in two processes of one torch
  thread each (what two single-thread workers do, with no orchestration, on the same contended cores), each
  process importing everything before the clock starts; once with local stores and once with the stores on S3.
  The *ideal* wall time is the sum over stages of the longer scene;
- ``dask + S3``: ``refine`` then ``fit_nerf`` as Prefect flows (``dnerf refine`` / ``dnerf fit_nerf`` do the same)
  on a Dask cluster of two single-thread worker processes, stores on ``s3://``, against a local Prefect server;
- ``dask + all on S3``: the same with the fits, their checkpoints and summary and ``orchestration.results`` on S3 as
  well (a cluster whose machines share no file system);
- ``dask + local``: the same on local stores (what the S3 layer costs is the difference);
- ``threads + local``: the same flows with the default thread runner (2 workers) and local stores.

The overheads are ``wall / ideal - 1`` (per repeat, then the median), against the ideal with local stores and
against the ideal with the run's own stores (what orchestration costs beyond the stores' own I/O): scheduling,
Prefect's flow and task runs and their API calls, the store lease, reads and writes through S3 (to a server on the
same two cores), copying each refined scene into the artifact cache. The workers import the stage modules once
before the first measurement (:func:`warm_up`), as a cluster's long-lived workers have; the per-scene processes
import everything before their clock starts.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from harness import ResultsWriter  # noqa: E402

SCENES = ["data.synthetic.refiner_train_scenes=1", "data.synthetic.refiner_val_scenes=1",
          "data.synthetic.refiner_sizes=[[160, 120]]", "nerf.ablation_sources=[]"]


def start_s3(log: Path) -> tuple[subprocess.Popen, str]:
    """moto's S3 server on a free loopback port; the AWS variables of this process (and its children) point at it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_DEFAULT_REGION="us-east-1")
    for _ in range(600):
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
            return proc, endpoint
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the S3 server did not start; see {log}")


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def scene_work(overrides: list[str], scene: str, first: bool, barrier, results) -> None:
    """In a spawned process (one per scene, started together): refine then fit ``scene`` with one torch thread,
    the two processes starting each stage together; puts ``(scene, refine seconds, fit seconds)``."""
    from tasks.config import load_params
    from tasks.fit_nerf import fit_one_scene, plan_fit_nerf
    from tasks.refine import finish_refine, refine_one_scene

    torch.set_num_threads(1)
    params = load_params(None, overrides)
    barrier.wait()
    refine = timed(lambda: refine_one_scene(params, scene, progress=False))
    barrier.wait()
    if first:
        finish_refine(params)
    barrier.wait()
    job = next(j for j in plan_fit_nerf(params)[0] if j.scene == scene)
    fit = timed(lambda: fit_one_scene(params, job, Path(params.paths.nerf) / job.label, progress=False))
    results.put((scene, refine, fit))


def all_on_s3(prefix: str) -> list[str]:
    """Overrides that put the refined store, the fits, their checkpoints and summary, and the artifact and result
    store under ``prefix`` (machines that share no file system)."""
    return [f"paths.refined={prefix}/refined.zarr", f"paths.nerf={prefix}/nerf", f"paths.nerf_checkpoints={prefix}/ck",
            f"paths.nerf_metrics={prefix}/nerf.json", f"orchestration.results={prefix}/results"]


def warm_up() -> None:
    """On each worker, once before any measurement: import what the stage tasks import (as a cluster's long-lived
    workers have after their first task)."""
    import s3fs  # noqa: F401
    import zarr  # noqa: F401

    import flows.stages  # noqa: F401
    import tasks.fit_nerf
    import tasks.refine  # noqa: F401


def per_scene_work(overrides: list[str]) -> dict[str, dict[str, float]]:
    """``{stage: {scene: seconds}}`` of the stage functions called directly for the two scenes at once, one process
    and one torch thread per scene (what two single-thread workers do, without any orchestration)."""
    import multiprocessing as mp

    from tasks.config import load_params
    from tasks.refine import prepare_refine

    scenes = prepare_refine(load_params(None, overrides))
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(len(scenes)), ctx.Queue()
    procs = [ctx.Process(target=scene_work, args=(overrides, s, i == 0, barrier, results))
             for i, s in enumerate(scenes)]
    for p in procs:
        p.start()
    got = [results.get() for _ in procs]
    for p in procs:
        p.join()
    return {"refine": {s: r for s, r, _ in got}, "fit_nerf": {s: f for s, _, f in got}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="a trained refiner (paths.diffusion)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    from flows.server import LocalServer, configure_prefect_env

    configure_prefect_env(work)
    s3, _endpoint = start_s3(work / "moto.log")
    import fsspec
    from distributed import Client, LocalCluster
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.stages import run_flow
    from tasks.config import load_params
    from tasks.corrupt import run_corrupt
    from tasks.download import run_download

    fsspec.filesystem("s3").mkdir("bench")
    model = args.model.resolve()
    local_stores = [f"paths.scenes={work / 'scenes.zarr'}", f"paths.noisy={work / 'noisy.zarr'}"]
    s3_stores = ["paths.scenes=s3://bench/scenes.zarr", "paths.noisy=s3://bench/noisy.zarr"]
    common = [*SCENES, f"paths.diffusion={model}", f"paths.raw={work / 'raw'}", "orchestration.cache=false"]
    for stores in (local_stores, s3_stores):
        params = load_params(None, common + stores)
        run_download(params, progress=False)
        run_corrupt(params, progress=False)

    def outputs(name: str, refined: str | None = None) -> list[str]:
        d = work / name
        return [f"paths.refined={refined or d / 'refined.zarr'}", f"paths.nerf={d / 'nerf'}",
                f"paths.nerf_checkpoints={d / 'ck'}", f"paths.nerf_metrics={d / 'nerf.json'}",
                f"orchestration.results={d / 'results'}"]

    walls: dict[str, list[float]] = {}
    stage_walls: list[dict] = []
    ideal: dict[str, list[float]] = {"local": [], "S3": []}  # per repeat, with the stores local / on S3
    work_rows: list[dict] = []
    when = datetime.now(UTC).isoformat(timespec="seconds")
    writer = ResultsWriter(args.results, f"{when.replace(':', '')[:17]}-cluster",
                           {"when": when, "command": " ".join(["python", *sys.argv]), "model": str(args.model),
                            "repeats": args.repeats}, f"Orchestration overhead, 2-worker Dask cluster + S3, {when}")
    with (LocalServer(work / "prefect") as server, temporary_settings({PREFECT_API_URL: server.api_url}),
          LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
          Client(cluster) as _client):
        os.environ["PREFECT_API_URL"] = server.api_url
        _client.run(warm_up)  # long-lived workers: their first task's imports are not part of any run
        runs = {
            "dask + S3": s3_stores + ["orchestration.runner=dask", "orchestration.workers=2",
                                      f"orchestration.dask_address={cluster.scheduler_address}"],
            "dask + all on S3": s3_stores + ["orchestration.runner=dask", "orchestration.workers=2",
                                             f"orchestration.dask_address={cluster.scheduler_address}"],
            "dask + local": local_stores + ["orchestration.runner=dask", "orchestration.workers=2",
                                            f"orchestration.dask_address={cluster.scheduler_address}"],
            "threads + local": local_stores + ["orchestration.workers=2"],
        }
        for r in range(args.repeats):
            for name in ("plain", *runs):
                shutil.rmtree(work / name, ignore_errors=True)
            plain = {"local": per_scene_work(common + local_stores + outputs("plain")),
                     "S3": per_scene_work(common + s3_stores + outputs("plain", f"s3://bench/plain-{r}/refined.zarr"))}
            for stores, per_stage in plain.items():
                ideal[stores].append(sum(max(per.values()) for per in per_stage.values()))
                work_rows += [{"repeat": r, "stores": stores, "stage": stage, "scene": scene, "seconds": round(t, 2)}
                              for stage, per in per_stage.items() for scene, t in per.items()]
            for name, extra in runs.items():
                refined = f"s3://bench/{name.split()[0]}-{r}/refined.zarr" if "S3" in name else None
                on_s3 = all_on_s3(f"s3://bench/all-{r}") if "all" in name else []
                params = load_params(None, common + extra + outputs(name, refined) + on_s3)
                per_stage = {st: timed(lambda p=params, st=st: run_flow(st, p)) for st in ("refine", "fit_nerf")}
                walls.setdefault(name, []).append(sum(per_stage.values()))
                same = plain["S3" if "S3" in name else "local"]
                stage_walls.append({"repeat": r, "run": name, **{k: round(v, 2) for k, v in per_stage.items()},
                                    **{f"ideal {k}": round(max(same[k].values()), 2) for k in per_stage}})
                print(f"repeat {r}: {name} {walls[name][-1]:.1f} s, ideal {ideal['local'][-1]:.1f} s local, "
                      f"{ideal['S3'][-1]:.1f} s S3 ({stage_walls[-1]})", flush=True)
        os.environ.pop("PREFECT_API_URL", None)
    s3.kill()

    def overhead(name: str, stores: str) -> str:
        """Median over repeats of each repeat's wall over that repeat's ideal, minus 1."""
        return f"{statistics.median(w / i for w, i in zip(walls[name], ideal[stores], strict=True)) - 1:+.1%}"

    rows = [{"run": f"ideal: per-scene work, stores {stores}", "seconds": round(statistics.median(t), 1),
             "over the local ideal": "-", "over the ideal on the same stores": "-"} for stores, t in ideal.items()]
    rows += [{"run": name, "seconds": round(statistics.median(t), 1), "over the local ideal": overhead(name, "local"),
              "over the ideal on the same stores": overhead(name, "S3" if "S3" in name else "local")}
             for name, t in walls.items()]
    writer.publish("per_scene_work", work_rows, "per-scene work (two processes at once, one torch thread each)",
                   work_rows)
    writer.publish("stages", stage_walls, "wall seconds per stage (and the ideal: the longer scene's work)",
                   stage_walls)
    writer.publish("overhead", {"ideal_s": ideal, "walls_s": walls, "rows": rows},
                   f"two-scene refine + fit_nerf, {os.cpu_count()} cores, medians of {args.repeats} (overheads: median "
                   "of each repeat's wall over that repeat's ideal)", rows)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
