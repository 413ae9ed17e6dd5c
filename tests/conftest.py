"""Fixtures shared by all tests: the real RGB-D samples (skipped when absent) and tiny params."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RGBD = ROOT.parent / "shared" / "data" / "rgbd"
# A dnerf command run without PREFECT_API_URL starts the shared server (flows/server.py): in tests, let it stop
# soon after its last command instead of lingering for the default 10 minutes.
os.environ.setdefault("DNERF_SERVER_IDLE_S", "20")


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
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
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
    (repo / ".gitignore").write_text("/.prefect/\n/.prefect-results/\n/.checkpoints/\n")
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
