"""The DVC pipeline in a real temporary git + DVC repository: repro, no-op repro, targeted re-runs."""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tasks.store import open_store

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def sh(*cmd, cwd):
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout}\n{res.stderr}"
    return res.stdout + res.stderr


@pytest.fixture
def repo(tmp_path, prefect_api):
    if shutil.which("dvc") is None or shutil.which("dnerf") is None:
        pytest.skip("dvc and the dnerf console script must be installed")
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, tmp_path / name)
    for pkg in ("models", "tasks", "flows"):
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["data"]["synthetic"].update(n_scenes=1, n_frames=3, height=24, width=32)
    params["data"]["test_every"] = 2
    params["diffusion"]["unet"].update(base_channels=8, channel_mults=[1, 2], attention_heads=2)
    params["diffusion"]["train"].update(max_steps=2, crop=16, batch_size=2, val_crops=2, val_every=1)
    params["nerf"]["train"].update(steps=3, target_samples=2048, n_coarse=8, n_fine=4)
    params["nerf"]["occupancy"].update(resolution=16, warmup_steps=2, n_cells=256)
    params["nerf"]["export"].update(mesh_resolution=16)
    params["orchestration"]["workers"] = 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh("git", "init", "-q", cwd=tmp_path)
    sh("dvc", "init", "-q", cwd=tmp_path)
    sh("dvc", "config", "core.analytics", "false", cwd=tmp_path)
    (tmp_path / ".gitignore").write_text("/.prefect/\n/.prefect-results/\n/.checkpoints/\n")
    return tmp_path


def nerf_files(repo) -> dict:
    out = repo / "artifacts" / "nerf"
    return {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}


def test_repro_then_noop_then_only_changed_stage(repo):
    out = sh("dvc", "repro", cwd=repo)
    stages = ["download", "corrupt", "train_diffusion", "refine", "fit_nerf"]
    for stage in stages:
        assert f"Running stage '{stage}'" in out
    scenes = open_store(repo / "data" / "scenes.zarr", "scenes")
    noisy = open_store(repo / "data" / "noisy.zarr", "noisy")
    refined = open_store(repo / "data" / "refined.zarr", "refined")
    assert noisy["synthetic_000"]["depth_noisy"].shape == scenes["synthetic_000"]["depth"].shape == (3, 24, 32)
    assert refined.attrs["complete"] and refined["synthetic_000"]["done"][:].all()
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(stages)
    shown = sh("dvc", "metrics", "show", cwd=repo)
    assert "metrics.json" in shown and "nerf.json" in shown
    assert (repo / "artifacts" / "nerf" / "synthetic_000" / "mesh.ply").is_file()

    out = sh("dvc", "repro", cwd=repo)
    assert "Running stage" not in out, out

    # The cache trap: DVC deletes fit_nerf's outs before running it; the cached Prefect tasks must still
    # write every output.
    before = nerf_files(repo)
    metrics = (repo / "metrics" / "nerf.json").read_text()
    out = sh("dvc", "repro", "-f", "-s", "fit_nerf", cwd=repo)
    assert "Running stage 'fit_nerf'" in out
    assert nerf_files(repo) == before and all(len(b) > 0 for b in before.values())
    assert (repo / "metrics" / "nerf.json").read_text() == metrics
    assert "Running stage" not in sh("dvc", "repro", cwd=repo)

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["refine"]["steps"] = 3
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = sh("dvc", "repro", cwd=repo)
    assert "Running stage 'refine'" in out and "Running stage 'fit_nerf'" in out
    assert not any(f"Running stage '{s}'" in out for s in stages[:3]), out
    assert open_store(repo / "data" / "refined.zarr", "refined").attrs["refine"]["steps"] == 3

    params["noise"]["seed"] = 5
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = sh("dvc", "repro", cwd=repo)
    assert "Running stage 'corrupt'" in out and "Running stage 'download'" not in out
    assert open_store(repo / "data" / "noisy.zarr", "noisy").attrs["seed"] == 5


def test_remote_push_pull_and_experiments(repo, tmp_path_factory):
    remote = tmp_path_factory.mktemp("dvc-remote")
    sh("dvc", "repro", cwd=repo)
    sh("dvc", "remote", "add", "-d", "storage", str(remote), cwd=repo)
    sh("dvc", "push", cwd=repo)
    assert any(remote.rglob("*")), "nothing was pushed"
    mesh = (repo / "artifacts" / "nerf" / "synthetic_000" / "mesh.ply").read_bytes()
    for gone in ("data", "artifacts/nerf", ".dvc/cache"):  # every cached out (metrics stay in git)
        shutil.rmtree(repo / gone)
    for gone in ("model.safetensors", "config.json"):
        (repo / "artifacts" / "diffusion" / gone).unlink()
    sh("dvc", "pull", cwd=repo)
    assert (repo / "artifacts" / "nerf" / "synthetic_000" / "mesh.ply").read_bytes() == mesh
    assert open_store(repo / "data" / "refined.zarr", "refined").attrs["complete"]
    assert "Running stage" not in sh("dvc", "repro", cwd=repo)

    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "baseline", cwd=repo)
    out = sh("dvc", "exp", "run", "-S", "nerf.train.steps=4", cwd=repo)
    assert "Running stage 'fit_nerf'" in out and "Running stage 'refine'" not in out
    shown = sh("dvc", "exp", "show", "--no-pager", "--csv", cwd=repo)
    rows = list(csv.DictReader(io.StringIO(shown)))
    by_type = {r["typ"]: r["nerf.train.steps"] for r in rows}
    assert by_type["baseline"] == "3" and by_type["branch_base"] == "4", shown
