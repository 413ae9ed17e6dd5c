"""Fixtures shared by all tests: the real RGB-D samples (skipped when absent) and tiny params."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RGBD = ROOT.parent / "shared" / "data" / "rgbd"


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
    from flows.server import LocalServer, configure_prefect_env

    home = tmp_path_factory.mktemp("prefect-home")
    configure_prefect_env(env=os.environ)
    server = LocalServer(home).start()
    saved = {k: os.environ.get(k) for k in ("PREFECT_API_URL",)}
    os.environ["PREFECT_API_URL"] = server.api_url
    from prefect.settings import PREFECT_API_URL, temporary_settings

    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)  # send the last run logs before the server goes away
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
