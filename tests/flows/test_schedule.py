"""Scheduled re-runs against a real server: the check flow reproduces only on change, and ``dnerf serve``
registers a scheduled deployment that stays active after the server process stops serving it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from flows.schedule import DEPLOYMENT, STAGE_DEPLOYMENT, check_and_reproduce, describe, run_stage

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_describe_names_stage_kind_and_key():
    lines = describe({"fit_nerf": [{"changed deps": {"params.yaml": {"nerf.train.steps": 4}}}],
                      "x": ["always changed"]})
    assert lines == ['fit_nerf: changed deps: {"params.yaml": {"nerf.train.steps": 4}}', "x: always changed"]


def test_schedule_comes_from_params():
    from datetime import timedelta

    from flows.schedule import schedule_kwargs
    from tasks.config import load_params

    assert schedule_kwargs(load_params(None, ["orchestration.schedule.interval_minutes=30"])) == {
        "interval": timedelta(minutes=30)}
    assert schedule_kwargs(load_params(None, ["orchestration.schedule.cron='0 3 * * *'"])) == {"cron": "0 3 * * *"}


@pytest.mark.xdist_group("dvc-template")  # one worker builds the session's template repository
def test_check_flow_reproduces_only_when_something_changed(dvc_repo, sh):
    assert check_and_reproduce(str(dvc_repo)) == {"changed": {}, "reproduced": False}

    params = yaml.safe_load((dvc_repo / "params.yaml").read_text())
    params["nerf"]["train"]["steps"] = 4
    (dvc_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = check_and_reproduce(str(dvc_repo))
    assert result["reproduced"] and set(result["changed"]) == {"fit_nerf"}
    assert "nerf.train.steps" in str(result["changed"])
    assert "Data and pipelines are up to date" in sh("dvc", "status", cwd=dvc_repo)
    lock = yaml.safe_load((dvc_repo / "dvc.lock").read_text())
    assert lock["stages"]["fit_nerf"]["params"]["params.yaml"]["nerf.train.steps"] == 4


def test_serve_registers_a_scheduled_deployment_that_is_not_paused_on_exit(prefect_api, tmp_path):
    from prefect.client.orchestration import get_client

    log = (tmp_path / "serve.log").open("w")  # a file, not a pipe: a full pipe would block the server
    proc = subprocess.Popen(
        # a cron that never fires during the test: a run in flight would delay the shutdown
        ["dnerf", "serve", "-p", str(ROOT / "params.yaml"), "--set", "orchestration.schedule.cron='0 3 1 1 *'",
         "--repo", str(tmp_path)],
        cwd=tmp_path, env=os.environ, stdout=log, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deployment = None
        deadline = time.monotonic() + 120
        with get_client(sync_client=True) as client:
            while deployment is None and time.monotonic() < deadline:
                assert proc.poll() is None, (tmp_path / "serve.log").read_text()
                try:
                    deployment = client.read_deployment_by_name(f"dnerf-pipeline-check/{DEPLOYMENT}")
                except Exception:  # noqa: BLE001 - not registered yet
                    time.sleep(1)
            assert deployment is not None, "dnerf serve did not register its deployment"
            assert deployment.parameters == {"repo": str(tmp_path.resolve())}
            [schedule] = deployment.schedules
            assert schedule.schedule.cron == "0 3 1 1 *" and schedule.active
            # the stage deployment: the UI's Run form asks for a stage (a drop-down) and --set overrides
            stage = client.read_deployment_by_name(f"dnerf-stage/{STAGE_DEPLOYMENT}")
            form = stage.parameter_openapi_schema["properties"]
            assert form["stage"]["enum"] == ["download", "corrupt", "train_diffusion", "refine", "fit_nerf", "evaluate"]
            assert form["overrides"]["anyOf"][0] == {"items": {"type": "string"}, "type": "array"}
            assert stage.parameters == {"repo": str(tmp_path.resolve())} and not stage.schedules
        # SIGTERM, as a process manager stops a service (SIGINT is ignored by background jobs of a shell)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            pytest.fail(f"dnerf serve did not stop on SIGTERM:\n{(tmp_path / 'serve.log').read_text()[-3000:]}")
        with get_client(sync_client=True) as client:
            after = client.read_deployment_by_name(f"dnerf-pipeline-check/{DEPLOYMENT}")
            assert not after.paused and after.schedules[0].active
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def test_stage_flow_runs_a_stage_with_overrides_and_fails_with_its_error_line(prefect_api, tmp_path, tiny_overrides):
    """What the Run form starts: ``dnerf <stage> --set ...`` in the repository, its last line as the result."""
    done = run_stage("download", overrides=tiny_overrides, params_file="/dev/null", repo=str(tmp_path))
    assert done == f"done: {tmp_path / 'scenes.zarr'}"
    with pytest.raises(Exception, match=r"error: .*nowhere.*not found"):
        run_stage("download", overrides=["data.source=tum", f"data.path={tmp_path / 'nowhere'}"],
                  params_file="/dev/null", repo=str(tmp_path))
