"""The pipeline on a real Dask cluster: a scheduler and two worker processes started by the test in another working
directory (as if on other machines), against the session's Prefect server, with the stores named by paths relative
to the submitting directory. Results must equal the local run's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from flows.stages import run_flow
from tasks.config import Params, load_params
from tasks.corrupt import run_corrupt
from tasks.download import run_download
from tasks.location import read_bytes
from tasks.nerf_layout import fits_on_disk
from tasks.store import open_refined
from tasks.versions import resolve

pytestmark = pytest.mark.slow
on_the_cluster = pytest.mark.xdist_group("dask-cluster")  # one test worker starts the module's cluster, once

FAST_NERF = [
    "nerf.depth_source=refined", "nerf.train.steps=12", "nerf.train.target_samples=2048", "nerf.train.n_coarse=8",
    "nerf.train.n_fine=4", "nerf.occupancy.resolution=16", "nerf.occupancy.warmup_steps=4",
    "nerf.occupancy.n_cells=256", "nerf.export.mesh_resolution=16", "nerf.ablation_sources=[]",
]


@dataclass
class Cluster:
    address: str  # the scheduler's
    workers: list[subprocess.Popen]
    home: Path  # the workers' working directory


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3) -> Iterator[Cluster]:
    """``dask scheduler`` and two single-thread ``dask worker`` processes on loopback, started in a folder of their
    own, with the S3 server's endpoint and credentials in their environment (as a lab's machines have theirs)."""
    from distributed import Client

    home = tmp_path_factory.mktemp("cluster")
    log = (home / "cluster.log").open("w")
    spec = home / "scheduler.json"
    common = {"cwd": home, "stdout": log, "stderr": subprocess.STDOUT}
    procs = [subprocess.Popen(["dask", "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                               "--scheduler-file", str(spec)], **common)]
    try:
        deadline = time.monotonic() + 60
        while not spec.exists():
            assert procs[0].poll() is None and time.monotonic() < deadline, (home / "cluster.log").read_text()
            time.sleep(0.1)
        procs += [subprocess.Popen(["dask", "worker", "--scheduler-file", str(spec), "--nthreads", "1",
                                    "--no-dashboard", "--name", f"worker-{i}"], **common) for i in range(2)]
        with Client(scheduler_file=str(spec), timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
            yield Cluster(client.scheduler.address, procs[1:], home)
    finally:
        for proc in procs:
            proc.kill()  # nothing of theirs is kept: no need to wait for a graceful shutdown
            proc.wait()
        log.close()


def relative_stores(make_stores, tmp_path: Path, monkeypatch) -> list[str]:
    """Two tiny scenes with their noisy depth in ``tmp_path``, which becomes the working directory: every path in
    the returned overrides is relative to it (a worker elsewhere would look in the wrong place with them as given)."""
    monkeypatch.chdir(tmp_path)
    return make_stores(FAST_NERF + [
        "refine.method=bilateral", "paths.raw=raw", "paths.scenes=scenes.zarr", "paths.noisy=noisy.zarr",
        "orchestration.workers=2", "orchestration.cache=false",
    ])


def outputs(name: str) -> list[str]:
    return [f"paths.refined={name}/refined.zarr", f"paths.nerf={name}/nerf", f"paths.nerf_checkpoints={name}/ck",
            f"paths.nerf_metrics={name}/metrics.json", f"orchestration.results={name}/results"]


def assert_same_as_local(base: list[str], runner: list[str], elsewhere: Sequence[str] = ()) -> Params:
    """``refine`` then ``fit_nerf`` over the two scenes with the ``runner`` overrides (and ``elsewhere``: other store
    and output locations) and with the default (threads) runner on the local stores: the refined arrays, the NeRF
    metrics and the stage summary are the same, bit for bit; the cluster run's params."""
    runs = {"local": load_params(None, base + outputs("local")),
            "cluster": load_params(None, base + outputs("cluster") + list(elsewhere) + runner)}
    for params in runs.values():
        for stage in ("refine", "fit_nerf"):
            run_flow(stage, params)
    fits = {name: fits_on_disk(params.paths.nerf) for name, params in runs.items()}
    summaries = {name: json.loads(read_bytes(params.paths.nerf_metrics)) for name, params in runs.items()}
    for scene in ("synthetic_000", "synthetic_001"):
        a, b = (open_refined(params.paths.refined)[scene] for params in runs.values())
        for key in ("depth_refined", "depth_std"):
            np.testing.assert_array_equal(a[key][:], b[key][:])
        m = {name: json.loads((fits[name] / scene / "metrics.json").read_text()) for name in runs}
        for key in ("test_psnr", "test_ssim", "test_depth_rmse"):
            assert m["cluster"][key] == m["local"][key] == summaries["cluster"]["scenes"][scene][key], (scene, key, m)
    return runs["cluster"]


@on_the_cluster
def test_refine_and_fit_on_a_two_worker_cluster_equal_the_local_run(cluster, prefect_api, make_stores, tmp_path,
                                                                   monkeypatch):
    assert_same_as_local(relative_stores(make_stores, tmp_path, monkeypatch),
                         ["orchestration.runner=dask", f"orchestration.dask_address={cluster.address}"])


@on_the_cluster
def test_refine_and_fit_on_the_cluster_with_everything_on_s3_equal_the_local_run(cluster, s3, prefect_api, make_stores,
                                                                                 tmp_path, monkeypatch):
    """Machines that share no file system: the stores (written there by ``download`` and ``corrupt``), the fits, their
    checkpoints and summary, and the artifact and result store on S3, read and written by the cluster's workers: the
    same refined arrays and NeRF metrics as the local run on local stores, nothing written to the submitter's or
    the workers' disks, and a second run takes every scene from the cache on S3 (no artifact is written again)."""
    base = relative_stores(make_stores, tmp_path, monkeypatch)
    bucket = s3.bucket()
    stores = [f"paths.scenes={bucket}/scenes.zarr", f"paths.noisy={bucket}/noisy.zarr"]
    on_s3 = load_params(None, base + stores)
    run_download(on_s3, progress=False)
    run_corrupt(on_s3, progress=False)
    runner = ["orchestration.runner=dask", f"orchestration.dask_address={cluster.address}", "orchestration.cache=true"]
    elsewhere = stores + [f"paths.refined={bucket}/refined.zarr", f"paths.nerf={bucket}/nerf",
                          f"paths.nerf_checkpoints={bucket}/ck", f"paths.nerf_metrics={bucket}/nerf.json",
                          f"orchestration.results={bucket}/results"]
    params = assert_same_as_local(base, runner, elsewhere)
    assert not Path("cluster").exists()  # the submitter wrote nothing locally
    assert sorted(p.name for p in cluster.home.iterdir()) == ["cluster.log", "scheduler.json"]  # nor the workers
    artifacts = f"{params.orchestration.results}/artifacts"
    published = {key: resolve(f"{artifacts}/{key}") for key in s3.listing(artifacts)}
    assert len(published) == 4 and all(published.values())  # refine and fit_nerf of two scenes
    for stage in ("refine", "fit_nerf"):
        run_flow(stage, params)
    assert {key: resolve(f"{artifacts}/{key}") for key in s3.listing(artifacts)} == published


def test_refine_and_fit_on_a_local_ray_cluster_equal_the_local_run(prefect_api, make_stores, tmp_path, monkeypatch):
    """The ``ray`` runner (the ``ray`` extra) on the local Ray cluster it starts with one CPU per worker."""
    pytest.importorskip("prefect_ray")
    assert_same_as_local(relative_stores(make_stores, tmp_path, monkeypatch), ["orchestration.runner=ray"])


def executing_scenes(address: str) -> dict[int, list[str]]:
    """``{worker process id: scenes of the fits it is executing}`` (read from prefect-dask's task arguments)."""
    from distributed import Client

    def busy(dask_worker) -> tuple[int, list[str]]:
        jobs = [getattr(ts.run_spec, "kwargs", {}).get("parameters", {}).get("scene")
                for ts in dask_worker.state.tasks.values() if ts.state == "executing"]
        return os.getpid(), [getattr(job, "scene", str(job)) for job in jobs]

    with Client(address, timeout=30) as client:
        return dict(client.run(busy).values())


def checkpointed_step(checkpoints: str, scene: str) -> int | None:
    """The step of the checkpoint published for ``scene`` under ``checkpoints`` (a URL), if any."""
    live = resolve(f"{checkpoints}/{scene}")
    return None if live is None else json.loads(read_bytes(f"{live}/state.json"))["step"]


@on_the_cluster
def test_a_worker_killed_mid_fit_costs_only_that_fits_progress(cluster, s3, prefect_api, make_stores, tmp_path,
                                                             monkeypatch, capsys):
    """SIGKILL the worker fitting one scene once that fit has a checkpoint (on S3, where any machine finds it): Dask
    gives its task to another worker, which resumes the fit from the checkpoint (the stage's summary says so); the
    other scene is not disturbed, and both fits end as the uninterrupted local fits do (bit for bit)."""
    base = relative_stores(make_stores, tmp_path, monkeypatch) + [
        "nerf.depth_source=noisy", "nerf.train.steps=120", "nerf.train.checkpoint_every=10"]
    checkpoints = f"{s3.bucket()}/ck"
    local = load_params(None, base + outputs("local"))
    remote = load_params(None, base + outputs("cluster") + [
        "orchestration.runner=dask", f"orchestration.dask_address={cluster.address}",
        f"paths.nerf_checkpoints={checkpoints}"])
    run_flow("fit_nerf", local)
    assert "fit_nerf" in (fresh := capsys.readouterr().err) and "resumed" not in fresh  # no resume, not reported
    errors: list[BaseException] = []
    runner = threading.Thread(target=lambda: _run(remote, errors))
    runner.start()
    killed, after_kill, deadline = None, [], time.monotonic() + 120
    while runner.is_alive() and time.monotonic() < deadline:
        steps = {scene: step for scene in ("synthetic_000", "synthetic_001")
                 if (step := checkpointed_step(checkpoints, scene)) is not None}
        if killed is None:
            for pid, scenes in executing_scenes(cluster.address).items():
                ready = [s for s in scenes if 20 <= steps.get(s, 0) < 100]  # well before the end
                if ready:
                    os.kill(pid, signal.SIGKILL)  # the worker process (its nanny starts a new one)
                    killed = (ready[0], steps[ready[0]])
                    break
        elif killed[0] in steps:
            after_kill.append(steps[killed[0]])
        time.sleep(0.05)
    runner.join(timeout=300)
    assert not errors, errors
    assert killed is not None, "no worker was killed mid-fit"
    at_step = killed[1]
    # the killed fit went on from its checkpoint (a fresh start would write step 10 again), and the summary says so
    assert after_kill and min(after_kill) >= at_step, (killed, after_kill)
    assert "resumed" in capsys.readouterr().err
    for s in ("synthetic_000", "synthetic_001"):
        a, b = (json.loads(Path(f"{name}/nerf/{s}/metrics.json").read_text()) for name in ("local", "cluster"))
        assert (a["test_psnr"], a["test_depth_rmse"]) == (b["test_psnr"], b["test_depth_rmse"]), (s, killed)

def _run(params, errors: list[BaseException]) -> None:
    try:
        run_flow("fit_nerf", params)
    except BaseException as err:  # noqa: BLE001 - reported by the test thread
        errors.append(err)
