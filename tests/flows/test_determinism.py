"""Determinism by construction: NeRF fits run two at a time in threads by the Prefect flow export, byte for
byte, what the same fits run one after the other by the plain stage export, and a fit leaves the global
random number generators alone (every draw comes from a generator of its own, seeded from ``nerf.seed``).

The two threads are made to build their models at the same moment, where fits seeded through the global RNG
(``torch.manual_seed`` then the modules' default initialisation) would take each other's numbers."""

from __future__ import annotations

import csv
import io
import json
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from flows.runners import threads_per_worker
from flows.stages import run_flow
from tasks import fit_nerf
from tasks.config import load_params

SCENES = ("synthetic_000", "synthetic_001")
# Short fits that leave the occupancy grid's warm-up (random cells and points after it), jitter every sample
# and learn enough for a non-empty mesh.
FAST_NERF = [
    "nerf.depth_source=noisy", "nerf.ablation_sources=[]", "nerf.train.steps=40", "nerf.train.lr=0.02",
    "nerf.train.target_samples=2048",
    "nerf.train.n_coarse=8", "nerf.train.n_fine=4", "nerf.occupancy.resolution=16", "nerf.occupancy.warmup_steps=4",
    "nerf.occupancy.n_cells=256", "nerf.export.mesh_resolution=16",
    "orchestration.runner=threads", "orchestration.workers=2",
]
#: Wall-clock entries of an export, the only bytes that may differ between two runs of the same fit.
TIMING = {"metrics.json": {"train_seconds"}, "curve.csv": {"seconds"}}


def outputs(root: Path) -> list[str]:
    """``paths.nerf``, ``paths.nerf_checkpoints`` and ``paths.nerf_metrics`` under ``root``."""
    return [f"paths.nerf={root / 'nerf'}", f"paths.nerf_checkpoints={root / 'ck'}",
            f"paths.nerf_metrics={root / 'nerf.json'}"]


@pytest.fixture
def two_scenes(make_stores, tmp_path) -> list[str]:
    """Two tiny synthetic scenes with their noisy depth; overrides for fast fits run two at a time."""
    return make_stores(FAST_NERF + [f"orchestration.results={tmp_path / 'results'}"])


@pytest.fixture
def torch_threads():
    """Restores torch's intra-op thread count, which the flow sets for its workers."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def without_timing(name: str, data: bytes):
    """A file's content with its wall-clock entries (:data:`TIMING`) left out."""
    drop = TIMING.get(name)
    if drop is None:
        return data
    if name.endswith(".json"):
        return {k: v for k, v in json.loads(data).items() if k not in drop}
    rows = list(csv.reader(io.StringIO(data.decode())))
    keep = [i for i, column in enumerate(rows[0]) if column not in drop]
    return [[row[i] for i in keep] for row in rows]


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@contextmanager
def models_built_together(n: int = 2):
    """While open, ``tasks.fit_nerf.make_model`` waits until ``n`` fits call it, so they initialise their
    models at the same moment (a broken barrier, when the fits do not run at once, fails the flow)."""
    barrier = threading.Barrier(n, timeout=120)
    make_model = fit_nerf.make_model

    def together(*args, **kwargs):
        barrier.wait()
        return make_model(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fit_nerf, "make_model", together)
        yield barrier


def test_parallel_fits_in_threads_export_the_bytes_of_sequential_fits(prefect_api, two_scenes, tmp_path,
                                                                       torch_threads):
    flowed = load_params(None, two_scenes + outputs(tmp_path / "flow"))
    with models_built_together() as barrier:
        run_flow("fit_nerf", flowed)
    assert not barrier.broken

    sequential = load_params(None, two_scenes + outputs(tmp_path / "seq"))
    torch.set_num_threads(threads_per_worker(sequential.orchestration))  # what each flow worker runs with
    # NumPy's legacy global RNG on purpose: the fit must not draw from it.
    torch_rng, numpy_rng = torch.random.get_rng_state(), np.random.get_state()  # noqa: NPY002
    fit_nerf.run_fit_nerf(sequential, progress=False)
    assert torch.equal(torch.random.get_rng_state(), torch_rng), "a fit drew from torch's global RNG"
    after = np.random.get_state()  # noqa: NPY002
    assert after[0] == numpy_rng[0] and np.array_equal(after[1], numpy_rng[1]) and after[2:] == numpy_rng[2:], \
        "a fit drew from NumPy's global RNG"

    for scene in SCENES:
        a = folder_bytes(Path(flowed.paths.nerf) / scene)
        b = folder_bytes(Path(sequential.paths.nerf) / scene)
        assert sorted(a) == sorted(b)
        assert {"field.safetensors", "occupancy.safetensors", "metrics.json", "curve.csv", "config.json",
                "mesh.ply", "pointcloud.ply"} <= set(a) and any(name.startswith("renders/") for name in a)
        assert len(trimesh.load(Path(flowed.paths.nerf) / scene / "mesh.ply").faces) > 0  # a fit that learnt
        for name in a:
            if name.rsplit("/", 1)[-1] in TIMING:
                assert without_timing(name, a[name]) == without_timing(name, b[name]), f"{scene}/{name}"
            else:
                assert a[name] == b[name], f"{scene}/{name} differs between the parallel and the sequential fit"
