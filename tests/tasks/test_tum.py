"""TUM RGB-D reader: a sequence written here in TUM layout from synthetic frames, plus association and
pose interpolation against analytic references."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.transform import Rotation

from tasks.datasets.synthetic import SyntheticConfig, synthetic_scenes
from tasks.datasets.tum import associate, interpolate_poses, tum_scene
from tasks.errors import DataError


def write_tum_sequence(folder, n=5, with_gt=True):
    """Synthetic frames as a TUM folder; returns the source frames. Colour stamps lag depth by 4 ms."""
    cfg = SyntheticConfig(n_scenes=1, n_frames=n, height=24, width=32, refiner_train_scenes=0, refiner_val_scenes=0)
    (scene,) = synthetic_scenes(cfg, seed=3)
    frames = [scene.load(i) for i in range(n)]
    (folder / "rgb").mkdir(parents=True)
    (folder / "depth").mkdir()
    rgb_lines, depth_lines, gt_lines = ["# color images"], ["# depth maps"], ["# timestamp tx ty tz qx qy qz qw"]
    for i, f in enumerate(frames):
        t = 1000.0 + 0.1 * i
        Image.fromarray(f.rgb).save(folder / "rgb" / f"{t + 0.004:.6f}.png")
        Image.fromarray(np.round(f.depth * 5000).astype(np.uint16)).save(folder / "depth" / f"{t:.6f}.png")
        rgb_lines.append(f"{t + 0.004:.6f} rgb/{t + 0.004:.6f}.png")
        depth_lines.append(f"{t:.6f} depth/{t:.6f}.png")
        q = Rotation.from_matrix(f.c2w[:3, :3]).as_quat()
        pose = " ".join(f"{x:.9f}" for x in (*f.c2w[:3, 3], *q))
        gt_lines.extend(f"{t + dt:.4f} {pose}" for dt in (-0.005, 0.0, 0.005))  # ground truth at 200 Hz around it
    # a colour frame with no depth partner, and a depth frame with no colour partner within max_dt
    rgb_lines.append("2000.000000 rgb/1000.004000.png")
    Image.fromarray(np.zeros((24, 32), np.uint16)).save(folder / "depth" / "3000.png")
    depth_lines.append("3000.000000 depth/3000.png")
    (folder / "rgb.txt").write_text("\n".join(rgb_lines) + "\n")
    (folder / "depth.txt").write_text("\n".join(depth_lines) + "\n")
    if with_gt:
        (folder / "groundtruth.txt").write_text("\n".join(gt_lines) + "\n")
    return frames


def test_reader_recovers_frames_poses_and_depth(tmp_path):
    folder = tmp_path / "rgbd_dataset_freiburg1_synth"
    frames = write_tum_sequence(folder)
    scene = tum_scene(folder)
    assert scene.name == "rgbd_dataset_freiburg1_synth" and len(scene) == len(frames)
    for i, f in enumerate(frames):
        g = scene.load(i)
        np.testing.assert_array_equal(g.rgb, f.rgb)
        np.testing.assert_allclose(g.depth, f.depth, atol=1.01 / 10000)  # 1/5000 m quantisation
        np.testing.assert_allclose(g.c2w, f.c2w, atol=1e-6)
        np.testing.assert_allclose(g.K[0], [517.3, 0, 318.6])  # published freiburg1 intrinsics


def test_missing_groundtruth_gives_unknown_poses_or_error(tmp_path):
    folder = tmp_path / "seq"
    write_tum_sequence(folder, n=2, with_gt=False)
    with pytest.raises(DataError, match="missing intrinsics"):
        tum_scene(folder)
    scene = tum_scene(folder, intrinsics=(525, 525, 319.5, 239.5))
    assert np.all(np.isnan(scene.load(0).c2w))
    with pytest.raises(DataError, match="no frame has a ground-truth pose"):
        tum_scene(folder, intrinsics=(525, 525, 319.5, 239.5), require_pose=True)


def test_bad_lists_name_file_and_line(tmp_path):
    folder = tmp_path / "freiburg2_bad"
    write_tum_sequence(folder, n=2)
    (folder / "depth.txt").write_text("1000.0 depth/a.png extra\n")
    with pytest.raises(DataError, match=r"depth\.txt: line 1: expected 2 fields"):
        tum_scene(folder)
    (folder / "rgb.txt").unlink()
    with pytest.raises(DataError, match=r"rgb\.txt: file not found"):
        tum_scene(folder)


def test_associate_is_one_to_one_nearest():
    a = np.array([0.00, 0.10, 0.20, 0.50])
    b = np.array([0.005, 0.011, 0.19, 0.31])
    assert associate(a, b, 0.02) == [(0, 0), (2, 2)]  # 0.011 loses to 0.005; 0.50 has no partner


def test_pose_interpolation_matches_analytic_motion():
    """Constant-rate rotation about z and linear translation: interpolation is exact."""
    t_gt = np.arange(0.0, 1.0, 0.01)

    def pose(t):
        return np.concatenate([[t, 2 * t, -t], Rotation.from_euler("z", 0.8 * t).as_quat()])

    gt = np.stack([pose(t) for t in t_gt])
    tq = np.array([0.123, 0.5, 0.9871, 1.5])
    out = interpolate_poses(t_gt, gt, tq)
    for k, t in enumerate(tq[:3]):
        np.testing.assert_allclose(out[k, :3, 3], [t, 2 * t, -t], atol=1e-9)
        np.testing.assert_allclose(out[k, :3, :3], Rotation.from_euler("z", 0.8 * t).as_matrix(), atol=1e-9)
    assert np.all(np.isnan(out[3])), "outside the recording the pose is unknown"
    gappy = interpolate_poses(np.array([0.0, 1.0]), gt[:2], np.array([0.5]))
    assert np.all(np.isnan(gappy)), "no pose across a gap in the ground truth"

