"""Task runner selection from ``orchestration`` params."""

from __future__ import annotations

import os
import sys

import pytest
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

from flows.runners import (
    RunnerError,
    make_task_runner,
    require_reachable_api,
    task_threads,
    threads_per_worker,
    usable_cores,
    worker_threads,
)
from flows.server import RECORD
from tasks.config import OrchestrationConfig


def test_runner_follows_params():
    assert isinstance(make_task_runner(OrchestrationConfig(workers=3)), ThreadPoolTaskRunner)
    assert make_task_runner(OrchestrationConfig(workers=3))._max_workers == 3  # no public accessor
    assert isinstance(make_task_runner(OrchestrationConfig(runner="processes")), ProcessPoolTaskRunner)
    dask = make_task_runner(OrchestrationConfig(runner="dask", dask_address="tcp://10.0.0.1:8786"))
    assert type(dask).__name__ == "DaskTaskRunner" and dask.address == "tcp://10.0.0.1:8786"
    local = make_task_runner(OrchestrationConfig(runner="dask", workers=2))
    assert local.cluster_kwargs["n_workers"] == 2 and local.cluster_kwargs["threads_per_worker"] == 1


def test_ray_without_its_extra_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "prefect_ray", None)  # what an environment without the extra gives: ImportError
    with pytest.raises(RunnerError, match=r"pip install -e '\.\[ray\]'"):
        make_task_runner(OrchestrationConfig(runner="ray"))


def test_torch_threads_are_split_between_the_cores_this_process_may_use():
    cores = usable_cores()
    assert threads_per_worker(OrchestrationConfig(workers=1)) == cores
    assert threads_per_worker(OrchestrationConfig(workers=2 * cores + 1)) == 1
    saved = os.sched_getaffinity(0)
    try:  # a process limited to one core (taskset, a cpuset, a test worker's share) splits that one core
        os.sched_setaffinity(0, {min(saved)})
        assert usable_cores() == 1 and threads_per_worker(OrchestrationConfig(workers=1)) == 1
    finally:
        os.sched_setaffinity(0, saved)


@pytest.mark.parametrize(("runner", "address", "api", "error"), [
    ("dask", None, None, None),  # workers started here: Prefect's own server will do
    ("threads", None, None, None),
    ("dask", "tcp://10.1.2.3:8786", None, "set PREFECT_API_URL"),
    ("dask", "tcp://10.1.2.3:8786", "http://127.0.0.1:4200/api", "loopback address the workers cannot reach"),
    ("dask", "tcp://10.1.2.3:8786", "http://prefect.lab:4200/api", None),
    ("dask", "tcp://127.0.0.1:8786", "http://localhost:4200/api", None),  # cluster and server on this machine
    ("ray", "10.0.0.7:6379", "http://[::1]:4200/api", "loopback"),
    ("ray", "ray://head.lab:10001", None, "set PREFECT_API_URL"),
])
def test_an_existing_cluster_needs_an_api_its_workers_can_reach(runner, address, api, error):
    cfg = OrchestrationConfig(runner=runner, dask_address=address if runner == "dask" else None,
                              ray_address=address if runner == "ray" else None)
    if error is None:
        require_reachable_api(cfg, api)
    else:
        with pytest.raises(RunnerError, match=error) as info:
            require_reachable_api(cfg, api)
        assert f"orchestration.runner={runner} on {address}" in str(info.value)


def test_a_stage_on_a_remote_cluster_without_an_api_fails_before_starting_any_server(dnerf, tmp_path):
    """No user-configured API: the command exits 1 naming what to set, before any work and without starting the
    shared loopback server (remote workers could not reach it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "home"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    res = dnerf.run("refine", "--quiet", "-p", "/dev/null", env=env, cwd=tmp_path, overrides=[
        "orchestration.runner=dask", "orchestration.dask_address=tcp://10.255.255.1:8786",
        f"paths.refined={tmp_path / 'refined.zarr'}"])
    assert res.returncode == 1, res.output
    last = res.stderr.rstrip().splitlines()[-1]
    assert last.startswith("error: orchestration.runner=dask on tcp://10.255.255.1:8786") and "PREFECT_API_URL" in last
    assert "Prefect:" not in res.stderr and not (tmp_path / "home" / RECORD).exists()  # no shared server
    assert not (tmp_path / "refined.zarr").exists()


def test_on_an_existing_cluster_each_task_takes_its_worker_machines_share():
    """Tasks for an existing cluster carry no thread count from the submitting machine; in a Dask worker running
    two tasks at once, each takes half of that worker's cores (outside a worker: all of this process's)."""
    from distributed import Client, LocalCluster

    assert task_threads(OrchestrationConfig(runner="dask", workers=2)) == threads_per_worker(
        OrchestrationConfig(workers=2))
    assert task_threads(OrchestrationConfig(runner="dask", dask_address="tcp://10.1.2.3:8786")) is None
    assert worker_threads() == usable_cores()
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        assert client.submit(worker_threads).result() == max(1, usable_cores() // 2)


@pytest.mark.parametrize(("cores", "machine", "expected"), [(8, 8, 4), (8, 16, 8)], ids=["whole-machine", "confined"])
def test_workers_on_one_machine_split_its_cores_unless_confined(monkeypatch, cores, machine, expected):
    """Two single-thread Dask workers on one host: where each may use the whole machine they split its cores (they
    would oversubscribe it otherwise); where a launcher confined each to a share (a cpuset), each uses its share."""
    from distributed import Client, LocalCluster

    from flows import runners

    monkeypatch.setattr(runners, "usable_cores", lambda: cores)
    monkeypatch.setattr(runners, "machine_cores", lambda: machine)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        workers = list(client.scheduler_info()["workers"])
        assert len(workers) == 2
        got = [client.submit(runners.worker_threads, workers=[w], pure=False).result() for w in workers]
    assert got == [expected, expected]
