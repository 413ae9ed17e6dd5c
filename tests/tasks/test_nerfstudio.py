"""nerfstudio / Instant-NGP ``transforms.json`` captures in, and our stores out as nerfstudio datasets:
captures written here in the exact on-disk layout, and a round trip through ``dnerf export nerfstudio``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import trimesh
from PIL import Image
from scipy.spatial import cKDTree

from tasks.config import load_params
from tasks.datasets.nerfstudio import GL_TO_CV, nerfstudio_scene
from tasks.download import run_download
from tasks.errors import DataError
from tasks.export import export_nerfstudio
from tasks.store import SceneView, open_store

H, W = 12, 16


def gl_pose(t=(0.0, 0.0, 0.0), yaw: float = 0.0) -> np.ndarray:
    """A camera-to-world matrix in OpenGL camera axes, rotated about the world y axis."""
    c, s = np.cos(yaw), np.sin(yaw)
    m = np.eye(4)
    m[:3, :3] = [[c, 0, s], [0, 1, 0], [-s, 0, c]]
    m[:3, 3] = t
    return m


def write_capture(root, frames_extra=None, meta_extra=None, n=3):
    """A phone-style capture: shared intrinsics, depth PNGs at half resolution in millimetres (one frame
    without depth), a mask on frame 0, OpenGL poses."""
    (root / "images").mkdir(parents=True)
    (root / "depth").mkdir()
    frames = []
    for i in range(n):
        Image.fromarray(np.full((H, W, 3), 30 * (i + 1), np.uint8)).save(root / "images" / f"frame_{i:05d}.png")
        f = {"file_path": f"images/frame_{i:05d}.png", "transform_matrix": gl_pose((0.1 * i, 0.0, 0.0)).tolist()}
        if i != 2:
            Image.fromarray(np.full((H // 2, W // 2), 1500 + 100 * i, np.uint16)).save(root / "depth" / f"d{i}.png")
            f["depth_file_path"] = f"depth/d{i}.png"
        frames.append(f)
    mask = np.full((H, W), 255, np.uint8)
    mask[:, : W // 2] = 0
    Image.fromarray(mask).save(root / "mask0.png")
    frames[0]["mask_path"] = "mask0.png"
    for i, extra in (frames_extra or {}).items():
        frames[i].update(extra)
    meta = {"fl_x": 20.0, "fl_y": 21.0, "cx": 7.5, "cy": 5.5, "w": W, "h": H, "camera_model": "OPENCV",
            "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0, "frames": frames, **(meta_extra or {})}
    (root / "transforms.json").write_text(json.dumps(meta))
    return root


def test_capture_reads_with_opencv_poses_metric_depth_masks_and_missing_depth(tmp_path):
    root = write_capture(tmp_path / "my_room", frames_extra={1: {"fl_x": 30.0}})
    scene = nerfstudio_scene(root)
    assert scene.name == "my_room" and scene.frame_ids == ["frame_00000", "frame_00001", "frame_00002"]
    assert scene.splits is None
    f0, f1, f2 = (scene.load(i) for i in range(3))
    np.testing.assert_allclose(f0.K, [[20, 0, 7.5], [0, 21, 5.5], [0, 0, 1]])
    assert f1.K[0, 0] == 30.0, "a frame's own intrinsics win"
    # OpenGL -> OpenCV: the camera looks down world -z, so a world point at z = -2 is 2 m in front of it
    w2c = np.linalg.inv(f0.c2w)
    np.testing.assert_allclose(w2c @ [0.0, 0.0, -2.0, 1.0], [0.0, 0.0, 2.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(f1.c2w, gl_pose((0.1, 0, 0)) @ GL_TO_CV)
    # half-resolution millimetre depth, resized to the colour and scaled to metres
    assert f1.depth.shape == (H, W) and np.allclose(f1.depth, 1.6)
    assert np.all(f0.depth[:, : W // 2] == 0) and np.allclose(f0.depth[:, W // 2 :], 1.5), "the mask removes depth"
    assert not f2.depth.any(), "a frame without depth has no measurement"


def test_instant_ngp_angles_and_nerfstudio_split_lists(tmp_path):
    root = write_capture(tmp_path / "ngp", meta_extra={"test_filenames": ["images/frame_00001.png"]})
    meta = json.loads((root / "transforms.json").read_text())
    for key in ("fl_x", "fl_y", "cx", "cy"):
        del meta[key]
    meta["camera_angle_x"] = 2 * np.arctan(W / 2 / 25.0)
    (root / "transforms.json").write_text(json.dumps(meta))
    scene = nerfstudio_scene(root)
    np.testing.assert_allclose(scene.load(0).K, [[25, 0, W / 2], [0, 25, H / 2], [0, 0, 1]])
    assert scene.splits == ["train", "test", "train"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"k1": 0.1}, "distortion k1=0.1 is not supported"),
        ({"w": 99}, "transforms.json says w=99 but the image is 16x12"),
        ({"fl_x": None, "fl_y": None}, "no focal length"),
        ({"frames": []}, "transforms.json has no frames list"),
    ],
)
def test_bad_captures_name_the_file_and_the_problem(tmp_path, change, message):
    root = write_capture(tmp_path / "bad")
    meta = json.loads((root / "transforms.json").read_text())
    meta.update(change)
    meta = {k: v for k, v in meta.items() if v is not None}
    (root / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"transforms\.json") as err:
        nerfstudio_scene(root).load(0)
    assert message in str(err.value)
    with pytest.raises(DataError, match=r"transforms\.json not found"):
        nerfstudio_scene(tmp_path / "nowhere")


def test_the_download_stage_reads_a_capture(tmp_path):
    root = write_capture(tmp_path / "cap")
    params = load_params(None, ["data.source=nerfstudio", f"data.path={root}", f"paths.scenes={tmp_path / 's.zarr'}",
                                "data.test_every=3"])
    run_download(params, progress=False)
    view = SceneView(open_store(tmp_path / "s.zarr", "scenes")["cap"])
    assert view.n_frames == 3 and view.split == ["train", "train", "test"] and view.has_poses


def test_export_then_import_round_trip(tmp_path):
    """A synthetic store exported as a nerfstudio dataset reads back to the same frames: colour exactly,
    intrinsics and poses to float rounding, depth to the millimetre PNG's half-millimetre quantisation, split."""
    scenes = tmp_path / "scenes.zarr"
    base = ["data.synthetic.n_scenes=1", "data.synthetic.n_frames=4", "data.synthetic.height=24",
            "data.synthetic.width=32", "data.synthetic.refiner_train_scenes=0", "data.synthetic.refiner_val_scenes=0",
            "data.test_every=2"]
    params = load_params(None, [*base, f"paths.scenes={scenes}"])
    run_download(params, progress=False)
    rows = export_nerfstudio(params, tmp_path / "export", depth="gt")
    assert [r["scene"] for r in rows] == ["synthetic_000"] and rows[0]["frames"] == 4
    back = load_params(None, ["data.source=nerfstudio", f"data.path={tmp_path / 'export' / 'synthetic_000'}",
                              f"paths.scenes={tmp_path / 'back.zarr'}"])
    run_download(back, progress=False)
    a = SceneView(open_store(scenes, "scenes")["synthetic_000"])
    b = SceneView(open_store(tmp_path / "back.zarr", "scenes")["synthetic_000"])
    assert b.frame_ids == a.frame_ids and b.split == a.split
    np.testing.assert_array_equal(b.group["rgb"][:], a.group["rgb"][:])
    np.testing.assert_allclose(b.group["K"][:], a.group["K"][:], rtol=1e-12)
    np.testing.assert_allclose(b.group["c2w"][:], a.group["c2w"][:], atol=1e-12)
    za, zb = a.group["depth"][:], b.group["depth"][:]
    assert np.max(np.abs(za - zb)) <= 0.0005 + 1e-6
    # the export is what nerfstudio reads: OpenGL poses, per-frame intrinsics, millimetre depth
    meta = json.loads((tmp_path / "export" / "synthetic_000" / "transforms.json").read_text())
    assert meta["depth_unit_scale_factor"] == 0.001 and meta["frames"][0]["depth_file_path"].startswith("depth/")
    np.testing.assert_allclose(np.array(meta["frames"][0]["transform_matrix"]) @ GL_TO_CV, a.group["c2w"][0])
    # the point cloud of the exported depth lies on the scene's ground-truth surfaces
    cloud = trimesh.load(tmp_path / "export" / "synthetic_000" / "pointcloud.ply")
    assert len(cloud.vertices) == rows[0]["points"] > 1000 and len(cloud.colors) == len(cloud.vertices)
    verts, faces = a.mesh()
    surface, _ = trimesh.sample.sample_surface(trimesh.Trimesh(verts, faces, process=False), 400_000, seed=0)
    dist, _ = cKDTree(surface).query(np.asarray(cloud.vertices[::20]))
    assert np.median(dist) < 0.03, "a misplaced cloud (wrong pose or axes) is metres away"
