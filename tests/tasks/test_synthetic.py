"""Tests of the procedural room generator and analytic ray caster (tasks/datasets/synthetic.py)."""

from __future__ import annotations

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
    Room,
    Sphere,
    SyntheticConfig,
    camera_poses,
    cast_rays,
    random_texture,
    render_frame,
    room_mesh,
    synthetic_room,
    synthetic_scenes,
    texture_albedo,
)

SEED = 3
CFG = SyntheticConfig(n_scenes=2, n_frames=4, height=24, width=32, n_objects=5)
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
    "kwargs, field",
    [
        ({"n_frames": 0}, "n_frames"),
        ({"n_scenes": 0}, "n_scenes"),
        ({"height": 4}, "height"),
        ({"fov_deg": 170.0}, "fov_deg"),
        ({"n_objects": -1}, "n_objects"),
        ({"room_size": (2.0, 4.0, 2.6)}, "room_size"),
        ({"n_frame": 8}, "n_frame"),
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
        np.testing.assert_allclose(fr.K, K)
        assert np.all(fr.depth > 0)  # closed room: no holes
        fr.c2w[:] = 0.0  # frames own their arrays: mutating one does not change the scene
        assert np.array_equal(s.load(2).c2w[3], [0.0, 0.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="seed"):
        synthetic_scenes(CFG, -1)


def test_deterministic_and_seed_dependent(scenes):
    again = synthetic_scenes(CFG, SEED)
    other = synthetic_scenes(CFG, SEED + 1)
    for a, b in zip(scenes, again):
        assert a.attrs == b.attrs
        np.testing.assert_array_equal(a.mesh[0], b.mesh[0])
        np.testing.assert_array_equal(a.mesh[1], b.mesh[1])
        for i in range(len(a)):
            fa, fb = a.load(i), b.load(i)
            np.testing.assert_array_equal(fa.rgb, fb.rgb)
            np.testing.assert_array_equal(fa.depth, fb.depth)
            np.testing.assert_array_equal(fa.c2w, fb.c2w)
    for a, b in zip(scenes, other):
        assert a.attrs["room_size"] != b.attrs["room_size"]
        assert not np.array_equal(a.load(0).rgb, b.load(0).rgb)
    # The two scenes of one seed differ from each other too.
    assert scenes[0].attrs["objects"] != scenes[1].attrs["objects"]


def test_scene_content_independent_of_image_size_and_frame_count(scenes):
    bigger = synthetic_scenes(CFG.model_copy(update={"height": 30, "width": 40, "n_frames": 9}), SEED)
    for a, b in zip(scenes, bigger):
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
    cfg = SyntheticConfig(n_scenes=1, n_frames=8, height=72, width=96, n_objects=6)
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
    cfg = SyntheticConfig(n_scenes=3, n_frames=3, height=48, width=64)
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
    for a, b in zip(poses[:-1], poses[1:]):
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
