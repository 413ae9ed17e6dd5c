"""Task runner selection from ``orchestration`` params."""

from __future__ import annotations

import importlib.util

import pytest
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

from flows.runners import RunnerError, make_task_runner, threads_per_worker
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


def test_torch_threads_are_split_between_workers(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert threads_per_worker(OrchestrationConfig(workers=1)) == 8
    assert threads_per_worker(OrchestrationConfig(workers=3)) == 2
    assert threads_per_worker(OrchestrationConfig(workers=16)) == 1
