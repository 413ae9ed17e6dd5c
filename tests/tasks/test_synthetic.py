"""Tests of the procedural room generator and analytic ray caster (tasks/datasets/synthetic.py)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import trimesh
from pydantic import ValidationError

from models.camera import backproject, camera_rays, intrinsics_from_fov, look_at
from tasks.datasets.base import check_frame
from tasks.datasets.synthetic import (
    TEXTURE_KINDS,
    Box,
    CameraPath,
    Cylinder,
    Light,
    OrientedBox,
    Room,
    Sphere,
    SyntheticConfig,
    bounding_sphere,
    bounds,
    camera_poses,
    cast_rays,
    describe,
    intersect,
    intersect_room,
    random_texture,
    refiner_rng,
    refiner_room,
    render_frame,
    room_mesh,
    scene_rng,
    shade,
    synthetic_room,
    synthetic_scenes,
    texture_albedo,
)

SEED = 3
NO_REFINER = {"refiner_train_scenes": 0, "refiner_val_scenes": 0}
CFG = SyntheticConfig(n_scenes=2, n_frames=4, height=24, width=32, n_objects=5, **NO_REFINER)
UP = np.array([0.0, 0.0, 1.0])


@pytest.fixture(scope="module")
def scenes():
    return synthetic_scenes(CFG, SEED)


# --- helpers -----------------------------------------------------------------------------------------


def world_points(frame) -> np.ndarray:
    """``[H * W, 3]`` world points of a frame's depth."""
    p = backproject(frame.depth.astype(np.float64), frame.K).reshape(-1, 3)
    return p @ frame.c2w[:3, :3].T + frame.c2w[:3, 3]


def surface_distance(obj, p: np.ndarray) -> np.ndarray:
    """Unsigned distance ``[N]`` from points to the surface of a primitive (exact signed-distance formulas)."""
    if isinstance(obj, Box):
        q = np.abs(p - np.asarray(obj.center)) - np.asarray(obj.half)
        return np.abs(np.linalg.norm(np.maximum(q, 0), axis=1) + np.minimum(q.max(axis=1), 0))
    if isinstance(obj, Sphere):
        return np.abs(np.linalg.norm(p - np.asarray(obj.center), axis=1) - obj.radius)
    zc, hz = (obj.z0 + obj.z1) / 2, (obj.z1 - obj.z0) / 2
    d = np.stack([np.hypot(p[:, 0] - obj.cx, p[:, 1] - obj.cy) - obj.radius, np.abs(p[:, 2] - zc) - hz], axis=1)
    return np.abs(np.linalg.norm(np.maximum(d, 0), axis=1) + np.minimum(d.max(axis=1), 0))


def signed_distance(obj, p: np.ndarray) -> np.ndarray:
    """Signed distance ``[N]`` (negative inside) from points to a primitive."""
    if isinstance(obj, Box):
        q = np.abs(p - np.asarray(obj.center)) - np.asarray(obj.half)
        return np.linalg.norm(np.maximum(q, 0), axis=1) + np.minimum(q.max(axis=1), 0)
    if isinstance(obj, Sphere):
        return np.linalg.norm(p - np.asarray(obj.center), axis=1) - obj.radius
    zc, hz = (obj.z0 + obj.z1) / 2, (obj.z1 - obj.z0) / 2
    d = np.stack([np.hypot(p[:, 0] - obj.cx, p[:, 1] - obj.cy) - obj.radius, np.abs(p[:, 2] - zc) - hz], axis=1)
    return np.linalg.norm(np.maximum(d, 0), axis=1) + np.minimum(d.max(axis=1), 0)


def room_shell_distance(room: Room, p: np.ndarray) -> np.ndarray:
    """Distance ``[N]`` from points inside the room to its nearest wall, floor or ceiling."""
    lo, hi = room.lo, room.hi
    return np.minimum(np.abs(p - lo), np.abs(hi - p)).min(axis=1)


def nearest_surface(room: Room, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Analytic distance ``[N]`` to the nearest surface and whether that surface is planar ``[N]``."""
    d = [room_shell_distance(room, p)] + [surface_distance(o, p) for o in room.objects]
    planar = [True] + [isinstance(o, Box) for o in room.objects]
    d = np.stack(d, axis=1)
    k = np.argmin(d, axis=1)
    return d.min(axis=1), np.asarray(planar)[k]


def mesh_distance(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Brute-force distance ``[N]`` from points to a triangle mesh (no spatial index needed)."""
    tris = vertices.astype(np.float64)[faces]
    out = np.empty(len(points))
    for i, p in enumerate(points):
        closest = trimesh.triangles.closest_point(tris, np.repeat(p[None], len(tris), axis=0))
        out[i] = np.linalg.norm(closest - p, axis=1).min()
    return out


def rotation_angle_deg(R: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1, 1))))


def luma(rgb: np.ndarray) -> np.ndarray:
    return (rgb.astype(np.float64) / 255.0) @ np.array([0.299, 0.587, 0.114])


def empty_room(size=(4.0, 3.0, 2.5), objects=()) -> Room:
    rng = np.random.default_rng(0)
    path = CameraPath(0.0, 120.0, (1.0, 0.7), 1.4, 0.05, 1.0, 0.0, 0.5, 0.6, 0.1, 0.0, 0.5)
    return Room(size=size, wall_textures=tuple(random_texture(rng) for _ in range(6)), objects=tuple(objects),
                path=path)


def bilinear(img: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear sample ``img`` ``[H, W, ...]`` at float pixel coordinates (inside the image)."""
    u0 = np.clip(np.floor(u).astype(int), 0, img.shape[1] - 2)
    v0 = np.clip(np.floor(v).astype(int), 0, img.shape[0] - 2)
    fu, fv = u - u0, v - v0
    if img.ndim == 3:
        fu, fv = fu[:, None], fv[:, None]
    img = img.astype(np.float64)
    top = img[v0, u0] * (1 - fu) + img[v0, u0 + 1] * fu
    bot = img[v0 + 1, u0] * (1 - fu) + img[v0 + 1, u0 + 1] * fu
    return top * (1 - fv) + bot * fv


# --- configuration -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"n_frames": 0}, "n_frames"),
        ({"n_scenes": 0}, "n_scenes"),
        ({"height": 4}, "height"),
        ({"fov_deg": 170.0}, "fov_deg"),
        ({"n_objects": -1}, "n_objects"),
        ({"room_size": (2.0, 4.0, 2.6)}, "room_size"),
        ({"n_frame": 8}, "n_frame"),
        ({"refiner_sizes": [[640, 4]]}, "refiner_sizes"),
        ({"refiner_sizes": []}, "refiner_sizes"),
        ({"refiner_objects": (9, 3)}, "refiner_objects"),
        ({"refiner_train_scenes": -1}, "refiner_train_scenes"),
        ({"refiner_frames": 0}, "refiner_frames"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(ValidationError) as err:
        SyntheticConfig(**kwargs)
    assert field in {str(loc) for e in err.value.errors() for loc in e["loc"]}
    assert field in str(err.value)


def test_config_defaults_and_frozen():
    cfg = SyntheticConfig()
    assert (cfg.n_scenes, cfg.n_frames, cfg.height, cfg.width, cfg.n_objects) == (2, 32, 120, 160, 6)
    assert (cfg.refiner_train_scenes, cfg.refiner_val_scenes, cfg.refiner_frames) == (12, 3, 4)
    assert cfg.refiner_sizes == [(640, 480), (320, 240), (160, 120)] and cfg.refiner_fov_deg == 58.0
    assert cfg.refiner_objects == (6, 16)
    assert SyntheticConfig(room_size=[4.0, 3.5, 2.6]).room_size == (4.0, 3.5, 2.6)
    with pytest.raises(ValidationError):
        cfg.n_frames = 3


# --- scene sources -----------------------------------------------------------------------------------


def test_scene_sources_fields(scenes):
    assert [s.name for s in scenes] == ["synthetic_000", "synthetic_001"]
    K = intrinsics_from_fov(CFG.width, CFG.height, CFG.fov_deg)
    for s in scenes:
        assert s.source == "synthetic" and s.depth_kind == "reference"
        assert s.has_sensor_depth is False and s.splits is None
        assert s.frame_ids == ["000000", "000001", "000002", "000003"]
        assert s.attrs["generator"] == "dnerf.synthetic" and s.attrs["seed"] == SEED
        assert len(s.attrs["room_size"]) == 3 and len(s.attrs["objects"]) == CFG.n_objects
        v, f = s.mesh
        assert v.dtype == np.float32 and v.shape[1] == 3 and f.dtype == np.int32 and f.shape[1] == 3
        assert f.min() == 0 and f.max() == len(v) - 1
        fr = check_frame(s.load(2))
        assert fr.frame_id == "000002" and fr.depth_sensor is None
        assert fr.rgb.shape == (CFG.height, CFG.width, 3) and fr.depth.dtype == np.float32
        assert s.native_size == (CFG.height, CFG.width)
        np.testing.assert_allclose(fr.K, K)
        assert np.all(fr.depth > 0)  # closed room: no holes
        fr.c2w[:] = 0.0  # frames own their arrays: mutating one does not change the scene
        assert np.array_equal(s.load(2).c2w[3], [0.0, 0.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="seed"):
        synthetic_scenes(CFG, -1)


def test_deterministic_and_seed_dependent(scenes):
    again = synthetic_scenes(CFG, SEED)
    other = synthetic_scenes(CFG, SEED + 1)
    for a, b in zip(scenes, again, strict=True):
        assert a.attrs == b.attrs
        np.testing.assert_array_equal(a.mesh[0], b.mesh[0])
        np.testing.assert_array_equal(a.mesh[1], b.mesh[1])
        for i in range(len(a)):
            fa, fb = a.load(i), b.load(i)
            np.testing.assert_array_equal(fa.rgb, fb.rgb)
            np.testing.assert_array_equal(fa.depth, fb.depth)
            np.testing.assert_array_equal(fa.c2w, fb.c2w)
    for a, b in zip(scenes, other, strict=True):
        assert a.attrs["room_size"] != b.attrs["room_size"]
        assert not np.array_equal(a.load(0).rgb, b.load(0).rgb)
    # The two scenes of one seed differ from each other too.
    assert scenes[0].attrs["objects"] != scenes[1].attrs["objects"]


def test_scene_content_independent_of_image_size_and_frame_count(scenes):
    bigger = synthetic_scenes(CFG.model_copy(update={"height": 30, "width": 40, "n_frames": 9}), SEED)
    for a, b in zip(scenes, bigger, strict=True):
        assert a.attrs == b.attrs
        np.testing.assert_array_equal(a.mesh[0], b.mesh[0])


def test_mesh_matches_room_and_objects():
    room = synthetic_room(CFG, SEED)
    v, f = room_mesh(room)
    np.testing.assert_allclose(v.min(axis=0), room.lo, atol=1e-6)
    np.testing.assert_allclose(v.max(axis=0), room.hi, atol=1e-6)
    # The room shell comes first with normals facing inwards (seen from inside).
    shell = trimesh.Trimesh(v[:8], f[:12], process=False)
    to_centre = (room.lo + room.hi) / 2 - shell.triangles_center
    assert np.all(np.einsum("ij,ij->i", shell.face_normals, to_centre) > 0)
    # Every mesh vertex lies on an analytic surface (cylinder / sphere vertices sit on the true surface).
    d, _ = nearest_surface(room, v.astype(np.float64))
    assert d.max() < 1e-5
    empty = synthetic_room(CFG.model_copy(update={"n_objects": 0}), SEED)
    assert empty.objects == () and room_mesh(empty)[1].shape == (12, 3)


# --- exact depth -------------------------------------------------------------------------------------


def test_depth_lies_on_analytic_surfaces(scenes):
    room = synthetic_room(CFG, SEED)
    frame = scenes[0].load(1)
    d, _ = nearest_surface(room, world_points(frame))
    assert d.max() < 1e-5  # float32 depth of ~5 m: ~0.3 um rounding


def test_depth_lies_on_mesh(scenes):
    room = synthetic_room(CFG, SEED)
    pts = world_points(scenes[0].load(0))[::3]
    _, planar = nearest_surface(room, pts)
    d = mesh_distance(pts, *scenes[0].mesh)
    assert planar.sum() > 50 and (~planar).sum() > 5
    assert np.median(d[planar]) < 1e-3
    assert np.median(d) < 1e-2 and d.max() < 2e-2


def test_hand_computed_fronto_parallel_wall_and_box():
    H, W = 21, 31
    K = intrinsics_from_fov(W, H, 60.0)
    eye = np.array([0.0, 0.0, 1.25])
    c2w = look_at(eye, eye + [1.0, 0.0, 0.0], UP)
    # Empty 4 x 3 m room: the whole view is the wall x = 2 m, a constant z-depth of 2 m.
    frame = render_frame(empty_room(), c2w, K, H, W)
    np.testing.assert_allclose(frame.depth, 2.0, atol=1e-6)
    # A box spanning x in [1.3, 1.7], y in [-0.3, 0.3], z in [0, 1] m. Camera ray (x_c, y_c, 1) is
    # world direction (1, -x_c, -y_c): it meets the front face x = 1.3 at t = 1.3, or the top z = 1 at
    # t = 0.25 / y_c; elsewhere it reaches the wall at t = 2.
    box = Box((1.5, 0.0, 0.5), (0.2, 0.3, 0.5), random_texture(np.random.default_rng(1)))
    frame = render_frame(empty_room(objects=[box]), c2w, K, H, W)
    r = camera_rays(K, H, W)
    y_world, z_world = -r[..., 0] * 1.3, eye[2] - r[..., 1] * 1.3
    on_front = (np.abs(y_world) <= 0.3) & (z_world >= 0.0) & (z_world <= 1.0)
    t_top = np.where(r[..., 1] > 0, 0.25 / np.maximum(r[..., 1], 1e-12), 1e9)
    on_top = ~on_front & (t_top >= 1.3) & (t_top <= 1.7) & (np.abs(r[..., 0] * t_top) <= 0.3)
    assert on_front.sum() > 20 and on_top.sum() > 5 and (on_front | on_top).mean() < 0.5
    expected = np.where(on_front, 1.3, np.where(on_top, t_top, 2.0))
    np.testing.assert_allclose(frame.depth, expected, atol=1e-6)


def test_hand_computed_sphere_and_cylinder():
    H, W = 21, 31
    K = intrinsics_from_fov(W, H, 60.0)
    tex = random_texture(np.random.default_rng(2))
    eye = np.array([0.0, 0.0, 1.25])
    c2w = look_at(eye, eye + [1.0, 0.0, 0.0], UP)
    # Sphere of radius 0.3 m centred 1.5 m ahead: ray (1, a, b) hits at the smaller root of
    # t^2 (1 + a^2 + b^2) - 3 t + (2.25 - 0.09) = 0; the centre pixel sees it at 1.2 m.
    frame = render_frame(empty_room(objects=[Sphere((1.5, 0.0, 1.25), 0.3, tex)]), c2w, K, H, W)
    r = camera_rays(K, H, W)
    n2 = 1.0 + r[..., 0] ** 2 + r[..., 1] ** 2
    disc = 9.0 - 4.0 * n2 * 2.16
    expected = np.where(disc >= 0, (3.0 - np.sqrt(np.maximum(disc, 0))) / (2 * n2), 2.0)
    assert abs(frame.depth[10, 15] - 1.2) < 1e-6 and (disc >= 0).sum() > 20
    np.testing.assert_allclose(frame.depth, expected, atol=1e-5)
    # Vertical cylinder (r = 0.25 m) on the optical axis 1.5 m ahead: the centre pixel sees its side at 1.25 m.
    frame = render_frame(empty_room(objects=[Cylinder(1.5, 0.0, 0.25, 0.0, 2.0, tex)]), c2w, K, H, W)
    assert abs(frame.depth[10, 15] - 1.25) < 1e-6
    # Camera 2.2 m above the floor looking straight down at a cylinder 0.8 m tall (r = 0.5 m):
    # its top cap is at z-depth 1.4 m for rays within radius 0.5 / 1.4, the floor at 2.2 m elsewhere.
    down = np.eye(4)
    down[:3, :3] = np.array([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]]).T
    down[:3, 3] = (0.0, 0.0, 2.2)
    frame = render_frame(empty_room(objects=[Cylinder(0.0, 0.0, 0.5, 0.0, 0.8, tex)]), down, K, H, W)
    s = np.hypot(r[..., 0], r[..., 1])
    expected = np.where(s <= 0.5 / 1.4, 1.4, 2.2)
    assert 20 < (s <= 0.5 / 1.4).sum() < H * W
    np.testing.assert_allclose(frame.depth, expected, atol=1e-6)


def test_cast_rays_reports_primitives_and_normals():
    tex = random_texture(np.random.default_rng(3))
    room = empty_room(objects=[Box((1.5, 0.0, 0.5), (0.2, 0.3, 0.5), tex)])
    o = np.array([0.0, 0.0, 1.25])
    dirs = np.array([[1.0, 0.0, -0.5], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
    hits = cast_rays(room, o, dirs)
    np.testing.assert_array_equal(hits.primitive, [0, -1, -1, -1, -1])
    np.testing.assert_allclose(hits.t, [1.3, 2.0, 1.25, 1.25, 1.5])
    np.testing.assert_allclose(hits.normals, [[-1, 0, 0], [-1, 0, 0], [0, 0, 1], [0, 0, -1], [0, 1, 0]])
    with pytest.raises(ValueError, match="not inside the room"):
        cast_rays(room, np.array([5.0, 0.0, 1.0]), dirs)


# --- multi-view consistency --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def frame_pair():
    cfg = SyntheticConfig(n_scenes=1, n_frames=8, height=72, width=96, n_objects=6, **NO_REFINER)
    scene = synthetic_scenes(cfg, SEED)[0]
    return synthetic_room(cfg, SEED), scene.load(0), scene.load(1), scene.load(7)


def test_reprojected_depth_and_colour_agree(frame_pair):
    _, f0, f1, _ = frame_pair
    p = world_points(f0)
    w2c = np.linalg.inv(f1.c2w)
    pc = p @ w2c[:3, :3].T + w2c[:3, 3]
    u = f1.K[0, 0] * pc[:, 0] / pc[:, 2] + f1.K[0, 2]
    v = f1.K[1, 1] * pc[:, 1] / pc[:, 2] + f1.K[1, 2]
    inside = (u >= 0) & (u <= f1.width - 1) & (v >= 0) & (v <= f1.height - 1) & (pc[:, 2] > 0)
    assert inside.mean() > 0.7  # consecutive frames overlap a lot
    z1 = bilinear(f1.depth, u[inside], v[inside])
    visible = pc[inside, 2] < z1 + 0.05  # z-buffer test: not occluded in frame 1
    assert visible.mean() > 0.8
    agree = np.abs(pc[inside, 2] - z1)[visible] < 0.01
    assert agree.mean() > 0.9
    c0 = f0.rgb.reshape(-1, 3)[inside][visible][agree].astype(np.float64)
    c1 = bilinear(f1.rgb, u[inside][visible][agree], v[inside][visible][agree])
    diff = np.abs(c0 - c1).max(axis=1)
    assert np.median(diff) < 12 and np.mean(diff < 40) > 0.85


def test_colour_is_exactly_view_independent(frame_pair):
    """Rays from a distant camera (frame 7, ~40 degrees further along the orbit) to the surface points
    seen by camera 0 get the same colour where unoccluded."""
    room, f0, _, f7 = frame_pair
    p = world_points(f0)
    o7 = f7.c2w[:3, 3]
    assert np.linalg.norm(o7 - f0.c2w[:3, 3]) > 0.5
    hits = cast_rays(room, o7, p - o7)  # t = 1 at the point itself
    seen = np.abs(hits.t - 1.0) < 1e-5
    assert seen.mean() > 0.5
    c1 = np.round(hits.rgb[seen] * 255)
    c0 = f0.rgb.reshape(-1, 3)[seen].astype(np.float64)
    # Depth is stored as float32, so the back-projected point moves by < 1 um: rare texture-edge flips only.
    assert np.mean(np.abs(c0 - c1).max(axis=1) <= 1) > 0.99


# --- textures ----------------------------------------------------------------------------------------


def test_frames_are_richly_textured_and_never_dark():
    cfg = SyntheticConfig(n_scenes=3, n_frames=3, height=48, width=64, **NO_REFINER)
    for scene in synthetic_scenes(cfg, 11):
        for i in range(len(scene)):
            rgb = scene.load(i).rgb
            y = luma(rgb)
            assert y.min() > 0.08
            n_colours = len(np.unique(rgb.reshape(-1, 3), axis=0))
            assert n_colours > 0.3 * rgb.shape[0] * rgb.shape[1]
            grad = np.abs(np.diff(y, axis=0)).mean() + np.abs(np.diff(y, axis=1)).mean()
            assert grad > 0.03


@pytest.mark.parametrize("kind", TEXTURE_KINDS)
def test_each_texture_kind_varies_and_stays_bright(kind):
    rng = np.random.default_rng(5)
    g = np.linspace(0.0, 2.0, 100)
    uu, vv = np.meshgrid(g, g)
    q = np.stack([uu.ravel(), vv.ravel(), np.zeros(uu.size)], axis=1)
    for _ in range(5):
        tex = random_texture(rng, kind)
        a = texture_albedo(tex, q)
        assert a.shape == (q.shape[0], 3) and a.min() >= 0.0 and a.max() <= 1.0
        y = a @ np.array([0.299, 0.587, 0.114])
        assert y.min() > 0.25  # shaded by >= 0.45 ambient: luma > 0.11
        assert y.std() > 0.02
        img = y.reshape(uu.shape)
        assert np.abs(np.diff(img, axis=1)).mean() > 1e-3  # varies at a 2 cm scale
        np.testing.assert_array_equal(a, texture_albedo(tex, q))  # a pure function of position


# --- camera path and placement -----------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_camera_path_inside_room_clear_of_objects_and_smooth(seed):
    cfg = SyntheticConfig(n_objects=8)
    room = synthetic_room(cfg, seed)
    poses = camera_poses(room, cfg.n_frames)
    assert poses.shape == (cfg.n_frames, 4, 4)
    eyes = poses[:, :3, 3]
    assert np.all(room_shell_distance(room, eyes) >= 0.6)
    assert np.all(eyes > room.lo) and np.all(eyes < room.hi)
    for obj in room.objects:
        assert signed_distance(obj, eyes).min() >= 0.6
    for a, b in itertools.pairwise(poses):
        assert np.linalg.norm(b[:3, 3] - a[:3, 3]) < 0.25
        assert rotation_angle_deg(a[:3, :3].T @ b[:3, :3]) < 10.0
    orbit = np.degrees(np.unwrap(np.arctan2(eyes[:, 1], eyes[:, 0])))
    assert 90.0 <= abs(orbit[-1] - orbit[0]) <= 180.0
    # Looking across the room (towards the centre), level horizon, tilted down at the furniture.
    forward = poses[:, :3, 2]
    assert np.all(np.einsum("ij,ij->i", forward[:, :2], -eyes[:, :2]) > 0)
    assert np.all(np.abs(poses[:, 2, 0]) < 1e-9) and np.all(forward[:, 2] < 0)
    for R in poses[:, :3, :3]:
        np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-12)
        assert np.linalg.det(R) > 0


def test_few_frames_stay_close_together():
    room = synthetic_room(SyntheticConfig(), 0)
    two = camera_poses(room, 2)
    assert rotation_angle_deg(two[0, :3, :3].T @ two[1, :3, :3]) < 10.0
    assert camera_poses(room, 1).shape == (1, 4, 4)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_objects_do_not_interpenetrate(seed):
    cfg = SyntheticConfig(n_objects=12)
    room = synthetic_room(cfg, seed)
    assert len(room.objects) >= 6
    kinds = {type(o) for o in room.objects}
    assert kinds == {Box, Cylinder, Sphere}
    rng = np.random.default_rng(seed)
    for i, a in enumerate(room.objects):
        va = room_mesh(empty_room(room.size, [a]))[0][8:].astype(np.float64)  # skip the room shell's corners
        lo, hi = va.min(axis=0), va.max(axis=0)
        assert np.all(lo[:2] - room.lo[:2] > 0.04) and np.all(room.hi[:2] - hi[:2] > 0.04)
        assert hi[2] < room.hi[2]
        # Random points inside the object, plus its mesh vertices (which lie on its surface).
        inner = rng.uniform(lo, hi, size=(4000, 3))
        inner = inner[signed_distance(a, inner) < 0]
        assert len(inner) > 1000
        for j, b in enumerate(room.objects):
            if i != j:
                assert signed_distance(b, va).min() > -1e-6
                assert signed_distance(b, inner).min() > 0
        # Objects stand on the floor or (spheres) rest on top of a box.
        if isinstance(a, Sphere) and a.center[2] - a.radius > 1e-9:
            support = [b for b in room.objects if isinstance(b, Box)
                       and abs(b.center[2] + b.half[2] - (a.center[2] - a.radius)) < 1e-9
                       and np.allclose(b.center[:2], a.center[:2])]
            assert len(support) == 1 and a.radius <= min(support[0].half[:2]) + 1e-9
        else:
            assert abs(lo[2]) < 1e-2


# --- evaluation rooms are what they were ----------------------------------------------------------------

#: Seed 0, default config: what the evaluation rooms were before refiner rooms existed (the code of that
#: time printed these), so NeRF results on them stay comparable.
EVAL_GOLDEN = {
    "synthetic_000": {
        "room_size": [5.885875105765759, 3.9745057285782472, 2.833405553189895],
        "objects": ["sphere r=0.13 m on floor at (-2.07, 1.57, 0.13), noise",
                    "box 0.26x1.04x0.38 m at (-1.13, -0.88), stripes",
                    "sphere r=0.11 m on box at (-1.13, -0.88, 0.49), wood",
                    "box 0.95x0.67x0.90 m at (-0.39, -1.10), wood",
                    "sphere r=0.19 m on box at (-0.39, -1.10, 1.09), stripes",
                    "cylinder r=0.20 h=0.36 m at (-2.45, 0.95), wood"],
        "depth0": [[3.59679, 3.84431, 4.01919, 4.21073], [1.73887, 4.38539, 4.61442, 3.90656],
                   [1.49709, 2.20822, 2.41801, 2.41801]],
        "rgb0": [103.945, 90.239, 128.417],
        "eye31": [-1.261587, 0.652037, 1.307033],
    },
    "synthetic_001": {
        "room_size": [5.354393713950204, 3.864480122814232, 2.767058277793087],
        "objects": ["cylinder r=0.29 h=0.32 m at (-1.55, -0.30), checker",
                    "cylinder r=0.36 h=0.28 m at (-1.75, 1.28), checker",
                    "sphere r=0.18 m on floor at (-0.99, 0.39, 0.18), stripes",
                    "cylinder r=0.16 h=0.88 m at (-0.99, -1.21), stripes",
                    "box 0.97x0.33x0.73 m at (-0.68, -0.46), checker",
                    "sphere r=0.10 m on box at (-0.68, -0.46, 0.83), wood"],
        "depth0": [[2.84855, 3.65290, 3.23748, 2.66720], [3.11667, 3.70988, 3.70988, 3.05063],
                   [1.29473, 1.17556, 2.20442, 2.20442]],
        "rgb0": [99.136, 111.62, 127.217],
        "eye31": [-0.271159, 1.035682, 1.509876],
    },
}


def test_default_evaluation_rooms_are_unchanged():
    scenes = synthetic_scenes(SyntheticConfig(), 0)
    evals = [s for s in scenes if s.role == "eval"]
    assert [s.name for s in evals] == list(EVAL_GOLDEN) and scenes[: len(evals)] == evals
    for s in evals:
        gold = EVAL_GOLDEN[s.name]
        np.testing.assert_allclose(s.attrs["room_size"], gold["room_size"], rtol=0, atol=1e-12)
        assert s.attrs["objects"] == gold["objects"]
        f0, f31 = s.load(0), s.load(31)
        np.testing.assert_allclose(f0.depth[::40, ::40], gold["depth0"], atol=2e-5)
        np.testing.assert_allclose(f0.rgb.reshape(-1, 3).mean(axis=0), gold["rgb0"], atol=0.05)
        np.testing.assert_allclose(f31.c2w[:3, 3], gold["eye31"], atol=1e-6)


def test_evaluation_rooms_do_not_depend_on_the_refiner_settings():
    plain = synthetic_scenes(CFG, SEED)
    more = synthetic_scenes(CFG.model_copy(update={"refiner_train_scenes": 2, "refiner_val_scenes": 1,
                                                   "refiner_sizes": [(16, 12)], "refiner_frames": 1,
                                                   "refiner_objects": (1, 3)}), SEED)
    assert [s.name for s in more][:2] == [s.name for s in plain]
    for a, b in zip(plain, more[:2], strict=True):
        assert a.attrs == b.attrs and b.role == "eval"
        np.testing.assert_array_equal(a.load(1).rgb, b.load(1).rgb)
        np.testing.assert_array_equal(a.load(1).depth, b.load(1).depth)


# --- refiner rooms -------------------------------------------------------------------------------------

RCFG = SyntheticConfig(n_scenes=1, n_frames=2, height=24, width=32, refiner_train_scenes=3, refiner_val_scenes=2,
                       refiner_frames=3, refiner_sizes=[(40, 30), (24, 18)])


@pytest.fixture(scope="module")
def refiner():
    return [s for s in synthetic_scenes(RCFG, SEED) if s.role != "eval"]


def test_refiner_rooms_names_roles_splits_and_no_mesh(refiner):
    names = ["refiner_train_000", "refiner_train_001", "refiner_train_002", "refiner_val_000", "refiner_val_001"]
    assert [s.name for s in refiner] == names
    assert [s.role for s in refiner] == ["train"] * 3 + ["val"] * 2
    for s in refiner:
        assert s.source == "synthetic" and s.depth_kind == "reference" and s.mesh is None
        assert s.splits == ["train"] * RCFG.refiner_frames and len(s) == RCFG.refiner_frames
        assert len(s.attrs["pieces"]) >= 1 and s.attrs["n_primitives"] > len(s.attrs["pieces"])
        assert 0.2 <= s.attrs["light"]["ambient"] <= 0.6
    (evaluation,) = [s for s in synthetic_scenes(RCFG, SEED) if s.role == "eval"]
    assert evaluation.name == "synthetic_000" and evaluation.mesh is not None


def test_refiner_rooms_have_the_configured_sizes_and_kinect_field_of_view(refiner):
    sizes = [(30, 40), (18, 24), (30, 40), (30, 40), (18, 24)]  # cycled over the rooms of each role
    for s, (h, w) in zip(refiner, sizes, strict=True):
        f = check_frame(s.load(1))
        assert f.rgb.shape == (h, w, 3) and f.depth.shape == (h, w) and s.native_size == (h, w)
        assert np.all(f.depth > 0)  # closed room: exact and complete
        fx, fy, cx, cy = f.K[0, 0], f.K[1, 1], f.K[0, 2], f.K[1, 2]
        assert fx == fy and (cx, cy) == ((w - 1) / 2, (h - 1) / 2)
        assert np.degrees(2 * np.arctan(w / 2 / fx)) == pytest.approx(58.0)
        assert np.degrees(2 * np.arctan(h / 2 / fy)) == pytest.approx(45.1, abs=0.1)  # Kinect v1: ~58 x 45 deg


def test_refiner_rooms_deterministic_per_seed_and_independent_of_image_size(refiner):
    again = [s for s in synthetic_scenes(RCFG, SEED) if s.role != "eval"]
    other = [s for s in synthetic_scenes(RCFG, SEED + 1) if s.role != "eval"]
    resized = [s for s in synthetic_scenes(RCFG.model_copy(update={"refiner_sizes": [(20, 16)]}), SEED)
               if s.role != "eval"]
    for a, b, c, d in zip(refiner, again, other, resized, strict=True):
        assert a.attrs == b.attrs == d.attrs
        fa, fb = a.load(2), b.load(2)
        np.testing.assert_array_equal(fa.rgb, fb.rgb)
        np.testing.assert_array_equal(fa.depth, fb.depth)
        np.testing.assert_array_equal(fa.c2w, d.load(2).c2w)
        assert a.attrs["room_size"] != c.attrs["room_size"]
        assert not np.array_equal(fa.c2w, c.load(2).c2w)


def test_refiner_rooms_never_repeat_evaluation_rooms_or_each_other():
    cfg = RCFG.model_copy(update={"n_scenes": 4})
    scenes = synthetic_scenes(cfg, SEED)
    sizes = [tuple(s.attrs["room_size"]) for s in scenes]
    assert len(set(sizes)) == len(scenes)  # every room drawn from its own stream
    # The refiner streams are their own branch: index i of either role is not evaluation room i.
    for i in range(3):
        for role in ("train", "val"):
            assert refiner_rng(SEED, role, i).random(4).tolist() != scene_rng(SEED, i).random(4).tolist()
        assert refiner_rng(SEED, "train", i).random(4).tolist() != refiner_rng(SEED, "val", i).random(4).tolist()
    # And a refiner room does not depend on how many evaluation rooms there are.
    fewer = {s.name: s for s in synthetic_scenes(RCFG, SEED)}
    for s in scenes:
        if s.role != "eval":
            assert s.attrs == fewer[s.name].attrs
    with pytest.raises(ValueError, match="seed"):
        refiner_rng(-1, "train", 0)


def refiner_rooms(n: int = 6, seed: int = 0):
    cfg = SyntheticConfig(refiner_frames=6)
    return [refiner_room(cfg, seed, "train", i) for i in range(n)]


def test_refiner_rooms_are_cluttered_with_thin_and_small_things_and_varied_materials():
    rooms = refiner_rooms()
    all_objects = [o for room, _, _ in rooms for o in room.objects]
    for room, pieces, _ in rooms:
        assert len(pieces) >= 6 and len(room.objects) >= 15
        for o in room.objects:  # everything inside the room, nothing below the floor
            lo, hi = bounds(o)
            assert np.all(lo >= room.lo - 1e-9) and np.all(hi <= room.hi + 1e-9)
    ext = np.array([bounds(o)[1] - bounds(o)[0] for o in all_objects])
    lo_z = np.array([bounds(o)[0][2] for o in all_objects])
    thin = (ext[:, :2].min(axis=1) <= 0.05) & (ext[:, 2] >= 0.3)  # legs, poles, boards seen edge-on
    flat = (ext[:, 2] <= 0.05) & (ext[:, :2].max(axis=1) >= 0.4)  # table tops, shelf boards
    small_up = (ext.max(axis=1) <= 0.25) & (lo_z >= 0.3)  # small things standing on surfaces
    assert thin.sum() >= 20 and flat.sum() >= 10 and small_up.sum() >= 10
    assert any(isinstance(o, OrientedBox) for o in all_objects)  # furniture at any angle
    assert {type(o) for o in all_objects} == {Box, OrientedBox, Cylinder, Sphere}
    luma_of = [min(_luma_rgb(c) for c in o.texture.colors) for o in all_objects]
    assert min(luma_of) < 0.1 and np.mean(np.array(luma_of) < 0.2) > 0.05  # dark materials
    assert "plain" in {o.texture.kind for o in all_objects}
    lights = {(r.light.direction, r.light.intensity, r.light.ambient) for r, _, _ in rooms}
    assert len(lights) == len(rooms)
    kinds = {p.split(" at ")[0] for _, pieces, _ in rooms for p in pieces}
    assert {"table", "chair", "shelf"} <= kinds


def _luma_rgb(c) -> float:
    return float(np.asarray(c) @ np.array([0.299, 0.587, 0.114]))


def test_refiner_views_are_hand_held_scans_clear_of_everything():
    pitches, dists = [], []
    for room, _, poses in refiner_rooms():
        lo = np.array([bounds(o)[0] for o in room.objects])
        hi = np.array([bounds(o)[1] for o in room.objects])
        for c2w in poses:
            R, eye = c2w[:3, :3], c2w[:3, 3]
            np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-12)
            assert np.linalg.det(R) > 0
            assert np.all(eye > room.lo + 0.15) and np.all(eye < room.hi - 0.15) and 0.3 <= eye[2] <= 2.2
            assert not np.any(np.all((eye > lo - 0.15) & (eye < hi + 0.15), axis=1))
            assert abs(R[2, 0]) <= np.sin(np.radians(6.0)) + 1e-9  # a few degrees of roll at most
            pitches.append(np.degrees(np.arcsin(-R[2, 2])))  # positive: looking down
            dists.append(cast_rays(room, eye, R[:, 2][None]).t[0])  # along the optical axis
        assert len({tuple(p[:3, 3]) for p in poses}) == len(poses)  # independent views
    pitches, dists = np.array(pitches), np.array(dists)
    assert np.all(pitches > -16) and np.all(pitches < 71)
    assert np.mean(pitches > 30) > 0.1 and np.mean(pitches < 10) > 0.2  # some look down at tables
    assert np.all(dists > 0.1) and np.median(dists) < 3.5 and np.mean(dists < 1.5) > 0.15


def test_refiner_frames_include_dark_surfaces_and_many_depth_edges():
    cfg = SyntheticConfig(n_scenes=1, n_frames=1, height=24, width=32, refiner_train_scenes=6, refiner_val_scenes=0,
                          refiner_frames=2, refiner_sizes=[(64, 48)])
    frames = [s.load(i) for s in synthetic_scenes(cfg, 1) if s.role == "train" for i in range(2)]
    dark = np.array([np.mean(luma(f.rgb) < 0.06) for f in frames])  # the sensor model's dark threshold
    assert dark.max() > 0.02 and np.median(dark) < 0.5
    edges = np.array([np.mean(np.abs(np.diff(f.depth, axis=1)) > 0.1) for f in frames])
    assert np.mean(edges > 0.005) > 0.5


# --- oriented boxes, thin structures and culling ---------------------------------------------------------


def oriented_signed_distance(obj: OrientedBox, p: np.ndarray) -> np.ndarray:
    local = (p - np.asarray(obj.center)) @ obj.rotation()
    return signed_distance(Box((0.0, 0.0, 0.0), obj.half, obj.texture), local)


def test_hand_computed_oriented_box():
    """A 0.4 x 0.6 x 1 m box turned by 30 degrees, centred 1.5 m ahead: a horizontal ray from the origin
    with direction (1, a, 0) meets the plane of its local -x face, n = (-cos 30, -sin 30, 0), where
    n . (t d - c) = 0.2, i.e. at t = (0.2 + n . c) / (n . d), wherever the local y of that point is within
    +-0.3 m."""
    tex = random_texture(np.random.default_rng(4))
    yaw = np.radians(30.0)
    box = OrientedBox((1.5, 0.0, 0.5), (0.2, 0.3, 0.5), float(yaw), tex)
    room = empty_room(objects=[box])
    o = np.array([0.0, 0.0, 0.5])
    a = np.linspace(-0.15, 0.15, 13)
    dirs = np.stack([np.ones_like(a), a, np.zeros_like(a)], axis=1)
    n = np.array([-np.cos(yaw), -np.sin(yaw), 0.0])
    t = (0.2 + n @ (np.asarray(box.center) - o)) / (dirs @ n)
    local_y = ((o + t[:, None] * dirs - box.center) @ box.rotation())[:, 1]
    on_face = np.abs(local_y) <= 0.3
    assert on_face.sum() >= 8 and t[6] == pytest.approx(1.5 - 0.2 / np.cos(yaw))
    hits = cast_rays(room, o, dirs)
    np.testing.assert_allclose(hits.t[on_face], t[on_face], atol=1e-12)
    np.testing.assert_allclose(hits.normals[on_face], np.tile(n, (on_face.sum(), 1)), atol=1e-12)
    assert np.all(hits.primitive[on_face] == 0)
    # Every hit on the box lies on its surface; the mesh and the bounding box agree with it.
    assert np.abs(oriented_signed_distance(box, hits.points[hits.primitive == 0])).max() < 1e-9
    v = room_mesh(room)[0][8:].astype(np.float64)
    assert np.abs(oriented_signed_distance(box, v)).max() < 1e-6
    lo, hi = bounds(box)
    np.testing.assert_allclose(v.min(axis=0), lo, atol=1e-6)
    np.testing.assert_allclose(v.max(axis=0), hi, atol=1e-6)
    assert "turned 30 deg" in describe(box)


def test_hand_computed_thin_table_leg():
    """A 4 cm square leg 0.7 m tall, its front face 1.18 m ahead of a camera at the leg's centre line,
    0.5 m above the floor: camera ray (x_c, y_c, 1) is world direction (1, -x_c, -y_c), so it hits the
    face at t = 1.18 where |x_c| * 1.18 <= 0.02 and 0 <= 0.5 - y_c * 1.18 <= 0.7, and the wall 2 m away
    elsewhere. Only 5 of 201 pixel columns see it (2.9 px either side of the centre)."""
    H, W = 81, 201
    K = intrinsics_from_fov(W, H, 60.0)
    leg = Box((1.2, 0.3, 0.35), (0.02, 0.02, 0.35), random_texture(np.random.default_rng(6)))
    eye = np.array([0.0, 0.3, 0.5])
    frame = render_frame(empty_room(objects=[leg]), look_at(eye, eye + [1.0, 0.0, 0.0], UP), K, H, W)
    r = camera_rays(K, H, W)
    z = 0.5 - r[..., 1] * 1.18
    on_leg = (np.abs(r[..., 0]) * 1.18 <= 0.02) & (z >= 0.0) & (z <= 0.7)
    assert np.unique(np.nonzero(on_leg)[1]).tolist() == [98, 99, 100, 101, 102] and on_leg.sum() > 5 * 40
    np.testing.assert_allclose(frame.depth, np.where(on_leg, 1.18, 2.0), atol=1e-6)


def test_culling_never_loses_a_hit():
    """cast_rays skips the rays that miss an object's bounding sphere; a brute-force nearest hit over all
    rays and objects gives the same answer, including rays that graze the spheres."""
    room, _, poses = refiner_room(SyntheticConfig(refiner_frames=2), 2, "val", 0)
    rng = np.random.default_rng(0)
    for c2w in poses:
        o = c2w[:3, 3]
        dirs = rng.normal(size=(3000, 3))
        centre, radius = bounding_sphere(room.objects[int(rng.integers(len(room.objects)))])
        tangent = np.cross(centre - o, rng.normal(size=3))
        graze = (centre - o) + radius * tangent / np.linalg.norm(tangent) * rng.uniform(0.99, 1.01, (500, 1))
        dirs = np.concatenate([dirs, graze])
        t = intersect_room(o, dirs, room.lo, room.hi)[0]
        prim = np.full(len(dirs), -1)
        for j, obj in enumerate(room.objects):
            tj = intersect(o, dirs, obj)[0]
            prim = np.where(tj < t, j, prim)
            t = np.minimum(t, tj)
        hits = cast_rays(room, o, dirs)
        np.testing.assert_allclose(hits.t, t, rtol=1e-12)  # subsets may round the last bit differently
        np.testing.assert_array_equal(hits.primitive, prim)


def test_room_lighting_scales_and_clips_shading():
    normals = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]])
    albedo = np.full((2, 3), 0.8)
    bright = Light((0.0, 0.0, 1.0), intensity=1.5, ambient=0.2)
    np.testing.assert_allclose(shade(albedo, normals, bright), [[1.0] * 3, [0.8 * 1.5 * 0.2] * 3])
    dim = Light((0.0, 0.0, 1.0), intensity=0.5, ambient=0.4)
    np.testing.assert_allclose(shade(albedo, normals, dim), [[0.4] * 3, [0.16] * 3])
    np.testing.assert_array_equal(shade(albedo, normals), shade(albedo, normals, None))
