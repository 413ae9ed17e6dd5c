"""Prefect flows against a real server on loopback: parallel scenes, content caching (and the DVC trap of
deleted outs), failure isolation, names, tags and artifacts read back through the API, and the Dask runner."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch
import zarr

from flows.caching import cache_key
from flows.stages import StageFailed, run_flow
from tasks.config import load_params
from tasks.digest import tree_digest
from tasks.refine import run_refine

FAST_NERF = [
    "nerf.depth_source=refined", "nerf.train.steps=12", "nerf.train.target_samples=2048", "nerf.train.n_coarse=8",
    "nerf.train.n_fine=4", "nerf.occupancy.resolution=16", "nerf.occupancy.warmup_steps=4",
    "nerf.occupancy.n_cells=256", "nerf.export.mesh_resolution=16", "nerf.ablation_sources=[]",
]


@pytest.fixture
def stores(make_stores, tmp_path):
    """Two tiny synthetic scenes, their noisy depth, and overrides writing everything under tmp_path."""
    return make_stores(FAST_NERF + [
        "refine.method=bilateral",
        f"paths.refined={tmp_path / 'refined.zarr'}", f"paths.nerf={tmp_path / 'nerf'}",
        f"paths.nerf_checkpoints={tmp_path / 'ck'}", f"paths.nerf_metrics={tmp_path / 'metrics' / 'nerf.json'}",
        f"orchestration.results={tmp_path / 'results'}",
    ])


def test_cache_keys_follow_content_params_and_code_not_paths(tmp_path):
    a = tmp_path / "a" / "scene"
    a.mkdir(parents=True)
    (a / "x.bin").write_bytes(b"123")
    b = tmp_path / "b" / "scene"
    shutil.copytree(a, b)
    key = cache_key("fit_nerf", "s", [a], {"steps": 1}, "code1")
    assert key.startswith("fit_nerf-s-")
    assert cache_key("fit_nerf", "s", [b], {"steps": 1}, "code1") == key  # same bytes elsewhere
    assert cache_key("fit_nerf", "s", [a], {"steps": 2}, "code1") != key
    assert cache_key("fit_nerf", "s", [a], {"steps": 1}, "code2") != key
    (b / "x.bin").write_bytes(b"124")
    assert cache_key("fit_nerf", "s", [b], {"steps": 1}, "code1") != key
    assert tree_digest([a]) != tree_digest([b])


def api_runs(flow_name: str):
    """(latest flow run of ``flow_name``, its task runs, its artifacts) read through the API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterId,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        run = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                                    sort=FlowRunSort.START_TIME_DESC, limit=1)[0]
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
    return run, tasks, arts


def test_flows_run_scenes_in_parallel_cache_by_content_and_rewrite_deleted_outs(prefect_api, stores, tmp_path):
    params = load_params(None, stores)
    threads, env = torch.get_num_threads(), dict(os.environ)
    run_flow("refine", params)
    assert torch.get_num_threads() == threads and dict(os.environ) == env  # a flow run leaves the process as it was
    flowed = zarr.open_group(str(params.paths.refined), mode="r")
    seq = load_params(None, stores + [f"paths.refined={tmp_path / 'seq.zarr'}"])
    run_refine(seq, progress=False)
    reference = zarr.open_group(str(seq.paths.refined), mode="r")
    for scene in ("synthetic_000", "synthetic_001"):  # parallel flow == sequential stage, bit for bit
        np.testing.assert_array_equal(flowed[scene]["depth_refined"][:], reference[scene]["depth_refined"][:])
    assert flowed.attrs["complete"]

    with_ablation = load_params(None, stores + ["nerf.ablation_sources=[noisy]"])
    run_flow("fit_nerf", with_ablation)
    out = params.paths.nerf
    first = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert {p.parts[0] for p in first} == {"synthetic_000", "synthetic_001", "ablation"}
    assert {p.parts[:3] for p in first if p.parts[0] == "ablation"} == {
        ("ablation", "noisy", "synthetic_000"), ("ablation", "noisy", "synthetic_001")}
    run, tasks, arts = api_runs("dnerf-fit_nerf")
    assert run.state.is_completed() and run.name == f"fit_nerf: {params.paths.scenes}"  # names the store
    assert sorted(t.name for t in tasks) == ["fit_nerf/synthetic_000", "fit_nerf/synthetic_000@noisy",
                                             "fit_nerf/synthetic_001", "fit_nerf/synthetic_001@noisy"]
    assert all("fit_nerf" in t.tags and f"scene:{t.name.split('/')[1].split('@')[0]}" in t.tags for t in tasks)
    assert not any(t.state.name == "Cached" for t in tasks)
    kinds = {(a.type, a.key) for a in arts}
    assert ("table", "fit-nerf-scenes") in kinds and ("markdown", "fit-nerf-summary") in kinds
    assert sum(a.type == "progress" for a in arts) == 4
    table = next(a for a in arts if a.type == "table")
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert {(r["scene"], r["depth_source"]) for r in rows} == {
        (s, d) for s in ("synthetic_000", "synthetic_001") for d in ("refined", "noisy")}
    summary = json.loads(params.paths.nerf_metrics.read_text())
    assert set(summary["by_source"]) == {"refined", "noisy"}
    assert set(summary["scenes"]) == {"synthetic_000", "synthetic_001"}
    assert summary["by_source"]["refined"]["mean_test_psnr"] == pytest.approx(summary["mean_test_psnr"])

    shutil.rmtree(out)  # the main fits do not depend on which ablation fits were asked for
    run_flow("fit_nerf", params)
    _, tasks, _ = api_runs("dnerf-fit_nerf")
    assert sorted(t.name for t in tasks) == ["fit_nerf/synthetic_000", "fit_nerf/synthetic_001"]
    assert all(t.state.name == "Cached" for t in tasks), [t.state.name for t in tasks]
    first = {p: b for p, b in first.items() if p.parts[0] != "ablation"}

    shutil.rmtree(out)  # what `dvc repro -f` does before running the stage
    run_flow("fit_nerf", params)
    _, tasks, _ = api_runs("dnerf-fit_nerf")
    assert all(t.state.name == "Cached" for t in tasks), [t.state.name for t in tasks]
    again = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert again == first  # a cache hit still writes every output, byte for byte

    # Cached results are receipts: Prefect's records are small JSON naming an artifact folder; the files were
    # written once there and are hard links in the outputs.
    results = tmp_path / "results"
    records = [p for p in results.iterdir() if p.is_file()]
    assert records and max(p.stat().st_size for p in records) < 20_000
    field = out / "synthetic_000" / "field.safetensors"
    assert field.stat().st_nlink == 2 and any(p.samefile(field) for p in (results / "artifacts").rglob("*.safetensors"))
    # An artifact that is gone makes its receipt stale: the unit runs again and the outputs are still written.
    shutil.rmtree(results / "artifacts")
    shutil.rmtree(out)
    run_flow("fit_nerf", params)
    _, tasks, _ = api_runs("dnerf-fit_nerf")
    assert sorted(t.name for t in tasks if t.state.name == "Completed") == ["fit_nerf/synthetic_000",
                                                                           "fit_nerf/synthetic_001"]
    assert {p.relative_to(out) for p in out.rglob("*") if p.is_file()} == set(first)

    changed = load_params(None, stores + ["nerf.train.steps=13"])
    run_flow("fit_nerf", changed)
    _, tasks, _ = api_runs("dnerf-fit_nerf")
    assert not any(t.state.name == "Cached" for t in tasks)


def test_a_failing_scene_does_not_stop_the_others(prefect_api, stores, tmp_path):
    params = load_params(None, stores + ["nerf.depth_source=gt"])
    K = zarr.open_array(str(params.paths.scenes / "synthetic_001" / "K"), mode="r+")
    K[2] = np.zeros((3, 3))  # degenerate intrinsics on one frame of one scene
    with pytest.raises(StageFailed) as err:
        run_flow("fit_nerf", params)
    assert list(err.value.failures) == ["synthetic_001"]
    assert "degenerate intrinsics" in err.value.failures["synthetic_001"]
    assert (params.paths.nerf / "synthetic_000" / "metrics.json").is_file()
    assert not (params.paths.nerf / "synthetic_001").exists()
    summary = json.loads(params.paths.nerf_metrics.read_text())
    assert list(summary["scenes"]) == ["synthetic_000"]
    run, tasks, _ = api_runs("dnerf-fit_nerf")
    assert run.state.is_failed()
    assert {t.name: t.state.type.value for t in tasks} == {"fit_nerf/synthetic_000": "COMPLETED",
                                                         "fit_nerf/synthetic_001": "FAILED"}

    cli = subprocess.run(["dnerf", "fit-nerf", "-q", "-p", "/dev/null", *(a for o in stores for a in ("--set", o)),
                          "--set", "nerf.depth_source=gt"],
                         check=False, capture_output=True, text=True, env=os.environ)
    assert cli.returncode == 1
    last = cli.stderr.rstrip().splitlines()[-1]  # the error is the last line, plain, naming the failed scene
    assert last.startswith("error: fit_nerf: 1 scene(s) failed (synthetic_001)"), cli.stderr[-2000:]
    assert "degenerate intrinsics" in cli.stderr and "Traceback" not in cli.stderr


def refine_in_two_workers(runner: str, stores: list[str], tmp_path) -> None:
    """The refine flow on ``orchestration.runner=<runner>`` with two workers writes the bytes of the plain stage,
    and its run and both scene tasks complete, as read back through the API."""
    params = load_params(None, stores + [f"orchestration.runner={runner}", "orchestration.workers=2"])
    run_flow("refine", params)
    seq = load_params(None, stores + [f"paths.refined={tmp_path / 'seq.zarr'}"])
    run_refine(seq, progress=False)
    a = zarr.open_group(str(params.paths.refined), mode="r")
    b = zarr.open_group(str(seq.paths.refined), mode="r")
    for scene in ("synthetic_000", "synthetic_001"):
        np.testing.assert_array_equal(a[scene]["depth_refined"][:], b[scene]["depth_refined"][:])
    run, tasks, _ = api_runs("dnerf-refine")
    assert run.state.is_completed() and len(tasks) == 2 and all(t.state.is_completed() for t in tasks)


def test_process_runner_refines_two_scenes_in_two_worker_processes(prefect_api, stores, tmp_path):
    refine_in_two_workers("processes", stores, tmp_path)


@pytest.mark.slow
def test_dask_runner_fits_two_scenes_on_a_local_two_worker_cluster(prefect_api, stores, tmp_path):
    pytest.importorskip("prefect_dask")
    refine_in_two_workers("dask", stores, tmp_path)
