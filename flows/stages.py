"""One Prefect flow per pipeline stage; refinement and NeRF fitting run one task per scene, in parallel.

Every ``dnerf <stage>`` command (and so every ``dvc repro`` stage) runs its flow, so runs show in the
Prefect UI when ``PREFECT_API_URL`` points at a server, and in Prefect's temporary server otherwise.

Per-scene tasks (``refine/<scene>``, ``fit_nerf/<scene>``):

- are cached by content (:mod:`flows.caching`); a cached result is *materialised* into the stage's
  outputs by the flow on every run, so ``dvc repro -f`` (which deletes the outs first) still writes them;
- fail alone: the other scenes finish and are written, then the flow fails listing the failed scenes
  (:class:`StageFailed`);
- publish a progress artifact while they run; each stage publishes a table of per-scene results and a
  markdown summary.

Only I/O tasks (``download``) are retried.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import torch
from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.settings import PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings

from flows.caching import SceneResultSerializer, cache_key, key_from_parameters
from flows.runners import make_task_runner, threads_per_worker
from tasks.config import Params
from tasks.digest import closure_version
from tasks.files import folder_files, write_folder
from tasks.locks import output_lock

if TYPE_CHECKING:
    from tasks.nerf_layout import FitJob

T = TypeVar("T")
log = logging.getLogger(__name__)


class StageFailed(RuntimeError):
    """Some scenes of a stage failed; the others were written."""

    def __init__(self, stage: str, failures: dict[str, str]):
        self.stage, self.failures = stage, failures
        lines = "\n".join(f"  {name}: {msg}" for name, msg in failures.items())
        super().__init__(f"{stage}: {len(failures)} scene(s) failed:\n{lines}")


def slug(text: str) -> str:
    """An artifact key (lowercase letters, digits, dashes) from any name."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


class Progress:
    """A Prefect progress artifact for one task, updated at most every ``min_interval`` seconds."""

    def __init__(self, key: str, description: str, min_interval: float = 2.0):
        self.id = create_progress_artifact(0.0, key=slug(key), description=description)
        self.min_interval, self.last = min_interval, 0.0

    def __call__(self, fraction: float) -> None:
        now = time.monotonic()
        if fraction >= 1.0 or now - self.last >= self.min_interval:
            update_progress_artifact(self.id, progress=round(100 * min(fraction, 1.0), 1))
            self.last = now


# ------------------------------------------------------------------------------ whole-stage tasks


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

    torch.set_num_threads(threads_per_worker(params.orchestration.model_copy(update={"workers": 1})))
    return str(train_diffusion(params, progress=progress))


@flow(name="dnerf-download", log_prints=True)
def download_flow(params: Params, progress: bool = False) -> Path:
    """Stage 1: read the dataset into ``paths.scenes`` (retried on I/O errors)."""
    from tasks.store import store_summary

    out = Path(download_task(params, progress))
    publish("download", store_summary(out), {})
    return out


@flow(name="dnerf-corrupt")
def corrupt_flow(params: Params, progress: bool = False) -> Path:
    """Stage 2: simulated (or measured) sensor depth into ``paths.noisy``."""
    from tasks.store import store_summary

    out = Path(corrupt_task(params, progress))
    publish("corrupt", [{k: r[k] for k in ("scene", "frames", "H x W", "valid")} for r in store_summary(out)], {})
    return out


@flow(name="dnerf-train_diffusion")
def train_diffusion_flow(params: Params, progress: bool = False) -> Path:
    """Stage 3: train the diffusion refiner into ``paths.diffusion``."""
    out = Path(train_diffusion_task(params, progress))
    metrics = json.loads((out / "metrics.json").read_text())
    publish("train_diffusion", [{k: metrics[k] for k in ("steps", "best_val_loss", "stopped_early",
                                                         "train_seconds", "crops_per_second")}], {})
    return out


# ------------------------------------------------------------------------------- per-scene tasks


@task(name="refine-scene", result_serializer=SceneResultSerializer())
def refine_scene_task(params: Params, scene: str, cache_key: str, threads: int, progress: bool = False) -> dict:
    """Refine one scene into the prepared store; its arrays (the cached result)."""
    from tasks.refine import refine_one_scene

    torch.set_num_threads(threads)
    n = n_frames(params.paths.noisy, scene)
    report = Progress(f"refine-{scene}", f"refine {scene}: frames done")
    arrays = refine_one_scene(params, scene, progress, on_frame=lambda _s, i: report((i + 1) / n))
    report(1.0)
    return {"arrays": arrays, "meta": {"scene": scene, "frames": n}}


@task(name="fit-nerf-scene", result_serializer=SceneResultSerializer())
def fit_nerf_scene_task(params: Params, scene: FitJob, cache_key: str, threads: int, progress: bool = False) -> dict:
    """Run one fit (a scene and a depth source) and export it into a staging folder; its files and metrics
    (the cached result)."""
    import tempfile

    from tasks.fit_nerf import fit_one_scene

    torch.set_num_threads(threads)
    steps = params.nerf.train.steps
    report = Progress(f"fit-nerf-{scene.label}", f"fit_nerf {scene.label}: training steps done")
    staging = Path(params.paths.nerf_checkpoints)
    staging.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=staging, prefix=f".{scene.scene}-export-") as tmp:
        metrics = fit_one_scene(params, scene, Path(tmp) / "out", progress,
                                on_step=lambda step, *_: report(step / steps))
        files = folder_files(Path(tmp) / "out")
    report(1.0)
    return {"files": files, "meta": metrics}


def n_frames(noisy: Path, scene: str) -> int:
    from tasks.store import open_store

    return open_store(noisy, "noisy")[scene]["depth_noisy"].shape[0]


def run_scene_tasks(
    stage: str, params: Params, task_fn, units: dict[str, T], inputs: Callable[[T], list],
    key_params: Callable[[T], dict], write: Callable[[T, dict], dict], progress: bool = False,
) -> tuple[dict[T, dict], dict[str, str]]:
    """Submit ``task_fn`` for every unit of work (a scene, or a scene and a variant; ``units`` maps its label
    to the task's ``scene`` argument) on the flow's task runner and ``write`` each result into the stage's
    outputs as soon as it arrives (fresh or cached); ``(what write returned by unit, failures by label)``.

    A failing unit does not stop the others: its error message is collected in ``failures``. Results are
    not kept after they are written, so memory does not grow with the number of scenes.
    """
    orch = params.orchestration
    code = closure_version(f"tasks.{stage}")  # the code the stage runs: what dvc.yaml lists
    threads = threads_per_worker(orch)
    torch.set_num_threads(threads)  # thread runner: one torch pool shared by the workers
    if orch.cache:
        task_fn = task_fn.with_options(cache_key_fn=key_from_parameters, persist_result=True)
    else:
        task_fn = task_fn.with_options(cache_policy=NO_CACHE, persist_result=False)
    futures = {}
    for label, unit in units.items():
        key = cache_key(stage, label, inputs(unit), key_params(unit), code)
        t = task_fn.with_options(task_run_name=f"{stage}/{label}", tags=[stage, f"scene:{label.split('@')[0]}"])
        fut = t.submit(params=params, scene=unit, cache_key=key, threads=threads, progress=progress)
        futures[fut] = label
    written, failures = {}, {}
    for fut in as_completed(list(futures)):
        label = futures[fut]
        try:
            written[label] = write(units[label], fut.result())
        except Exception as err:  # noqa: BLE001 - one unit's failure must not stop the others
            failures[label] = f"{type(err).__name__}: {err}"
            get_run_logger().error("%s/%s failed: %s", stage, label, failures[label])
    return {units[label]: written[label] for label in units if label in written}, failures


def publish(stage: str, rows: list[dict], failures: dict[str, str], extra: str = "") -> None:
    """The stage's results: one table on the terminal, and in Prefect a table artifact of per-scene results and a
    markdown summary."""
    from tasks.progress import print_summary

    if rows or failures:
        print_summary(rows, f"{stage}: {len(rows)} done" + (f", {len(failures)} failed" if failures else ""))
    if rows:
        create_table_artifact(rows, key=slug(f"{stage}-scenes"), description=f"{stage}: per-scene results")
    lines = [f"# {stage}", "", f"- scenes done: {len(rows)}", f"- scenes failed: {len(failures)}"]
    lines += [f"  - `{name}`: {msg}" for name, msg in failures.items()]
    if extra:
        lines += ["", extra]
    create_markdown_artifact("\n".join(lines), key=slug(f"{stage}-summary"), description=f"{stage} summary")


# ------------------------------------------------------------------------------------ scene flows


@flow(name="dnerf-refine")
def refine_flow(params: Params, progress: bool = False) -> Path:
    """Stage 4: refine every scene of ``paths.noisy`` into ``paths.refined``, scenes in parallel."""
    from tasks.refine import finish_refine, prepare_refine, refiner_digest, write_refined_scene

    scenes = prepare_refine(params)
    digest = refiner_digest(params)
    key_params = {"refine": params.refine.model_dump(mode="json", exclude={"device"}), "model": digest}
    paths = params.paths

    def inputs(scene: str) -> list:
        return [Path(paths.noisy) / scene / "depth_noisy", Path(paths.scenes) / scene / "rgb",
                Path(paths.scenes) / scene / "K"]

    def write(scene: str, result: dict) -> dict:
        write_refined_scene(params, scene, result["arrays"])
        return {"scene": scene, "frames": result["meta"]["frames"],
                "mean_std_m": round(float(result["arrays"]["depth_std"].mean()), 4)}

    rows, failures = run_scene_tasks("refine", params, refine_scene_task, {s: s for s in scenes}, inputs,
                                     lambda _scene: key_params, write, progress)
    publish("refine", list(rows.values()), failures)
    if failures:
        raise StageFailed("refine", failures)
    return finish_refine(params)


@flow(name="dnerf-fit_nerf")
def fit_nerf_flow(params: Params, progress: bool = False) -> Path:
    """Stage 5: a NeRF per posed scene (and per ablation depth source) into ``paths.nerf`` and
    ``paths.nerf_metrics``, fits in parallel."""
    from tasks.fit_nerf import SUMMARY_KEYS, fit_config, plan_fit_nerf, write_nerf_summary

    jobs, skipped = plan_fit_nerf(params)
    paths = params.paths
    depth_stores = {"none": None, "gt": None, "noisy": paths.noisy, "refined": paths.refined}

    def inputs(job: FitJob) -> list:
        store = depth_stores[job.source]
        return [Path(paths.scenes) / job.scene, Path(store) / job.scene if store else None]

    def key_params(job: FitJob) -> dict:
        return {"nerf": fit_config(job, params.nerf).model_dump(mode="json", exclude={"train": {"device"}})}

    out_root = Path(paths.nerf)

    def write(job: FitJob, result: dict) -> dict:
        write_folder(job.folder(out_root), result["files"])
        return result["meta"]

    metrics, failures = run_scene_tasks("fit_nerf", params, fit_nerf_scene_task, {j.label: j for j in jobs},
                                        inputs, key_params, write, progress)
    summary = write_nerf_summary(params, metrics, skipped)
    rows = [{"scene": j.scene, "depth_source": j.source, **{k: round(m[k], 4) for k in SUMMARY_KEYS}}
            for j, m in metrics.items()]
    extra = "\n".join(f"- skipped `{s}`: {msg}" for s, msg in skipped.items())
    for source, entry in summary["by_source"].items():
        extra += f"\n- mean test PSNR with {source} depth: {entry['mean_test_psnr']:.2f} dB"
    publish("fit_nerf", rows, failures, extra)
    if failures:
        raise StageFailed("fit_nerf", failures)
    return out_root


@task(name="evaluate")
def evaluate_task(params: Params, progress: bool = False) -> str:
    from tasks.evaluate import run_evaluate

    return str(run_evaluate(params, progress=progress))


@flow(name="dnerf-evaluate")
def evaluate_flow(params: Params, progress: bool = False) -> Path:
    """Stage 6: refinement and NeRF metrics into ``paths.eval_metrics`` and ``paths.plots``."""
    out = Path(evaluate_task(params, progress))
    summary = json.loads(out.read_text())
    report = Path(params.paths.report).resolve() / "index.html"
    if report.is_file():
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


def run_flow(stage: str, params: Params, progress: bool = False) -> Path:
    """Run a stage's flow with the configured task runner, holding the lock on its output (a second run on
    the same output stops at once with :class:`tasks.locks.OutputBusy`); returns its output path."""
    with output_lock(getattr(params.paths, STAGE_OUTPUT[stage]), stage):
        return _run_flow(stage, params, progress)


def _run_flow(stage: str, params: Params, progress: bool) -> Path:
    f = FLOWS[stage]
    if stage in ("refine", "fit_nerf"):
        f = f.with_options(task_runner=make_task_runner(params.orchestration))
    # Cached results go to orchestration.results; the environment carries it to worker processes.
    results = str(Path(params.orchestration.results).resolve())
    os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = results
    with temporary_settings({PREFECT_RESULTS_LOCAL_STORAGE_PATH: results}):
        return f.with_options(flow_run_name=run_name(stage, params))(params, progress)


#: The store (or dataset) each stage processes, named in its run name.
STAGE_INPUT = {"corrupt": "scenes", "train_diffusion": "scenes", "refine": "noisy", "fit_nerf": "scenes",
               "evaluate": "scenes"}


def run_name(stage: str, params: Params) -> str:
    """A flow run's name: the stage and what it processes, e.g. ``fit_nerf: data/kitchen.zarr`` or
    ``download: sevenscenes /data/redkitchen``."""
    if stage == "download":
        return f"download: {params.data.source}" + (f" {params.data.path}" if params.data.path else "")
    return f"{stage}: {getattr(params.paths, STAGE_INPUT[stage])}"
