"""The local Prefect environment: settings kept inside the project, and a real server on loopback.

Prefect state (its database, logs, settings) lives in ``.prefect/`` of the project and analytics are off,
unless the user's environment already says otherwise. ``LocalServer`` runs ``prefect server start`` on
127.0.0.1 (the UI and the API) until stopped; the CLI's ``dnerf server`` and the tests use it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

#: Settings the project applies unless the environment sets them.
DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_UI_ENABLED": "true",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
}


def configure_prefect_env(project: Path | str = ".", env: dict | None = None) -> dict:
    """Set (unless already set) ``PREFECT_HOME`` to ``<project>/.prefect`` and the project's defaults in
    ``env`` (``os.environ`` by default); call before Prefect is imported. Returns ``env``."""
    env = os.environ if env is None else env
    env.setdefault("PREFECT_HOME", str(Path(project).resolve() / ".prefect"))
    for key, value in DEFAULTS.items():
        env.setdefault(key, value)
    return env


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


@dataclass
class LocalServer:
    """``prefect server start`` on ``host:port`` with ``PREFECT_HOME=home``; a context manager.

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
        env = configure_prefect_env(env={**os.environ, "PREFECT_HOME": str(self.home)})
        env.pop("PREFECT_API_URL", None)
        return env

    def start(self) -> LocalServer:
        if api_healthy(self.api_url):
            raise RuntimeError(f"something already answers on {self.ui_url}; pick another port")
        self.home.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path or self.home / "server.log", "ab")
        cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", self.host, "--port", str(self.port)]
        self.process = subprocess.Popen(cmd, env=self.env(), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prefect server exited with {self.process.returncode}; see {self.home / 'server.log'}")
            if api_healthy(self.api_url):
                return self
            time.sleep(0.5)
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

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
