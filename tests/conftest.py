"""Fixtures shared by all tests: the real RGB-D samples (skipped when absent) and tiny params."""

from __future__ import annotations

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
