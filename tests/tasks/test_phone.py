"""Phone LiDAR captures in the Stray Scanner layout, written here as the app writes them: ``rgb.mp4``,
``depth/NNNNNN.png`` (uint16 mm), ``confidence/NNNNNN.png`` (0/1/2), ``odometry.csv``, ``camera_matrix.csv``."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image
from scipy.spatial.transform import Rotation

from tasks.config import ParamsError, load_params
from tasks.datasets.nerfstudio import GL_TO_CV
from tasks.datasets.phone import PhoneConfig, phone_scene
from tasks.download import run_download
from tasks.errors import DataError
from tasks.store import SceneView, open_store

VIDEO_HW, DEPTH_HW = (48, 64), (12, 16)  # 4:3 like 1920x1440 video and 256x192 depth, tiny
K_VIDEO = np.array([[50.0, 0.0, 31.5], [0.0, 50.0, 23.5], [0.0, 0.0, 1.0]])
COLOURS = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40)]


def arkit_pose(position, yaw_deg: float = 0.0) -> np.ndarray:
    """ARKit's ``camera.transform``: camera-to-world with OpenGL-like camera axes (x right, y up, z back),
    turned by ``yaw_deg`` about the gravity-aligned world y axis."""
    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler("y", yaw_deg, degrees=True).as_matrix()
    T[:3, 3] = position
    return T


POSES = [arkit_pose((0.0, 1.5, 0.0)), arkit_pose((0.2, 1.5, 0.1), 90.0), arkit_pose((0.4, 1.4, 0.0), -30.0),
         arkit_pose((0.5, 1.5, -0.2), 180.0)]


def stray_row(t: float, frame: int, T_WA: np.ndarray) -> str:
    """One ``odometry.csv`` line as Stray Scanner's OdometryEncoder writes it: ARKit's position and the
    quaternion ``q_WA * q_AC``, ``q_AC`` the half turn about x (ARKit camera axes -> OpenCV camera axes)."""
    q = (Rotation.from_matrix(T_WA[:3, :3]) * Rotation.from_quat([1.0, 0.0, 0.0, 0.0])).as_quat()
    x, y, z = T_WA[:3, 3]
    return f"{t}, {frame:06d}, {x}, {y}, {z}, {q[0]}, {q[1]}, {q[2]}, {q[3]}"


def confidence_map() -> np.ndarray:
    """Columns 0-3 low (0), 4-7 medium (1), the rest high (2)."""
    c = np.full(DEPTH_HW, 2, np.uint8)
    c[:, :4], c[:, 4:8] = 0, 1
    return c


def write_capture(root, video: bool = True, frames_folder: bool = False, n: int = 4):
    """A 4-frame capture: a 64x48 mp4 (mp4v), 16x12 millimetre depth (frame 3 has none, as when ARKit gave
    the app no depth), confidence maps, odometry and camera matrix in the app's text formats."""
    (root / "depth").mkdir(parents=True)
    (root / "confidence").mkdir()
    if video:
        writer = cv2.VideoWriter(str(root / "rgb.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, VIDEO_HW[::-1])
        assert writer.isOpened()
        for c in COLOURS[:n]:
            writer.write(np.full((*VIDEO_HW, 3), c[::-1], np.uint8))  # BGR
        writer.release()
    if frames_folder:
        (root / "rgb").mkdir()
        for i, c in enumerate(COLOURS[:n]):
            Image.fromarray(np.full((*VIDEO_HW, 3), c, np.uint8)).save(root / "rgb" / f"{i:06d}.png")
    for i in range(3):
        Image.fromarray(np.full(DEPTH_HW, 1500 + 100 * i, np.uint16)).save(root / "depth" / f"{i:06d}.png")
        Image.fromarray(confidence_map()).save(root / "confidence" / f"{i:06d}.png")
    lines = ["timestamp, frame, x, y, z, qx, qy, qz, qw"]
    lines += [stray_row(1000.0 + i / 60, i, POSES[i]) for i in range(n)]
    (root / "odometry.csv").write_text("\n".join(lines) + "\n")
    (root / "camera_matrix.csv").write_text("\n".join(", ".join(str(v) for v in row) for row in K_VIDEO))
    return root


def test_capture_reads_opencv_poses_scaled_intrinsics_confident_metric_depth(tmp_path):
    scene = phone_scene(write_capture(tmp_path / "my_scan"))
    assert scene.name == "my_scan" and scene.source == "phone"
    assert scene.frame_ids == ["000000", "000001", "000002", "000003"]
    f0, f1, f2, f3 = (scene.load(i) for i in range(4))
    # store resolution: the depth grid x data.phone.depth_upsample (2)
    assert f0.rgb.shape == (24, 32, 3) and f0.depth.shape == (24, 32)
    # intrinsics scaled from the 64x48 video to 32x24 (pixel centres at integers)
    np.testing.assert_allclose(f0.K, [[25.0, 0, 15.5], [0, 25.0, 11.5], [0, 0, 1]])
    # poses: ARKit's camera, OpenCV axes
    for f, T in zip((f0, f1, f2, f3), POSES, strict=True):
        np.testing.assert_allclose(f.c2w, T @ GL_TO_CV, atol=1e-6)
    # frame 0: ARKit's identity orientation looks along world -z, with world y up: a point 2 m ahead of it is
    # at z = +2 in the store's camera, and the camera's y axis (image down) points down in the world
    w2c = np.linalg.inv(f0.c2w)
    np.testing.assert_allclose(w2c @ [0.0, 1.5, -2.0, 1.0], [0.0, 0.0, 2.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(f0.c2w[:3, 1], [0.0, -1.0, 0.0], atol=1e-6)
    # frame 1 turned 90 degrees left (about +y): it looks along world -x
    np.testing.assert_allclose(f1.c2w[:3, 2], [-1.0, 0.0, 0.0], atol=1e-6)
    # millimetres -> metres; only high confidence (2) kept; upsampled nearest-neighbour (2 px per depth px)
    assert np.all(f0.depth[:, :16] == 0) and np.allclose(f0.depth[:, 16:], 1.5)
    assert np.allclose(f2.depth[:, 16:], 1.7)
    assert not f3.depth.any(), "a frame without a depth file has no measurement"
    # colour from the video (lossy), area-averaged down
    for f, c in zip((f0, f1, f2, f3), COLOURS, strict=True):
        assert np.abs(f.rgb.reshape(-1, 3).mean(0) - c).max() < 8


def test_confidence_threshold_depth_scale_intrinsics_and_resolution_options(tmp_path):
    root = write_capture(tmp_path / "cap")
    f = phone_scene(root, PhoneConfig(min_confidence=1, depth_upsample=1), depth_scale=2000.0).load(0)
    assert f.depth.shape == DEPTH_HW and f.rgb.shape == (*DEPTH_HW, 3)
    assert np.all(f.depth[:, :4] == 0) and np.allclose(f.depth[:, 4:], 0.75), "medium kept, depth_scale applied"
    f = phone_scene(root, PhoneConfig(min_confidence=0), intrinsics=(60.0, 61.0, 32.0, 24.0)).load(1)
    assert np.allclose(f.depth, 1.6) and f.K[0, 0] == 30.0 and f.K[1, 1] == 30.5


def test_a_folder_of_frames_stands_in_for_the_video(tmp_path):
    root = write_capture(tmp_path / "cap", video=False, frames_folder=True)
    scene = phone_scene(root)
    for i, c in enumerate(COLOURS):
        assert np.all(scene.load(i).rgb == c)
    # read out of order: the video reader reopens to go back
    video = phone_scene(write_capture(tmp_path / "vid"))
    assert np.abs(video.load(2).rgb.mean((0, 1)) - COLOURS[2]).max() < 8
    assert np.abs(video.load(0).rgb.mean((0, 1)) - COLOURS[0]).max() < 8


@pytest.mark.parametrize(
    ("damage", "where", "message"),
    [
        (lambda r: (r / "odometry.csv").unlink(), "odometry.csv", "file not found"),
        (lambda r: (r / "odometry.csv").write_text("timestamp, frame, x, y, z\n1, 0, 0, 0, 0\n"), "odometry.csv",
         "header lacks column(s) qx, qy, qz, qw"),
        (lambda r: (r / "odometry.csv").write_text("timestamp, frame, x, y, z, qx, qy, qz, qw\n1, 0, a, 0, 0, 0, 0, "
                                                   "0, 1\n"), "odometry.csv", "line 2: expected numbers"),
        (lambda r: (r / "camera_matrix.csv").write_text("1, 0\n0, 1\n"), "camera_matrix.csv",
         "expected a 3x3 matrix, found 4 numbers"),
        (lambda r: (r / "confidence" / "000000.png").unlink(), "000000.png",
         "confidence map not found; set data.phone.min_confidence=0"),
        (lambda r: (r / "rgb.mp4").unlink(), "rgb.mp4", "file not found, and no rgb/ folder"),
        (lambda r: (r / "rgb.mp4").write_bytes(b"not a video"), "rgb.mp4", "cannot open the video"),
    ],
    ids=["no-odometry", "short-header", "bad-number", "bad-matrix", "no-confidence", "no-video", "bad-video"],
)
def test_bad_captures_name_the_file(tmp_path, damage, where, message):
    root = write_capture(tmp_path / "cap")
    damage(root)
    with pytest.raises(DataError) as err:
        phone_scene(root).load(0)
    assert err.value.where.endswith(where) and message in err.value.problem, str(err.value)


def test_a_video_shorter_than_the_odometry_is_an_error(tmp_path):
    root = write_capture(tmp_path / "cap")
    with (root / "odometry.csv").open("a") as fh:
        fh.write(stray_row(2000.0, 4, POSES[0]) + "\n")
    scene = phone_scene(root)
    with pytest.raises(DataError, match="the video has only 4 frames, frame 4 is missing"):
        scene.load(4)


def test_the_download_stage_reads_a_capture(tmp_path):
    root = write_capture(tmp_path / "scan")
    params = load_params(None, ["data.source=phone", f"data.path={root}", f"paths.scenes={tmp_path / 's.zarr'}",
                                "data.test_every=2", "data.phone.min_confidence=1", "noise.mode=sensor"])
    run_download(params, progress=False)
    view = SceneView(open_store(tmp_path / "s.zarr", "scenes")["scan"])
    assert view.n_frames == 4 and view.shape == (24, 32) and view.split == ["train", "test", "train", "test"]
    assert view.has_poses and view.attrs["source"] == "phone" and view.attrs["min_confidence"] == 1
    np.testing.assert_allclose(view.group["c2w"][1], POSES[1] @ GL_TO_CV, atol=1e-6)
    depth = view.group["depth"][:]
    assert np.all(depth[0][:, :8] == 0) and np.allclose(depth[0][:, 8:], 1.5), "metres, medium confidence kept"


def test_the_source_needs_a_path():
    with pytest.raises(ParamsError, match=r"data\.source=phone needs data\.path"):
        load_params(None, ["data.source=phone"])
