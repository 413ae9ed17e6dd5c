"""The Prefect environment of ``dnerf`` commands: the user's settings when they have some, else a project-local
home, and one shared Prefect server on loopback that every stage of a ``dvc repro`` reuses.

Settings. A user's own Prefect configuration wins: ``PREFECT_API_URL``, ``PREFECT_HOME``, ``PREFECT_PROFILE`` or
``PREFECT_PROFILES_PATH`` in the environment, or an active profile in ``~/.prefect/profiles.toml`` that sets
anything (``prefect profile create`` / ``prefect config set``). Only when there is none do the commands fall
back to ``<project>/.prefect`` with analytics off (:func:`configure_prefect_env`).

Server. Runs need an API. When none is configured, a stage does not start Prefect's temporary in-process
server (one per command, ~10 s each, and an orphaned ``uvicorn`` when the command is SIGKILLed); it uses the
*shared* server of its ``PREFECT_HOME`` (:func:`shared_api`):

* the first stage starts it, detached, as ``python -m flows.server`` (a small supervisor) running
  ``prefect server start`` on a free loopback port, and records it in ``<home>/dnerf-server.json``;
* later stages (the rest of ``dvc repro``, the next ``dvc repro``) find the record, check ``/health`` and reuse it;
* each command holds a *lease* (``<home>/dnerf-server/leases/<pid>``) while it runs; the supervisor stops the
  server once no lease belongs to a live process for ``DNERF_SERVER_IDLE_S`` seconds (default 600), so a killed
  stage leaves at most this one server, for that long, and never one per run;
* the server process dies with its supervisor (``PR_SET_PDEATHSIG``), even on SIGKILL; SIGTERM stops both.

``dnerf server`` (:class:`LocalServer` in the foreground, with the UI on port 4200) writes the same record, so
stages started in other shells use it without any ``export``.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from filelock import FileLock

#: Settings the project applies in its fallback home.
DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_UI_ENABLED": "true",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
}
#: Environment variables that mean "the user configured Prefect".
USER_KEYS = ("PREFECT_API_URL", "PREFECT_HOME", "PREFECT_PROFILE", "PREFECT_PROFILES_PATH")
#: A profile that sets only these is Prefect's own first-run default, not a user's choice.
PREFECT_DEFAULT_PROFILE_KEYS = frozenset({"PREFECT_SERVER_ALLOW_EPHEMERAL_MODE"})
#: Names the ``PREFECT_HOME`` that :func:`configure_prefect_env` chose (so it is not taken for the user's).
FALLBACK_MARK = "DNERF_PREFECT_HOME_FALLBACK"
RECORD = "dnerf-server.json"
DEFAULT_IDLE_S = 600.0


def user_prefect_config(env: Mapping[str, str] | None = None, home: Path | None = None) -> str | None:
    """What of the user's own Prefect configuration applies (a short description), or ``None``."""
    env = os.environ if env is None else env
    for key in USER_KEYS:
        if env.get(key) and not (key == "PREFECT_HOME" and env[key] == env.get(FALLBACK_MARK)):
            return key
    profiles = (home or Path.home()) / ".prefect" / "profiles.toml"
    try:
        data = tomllib.loads(profiles.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None
    active = data.get("active")
    settings = data.get("profiles", {}).get(active, {}) if active else {}
    if set(settings) - PREFECT_DEFAULT_PROFILE_KEYS:
        return f"profile {active!r} in {profiles}"
    return None


def configure_prefect_env(project: Path | str = ".",
                          env: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
    """Unless the user configured Prefect (:func:`user_prefect_config`), point ``PREFECT_HOME`` at
    ``<project>/.prefect`` and apply :data:`DEFAULTS` in ``env`` (``os.environ`` by default); call before Prefect
    is imported. Returns ``env``."""
    env = os.environ if env is None else env
    if user_prefect_config(env) is None:
        env["PREFECT_HOME"] = env[FALLBACK_MARK] = str(Path(project).resolve() / ".prefect")
        for key, value in DEFAULTS.items():
            env.setdefault(key, value)
    return env


def prefect_home(env: Mapping[str, str] | None = None) -> Path:
    """The ``PREFECT_HOME`` in effect (Prefect's default ``~/.prefect`` when unset)."""
    env = os.environ if env is None else env
    return Path(env.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser().resolve()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def api_healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: SIGTERM this process when the process that started it dies (even by SIGKILL)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class LocalServer:
    """``prefect server start`` on ``host:port`` with ``PREFECT_HOME=home``; a context manager.

    The server process dies with the process that started it (Linux), so a killed owner leaves no server.
    ``api_url`` is what clients put in ``PREFECT_API_URL``; ``ui_url`` is the dashboard.
    """

    home: Path
    port: int = 0
    host: str = "127.0.0.1"
    startup_timeout: float = 120.0
    log_path: Path | None = None
    process: subprocess.Popen | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.home = Path(self.home).resolve()
        self.port = self.port or free_port(self.host)

    @property
    def ui_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.ui_url}/api"

    def env(self) -> dict:
        """The environment of the server process."""
        env = {**os.environ, "PREFECT_HOME": str(self.home)}
        if user_prefect_config() is None:
            for key, value in DEFAULTS.items():
                env.setdefault(key, value)
        env.pop("PREFECT_API_URL", None)
        return env

    def start(self) -> Self:
        if api_healthy(self.api_url):
            raise RuntimeError(f"something already answers on {self.ui_url}; pick another port")
        self.home.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", self.host, "--port", str(self.port)]
        with open(self.log_path or self.home / "server.log", "ab") as log:  # the child keeps its own copy
            # the preexec_fn only calls prctl (no locks, no allocation), so it is safe in a threaded parent
            self.process = subprocess.Popen(cmd, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                            preexec_fn=_die_with_parent)  # noqa: PLW1509
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prefect server exited with {self.process.returncode}; "
                                   f"see {self.home / 'server.log'}")
            if api_healthy(self.api_url):
                return self
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"prefect server did not become healthy in {self.startup_timeout:.0f} s")

    def wait(self) -> int:
        return self.process.wait() if self.process else 0

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# ------------------------------------------------------------------------------------ the shared server


def read_record(home: Path) -> dict | None:
    """The shared server recorded in ``home`` if it answers, else ``None``."""
    try:
        record = json.loads((home / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if pid_alive(int(record.get("pid", 0))) and api_healthy(record.get("api_url", "")) else None


def write_record(home: Path, api_url: str, pid: int) -> None:
    tmp = home / f".{RECORD}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"api_url": api_url, "pid": pid}))
    tmp.replace(home / RECORD)


def clear_record(home: Path, pid: int) -> None:
    """Remove the record if it still names ``pid``."""
    try:
        if json.loads((home / RECORD).read_text()).get("pid") == pid:
            (home / RECORD).unlink()
    except (OSError, ValueError):
        pass


def lease_dir(home: Path) -> Path:
    return home / "dnerf-server" / "leases"


def live_leases(home: Path) -> list[int]:
    """Pids holding a lease on the shared server; stale leases (dead processes) are removed."""
    live = []
    for f in lease_dir(home).glob("*"):
        if f.name.isdigit() and pid_alive(int(f.name)):
            live.append(int(f.name))
        else:
            f.unlink(missing_ok=True)
    return live


def take_lease(home: Path) -> Path:
    """A lease on the shared server of ``home`` for this process (a file named by its pid); unlink it to release."""
    path = lease_dir(home) / str(os.getpid())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return path


def start_shared(home: Path, idle_s: float, timeout: float = 120.0) -> str:
    """Start the supervisor of the shared server, detached from this process; its API URL once healthy."""
    log = home / "server.log"
    cmd = [sys.executable, "-m", "flows.server", "--home", str(home), "--idle", str(idle_s)]
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=Path(__file__).resolve().parents[1])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = read_record(home)
        if record and record["pid"] == proc.pid:
            return record["api_url"]
        if proc.poll() is not None:
            raise RuntimeError(f"the shared Prefect server exited with {proc.returncode}; see {log}")
        time.sleep(0.25)
    proc.terminate()
    raise RuntimeError(f"the shared Prefect server did not become healthy in {timeout:.0f} s; see {log}")


@contextmanager
def shared_api(home: Path | None = None, idle_s: float | None = None,
               announce: Callable[[str], None] = lambda _msg: None) -> Iterator[tuple[str, bool]]:
    """The shared server of ``home`` (``PREFECT_HOME``), started if none answers, leased while the block runs;
    yields ``(api_url, started)``. ``announce`` hears about a start before it begins (it takes ~10 s)."""
    home = home or prefect_home()
    home.mkdir(parents=True, exist_ok=True)
    idle_s = float(os.environ.get("DNERF_SERVER_IDLE_S", DEFAULT_IDLE_S)) if idle_s is None else idle_s
    with FileLock(str(home / "dnerf-server.lock")):
        record = read_record(home)
        started = record is None
        if started:
            announce(f"starting the shared Prefect server (state in {home}; it stops after {idle_s:.0f} s unused)")
        api_url = start_shared(home, idle_s) if started else record["api_url"]
        held = take_lease(home)  # under the lock: the supervisor never sees the server idle in between
    try:
        yield api_url, started
    finally:
        held.unlink(missing_ok=True)


@contextmanager
def use_api(api_url: str) -> Iterator[None]:
    """Point this process's Prefect clients at ``api_url`` while the block runs, then restore what was there.

    Three places hold the API URL: Prefect's current settings (``temporary_settings``), the environment (which
    worker processes inherit), and Prefect's process-global settings, a snapshot of the environment taken when
    Prefect was imported. Threads that Prefect starts without copying the current context read the last one:
    the process runner's thread that forwards its workers' task-run events and logs (Prefect 3.9) would
    otherwise find no URL, start a temporary server of its own and send the task runs there, not to
    ``api_url``. So all three are set.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    saved = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = api_url
    _refresh_prefect_globals()
    try:
        with temporary_settings({PREFECT_API_URL: api_url}):
            yield
    finally:
        if saved is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = saved
        _refresh_prefect_globals()


def _refresh_prefect_globals() -> None:
    """Re-read Prefect's process-global settings from the environment (a no-op on Prefect releases without
    ``refresh_global_settings_context``, whose process runner has no forwarding thread either)."""
    try:
        from prefect.context import refresh_global_settings_context
    except ImportError:
        return
    refresh_global_settings_context()


def supervise(home: Path, idle_s: float, poll_s: float = 0.5) -> int:
    """Run the shared server of ``home`` until no lease is live for ``idle_s`` seconds or SIGTERM/SIGINT."""
    stop = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.append(True))
    server = LocalServer(home, log_path=home / "server.log").start()
    assert server.process is not None  # started
    write_record(home, server.api_url, os.getpid())
    idle_since = time.monotonic()
    try:
        while not stop and server.process.poll() is None:
            if live_leases(home):
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since >= idle_s:
                break
            time.sleep(poll_s)
    finally:
        clear_record(home, os.getpid())
        server.stop()
    return 0


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - exercised through subprocesses
    ap = argparse.ArgumentParser(prog="python -m flows.server", description=supervise.__doc__)
    ap.add_argument("--home", type=Path, required=True)
    ap.add_argument("--idle", type=float, default=DEFAULT_IDLE_S)
    args = ap.parse_args(argv)
    return supervise(args.home.resolve(), args.idle)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
