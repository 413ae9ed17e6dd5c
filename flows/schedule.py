"""Scheduled re-runs: a flow that reproduces the DVC pipeline only when params, data or code changed.

``dnerf serve`` registers it as a deployment with the schedule in ``orchestration.schedule`` (cron or an
interval) and keeps serving it; each run asks ``dvc status`` what changed, logs it, and runs ``dvc repro``
only then. Stopping ``dnerf serve`` leaves the deployment and its schedule active (not paused), so the next
``dnerf serve`` picks it up again.
"""

from __future__ import annotations

import json
import subprocess
from datetime import timedelta
from pathlib import Path

from prefect import flow, get_run_logger

from tasks.config import Params

DEPLOYMENT = "dnerf-pipeline"


class ReproFailed(RuntimeError):
    pass


def dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["dvc", *args], cwd=repo, capture_output=True, text=True)


def dvc_changes(repo: Path) -> dict[str, list]:
    """What ``dvc status`` reports as changed, by stage (empty when the pipeline is up to date)."""
    res = dvc(repo, "status", "--json")
    if res.returncode != 0:
        raise ReproFailed(f"dvc status failed in {repo}:\n{res.stderr.strip()}")
    return json.loads(res.stdout or "{}")


def describe(changes: dict[str, list]) -> list[str]:
    """One line per change, e.g. ``fit_nerf: changed deps: {"params.yaml": {"nerf.train.steps": 4}}``."""
    lines = []
    for stage, items in changes.items():
        for item in items:
            if isinstance(item, dict):
                lines += [f"{stage}: {kind}: {json.dumps(what, default=str)}" for kind, what in item.items()]
            else:
                lines.append(f"{stage}: {item}")
    return lines


@flow(name="dvc-pipeline-check")
def check_and_reproduce(repo: str = ".") -> dict:
    """Run ``dvc repro`` in ``repo`` if ``dvc status`` reports changes; returns what changed and whether it ran."""
    logger = get_run_logger()
    path = Path(repo).resolve()
    changes = dvc_changes(path)
    if not changes:
        logger.info("pipeline in %s is up to date; nothing to run", path)
        return {"changed": {}, "reproduced": False}
    for line in describe(changes):
        logger.info("changed %s", line)
    res = dvc(path, "repro")
    logger.info("dvc repro:\n%s", res.stdout.strip())
    if res.returncode != 0:
        raise ReproFailed(f"dvc repro failed in {path}:\n{res.stderr.strip()}")
    return {"changed": changes, "reproduced": True}


def schedule_kwargs(params: Params) -> dict:
    """``cron=...`` or ``interval=...`` for ``Flow.serve`` from ``orchestration.schedule``."""
    sched = params.orchestration.schedule
    if sched.cron:
        return {"cron": sched.cron}
    return {"interval": timedelta(minutes=sched.interval_minutes)}


def serve(params: Params, repo: Path) -> None:
    """Register the deployment with its schedule and serve it until interrupted (not paused on exit)."""
    check_and_reproduce.serve(
        name=DEPLOYMENT, parameters={"repo": str(Path(repo).resolve())}, pause_on_shutdown=False,
        tags=["dnerf", "schedule"], description="Re-run `dvc repro` when params, data or code changed.",
        **schedule_kwargs(params),
    )
