"""Bad and unsafe input through the real ``dnerf`` command: a clear error naming the file / key / value, a
non-zero exit, and nothing half-written (the previous output, if any, intact). The cases covered next to the
code they exercise are listed in docs/robustness.md; these are the ones that need a whole stage run."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from tasks.config import load_params
from tasks.download import run_download
from tasks.store import open_store
from tasks.train_diffusion import run_train_diffusion


def snapshot(path: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(Path(path).rglob("*")) if p.is_file()}


@pytest.fixture
def small_disk(tmp_path):
    """A 384 KiB tmpfs: a full disk to write stores onto (needs root to mount; skipped otherwise)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=384k", "tmpfs", str(mnt)],
                         check=False, capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.slow
def test_a_full_disk_stops_cleanly_and_keeps_the_previous_store(dnerf, small_disk, tiny_overrides, prefect_api):
    store = small_disk / "scenes.zarr"
    small = tiny_overrides + [f"paths.scenes={store}"]
    run_download(load_params(None, small), progress=False)
    before = snapshot(store)
    big = small + ["data.synthetic.n_frames=12", "data.synthetic.height=96", "data.synthetic.width=128"]
    res = dnerf.invoke("download", "--quiet", overrides=big)
    assert res.returncode == 1, res.stderr
    assert "No space left on device" in res.stderr and str(small_disk) in res.stderr, res.stderr
    assert snapshot(store) == before, "the previous complete store is untouched"
    left = sorted(p.name for p in small_disk.iterdir() if p.name != ".scenes.zarr.lock")
    assert left == ["scenes.zarr"], "no temporary store is left behind"


@pytest.fixture
def stores(make_stores, prefect_api):
    overrides = make_stores()
    return overrides, load_params(None, overrides)


def test_a_store_of_another_schema_version_is_refused_by_name(dnerf, stores, tmp_path):
    overrides, params = stores
    meta = params.paths.scenes / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["schema_version"] = 99
    meta.write_text(json.dumps(doc))
    zarr.consolidate_metadata(str(params.paths.scenes))
    before = snapshot(params.paths.noisy)
    res = dnerf.invoke("corrupt", "--quiet", overrides=overrides + ["noise.seed=3"])
    assert res.returncode == 1
    assert "schema version 99 is not supported" in res.stderr and "scenes.zarr" in res.stderr
    assert snapshot(params.paths.noisy) == before


def test_unknown_wrong_type_and_out_of_range_params_exit_2_naming_the_key(dnerf, tiny_overrides):
    for bad, fragments in (("noise.sigmaa=0.1", ["noise.sigmaa", "unknown key"]),
                           ("nerf.train.steps=many", ["nerf.train.steps", "many"]),
                           ("refine.steps=0", ["refine.steps", "0"])):
        res = dnerf.invoke("corrupt", overrides=[*tiny_overrides, bad])  # fails before any flow starts
        assert res.returncode == 2, (bad, res.output)
        assert all(f in res.output for f in fragments), (bad, res.output)


def test_weights_that_do_not_match_their_config_name_the_file(dnerf, stores, tmp_path):
    overrides, _params = stores
    model = tmp_path / "model"
    tiny = ["diffusion.unet.base_channels=8", "diffusion.unet.channel_mults=[1, 2]", "diffusion.unet.attention_heads=2",
            "diffusion.train.crop=16", "diffusion.train.batch_size=2", "diffusion.train.val_crops=2",
            "diffusion.train.max_steps=2", f"paths.diffusion={model}"]
    run_train_diffusion(load_params(None, overrides + tiny), progress=False)
    cfg = json.loads((model / "config.json").read_text())
    cfg["unet"]["base_channels"] = 16  # a checkpoint whose config does not describe its weights
    (model / "config.json").write_text(json.dumps(cfg))
    res = dnerf.invoke("refine", "--quiet", overrides=overrides + tiny + [f"paths.refined={tmp_path / 'r.zarr'}"])
    assert res.returncode == 1
    assert "model.safetensors" in res.stderr and "weights do not match config.json" in res.stderr
    assert not (tmp_path / "r.zarr").exists()


def test_pickled_weights_are_never_unpickled(dnerf, stores, tmp_path):
    """A ``.pt`` pickle in place of the safetensors weights (which could run code when unpickled) is refused."""
    overrides, _ = stores
    model = tmp_path / "model"
    model.mkdir()
    marker = tmp_path / f"pwned-{uuid.uuid4().hex}"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"w": Payload()}, model / "model.safetensors")
    (model / "config.json").write_text(json.dumps({"unet": {}, "schedule": {}, "sensor": {}, "calibration": {}}))
    res = dnerf.invoke("refine", "--quiet",
                       overrides=[*overrides, f"paths.diffusion={model}", f"paths.refined={tmp_path / 'r.zarr'}"])
    assert res.returncode == 1 and "model.safetensors" in res.stderr
    assert not marker.exists(), "the pickle was executed"


def test_non_rigid_poses_name_the_frame(dnerf, stores, tmp_path):
    overrides, params = stores
    c2w = zarr.open_array(str(params.paths.scenes / "synthetic_000" / "c2w"), mode="r+")
    pose = c2w[1]
    pose[:3, :3] *= 2.0  # a scaled "rotation": not rigid
    c2w[1] = pose
    res = dnerf.invoke("fit-nerf", "--quiet", overrides=[
        *overrides, "nerf.depth_source=none", "nerf.ablation_sources=[]", "nerf.train.steps=2",
        "nerf.scenes=[synthetic_000]", "nerf.export.mesh_resolution=16", f"paths.nerf={tmp_path / 'nerf'}",
        f"paths.nerf_metrics={tmp_path / 'n.json'}"])
    assert res.returncode == 1
    assert "synthetic_000" in res.stderr and "not a rotation" in res.stderr
    assert not (tmp_path / "nerf" / "synthetic_000").exists()
    assert open_store(params.paths.scenes, "scenes")  # the input is not modified by the failed run
    assert np.isfinite(c2w[1]).all()
