"""7-Scenes / 3DMatch reader on the real RedKitchen frames and on folders written here."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from models.camera import backproject
from tasks.datasets.sevenscenes import sevenscenes_scenes
from tasks.errors import DataError


def test_real_kitchen_frames(rgbd_dir):
    (scene,) = sevenscenes_scenes(rgbd_dir / "7scenes-redkitchen")
    assert scene.name == "7scenes-redkitchen" and len(scene) == 50
    assert scene.frame_ids[0] == "frame-000008" and scene.depth_kind == "sensor"
    f = scene.load(0)
    assert f.rgb.shape == (480, 640, 3) and f.depth.shape == (480, 640) and f.depth.dtype == np.float32
    np.testing.assert_allclose(f.K, [[585, 0, 320], [0, 585, 240], [0, 0, 1]])
    valid = f.depth[f.depth > 0]
    assert valid.min() > 0.6 and valid.max() < 5.0, "millimetres must become metres"
    R = f.c2w[:3, :3]
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-3)


def test_real_kitchen_poses_reproject_between_frames(rgbd_dir):
    """c2w is camera-to-world: frame 0's points, moved into frame 5's camera, land on frame 5's depth."""
    (scene,) = sevenscenes_scenes(rgbd_dir / "7scenes-redkitchen")
    a, b = scene.load(0), scene.load(5)
    pts = backproject(a.depth, a.K)[a.depth > 0]
    world = pts @ a.c2w[:3, :3].T + a.c2w[:3, 3]
    w2c = np.linalg.inv(b.c2w)
    cam = world @ w2c[:3, :3].T + w2c[:3, 3]
    uv = cam[:, :2] / cam[:, 2:] * [b.K[0, 0], b.K[1, 1]] + [b.K[0, 2], b.K[1, 2]]
    u, v = np.round(uv).astype(int).T
    ok = (u >= 0) & (u < 640) & (v >= 0) & (v < 480)
    zb = b.depth[v[ok], u[ok]]
    has = zb > 0
    err = np.abs(zb[has] - cam[ok, 2][has])
    assert np.median(err) < 0.05, f"median reprojection depth error {np.median(err):.3f} m"


def _write_sequence(folder, n=3, intrinsics=True, pose=True):
    folder.mkdir(parents=True)
    if intrinsics:
        (folder / "camera-intrinsics.txt").write_text("100 0 8\n0 100 6\n0 0 1\n")
    for i in range(n):
        Image.fromarray(np.full((12, 16, 3), 40 * i, np.uint8)).save(folder / f"frame-{i:06d}.color.png")
        d = np.full((12, 16), 1500 + i, np.uint16)
        d[0, 0] = 65535  # 7-Scenes marks invalid depth with 65535
        Image.fromarray(d).save(folder / f"frame-{i:06d}.depth.png")
        if pose:
            np.savetxt(folder / f"frame-{i:06d}.pose.txt", np.eye(4) if i != 1 else np.full((4, 4), -np.inf))


def test_written_sequences_invalid_markers_and_unknown_poses(tmp_path):
    _write_sequence(tmp_path / "chess" / "seq-01")
    _write_sequence(tmp_path / "chess" / "seq-02", pose=False)
    shutil.move(tmp_path / "chess" / "seq-01" / "camera-intrinsics.txt", tmp_path / "chess")
    scenes = sevenscenes_scenes(tmp_path / "chess")
    assert [s.name for s in scenes] == ["chess_seq-01", "chess_seq-02"]
    f0, f1 = scenes[0].load(0), scenes[0].load(1)
    assert f0.depth[0, 0] == 0 and f0.depth[1, 1] == pytest.approx(1.5)
    np.testing.assert_array_equal(f0.c2w, np.eye(4))
    assert np.all(np.isnan(f1.c2w)), "a pose of -inf (tracking lost) is unknown"
    assert np.all(np.isnan(scenes[1].load(0).c2w))


def test_bad_folders_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="not found"):
        sevenscenes_scenes(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no frame-XXXXXX\.depth\.png"):
        sevenscenes_scenes(tmp_path / "empty")
    _write_sequence(tmp_path / "noK", intrinsics=False)
    with pytest.raises(DataError, match="missing intrinsics"):
        sevenscenes_scenes(tmp_path / "noK")
    (scene,) = sevenscenes_scenes(tmp_path / "noK", intrinsics=(585, 585, 320, 240))
    assert scene.load(0).K[0, 0] == 585
    (tmp_path / "noK" / "frame-000002.color.png").unlink()
    with pytest.raises(DataError, match=r"frame-000002\.color\.png: colour image not found"):
        scene.load(2)
    (tmp_path / "noK" / "frame-000001.pose.txt").write_text("1 2 3")
    with pytest.raises(DataError, match=r"frame-000001\.pose\.txt: expected a 4x4 matrix"):
        scene.load(1)
