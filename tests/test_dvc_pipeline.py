"""The DVC pipeline in a real temporary git + DVC repository: repro, no-op repro, targeted re-runs."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tasks.store import open_store

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def nerf_files(repo) -> dict:
    out = repo / "artifacts" / "nerf"
    return {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}


def assert_report_linked(repo) -> None:
    """The evaluate flow run links the report as a Prefect artifact."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        reports = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["dnerf-report"])))
    uri = (repo / "reports" / "index.html").resolve().as_uri()
    assert any(uri in str(a.data) for a in reports), [a.data for a in reports]


@pytest.mark.xdist_group("dvc-template")  # one worker builds the session's template repository
def test_repro_then_noop_then_only_changed_stage(dvc_template, dvc_repo, sh):
    repo, out = dvc_repo, dvc_template[1]
    stages = ["download", "corrupt", "train_diffusion", "refine", "fit_nerf", "evaluate"]
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
    assert "metrics.json" in shown and "nerf.json" in shown and "evaluate.json" in shown
    assert (repo / "artifacts" / "nerf" / "synthetic_000" / "mesh.ply").is_file()
    for stage in stages:  # every stage ends with its one-table summary
        assert f"{stage}: " in out and " done" in out
    assert_report_linked(dvc_template[0])
    # Every out is already ignored: the main job leaves the project's .gitignore as it is.
    assert (repo / ".gitignore").read_text() == (ROOT / ".gitignore").read_text()

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

    # A param change reaches exactly the stages that read it: `dvc status` names the stage and the key, nothing
    # upstream (a real re-run after a param change: tests/flows/test_schedule.py and the experiment below).
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, key, value, stage in (("refine", "seed", 3, "refine"), ("noise", "seed", 5, "corrupt")):
        changed = yaml.safe_load(yaml.safe_dump(params))
        changed[section][key] = value
        (repo / "params.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
        res = subprocess.run(["dvc", "status", "--json"], cwd=repo, capture_output=True, text=True, check=True)
        status = json.loads(res.stdout)
        assert status == {stage: [{"changed deps": {"params.yaml": {f"{section}.{key}": "modified"}}}]}, status
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "up to date" in sh("dvc", "status", cwd=repo)


@pytest.mark.xdist_group("dvc-template")  # one worker builds the session's template repository
def test_remote_push_pull_and_experiments(dvc_repo, sh, tmp_path_factory):
    repo = dvc_repo
    remote = tmp_path_factory.mktemp("dvc-remote")
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


@pytest.mark.xdist_group("dvc-template")  # one worker builds the session's template repository
def test_an_s3_remote_restores_every_out_into_another_clone(dvc_repo, s3, sh, tmp_path):
    """``dvc push`` to a remote on the S3 server from one clone, ``dvc pull`` into a fresh ``git clone``: every out
    of ``dvc.lock`` comes back byte for byte, and the clone's pipeline is up to date."""
    repo, clone = dvc_repo, tmp_path / "clone"
    sh("dvc", "remote", "add", "-d", "s3", f"{s3.bucket()}/dvc", cwd=repo)
    sh("dvc", "remote", "modify", "s3", "endpointurl", s3.endpoint, cwd=repo)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "a reproduced pipeline", cwd=repo)
    sh("dvc", "push", cwd=repo)
    sh("git", "clone", "-q", str(repo), str(clone), cwd=tmp_path)
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    outs = sorted({o["path"] for stage in lock["stages"].values() for o in stage.get("outs", [])})
    cached = [o for o in outs if not (clone / o).exists()]  # the rest (metrics, plots) are committed to git
    assert len(cached) >= 6 and "data/refined.zarr" in cached and "artifacts/nerf" in cached, cached
    sh("dvc", "pull", cwd=clone)

    def files(root: Path) -> dict[str, bytes]:
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()} \
            if root.is_dir() else {root.name: root.read_bytes()}

    for out in outs:
        assert files(clone / out) == files(repo / out), out
    assert "up to date" in sh("dvc", "status", cwd=clone)
