"""Fixtures shared by all tests: the real RGB-D samples (skipped when absent) and tiny params."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RGBD = ROOT.parent / "shared" / "data" / "rgbd"
# A dnerf command run without PREFECT_API_URL starts the shared server (flows/server.py): in tests, let it stop
# soon after its last command instead of lingering for the default 10 minutes.
os.environ.setdefault("DNERF_SERVER_IDLE_S", "20")


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: one worker per usable core, at most four (each worker runs its own Prefect server)."""
    from flows.runners import usable_cores

    return max(1, min(4, usable_cores()))


def pytest_configure(config: pytest.Config) -> None:
    """An xdist worker runs on its own share of the cores (CPU affinity), so torch, OpenMP and the ``dnerf`` and
    ``dvc`` processes it starts size their thread pools to that share instead of oversubscribing the machine."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if worker and count and hasattr(os, "sched_setaffinity"):
        cores = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, cores[int(worker.removeprefix("gw")) :: int(count)] or cores)


@pytest.fixture(scope="session")
def rgbd_dir() -> Path:
    """``../shared/data/rgbd`` from the project root; tests using it skip when it is absent."""
    if not RGBD.is_dir():
        pytest.skip("real RGB-D samples not found at ../shared/data/rgbd")
    return RGBD


@pytest.fixture
def tiny_overrides(tmp_path: Path) -> list[str]:
    """``--set`` overrides for a fast synthetic run writing into ``tmp_path``."""
    return [
        f"paths.raw={tmp_path / 'raw'}",
        f"paths.scenes={tmp_path / 'scenes.zarr'}",
        f"paths.noisy={tmp_path / 'noisy.zarr'}",
        "data.synthetic.n_scenes=2",
        "data.synthetic.n_frames=4",
        "data.synthetic.height=24",
        "data.synthetic.width=32",
        "data.synthetic.refiner_train_scenes=1",  # one tiny refiner room per role (train, val)
        "data.synthetic.refiner_val_scenes=1",
        "data.synthetic.refiner_frames=2",
        "data.synthetic.refiner_sizes=[[32, 24]]",
        "data.test_every=2",
    ]


@pytest.fixture
def make_stores(tiny_overrides: list[str]) -> Callable[..., list[str]]:
    """``make_stores(extra)``: the scene store and its noisy depth (``download`` then ``corrupt``) for
    ``tiny_overrides + extra``, written under the test's ``tmp_path``; returns those overrides."""
    from tasks.config import load_params
    from tasks.corrupt import run_corrupt
    from tasks.download import run_download

    def make(extra: Iterable[str] = ()) -> list[str]:
        overrides = [*tiny_overrides, *extra]
        params = load_params(None, overrides)
        run_download(params, progress=False)
        run_corrupt(params, progress=False)
        return overrides

    return make


@pytest.fixture
def tiny_params(tiny_overrides: list[str]):
    from tasks.config import load_params

    return load_params(ROOT / "params.yaml", tiny_overrides)


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory) -> str:
    """A real Prefect server on a free loopback port for the whole session; its API URL.

    ``PREFECT_API_URL`` points at it for this process (flows run in tests) and for subprocesses
    (``dnerf`` commands, ``dvc repro``, Dask workers), so no test pays for a temporary server.
    """
    from flows.server import LocalServer, configure_prefect_env, use_api

    home = tmp_path_factory.mktemp("prefect-home")
    configure_prefect_env(env=os.environ)
    server = LocalServer(home).start()
    try:
        with use_api(server.api_url):
            yield server.api_url
    finally:
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)  # send the last run logs before the server goes away
        server.stop()


@dataclass
class S3Server:
    """An S3-compatible server on loopback (moto's server mode) for the session; the AWS variables of this process
    (and so of every subprocess: ``dnerf``, ``dvc``, Dask workers) point at it."""

    endpoint: str
    log: Path  # the server's request log, one line per request

    def requests(self, bucket: str) -> list[str]:
        """The requests for ``bucket`` (``s3://<name>``) the server has logged so far (``"GET /name/key"``...)."""
        import re

        name = bucket.removeprefix("s3://")
        found = (re.search(r'"([A-Z]+ /[^ ?]*)', line) for line in self.log.read_text().splitlines())
        return [m.group(1) for m in found if m and m.group(1).split(" ", 1)[1].split("/")[1] == name]

    def bucket(self) -> str:
        """A new, empty bucket: ``s3://<name>``."""
        import uuid

        import fsspec

        name = f"test-{uuid.uuid4().hex[:12]}"
        fsspec.filesystem("s3").mkdir(name)
        return f"s3://{name}"

    @staticmethod
    def listing(url: str) -> list[str]:
        """The names directly under ``url`` (read afresh)."""
        import fsspec

        fs, path = fsspec.core.url_to_fs(url)
        fs.invalidate_cache()
        return sorted(p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))


@pytest.fixture(scope="session")
def s3(tmp_path_factory) -> Iterator[S3Server]:
    pytest.importorskip("s3fs")
    pytest.importorskip("moto.server")
    import socket
    import time
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log_path = tmp_path_factory.mktemp("s3") / "moto.log"  # a file: it logs every request (a pipe would fill up)
    log = log_path.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
        os.environ.update(env)
        yield S3Server(endpoint, log_path)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.kill()
        proc.wait()
        log.close()


class CliResult(subprocess.CompletedProcess):
    """A finished ``dnerf`` command: ``returncode``, ``stdout``, ``stderr`` and ``output`` (both streams, in order
    where the command ran in this process)."""

    def __init__(self, args: list[str], returncode: int, stdout: str, stderr: str, output: str | None = None):
        super().__init__(args, returncode, stdout, stderr)
        self.output = stdout + stderr if output is None else output


class Dnerf:
    """The ``dnerf`` command line, two ways.

    * :meth:`run`: the installed console script in a subprocess, where the process is the point (a kill mid-run,
      the shared Prefect server, the environment a user's shell gives it); :meth:`start` starts one to signal;
    * :meth:`invoke`: the same Typer app in this process (same exit code, stdout and stderr; seconds faster).

    Both take ``overrides`` (``KEY=VALUE`` strings, passed as ``--set`` options after ``args``) and return a
    :class:`CliResult`; ``check=True`` asserts exit code 0 and shows the output when it is not.
    """

    @staticmethod
    def sets(overrides: Iterable[str]) -> list[str]:
        """``["--set", o1, "--set", o2, ...]``."""
        return [arg for o in overrides for arg in ("--set", o)]

    @staticmethod
    def _checked(res: CliResult, check: bool) -> CliResult:
        if check:
            assert res.returncode == 0, f"{' '.join(res.args)} failed ({res.returncode}):\n{res.output}"
        return res

    def run(self, *args: str, overrides: Iterable[str] = (), check: bool = False, timeout: float = 300,
            **popen) -> CliResult:
        cmd = ["dnerf", *args, *self.sets(overrides)]
        res = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, **popen)
        return self._checked(CliResult(cmd, res.returncode, res.stdout, res.stderr), check)

    def start(self, *args: str, overrides: Iterable[str] = (), **popen) -> subprocess.Popen:
        """The console script started in the background (to be signalled or killed); ``popen``: ``Popen`` options."""
        return subprocess.Popen(["dnerf", *args, *self.sets(overrides)], **popen)

    def invoke(self, *args: str, overrides: Iterable[str] = (), check: bool = False) -> CliResult:
        from typer.testing import CliRunner

        from flows.cli import app

        cmd = [*args, *self.sets(overrides)]
        res = CliRunner().invoke(app, cmd)
        if res.exception is not None and not isinstance(res.exception, SystemExit):
            raise res.exception  # a crash, not an exit code: show its traceback
        return self._checked(CliResult(["dnerf", *cmd], res.exit_code, res.stdout, res.stderr, res.output), check)


@pytest.fixture(scope="session")
def dnerf() -> Dnerf:
    """The ``dnerf`` command line in a subprocess (``dnerf.run``) or in this process (``dnerf.invoke``)."""
    return Dnerf()


def run_checked(*cmd: str, cwd: Path) -> str:
    """Run a command (git, dvc, dnerf) in ``cwd``; assert it succeeded; its stdout + stderr."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    res = subprocess.run(cmd, cwd=cwd, check=False, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout}\n{res.stderr}"
    return res.stdout + res.stderr


@pytest.fixture
def sh():
    return run_checked


@pytest.fixture(scope="session")
def dvc_template(tmp_path_factory, prefect_api) -> tuple[Path, str]:
    """A real git + DVC repository with the project's pipeline and tiny params, after its first
    ``dvc repro``; ``(path, output of that repro)``. Tests work on copies (``dvc_repo``)."""
    import yaml

    if shutil.which("dvc") is None or shutil.which("dnerf") is None:
        pytest.skip("dvc and the dnerf console script must be installed")
    repo = tmp_path_factory.mktemp("dvc-template")
    for name in ("dvc.yaml", "params.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(ROOT / name, repo / name)
    for pkg in ("models", "tasks", "flows"):
        shutil.copytree(ROOT / pkg, repo / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["synthetic"].update(n_scenes=1, n_frames=3, height=24, width=32, refiner_train_scenes=1,
                                       refiner_val_scenes=1, refiner_frames=2, refiner_sizes=[[32, 24]])
    params["data"]["test_every"] = 2
    params["diffusion"]["unet"].update(base_channels=8, channel_mults=[1, 2], attention_heads=2)
    params["diffusion"]["train"].update(max_steps=2, crop=16, batch_size=2, val_crops=2, val_every=1)
    params["nerf"]["train"].update(steps=3, target_samples=2048, n_coarse=8, n_fine=4)
    params["nerf"]["occupancy"].update(resolution=16, warmup_steps=2, n_cells=256)
    params["nerf"]["export"].update(mesh_resolution=16)
    params["orchestration"]["workers"] = 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_checked("git", "init", "-q", cwd=repo)
    run_checked("dvc", "init", "-q", cwd=repo)
    run_checked("dvc", "config", "core.analytics", "false", cwd=repo)
    return repo, run_checked("dvc", "repro", cwd=repo)


@pytest.fixture
def dvc_repo(dvc_template, tmp_path) -> Path:
    """A fresh copy of the reproduced template repository (workspace, DVC cache, git history)."""
    repo = tmp_path / "repo"
    shutil.copytree(dvc_template[0], repo, symlinks=True)
    return repo
