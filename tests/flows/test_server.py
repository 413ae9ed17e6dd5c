"""The Prefect environment of ``dnerf``: the user's own settings win, one shared server serves every stage of a
run (started once, reused, stopped when idle), and no server outlives a killed command for long."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from flows.server import FALLBACK_MARK, RECORD, api_healthy, configure_prefect_env, user_prefect_config

pytestmark = pytest.mark.slow


def test_user_settings_win_and_the_fallback_is_the_project_home(tmp_path):
    home = tmp_path / "user"
    (home / ".prefect").mkdir(parents=True)
    profiles = home / ".prefect" / "profiles.toml"
    assert user_prefect_config({}, home) is None  # nothing configured
    profiles.write_text('active = "ephemeral"\n[profiles.ephemeral]\nPREFECT_SERVER_ALLOW_EPHEMERAL_MODE = "true"\n')
    assert user_prefect_config({}, home) is None  # Prefect's own first-run profile is not a user's choice
    profiles.write_text('active = "lab"\n[profiles.lab]\nPREFECT_API_URL = "http://prefect.lab:4200/api"\n')
    assert "'lab'" in user_prefect_config({}, home)
    assert user_prefect_config({"PREFECT_API_URL": "http://x/api"}, tmp_path) == "PREFECT_API_URL"
    assert user_prefect_config({"PREFECT_PROFILE": "lab"}, tmp_path) == "PREFECT_PROFILE"

    mine = {"PREFECT_HOME": "/data/prefect"}
    assert configure_prefect_env(tmp_path, mine) == {"PREFECT_HOME": "/data/prefect"}  # untouched
    env = {"HOME": str(tmp_path)}
    configure_prefect_env(tmp_path / "project", env)
    assert env["PREFECT_HOME"] == str((tmp_path / "project" / ".prefect").resolve()) == env[FALLBACK_MARK]
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    configure_prefect_env(tmp_path / "other", env)  # the fallback is not mistaken for a user's home
    assert env["PREFECT_HOME"] == str((tmp_path / "other" / ".prefect").resolve())


def prefect_servers(home: Path) -> list[int]:
    """Pids of ``prefect server start`` processes whose ``PREFECT_HOME`` is ``home``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"prefect" in cmd and b"server" in cmd and b"start" in cmd and \
                f"PREFECT_HOME={home}".encode() in environ:
            pids.append(int(proc.name))
    return pids


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


@pytest.fixture
def own_home(tmp_path, tiny_overrides) -> tuple[dict, list[str]]:
    """An environment with no Prefect API configured and its own PREFECT_HOME; tiny download args."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "home"), DNERF_SERVER_IDLE_S="15", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    args = ["dnerf", "download", "--quiet", "-p", "/dev/null", *(a for o in tiny_overrides for a in ("--set", o))]
    return env, args


def test_stages_share_one_server_and_a_killed_stage_leaves_none_behind(own_home, tmp_path):
    env, args = own_home
    home = tmp_path / "home"
    first = subprocess.run(args, cwd=tmp_path, env=env, check=False, capture_output=True, text=True, timeout=240)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "started the shared server" in first.stderr
    [server] = prefect_servers(home)

    # the next stage reuses it (no second server start); killed with SIGKILL mid-run, it leaves no server of
    # its own, and the shared one stops once nothing uses it
    log = (tmp_path / "killed.log").open("w")
    killed = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    wait_for(lambda: "shared server" in (tmp_path / "killed.log").read_text(), 120, "the stage to start")
    assert "using the shared server" in (tmp_path / "killed.log").read_text()
    assert prefect_servers(home) == [server]
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    log.close()
    assert prefect_servers(home) == [server]
    wait_for(lambda: not prefect_servers(home), 45, "the idle shared server to stop")
    assert not (home / RECORD).exists()


def test_dnerf_server_is_used_by_stages_and_stops_its_server_on_sigterm(own_home, tmp_path):
    env, args = own_home
    home = tmp_path / "home"
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(["dnerf", "server", "--port", "0"], cwd=tmp_path, env=env, stdout=log,
                            stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: "Prefect UI:" in (tmp_path / "server.log").read_text(), 120, "dnerf server")
        url = (tmp_path / "server.log").read_text().split("Prefect UI:")[1].split()[0]
        [child] = prefect_servers(home)
        stage = subprocess.run(args, cwd=tmp_path, env=env, check=False, capture_output=True, text=True, timeout=240)
        assert stage.returncode == 0, stage.stderr[-3000:]
        assert f"using the shared server {url}" in stage.stderr  # no export needed in another shell

        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        wait_for(lambda: not Path(f"/proc/{child}").exists() or
                 b"zombie" in Path(f"/proc/{child}/status").read_bytes().lower(), 30, "the server child to exit")
        assert not api_healthy(f"{url}/api") and not (home / RECORD).exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
