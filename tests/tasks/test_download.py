"""The download stage end to end: every source into a valid store, and bad input leaves nothing behind."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from tasks.config import ParamsError, load_params
from tasks.download import run_download
from tasks.errors import DataError
from tasks.store import SceneView, iter_scenes, open_store, scenes_with_role


def test_synthetic_default_store(tiny_params):
    out = run_download(tiny_params, progress=False)
    root = open_store(out, "scenes")
    evals = [SceneView(root[n]) for n in scenes_with_role(root, "eval")]
    assert [v.name for v in evals] == ["synthetic_000", "synthetic_001"]
    assert scenes_with_role(root, "train") == ["refiner_train_000"]
    assert scenes_with_role(root, "val") == ["refiner_val_000"]
    for name in ("refiner_train_000", "refiner_val_000"):  # tiny_overrides: 2 frames of 32 x 24
        v = SceneView(root[name])
        assert v.role == name.split("_")[1] and v.attrs["role"] == v.role
        assert v.n_frames == 2 and v.shape == (24, 32) and v.split == ["train", "train"]
        assert v.mesh() is None and v.has_poses and np.all(v.group["depth"][:] > 0)
    for v in evals:
        assert v.attrs["role"] == "eval"
        assert v.n_frames == 4 and v.shape == (24, 32)
        assert v.split == ["train", "test", "train", "test"]
        assert v.attrs["source"] == "synthetic" and v.attrs["depth_kind"] == "reference"
        assert v.has_poses and not v.has_sensor_depth
        verts, faces = v.mesh()
        assert len(verts) > 8 and faces.max() < len(verts)
        d = v.group["depth"][:]
        assert np.all(d > 0), "synthetic depth is exact and complete"
    assert root.attrs["data"]["source"] == "synthetic"


def test_sevenscenes_kitchen_downscaled_with_stride(rgbd_dir, tmp_path):
    params = load_params(
        None,
        [
            "data.source=sevenscenes",
            f"data.path={rgbd_dir / '7scenes-redkitchen'}",
            "data.stride=10",
            "data.downscale=4",
            f"paths.scenes={tmp_path / 'kitchen.zarr'}",
        ],
    )
    (v,) = list(iter_scenes(open_store(run_download(params, progress=False), "scenes")))
    assert v.n_frames == 5 and v.shape == (120, 160)
    assert v.frame_ids == [f"frame-{i:06d}" for i in (8, 18, 28, 38, 48)]
    K = v.frame(0).K
    np.testing.assert_allclose(K[0], [585 / 4, 0, (320 + 0.5) / 4 - 0.5])
    assert v.has_poses and v.attrs["depth_kind"] == "sensor"
    d = v.group["depth"][:]
    assert d[d > 0].min() > 0.6 and d.max() < 5


def _kitchen_copy(rgbd_dir, tmp_path, n=3):
    dst = tmp_path / "kitchen"
    dst.mkdir()
    shutil.copy(rgbd_dir / "7scenes-redkitchen" / "camera-intrinsics.txt", dst)
    for i in range(8, 8 + n):
        for suffix in ("color.png", "depth.png", "pose.txt"):
            shutil.copy(rgbd_dir / "7scenes-redkitchen" / "rgbd-frames" / f"frame-{i:06d}.{suffix}", dst)
    return dst


@pytest.mark.parametrize("fault", ["truncated_png", "size_mismatch", "millimetres"])
def test_bad_input_stops_with_named_file_and_keeps_previous_store(rgbd_dir, tmp_path, fault):
    folder = _kitchen_copy(rgbd_dir, tmp_path)
    store = tmp_path / "scenes.zarr"
    overrides = ["data.source=sevenscenes", f"data.path={folder}", f"paths.scenes={store}", "data.downscale=8"]
    run_download(load_params(None, overrides), progress=False)
    before = open_store(store, "scenes")["kitchen"]["depth"][:]
    bad = folder / "frame-000009.depth.png"
    if fault == "truncated_png":
        bad.write_bytes(bad.read_bytes()[:5000])
        match = r"frame-000009\.depth\.png: cannot decode image"
    elif fault == "size_mismatch":
        Image.fromarray(np.zeros((240, 320), np.uint16) + 1000).save(bad)
        match = r"frame-000009\.depth\.png: RGB is 640x480 but depth is 320x240"
    else:
        overrides.append("data.depth_scale=1")
        match = r"frame-000008\.depth\.png: depth median is .* looks like millimetres"
    with pytest.raises(DataError, match=match):
        run_download(load_params(None, overrides), progress=False)
    np.testing.assert_array_equal(open_store(store, "scenes")["kitchen"]["depth"][:], before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kitchen", "scenes.zarr"], "no temporary leftovers"


def test_max_scenes_and_explicit_resolution(tmp_path, tiny_overrides):
    params = load_params(None, tiny_overrides + ["data.max_scenes=1", "data.height=12", "data.width=20"])
    (v,) = list(iter_scenes(open_store(run_download(params, progress=False), "scenes")))
    assert v.shape == (12, 20)
    assert isinstance(v, SceneView)


@pytest.mark.parametrize("role", ["train", "val", None])
def test_data_role_is_given_to_every_scene_of_a_real_source(rgbd_dir, tmp_path, role):
    folder = _kitchen_copy(rgbd_dir, tmp_path, n=2)
    overrides = ["data.source=sevenscenes", f"data.path={folder}", f"paths.scenes={tmp_path / 's.zarr'}",
                 "data.downscale=8"] + ([f"data.role={role}"] if role else [])
    root = open_store(run_download(load_params(None, overrides), progress=False), "scenes")
    (v,) = list(iter_scenes(root))
    assert v.role == (role or "eval") and root.attrs["data"]["role"] == (role or "eval")
    assert scenes_with_role(root, role or "eval") == ["kitchen"]


def test_data_role_is_refused_for_synthetic_rooms_and_checked(tmp_path):
    with pytest.raises(ParamsError, match=r"data\.role=train applies to non-synthetic sources"):
        load_params(None, ["data.role=train"])
    with pytest.raises(ParamsError, match=r"data\.role"):
        load_params(None, ["data.source=sevenscenes", f"data.path={tmp_path}", "data.role=test"])
