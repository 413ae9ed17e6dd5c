"""ScanNet-style exports: depth registration against analytic renders, and exports written here in the exact
layout of ScanNet's SensReader (``color/<i>.jpg``, ``depth/<i>.png``, ``pose/<i>.txt``, ``intrinsic/*.txt``)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import binary_dilation

from models.camera import camera_rays, intrinsics_matrix
from tasks.config import ParamsError, load_params
from tasks.datasets.scannet import register_depth, scannet_scene, scannet_scenes
from tasks.download import run_download
from tasks.errors import DataError
from tasks.store import SceneView, open_store

# ScanNet's cameras (colour 1296x968, depth 640x480) scaled down by 20: colour ~2x finer than depth
K_D = intrinsics_matrix(577.6 / 20, 578.7 / 20, 15.5, 11.5)
K_C = intrinsics_matrix(1170.2 / 20, 1170.2 / 20, 32.0, 23.8)
DEPTH_HW, COLOR_HW = (24, 32), (48, 65)


def rigid(yaw_deg: float = 0.0, t=(0.0, 0.0, 0.0)) -> np.ndarray:
    """``[4, 4]`` rotation about the camera's y axis, then translation."""
    a = np.deg2rad(yaw_deg)
    T = np.eye(4)
    T[:3, :3] = [[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]
    T[:3, 3] = t
    return T


def render_planes(K: np.ndarray, hw: tuple[int, int], planes, T_cam_from_scene: np.ndarray) -> np.ndarray:
    """Analytic z-depth ``[H, W]`` of the nearest of ``planes`` seen by a camera.

    ``planes``: ``(n, d, box)`` in scene coordinates, the points ``X`` with ``n . X = d``, limited to
    ``box = (xmin, xmax, ymin, ymax)`` in scene coordinates (``None`` = unbounded).
    """
    rays = camera_rays(K, *hw)  # unit-z rays in the camera
    R, t = T_cam_from_scene[:3, :3], T_cam_from_scene[:3, 3]
    best = np.full(hw, np.inf)
    for n, d, box in planes:
        n_c = R @ np.asarray(n, float)
        d_c = d + n_c @ t
        with np.errstate(divide="ignore", invalid="ignore"):
            z = d_c / (rays @ n_c)
        x_scene = (rays * z[..., None] - t) @ R  # back into scene coordinates: R^T (X_c - t)
        ok = np.isfinite(z) & (z > 0)
        if box is not None:
            ok &= (x_scene[..., 0] >= box[0]) & (x_scene[..., 0] <= box[1])
            ok &= (x_scene[..., 1] >= box[2]) & (x_scene[..., 1] <= box[3])
        best = np.where(ok & (z < best), z, best)
    return np.where(np.isfinite(best), best, 0.0)


def test_identical_cameras_register_to_the_identity():
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.5, 4.0, DEPTH_HW).astype(np.float32)
    depth[rng.random(DEPTH_HW) < 0.2] = 0.0
    out = register_depth(depth, K_D, K_D, np.eye(4), DEPTH_HW)
    np.testing.assert_array_equal(out, depth)
    assert not register_depth(np.zeros(DEPTH_HW, np.float32), K_D, K_C, np.eye(4), COLOR_HW).any()


def test_fronto_parallel_plane_upsampled_without_holes():
    """Colour sampled ~2x finer than depth: every colour pixel the depth camera sees gets the exact depth (a
    point splat would leave about three in four empty)."""
    plane = [((0, 0, 1), 2.0, None)]
    depth = render_planes(K_D, DEPTH_HW, plane, np.eye(4)).astype(np.float32)
    out = register_depth(depth, K_D, K_C, np.eye(4), COLOR_HW)
    # colour pixels whose ray falls inside the depth image's extent [-0.5, w - 0.5] x [-0.5, h - 0.5]
    uvw = camera_rays(K_C, *COLOR_HW) @ K_D.T
    inside = (uvw[..., 0] > -0.5) & (uvw[..., 0] < DEPTH_HW[1] - 0.5)
    inside &= (uvw[..., 1] > -0.5) & (uvw[..., 1] < DEPTH_HW[0] - 0.5)
    assert inside.mean() > 0.9
    assert np.all(out[inside] == np.float32(2.0)), "holes inside the depth camera's view"
    assert np.all(out[~inside] == 0.0), "nothing is invented outside the depth camera's view"


@pytest.mark.parametrize("T", [np.eye(4), rigid(2.0, (0.025, 0.003, 0.01))], ids=["same-centre", "baseline"])
def test_tilted_plane_matches_the_analytic_colour_depth(T):
    plane = [((0.4, 0.1, 1.0), 2.2, None)]  # tilted: depth varies across both image axes
    depth = render_planes(K_D, DEPTH_HW, plane, np.eye(4)).astype(np.float32)
    truth = render_planes(K_C, COLOR_HW, plane, T)
    out = register_depth(depth, K_D, K_C, T, COLOR_HW)
    # a colour pixel takes the depth of the depth sample whose footprint holds it: off by at most the depth
    # change across one depth pixel (nearest-neighbour upsampling)
    step = max(np.abs(np.diff(depth, axis=0)).max(), np.abs(np.diff(depth, axis=1)).max())
    covered = out > 0
    assert covered.mean() > 0.85
    assert np.max(np.abs(out[covered] - truth[covered])) <= step + 1e-5
    # the colour pixels well inside the depth camera's view are all covered
    pts = camera_rays(K_C, *COLOR_HW) * truth[..., None]
    back = (pts - T[:3, 3]) @ T[:3, :3]  # into the depth camera
    uv = back @ K_D.T
    u, v = uv[..., 0] / uv[..., 2], uv[..., 1] / uv[..., 2]
    seen = (u > 0.5) & (u < DEPTH_HW[1] - 1.5) & (v > 0.5) & (v < DEPTH_HW[0] - 1.5)
    assert seen.sum() > 1000 and np.all(covered[seen])


def test_occluder_wins_the_z_buffer_and_leaves_its_shadow_empty():
    """A box 0.6 m away in front of a wall 3 m away, cameras 10 cm apart: the box's image moves ~8 colour pixels
    further than the wall's, over wall samples; where both land on the same colour pixel the nearer one is
    kept. The wall behind the box's other edge, seen by the colour camera but hidden from the depth camera,
    stays empty rather than taking either surface's depth."""
    scene = [((0, 0, 1), 3.0, None), ((0, 0, 1), 0.6, (-0.15, 0.15, -0.15, 0.15))]
    T = rigid(0.0, (-0.1, 0.0, 0.0))
    depth = render_planes(K_D, DEPTH_HW, scene, np.eye(4)).astype(np.float32)
    truth = render_planes(K_C, COLOR_HW, scene, T)
    out = register_depth(depth, K_D, K_C, T, COLOR_HW)
    edges = binary_dilation(np.abs(np.diff(truth, axis=1, prepend=truth[:, :1])) > 0.5, iterations=2)
    edges |= binary_dilation(np.abs(np.diff(truth, axis=0, prepend=truth[:1])) > 0.5, iterations=2)
    covered = out > 0
    np.testing.assert_allclose(out[covered & ~edges], truth[covered & ~edges], atol=1e-5)
    box = np.isclose(truth, 0.6) & ~edges
    assert box.sum() > 50 and np.all(out[box] == np.float32(0.6)), "the nearer surface must win"
    # the wall just beside the box, towards which the colour camera is shifted: occluded for the depth camera
    wall_in_shadow = np.isclose(truth, 3.0) & (out == 0)
    assert wall_in_shadow.sum() > 5
    assert not np.any(np.isclose(out, 3.0) & np.isclose(truth, 0.6) & ~edges)


# ---------------------------------------------------------------------------------------------------------
# Exports in SensReader's layout

FRAMES = [0, 1, 2, 10]  # numbered, not zero-padded; 10 sorts after 2


def write_export(root, depth_mm: int = 1500, poses: dict | None = None, extrinsic: bool = True):
    """A SensReader export: jpg colour 65x48, uint16 millimetre depth 32x24 (a wall at 1.5 m), 4x4 intrinsic
    and extrinsic matrices as SensReader writes them, poses with one lost frame (``-inf``)."""
    for sub in ("color", "depth", "pose", "intrinsic"):
        (root / sub).mkdir(parents=True)
    K_color4, K_depth4 = np.eye(4), np.eye(4)
    K_color4[:3, :3], K_depth4[:3, :3] = K_C, K_D
    np.savetxt(root / "intrinsic" / "intrinsic_color.txt", K_color4, fmt="%f")
    np.savetxt(root / "intrinsic" / "intrinsic_depth.txt", K_depth4, fmt="%f")
    if extrinsic:
        np.savetxt(root / "intrinsic" / "extrinsic_color.txt", np.eye(4), fmt="%f")
        np.savetxt(root / "intrinsic" / "extrinsic_depth.txt", np.eye(4), fmt="%f")
    default = {i: rigid(10.0 * i, (0.1 * i, 0.0, 0.5)) for i in FRAMES}
    default[1] = np.full((4, 4), -np.inf)
    poses = {**default, **(poses or {})}
    for i in FRAMES:
        Image.fromarray(np.full((*COLOR_HW, 3), 20 * i + 30, np.uint8)).save(root / "color" / f"{i}.jpg")
        d = np.full(DEPTH_HW, depth_mm + i, np.uint16)
        d[:2, :2] = 0  # no measurement
        Image.fromarray(d).save(root / "depth" / f"{i}.png")
        np.savetxt(root / "pose" / f"{i}.txt", poses[i], fmt="%f")
    return root


def test_export_reads_registered_metric_depth_colour_intrinsics_and_lost_poses(tmp_path):
    root = write_export(tmp_path / "scene0000_00")
    scene = scannet_scene(root)
    assert scene.name == "scene0000_00" and scene.source == "scannet"
    assert scene.frame_ids == ["0", "1", "2", "10"]
    f0, f1, f10 = scene.load(0), scene.load(1), scene.load(3)
    assert f0.rgb.shape == (*COLOR_HW, 3) and f0.depth.shape == COLOR_HW and f0.depth.dtype == np.float32
    np.testing.assert_allclose(f0.K, K_C, atol=1e-6)
    valid = f0.depth[f0.depth > 0]
    assert valid.size > 0.85 * f0.depth.size and np.allclose(valid, 1.5), "millimetres -> metres, registered"
    assert np.allclose(f10.depth[f10.depth > 0], 1.510)
    assert f0.depth[0, 0] == 0, "the depth camera's unmeasured corner stays unmeasured in the colour camera"
    np.testing.assert_allclose(f10.c2w, rigid(100.0, (1.0, 0.0, 0.5)), atol=1e-6)
    assert np.all(np.isnan(f1.c2w)), "-inf pose (tracking lost) -> unknown"
    # data.depth_scale overrides the depth shift; data.intrinsics the colour camera
    scaled = scannet_scene(root, intrinsics=(60.0, 60.0, 32.0, 24.0), depth_scale=2000.0).load(0)
    assert np.allclose(scaled.depth[scaled.depth > 0], 0.75) and scaled.K[0, 0] == 60.0


def test_a_folder_of_scenes_and_missing_extrinsics(tmp_path):
    write_export(tmp_path / "scans" / "scene0001_00", extrinsic=False)
    write_export(tmp_path / "scans" / "scene0000_00")
    scenes = scannet_scenes(tmp_path / "scans")
    assert [s.name for s in scenes] == ["scene0000_00", "scene0001_00"]
    a, b = (s.load(0) for s in scenes)
    np.testing.assert_array_equal(a.depth, b.depth)  # absent extrinsics = identity


@pytest.mark.parametrize(
    ("damage", "where", "message"),
    [
        (lambda r: (r / "intrinsic" / "intrinsic_depth.txt").unlink(), "intrinsic_depth.txt", "file not found"),
        (lambda r: (r / "intrinsic" / "intrinsic_color.txt").write_text("1 2 3\n"), "intrinsic_color.txt",
         "expected a 4x4 or 3x3 matrix, found 3 numbers"),
        (lambda r: (r / "pose" / "0.txt").write_text("a b c\n"), "0.txt", "expected whitespace-separated numbers"),
        (lambda r: (r / "depth" / "2.png").unlink(), "2.png", "depth image not found (1 of 4"),
        (lambda r: (r / "depth" / "0.png").write_bytes(b"\x89PNG\r\n"), "0.png", "cannot decode image"),
        (lambda r: (r / "intrinsic" / "extrinsic_depth.txt").write_text("2 0 0 0 0 2 0 0 0 0 2 0 0 0 0 1"),
         "extrinsic_depth.txt", "rigid"),
    ],
    ids=["no-depth-intrinsics", "short-intrinsics", "bad-pose", "missing-depth", "truncated-depth", "scaled-extr"],
)
def test_bad_exports_name_the_file(tmp_path, damage, where, message):
    root = write_export(tmp_path / "scene")
    damage(root)
    with pytest.raises(DataError) as err:
        scannet_scene(root).load(0)
    assert err.value.where.endswith(where) and message in err.value.problem, str(err.value)
    with pytest.raises(DataError, match="no color/ folder"):
        scannet_scenes(tmp_path / "scene" / "pose")


def test_the_download_stage_reads_an_export(tmp_path):
    root = write_export(tmp_path / "scene0000_00")
    params = load_params(None, ["data.source=scannet", f"data.path={root}", f"paths.scenes={tmp_path / 's.zarr'}",
                                "data.test_every=2", "noise.mode=sensor"])
    run_download(params, progress=False)
    view = SceneView(open_store(tmp_path / "s.zarr", "scenes")["scene0000_00"])
    assert view.n_frames == 4 and view.shape == COLOR_HW and view.split == ["train", "test", "train", "test"]
    assert view.frame_ids == ["0", "1", "2", "10"] and view.attrs["source"] == "scannet"
    c2w = view.group["c2w"][:]
    assert np.all(np.isnan(c2w[1])) and np.all(np.isfinite(c2w[[0, 2, 3]]))
    depth = view.group["depth"][:]
    assert np.allclose(depth[0][depth[0] > 0], 1.5) and (depth[0] > 0).mean() > 0.85
    # data.downscale resizes the registered frames like any source's (intrinsics follow)
    half = load_params(None, ["data.source=scannet", f"data.path={root}", f"paths.scenes={tmp_path / 'h.zarr'}",
                              "data.downscale=2"])
    run_download(half, progress=False)
    small = SceneView(open_store(tmp_path / "h.zarr", "scenes")["scene0000_00"])
    assert small.shape == (COLOR_HW[0] // 2, COLOR_HW[1] // 2)
    assert small.group["K"][0][0, 0] == pytest.approx(K_C[0, 0] * (COLOR_HW[1] // 2) / COLOR_HW[1])


def test_the_source_needs_a_path():
    with pytest.raises(ParamsError, match=r"data\.source=scannet needs data\.path"):
        load_params(None, ["data.source=scannet"])
