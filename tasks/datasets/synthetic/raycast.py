"""Analytic ray casting and rendering.

Rays from one origin are intersected with the room and with every primitive analytically at once (slab test
for the room and the boxes, in its own axes for an :class:`OrientedBox`, quadratics for spheres and cylinder
sides, planes for cylinder caps) and the nearest hit is kept; rays are only intersected with the primitives
whose bounding sphere they pass. Hits are textured (:func:`texture_albedo`) and shaded (:func:`shade`)
surface by surface.

:func:`cast_rays` returns :class:`RayHits` (``t`` in units of the ray direction's length; world metres);
:func:`render_frame` renders an RGB-D :class:`Frame`: uint8 ``[H, W, 3]`` colour and exact float32
``[H, W]`` z-depth in metres. The room is closed, so every pixel has a hit: no holes, no noise.
"""

from __future__ import annotations

import numpy as np

from models.camera import camera_rays
from tasks.datasets.base import Frame
from tasks.datasets.synthetic.constants import _OTHER_AXES, RAY_CHUNK, RAY_EPS, ROOM_FACES
from tasks.datasets.synthetic.scene import Box, Cylinder, OrientedBox, Primitive, RayHits, Room, Sphere, bounding_sphere
from tasks.datasets.synthetic.textures import shade, texture_albedo


def intersect_room(
    origin: np.ndarray, dirs: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Exit hits of rays from ``origin`` (strictly inside the box ``[lo, hi]``) through the box's walls.

    Args:
        origin: ``[3]`` ray origin in metres.
        dirs: ``[N, 3]`` ray directions (any length).
        lo, hi: ``[3]`` box corners.

    Returns:
        ``t`` ``[N]`` ray parameters of the hits and ``face`` ``[N]`` int (``2 * axis + 1`` for the
        maximum side).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / dirs
        t_exit = np.fmax((lo - origin) * inv, (hi - origin) * inv)
    axis = np.argmin(t_exit, axis=1)
    rows = np.arange(len(dirs))
    t = t_exit[rows, axis]
    face = 2 * axis + (dirs[rows, axis] > 0)
    return t, face


def intersect_box(origin: np.ndarray, dirs: np.ndarray, box: Box) -> tuple[np.ndarray, np.ndarray]:
    """Entry hits of rays from ``origin`` (outside the box) with an axis-aligned box (slab test).

    Returns:
        ``t`` ``[N]`` (``inf`` on a miss) and ``face`` ``[N]`` int (``2 * axis + 1`` for the maximum side).
    """
    c, h = np.asarray(box.center), np.asarray(box.half)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / dirs
        t1 = (c - h - origin) * inv
        t2 = (c + h - origin) * inv
    t_near = np.fmin(t1, t2)
    t_far = np.fmax(t1, t2).min(axis=1)
    axis = np.argmax(t_near, axis=1)
    rows = np.arange(len(dirs))
    t_in = t_near[rows, axis]
    hit = (t_in <= t_far) & (t_in > RAY_EPS)
    face = 2 * axis + (dirs[rows, axis] < 0)
    return np.where(hit, t_in, np.inf), face


def intersect_oriented_box(
    origin: np.ndarray, dirs: np.ndarray, box: OrientedBox
) -> tuple[np.ndarray, np.ndarray]:
    """Entry hits of rays from ``origin`` (outside the box) with a box turned about the vertical: the slab
    test in the box's own axes.

    Returns:
        ``t`` ``[N]`` (``inf`` on a miss) and ``face`` ``[N]`` int (``2 * axis + 1`` for the maximum side;
        axes are the box's own).
    """
    R = box.rotation()
    local = Box((0.0, 0.0, 0.0), box.half, box.texture)
    return intersect_box((np.asarray(origin) - np.asarray(box.center)) @ R, dirs @ R, local)


def intersect_sphere(origin: np.ndarray, dirs: np.ndarray, sphere: Sphere) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hits of rays from ``origin`` (outside the sphere) with a sphere.

    Returns:
        ``t`` ``[N]`` (``inf`` on a miss) and ``face`` ``[N]`` (all 0).
    """
    oc = origin - np.asarray(sphere.center)
    a = np.einsum("ij,ij->i", dirs, dirs)
    b = dirs @ oc
    c = oc @ oc - sphere.radius**2
    disc = b * b - a * c
    with np.errstate(invalid="ignore"):
        t = (-b - np.sqrt(disc)) / a
    hit = (disc >= 0) & (t > RAY_EPS)
    return np.where(hit, t, np.inf), np.zeros(len(dirs), dtype=np.int64)


def intersect_cylinder(origin: np.ndarray, dirs: np.ndarray, cyl: Cylinder) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hits of rays from ``origin`` (outside the cylinder) with a capped vertical cylinder.

    Returns:
        ``t`` ``[N]`` (``inf`` on a miss) and ``face`` ``[N]`` (0 side, 1 top cap, 2 bottom cap).
    """
    ox, oy, oz = origin[0] - cyl.cx, origin[1] - cyl.cy, origin[2]
    dx, dy, dz = dirs[:, 0], dirs[:, 1], dirs[:, 2]
    r2 = cyl.radius**2
    a = dx * dx + dy * dy
    b = dx * ox + dy * oy
    disc = b * b - a * (ox * ox + oy * oy - r2)
    with np.errstate(invalid="ignore", divide="ignore"):
        t_side = (-b - np.sqrt(disc)) / a
        z = oz + t_side * dz
        side = (disc >= 0) & (a > 0) & (t_side > RAY_EPS) & (z >= cyl.z0) & (z <= cyl.z1)
        ts = [np.where(side, t_side, np.inf)]
        for zc in (cyl.z1, cyl.z0):
            tc = (zc - oz) / dz
            px, py = ox + tc * dx, oy + tc * dy
            cap = (tc > RAY_EPS) & (px * px + py * py <= r2)
            ts.append(np.where(cap, tc, np.inf))
    t_all = np.stack(ts, axis=1)
    face = np.argmin(t_all, axis=1)
    return t_all[np.arange(len(dirs)), face], face


def intersect(origin: np.ndarray, dirs: np.ndarray, obj: Primitive) -> tuple[np.ndarray, np.ndarray]:
    """Hits ``(t [N], face [N])`` of rays with one furniture primitive (``t = inf`` on a miss)."""
    if isinstance(obj, Box):
        return intersect_box(origin, dirs, obj)
    if isinstance(obj, OrientedBox):
        return intersect_oriented_box(origin, dirs, obj)
    if isinstance(obj, Cylinder):
        return intersect_cylinder(origin, dirs, obj)
    if isinstance(obj, Sphere):
        return intersect_sphere(origin, dirs, obj)
    raise TypeError(f"unknown primitive {type(obj).__name__}")


def _axis_face_normals(face: np.ndarray, outward: bool) -> np.ndarray:
    """Unit normals ``[N, 3]`` of box faces ``2 * axis + hi``: outward, or inward for the room."""
    n = np.zeros((len(face), 3))
    sign = np.where(face % 2 == 1, 1.0, -1.0) * (1.0 if outward else -1.0)
    n[np.arange(len(face)), face // 2] = sign
    return n


def _face_uv(points: np.ndarray, face: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """Texture coordinates ``[N, 3]`` ``(u, v, 0)`` of points on axis-aligned faces, relative to ``lo``."""
    rel = points - lo
    uv = np.take_along_axis(rel, _OTHER_AXES[face // 2], axis=1)
    return np.concatenate([uv, np.zeros((len(points), 1))], axis=1)


def _surface(obj: Primitive, points: np.ndarray, face: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Outward unit normals ``[N, 3]`` and texture coordinates ``[N, 3]`` of hits on a primitive."""
    if isinstance(obj, Box):
        c, h = np.asarray(obj.center), np.asarray(obj.half)
        return _axis_face_normals(face, outward=True), _face_uv(points, face, c - h)
    if isinstance(obj, OrientedBox):
        R = obj.rotation()
        local = (points - np.asarray(obj.center)) @ R
        return _axis_face_normals(face, outward=True) @ R.T, _face_uv(local, face, -np.asarray(obj.half))
    if isinstance(obj, Cylinder):
        base = np.array([obj.cx, obj.cy, obj.z0])
        rel = points - base
        n = np.zeros_like(points)
        n[:, :2] = rel[:, :2] / obj.radius
        n[face == 1] = (0.0, 0.0, 1.0)
        n[face == 2] = (0.0, 0.0, -1.0)
        return n, rel
    rel = points - np.asarray(obj.center)
    return rel / obj.radius, rel


def cast_rays(room: Room, origin: np.ndarray, dirs: np.ndarray) -> RayHits:
    """Cast rays from ``origin`` through the room and shade their nearest hits.

    Args:
        room: the scene.
        origin: ``[3]`` ray origin in world metres, strictly inside the room and outside every object.
        dirs: ``[N, 3]`` world ray directions (any non-zero length; ``t`` is in units of their length).

    Returns:
        The nearest hits; every ray hits something since the room is closed.
    """
    origin = np.asarray(origin, dtype=np.float64)
    dirs = np.asarray(dirs, dtype=np.float64)
    lo, hi = room.lo, room.hi
    if np.any(origin <= lo) or np.any(origin >= hi):
        raise ValueError(f"ray origin {origin.tolist()} is not inside the room {list(room.size)}")
    t, face = intersect_room(origin, dirs, lo, hi)
    prim = np.full(len(dirs), -1, dtype=np.int64)
    dir_len = np.sqrt(np.einsum("ij,ij->i", dirs, dirs))
    in_cone = _objects_in_cone(room.objects, origin, dirs, dir_len)
    for j, obj in enumerate(room.objects):
        if not in_cone[j]:  # no ray of the bundle comes near it
            continue
        rows = _rays_near(origin, dirs, dir_len, obj)  # only rays that may hit obj are intersected
        if rows is None:
            tj, fj = intersect(origin, dirs, obj)
            closer = tj < t
            t = np.where(closer, tj, t)
            face = np.where(closer, fj, face)
            prim[closer] = j
        elif len(rows):
            tj, fj = intersect(origin, dirs[rows], obj)
            closer = tj < t[rows]
            hit = rows[closer]
            t[hit], face[hit], prim[hit] = tj[closer], fj[closer], j
    points = origin + t[:, None] * dirs
    # Texture and light the hits surface by surface: sort them by surface once (room faces first) instead
    # of masking every ray once per surface.
    normals = np.zeros_like(points)
    rgb = np.zeros_like(points)
    key = np.where(prim == -1, face - len(ROOM_FACES), prim)
    order = np.argsort(key, kind="stable")
    keys, starts = np.unique(key[order], return_index=True)
    for k, rows in zip(keys, np.split(order, starts[1:]), strict=True):
        if k < 0:
            f = face[rows]
            normals[rows] = _axis_face_normals(f, outward=False)
            rgb[rows] = texture_albedo(room.wall_textures[int(k) + len(ROOM_FACES)], _face_uv(points[rows], f, lo))
        else:
            obj = room.objects[int(k)]
            normals[rows], q = _surface(obj, points[rows], face[rows])
            rgb[rows] = texture_albedo(obj.texture, q)
    return RayHits(t=t, primitive=prim, face=face, points=points, normals=normals, rgb=shade(rgb, normals, room.light))


def _objects_in_cone(
    objects: tuple[Primitive, ...], origin: np.ndarray, dirs: np.ndarray, dir_len: np.ndarray
) -> np.ndarray:
    """``[n_objects]`` bool: whether an object's bounding sphere meets the cone around the mean direction
    that holds every ray of the bundle (conservative, with a small angular margin)."""
    if not objects or not len(dirs):
        return np.zeros(len(objects), dtype=bool)
    axis = (dirs / dir_len[:, None]).sum(axis=0)
    norm = float(np.linalg.norm(axis))
    if norm < 1e-9:
        return np.ones(len(objects), dtype=bool)
    axis /= norm
    half = np.arccos(np.clip(float(np.min((dirs @ axis) / dir_len)), -1.0, 1.0))
    spheres = [bounding_sphere(o) for o in objects]
    centres = np.array([c for c, _ in spheres]) - origin
    radii = np.array([r for _, r in spheres]) * (1.0 + 1e-6) + 1e-9
    dist = np.linalg.norm(centres, axis=1)
    inside = dist <= radii
    with np.errstate(invalid="ignore", divide="ignore"):
        angle = np.arccos(np.clip((centres @ axis) / dist, -1.0, 1.0))
        spread = np.arcsin(np.clip(radii / dist, 0.0, 1.0))
    return inside | (angle <= half + spread + 1e-6)


def _rays_near(origin: np.ndarray, dirs: np.ndarray, dir_len: np.ndarray, obj: Primitive) -> np.ndarray | None:
    """Indices of the rays that pass within the bounding sphere of ``obj`` in front of ``origin``
    (conservatively: a slightly larger sphere), or ``None`` when every ray may hit it (origin inside)."""
    centre, radius = bounding_sphere(obj)
    radius = radius * (1.0 + 1e-6) + 1e-9
    oc = centre - origin
    dist2 = float(oc @ oc)
    if dist2 <= radius * radius:
        return None
    along = (dirs @ oc) / dir_len  # distance along each ray to the point closest to the centre
    near = (along > -radius) & (dist2 - along * along <= radius * radius)
    return np.flatnonzero(near)


def render_frame(
    room: Room, c2w: np.ndarray, K: np.ndarray, height: int, width: int, frame_id: str = "", source: str = ""
) -> Frame:
    """Render one RGB-D frame of ``room``.

    Args:
        room: the scene.
        c2w: ``[4, 4]`` camera-to-world pose (OpenCV axes); the camera centre must be inside the room.
        K: ``[3, 3]`` intrinsics in pixels.
        height, width: image size in pixels.
        frame_id: identifier stored in the frame.
        source: description stored in the frame (for error messages).

    Returns:
        A :class:`Frame` with uint8 ``[H, W, 3]`` colour and exact float32 ``[H, W]`` z-depth in metres.
    """
    c2w = np.array(c2w, dtype=np.float64)  # copies: frames never share arrays with the scene
    K = np.array(K, dtype=np.float64)
    rays = camera_rays(K, height, width).reshape(-1, 3)  # unit z, so the ray parameter is the z-depth
    dirs = rays @ np.ascontiguousarray(c2w[:3, :3].T)  # contiguous: numpy takes its fast path (same values)
    depth = np.empty(len(dirs), dtype=np.float32)
    rgb = np.empty((len(dirs), 3), dtype=np.uint8)
    for start in range(0, len(dirs), RAY_CHUNK):  # chunks keep the working set in cache
        hits = cast_rays(room, c2w[:3, 3], dirs[start : start + RAY_CHUNK])
        depth[start : start + RAY_CHUNK] = hits.t
        rgb[start : start + RAY_CHUNK] = np.round(hits.rgb * 255.0)
    depth, rgb = depth.reshape(height, width), rgb.reshape(height, width, 3)
    return Frame(frame_id=frame_id, rgb=rgb, depth=depth, K=K, c2w=c2w, source=source)
