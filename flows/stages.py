"""One Prefect flow per pipeline stage; refinement and NeRF fitting run one task per scene, in parallel.

Every ``dnerf <stage>`` command (and so every ``dvc repro`` stage) runs its flow, so runs show in the
Prefect UI when ``PREFECT_API_URL`` points at a server, and in Prefect's temporary server otherwise.

Per-scene tasks (``refine/<scene>``, ``fit_nerf/<scene>``, run by :mod:`flows.fanout`):

- are cached by content (:mod:`flows.caching`); a cached result is *materialised* into the stage's
  outputs by the flow on every run, so ``dvc repro -f`` (which deletes the outs first) still writes them;
- fail alone: the other scenes finish and are written, then the flow fails listing the failed scenes
  (:class:`flows.fanout.StageFailed`);
- publish a progress artifact while they run; each stage publishes a table of per-scene results and a
  markdown summary.

Only I/O tasks (``download``) are retried.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact
from prefect.settings import PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings

from flows.caching import Receipt, artifact_dir
from flows.fanout import Progress, StageFailed, publish, run_scene_tasks
from flows.runners import (
    cluster_address,
    make_task_runner,
    require_reachable_api,
    threads_per_worker,
    worker_threads,
)
from tasks.config import Params, with_absolute_paths
from tasks.location import Location, as_location, join, read_bytes
from tasks.locks import output_lock
from tasks.staging import staged
from tasks.versions import copy_folder, folder_writer, resolve

if TYPE_CHECKING:
    from tasks.nerf_layout import FitJob

__all__ = ["FLOWS", "STAGE_OUTPUT", "StageFailed", "run_flow", "run_name"]
log = logging.getLogger(__name__)


def retry_io_errors(_task, _task_run, state) -> bool:
    """Retry transient I/O failures (network, storage), not bad data: a missing file stays missing."""
    from tasks.errors import DataError

    try:
        state.result()
    except DataError:
        return False
    except Exception:  # noqa: BLE001 - anything else may be transient
        return True
    return False


@task(name="download", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_io_errors, tags=["io"])
def download_task(params: Params, progress: bool = False) -> str:
    from tasks.download import run_download

    return str(run_download(params, progress=progress))


@task(name="corrupt")
def corrupt_task(params: Params, progress: bool = False) -> str:
    from tasks.corrupt import run_corrupt

    return str(run_corrupt(params, progress=progress))


@task(name="train_diffusion")
def train_diffusion_task(params: Params, progress: bool = False) -> str:
    from tasks.train_diffusion import train_diffusion

    use_threads(stage_threads("train_diffusion", params))
    return str(train_diffusion(params, progress=progress))


@flow(name="dnerf-download", log_prints=True)
def download_flow(params: Params, progress: bool = False) -> Location:
    """Stage 1: read the dataset into ``paths.scenes`` (retried on I/O errors)."""
    from tasks.store import store_summary

    out = as_location(download_task(params, progress))
    publish("download", store_summary(out), {})
    return out


@flow(name="dnerf-corrupt")
def corrupt_flow(params: Params, progress: bool = False) -> Location:
    """Stage 2: simulated (or measured) sensor depth into ``paths.noisy``."""
    from tasks.store import store_summary

    out = as_location(corrupt_task(params, progress))
    publish("corrupt", [{k: r[k] for k in ("scene", "frames", "H x W", "valid")} for r in store_summary(out)], {})
    return out


@flow(name="dnerf-train_diffusion")
def train_diffusion_flow(params: Params, progress: bool = False) -> Location:
    """Stage 3: train the diffusion refiner into ``paths.diffusion``."""
    out = as_location(train_diffusion_task(params, progress))
    metrics = json.loads(read_bytes(join(resolve(out) or out, "metrics.json")))
    publish("train_diffusion", [{k: metrics[k] for k in ("steps", "best_val_loss", "stopped_early",
                                                         "train_seconds", "crops_per_second")}], {})
    return out


# ------------------------------------------------------------------------------- per-scene tasks


@task(name="refine-scene", result_serializer="json")
def refine_scene_task(params: Params, scene: str, cache_key: str, threads: int | None, progress: bool = False) -> dict:
    """Refine one scene into the prepared store and keep a copy of its group as the artifact; the receipt."""
    from tasks.refine import refine_one_scene
    from tasks.store import live_store

    use_threads(threads)
    n = n_frames(params.paths.noisy, scene)
    report = Progress(f"refine-{scene}", f"refine {scene}: frames done")
    arrays = refine_one_scene(params, scene, progress, on_frame=lambda _s, i: report((i + 1) / n))
    report(1.0)
    artifact = artifact_dir(params.orchestration.results, cache_key)
    copy_folder(join(live_store(params.paths.refined), scene), artifact)  # a copy: zarr chunks may be rewritten
    meta = {"scene": scene, "frames": n, "mean_std_m": round(float(arrays["depth_std"].mean()), 4)}
    return Receipt.for_folder(artifact, meta).model_dump()


@task(name="fit-nerf-scene", result_serializer="json")
def fit_nerf_scene_task(params: Params, scene: FitJob, cache_key: str, threads: int | None,
                        progress: bool = False) -> dict:
    """Run one fit (a scene and a depth source) and export it once, as its artifact; the receipt (with the
    fit's metrics)."""
    from tasks.fit_nerf import fit_one_scene

    use_threads(threads)
    steps = params.nerf.train.steps
    report = Progress(f"fit-nerf-{scene.label}", f"fit_nerf {scene.label}: training steps done")
    artifact = artifact_dir(params.orchestration.results, cache_key)
    started: list[int] = []  # the step the fit starts from: > 0 when it resumes an earlier attempt's checkpoint

    def on_step(step: int, *_) -> None:
        if not started:
            started.append(step)
            if step:
                get_run_logger().warning("%s: resuming from the checkpoint at step %d (an earlier attempt stopped "
                                         "there: a killed worker or command)", scene.label, step)
        report(step / steps)

    with folder_writer(artifact) as out:
        metrics = fit_one_scene(params, scene, out, progress, on_step=on_step)
    report(1.0)
    return Receipt.for_folder(artifact, {**metrics, RESUMED: started[0] if started else 0}).model_dump()


#: The key of a fit's receipt that holds the step it resumed from (0: it started afresh); shown in the summary.
RESUMED = "resumed_at_step"


def n_frames(noisy: Location, scene: str) -> int:
    from tasks.store import open_store

    return open_store(noisy, "noisy")[scene]["depth_noisy"].shape[0]


# ------------------------------------------------------------------------------------ scene flows


@flow(name="dnerf-refine")
def refine_flow(params: Params, progress: bool = False) -> Location:
    """Stage 4: refine every scene of ``paths.noisy`` into ``paths.refined``, scenes in parallel."""
    from tasks.refine import finish_refine, place_refined_scene, prepare_refine, refiner_digest
    from tasks.store import live_store

    scenes = prepare_refine(params)
    digest = refiner_digest(params)
    key_params = {"refine": params.refine.model_dump(mode="json", exclude={"device"}), "model": digest}
    noisy, scene_store = live_store(params.paths.noisy), live_store(params.paths.scenes)

    def inputs(scene: str) -> list:
        return [join(noisy, scene, "depth_noisy"), join(scene_store, scene, "rgb"), join(scene_store, scene, "K")]

    def write(scene: str, receipt: Receipt) -> dict:
        place_refined_scene(params, scene, receipt.files)
        return receipt.meta

    rows, failures = run_scene_tasks("refine", params, refine_scene_task, {s: s for s in scenes}, inputs,
                                     lambda _scene: key_params, write, progress)
    publish("refine", list(rows.values()), failures)
    if failures:
        raise StageFailed("refine", failures)
    return finish_refine(params)


@flow(name="dnerf-fit_nerf")
def fit_nerf_flow(params: Params, progress: bool = False) -> Location:
    """Stage 5: a NeRF per posed scene (and per ablation depth source) into ``paths.nerf`` and
    ``paths.nerf_metrics``, fits in parallel."""
    from tasks.fit_nerf import SUMMARY_KEYS, fit_config, plan_fit_nerf, write_nerf_summary
    from tasks.store import live_store

    jobs, skipped = plan_fit_nerf(params)
    paths = params.paths
    depth_stores = {"none": None, "gt": None, "noisy": paths.noisy, "refined": paths.refined}
    scene_store = live_store(paths.scenes)

    def inputs(job: FitJob) -> list:
        store = depth_stores[job.source]
        return [join(scene_store, job.scene), join(live_store(store), job.scene) if store else None]

    def key_params(job: FitJob) -> dict:
        return {"nerf": fit_config(job, params.nerf).model_dump(mode="json", exclude={"train": {"device"}})}

    resumed: dict[FitJob, int] = {}
    with staged(params, outputs=["nerf", "nerf_metrics"]) as local:  # URLs: published when every fit is placed
        out_root = Path(local.paths.nerf)

        def write(job: FitJob, receipt: Receipt) -> dict:
            receipt.place(job.folder(out_root))  # export files are never written again: hard links
            metrics = dict(receipt.meta)
            resumed[job] = metrics.pop(RESUMED, 0)
            return metrics

        metrics, failures = run_scene_tasks("fit_nerf", params, fit_nerf_scene_task, {j.label: j for j in jobs},
                                            inputs, key_params, write, progress)
        summary = write_nerf_summary(local, metrics, skipped)
    rows = [{"scene": j.scene, "depth_source": j.source, **{k: round(m[k], 4) for k in SUMMARY_KEYS},
             **({"resumed at step": resumed[j]} if any(resumed.values()) else {})} for j, m in metrics.items()]
    extra = "\n".join(f"- skipped `{s}`: {msg}" for s, msg in skipped.items())
    for source, entry in summary["by_source"].items():
        extra += f"\n- mean test PSNR with {source} depth: {entry['mean_test_psnr']:.2f} dB"
    publish("fit_nerf", rows, failures, extra)
    if failures:
        raise StageFailed("fit_nerf", failures)
    return paths.nerf


@task(name="evaluate")
def evaluate_task(params: Params, progress: bool = False) -> str:
    from tasks.evaluate import run_evaluate

    return str(run_evaluate(params, progress=progress))


@flow(name="dnerf-evaluate")
def evaluate_flow(params: Params, progress: bool = False) -> Location:
    """Stage 6: refinement and NeRF metrics into ``paths.eval_metrics`` and ``paths.plots``."""
    out = as_location(evaluate_task(params, progress))
    summary = json.loads(read_bytes(out))
    if isinstance(params.paths.report, Path) and (report := params.paths.report.resolve() / "index.html").is_file():
        create_link_artifact(report.as_uri(), link_text=f"report: {report}", key="dnerf-report",
                             description="the evaluation report (self-contained HTML; open it on this machine)")
    rows = [{"method": m, **{k: v for k, v in r.items() if k in ("rmse", "mae", "abs_rel", "delta1", "edge_f1")}}
            for m, r in summary["refinement"].items()]
    publish("evaluate", rows, {})
    return out


FLOWS = {
    "download": download_flow,
    "corrupt": corrupt_flow,
    "train_diffusion": train_diffusion_flow,
    "refine": refine_flow,
    "fit_nerf": fit_nerf_flow,
    "evaluate": evaluate_flow,
}


STAGE_OUTPUT = {"download": "scenes", "corrupt": "noisy", "train_diffusion": "diffusion", "refine": "refined",
                "fit_nerf": "nerf", "evaluate": "report"}  # the ``paths`` entry each stage's run is locked on


def run_flow(stage: str, params: Params, progress: bool = False) -> Location:
    """Run a stage's flow with the configured task runner, holding the lock on its output (a second run on
    the same output stops at once with :class:`tasks.locks.OutputBusy`); returns its output path."""
    with output_lock(getattr(params.paths, STAGE_OUTPUT[stage]), stage):
        return _run_flow(stage, params, progress)


def _run_flow(stage: str, params: Params, progress: bool) -> Location:
    f = FLOWS[stage]
    if stage in SCENE_STAGES:
        from prefect.settings import PREFECT_API_URL

        require_reachable_api(params.orchestration, PREFECT_API_URL.value() or None)
        if cluster_address(params.orchestration):  # its workers have their own working directories
            params = with_absolute_paths(params, Path.cwd())
        f = f.with_options(task_runner=make_task_runner(params.orchestration))
    with flow_environment(stage, params):
        return f.with_options(flow_run_name=run_name(stage, params))(params, progress)


#: Stages that fan out one task per scene (the others run as one task on every core).
SCENE_STAGES = ("refine", "fit_nerf")


def stage_threads(stage: str, params: Params) -> int:
    """Torch intra-op threads for a stage's tasks: a share of the cores per worker for per-scene stages, every
    core for the others."""
    orch = params.orchestration
    return threads_per_worker(orch if stage in SCENE_STAGES else orch.model_copy(update={"workers": 1}))


@contextmanager
def flow_environment(stage: str, params: Params) -> Iterator[None]:
    """The process settings of one flow run, set once and restored afterwards: torch's thread count
    (:func:`stage_threads`) and, for ``orchestration.results`` on a file system, Prefect's local result storage
    (also in the environment, which worker processes inherit; at a URL the per-scene tasks carry their storage:
    :func:`flows.caching.result_storage`)."""
    results = params.orchestration.results
    saved_threads, saved_env = torch.get_num_threads(), os.environ.get(RESULTS_ENV)
    torch.set_num_threads(stage_threads(stage, params))
    if isinstance(results, Path):
        os.environ[RESULTS_ENV] = str(results.resolve())
    try:
        if isinstance(results, Path):
            with temporary_settings({PREFECT_RESULTS_LOCAL_STORAGE_PATH: results.resolve()}):
                yield
        else:
            yield
    finally:
        torch.set_num_threads(saved_threads)
        if saved_env is None:
            os.environ.pop(RESULTS_ENV, None)
        else:
            os.environ[RESULTS_ENV] = saved_env


RESULTS_ENV = "PREFECT_RESULTS_LOCAL_STORAGE_PATH"


def use_threads(n: int | None) -> None:
    """In a task: torch's thread count for this worker (None: :func:`flows.runners.worker_threads`, decided on the
    worker's own machine). A no-op where the flow already set it (the thread runner shares the flow's process);
    worker processes of the process, Dask and Ray runners set it once."""
    n = worker_threads() if n is None else n
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


#: The store (or dataset) each stage processes, named in its run name.
STAGE_INPUT = {"corrupt": "scenes", "train_diffusion": "scenes", "refine": "noisy", "fit_nerf": "scenes",
               "evaluate": "scenes"}


def run_name(stage: str, params: Params) -> str:
    """A flow run's name: the stage and what it processes, e.g. ``fit_nerf: data/kitchen.zarr`` or
    ``download: sevenscenes /data/redkitchen``."""
    if stage == "download":
        return f"download: {params.data.source}" + (f" {params.data.path}" if params.data.path else "")
    return f"{stage}: {getattr(params.paths, STAGE_INPUT[stage])}"
