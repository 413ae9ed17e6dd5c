"""Deployments: scheduled re-runs of the DVC pipeline, and one stage on demand from the UI's Run form.

``dnerf serve`` registers and serves two deployments:

* ``dnerf-pipeline-check/dnerf-pipeline``, on the schedule in ``orchestration.schedule`` (cron or an interval):
  each run asks ``dvc status`` what changed, logs it, and runs ``dvc repro`` only then;
* ``dnerf-stage/dnerf-stage``, no schedule: the UI's "Run" form asks for the stage (a drop-down), ``--set``
  overrides (e.g. ``nerf.train.steps=500``) and the params file, and runs ``dnerf <stage>`` in the repository;
  the stage's own flow run shows beside it.

Stopping ``dnerf serve`` leaves the deployments and the schedule active (not paused), so the next
``dnerf serve`` picks them up again.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger

from tasks.config import Params

DEPLOYMENT = "dnerf-pipeline"
STAGE_DEPLOYMENT = "dnerf-stage"
Stage = Literal["download", "corrupt", "train_diffusion", "refine", "fit_nerf", "evaluate"]


class ReproFailed(RuntimeError):
    pass


def dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["dvc", *args], cwd=repo, check=False, capture_output=True, text=True)


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


@flow(name="dnerf-pipeline-check")
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


@flow(name="dnerf-stage", flow_run_name="{stage} in {repo}")
def run_stage(stage: Stage = "fit_nerf", overrides: list[str] | None = None, params_file: str = "params.yaml",
              repo: str = ".") -> str:
    """Run one pipeline stage in ``repo`` as ``dnerf <stage> --params <params_file> --set <override> ...``;
    returns the stage's last line (``done: <output>``)."""
    logger = get_run_logger()
    cmd = [sys.executable, "-m", "flows.cli", stage.replace("_", "-"), "--quiet", "--params", params_file]
    for override in overrides or []:
        cmd += ["--set", override]
    logger.info("in %s: dnerf %s", repo, " ".join(cmd[3:]))
    res = subprocess.run(cmd, cwd=repo, check=False, capture_output=True, text=True)
    lines = (res.stdout + res.stderr).strip().splitlines()
    if res.returncode != 0:
        logger.error("\n".join(lines[-40:]))
        raise ReproFailed(lines[-1] if lines else f"dnerf {stage} exited with {res.returncode}")
    return lines[-1] if lines else ""


def serve(params: Params, repo: Path) -> None:
    """Register both deployments (:mod:`flows.schedule`) and serve them until interrupted (not paused on exit)."""
    from prefect import serve as serve_all

    repo_path = str(Path(repo).resolve())
    check = check_and_reproduce.to_deployment(
        name=DEPLOYMENT, parameters={"repo": repo_path}, tags=["dnerf", "schedule"],
        description="Re-run `dvc repro` when params, data or code changed.", **schedule_kwargs(params),
    )
    stage = run_stage.to_deployment(
        name=STAGE_DEPLOYMENT, parameters={"repo": repo_path}, tags=["dnerf"],
        description="Run one stage with --set overrides (e.g. nerf.train.steps=500) in " + repo_path,
    )
    # to_deployment is sync-or-async in Prefect's annotations; called from sync code it returns the deployment
    serve_all(check, stage, pause_on_shutdown=False)  # pyright: ignore[reportArgumentType]
