"""Task runners for per-scene work, chosen by ``orchestration.runner``.

``threads`` (default) and ``processes`` come with Prefect; ``dask`` uses ``prefect-dask`` (an existing
scheduler at ``orchestration.dask_address``, or a local cluster of ``workers`` single-threaded processes);
``ray`` uses ``prefect-ray`` (``pip install -e ".[ray]"``).
"""

from __future__ import annotations

import ipaddress
import os
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

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
        return machine_cores()


def machine_cores() -> int:
    """Every core of this machine, whatever this process may use."""
    return os.cpu_count() or 1


def threads_per_worker(cfg: OrchestrationConfig) -> int:
    """Torch intra-op threads for each worker, so ``workers`` scenes at once do not oversubscribe the cores this
    process may use (:func:`usable_cores`)."""
    return max(1, usable_cores() // cfg.workers)


def task_threads(cfg: OrchestrationConfig) -> int | None:
    """The torch thread count a per-scene task is sent with: this machine's share per worker
    (:func:`threads_per_worker`), or None on an existing cluster, whose workers are other machines: there each
    task takes :func:`worker_threads` of the machine it lands on."""
    return None if cluster_address(cfg) else threads_per_worker(cfg)


def worker_threads() -> int:
    """Torch threads for one task, decided where it runs: the cores this process may use, split between the tasks
    that run at once on them (1 outside a Dask worker; inside one, :func:`dask_slots`)."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):  # no distributed, or not inside a Dask worker
        return usable_cores()
    return max(1, usable_cores() // max(dask_slots(worker), 1))


def dask_slots(worker) -> int:
    """How many tasks at once share this Dask worker's cores: its own ``--nthreads`` where a launcher confined the
    process to a share of the machine (a SLURM job's or a container's cpuset, ``taskset``); where it may use every
    core, those of every worker on its host (``dask worker --nworkers 4``, a ``LocalCluster``, several workers
    started by hand), as the scheduler reports them, so that they do not oversubscribe the machine together."""
    own = worker.state.nthreads
    if usable_cores() < machine_cores():
        return own
    host = urlsplit(worker.address).hostname
    try:
        workers = worker.client.scheduler_info(n_workers=-1)["workers"]
    except Exception:  # noqa: BLE001 - no answer from the scheduler: count this worker alone
        return own
    return max(own, sum(w["nthreads"] for addr, w in workers.items() if urlsplit(addr).hostname == host))


def cluster_address(cfg: OrchestrationConfig) -> str | None:
    """The address of an existing cluster the tasks run on (``dask_address`` / ``ray_address`` of the chosen
    runner), or None where the workers are started on this machine."""
    return {"dask": cfg.dask_address, "ray": cfg.ray_address}.get(cfg.runner)


def is_loopback(address: str) -> bool:
    """Whether a URL or ``host:port`` address names this machine only (``localhost``, ``127.0.0.0/8``, ``::1``)."""
    host = urlsplit(address if "://" in address else f"//{address}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: assume other machines can resolve it
        return False


def require_reachable_api(cfg: OrchestrationConfig, api_url: str | None) -> None:
    """Fail before any work where the workers of an existing cluster could not report to the Prefect API.

    Their task runs talk to the API over HTTP from their own machines, so it must be one the user configured
    (``PREFECT_API_URL`` or a Prefect profile): a temporary or shared loopback server started here is never used
    for them. A loopback API is accepted only when the cluster's address is loopback too (all on this machine).

    Raises:
        RunnerError: naming the runner, its address and what to set.
    """
    address = cluster_address(cfg)
    if address is None:
        return
    where = f"orchestration.runner={cfg.runner} on {address}"
    if not api_url:
        raise RunnerError(
            f"{where}: its workers report to the Prefect API from their own machines, and none is configured; "
            "start a server they can reach (`prefect server start --host 0.0.0.0`) and set "
            "PREFECT_API_URL=http://<that host>:4200/api (or a Prefect profile) before running"
        )
    if is_loopback(api_url) and not is_loopback(address):
        raise RunnerError(
            f"{where}: PREFECT_API_URL={api_url} is a loopback address the workers cannot reach; use the server's "
            "network address (e.g. http://<host>:4200/api, with the server started with --host 0.0.0.0)"
        )


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
