"""Task runners for per-scene work, chosen by ``orchestration.runner``.

``threads`` (default) and ``processes`` come with Prefect; ``dask`` uses ``prefect-dask`` (an existing
scheduler at ``orchestration.dask_address``, or a local cluster of ``workers`` single-threaded processes);
``ray`` uses ``prefect-ray`` (``pip install -e ".[ray]"``).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from tasks.config import OrchestrationConfig

if TYPE_CHECKING:
    from prefect.task_runners import TaskRunner

#: Runners whose tasks run in other processes: they report to the Prefect API over HTTP, so they need a
#: real server (Prefect's temporary in-process server is not reachable from them).
OUT_OF_PROCESS = frozenset({"processes", "dask", "ray"})


class RunnerError(RuntimeError):
    """A task runner that cannot be built (missing optional package)."""


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (``taskset``, a container's cpuset, a batch system's or
    a test runner's share of the machine) where the OS reports one, else the machine's core count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity API (macOS, Windows)
        return os.cpu_count() or 1


def threads_per_worker(cfg: OrchestrationConfig) -> int:
    """Torch intra-op threads for each worker, so ``workers`` scenes at once do not oversubscribe the cores this
    process may use (:func:`usable_cores`)."""
    return max(1, usable_cores() // cfg.workers)


def make_task_runner(cfg: OrchestrationConfig) -> TaskRunner[Any]:
    """The Prefect task runner for ``cfg.runner`` with ``cfg.workers`` scenes at once."""
    from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

    if cfg.runner == "threads":
        return ThreadPoolTaskRunner(max_workers=cfg.workers)
    if cfg.runner == "processes":
        return ProcessPoolTaskRunner(max_workers=cfg.workers)
    if cfg.runner == "dask":
        from prefect_dask.task_runners import DaskTaskRunner

        if cfg.dask_address:
            return DaskTaskRunner(address=cfg.dask_address)
        return DaskTaskRunner(
            cluster_kwargs={"n_workers": cfg.workers, "threads_per_worker": 1, "processes": True,
                            "dashboard_address": None}
        )
    try:
        from prefect_ray import RayTaskRunner  # pyright: ignore[reportMissingImports] - the optional [ray] extra
    except ImportError as err:
        raise RunnerError(
            "orchestration.runner=ray needs prefect-ray: pip install -e '.[ray]'"
        ) from err
    if cfg.ray_address:
        return RayTaskRunner(address=cfg.ray_address)
    return RayTaskRunner(init_kwargs={"num_cpus": cfg.workers})
