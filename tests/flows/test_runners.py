"""Task runner selection from ``orchestration`` params."""

from __future__ import annotations

import importlib.util
import os

import pytest
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

from flows.runners import RunnerError, make_task_runner, threads_per_worker, usable_cores
from tasks.config import OrchestrationConfig


def test_runner_follows_params():
    assert isinstance(make_task_runner(OrchestrationConfig(workers=3)), ThreadPoolTaskRunner)
    assert make_task_runner(OrchestrationConfig(workers=3))._max_workers == 3  # no public accessor
    assert isinstance(make_task_runner(OrchestrationConfig(runner="processes")), ProcessPoolTaskRunner)
    dask = make_task_runner(OrchestrationConfig(runner="dask", dask_address="tcp://10.0.0.1:8786"))
    assert type(dask).__name__ == "DaskTaskRunner" and dask.address == "tcp://10.0.0.1:8786"
    local = make_task_runner(OrchestrationConfig(runner="dask", workers=2))
    assert local.cluster_kwargs["n_workers"] == 2 and local.cluster_kwargs["threads_per_worker"] == 1


@pytest.mark.skipif(importlib.util.find_spec("prefect_ray") is not None, reason="prefect-ray is installed")
def test_ray_without_its_extra_says_how_to_install():
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
