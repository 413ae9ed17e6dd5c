"""Fan-out of per-scene work on a Prefect task runner, apart from the stage flows that use it.

:func:`run_scene_tasks` submits one task per unit of work (a scene, or a scene and a variant), with a cache key
made of the unit's input bytes, its params and the digest of the code the stage runs; writes each result into
the stage's outputs as it arrives (fresh or cached); and collects failures without stopping the other units
(:class:`StageFailed` lists them). :class:`Progress` is a rate-limited Prefect progress artifact per task, and
:func:`publish` a stage's results: one table on the terminal, a table artifact and a markdown summary.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import TypeVar
from uuid import UUID

from prefect import get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed

from flows.caching import Receipt, cache_key, key_from_parameters, result_storage
from flows.runners import task_threads
from tasks.config import Params
from tasks.digest import closure_version

T = TypeVar("T")


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
        # Prefect annotates its sync-or-async functions as returning a value or a coroutine; called from sync code
        # (a task), this one returns the artifact's UUID
        self.id: UUID = create_progress_artifact(0.0, key=slug(key), description=description)  # pyright: ignore[reportAttributeAccessIssue]
        self.min_interval, self.last = min_interval, 0.0

    def __call__(self, fraction: float) -> None:
        now = time.monotonic()
        if fraction >= 1.0 or now - self.last >= self.min_interval:
            update_progress_artifact(self.id, progress=round(100 * min(fraction, 1.0), 1))
            self.last = now


# ------------------------------------------------------------------------------ whole-stage tasks


def run_scene_tasks(
    stage: str, params: Params, task_fn, units: dict[str, T], inputs: Callable[[T], list],
    key_params: Callable[[T], dict], write: Callable[[T, Receipt], dict], progress: bool = False,
) -> tuple[dict[T, dict], dict[str, str]]:
    """Submit ``task_fn`` for every unit of work (a scene, or a scene and a variant; ``units`` maps its label
    to the task's ``scene`` argument) on the flow's task runner and ``write`` each result into the stage's
    outputs as soon as it arrives (fresh or cached); ``(what write returned by unit, failures by label)``.

    A task writes its artifact (:func:`flows.caching.artifact_dir` of its ``cache_key``) and returns a
    :class:`flows.caching.Receipt`; a cached receipt whose artifact is gone runs its unit again. A failing unit
    does not stop the others: its error message is collected in ``failures``.
    """
    orch = params.orchestration
    code = closure_version(f"tasks.{stage}")  # the code the stage runs: what dvc.yaml lists
    threads = task_threads(orch)  # each task's share (None: decided on the cluster's workers)
    if orch.cache:
        task_fn = task_fn.with_options(cache_key_fn=key_from_parameters, persist_result=True,
                                       result_storage=result_storage(orch.results))
    else:
        task_fn = task_fn.with_options(cache_policy=NO_CACHE, persist_result=False)
    futures, submits, keys = {}, {}, {}
    for label, unit in units.items():
        keys[label] = cache_key(stage, label, inputs(unit), key_params(unit), code)
        submits[label] = task_fn.with_options(task_run_name=f"{stage}/{label}",
                                              tags=[stage, f"scene:{label.split('@')[0]}"])
        fut = submits[label].submit(params=params, scene=unit, cache_key=keys[label], threads=threads,
                                    progress=progress)
        futures[fut] = label
    written, failures, rerun = {}, {}, set()
    pending = list(futures)
    while pending:
        for fut in as_completed(pending):
            pending.remove(fut)
            label = futures[fut]
            try:
                receipt = Receipt.model_validate(fut.result())
                if not receipt.valid():
                    if label in rerun:
                        raise RuntimeError(f"artifact {receipt.artifact} changed while it was being placed")
                    get_run_logger().info("%s/%s: cached artifact %s is gone; running it again", stage, label,
                                          receipt.artifact)
                    rerun.add(label)
                    retry = submits[label].with_options(refresh_cache=True)
                    new = retry.submit(params=params, scene=units[label], cache_key=keys[label], threads=threads,
                                       progress=progress)
                    futures[new] = label
                    pending.append(new)
                    break  # as_completed holds the old list: start over with the new future in it
                written[label] = write(units[label], receipt)
                if not orch.cache:
                    receipt.remove()  # nothing will ever reuse it
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
