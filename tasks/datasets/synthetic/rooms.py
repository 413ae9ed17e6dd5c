"""Evaluation rooms (role ``eval``): random furnished rooms with their camera arc.

:func:`random_room` draws the room size (unless given), a texture per face, the camera arc
(:func:`random_camera_path`) and furniture: boxes, vertical cylinders and spheres standing on the floor or
a sphere resting on a box, placed by rejection sampling (:func:`place_objects`) inside the walls, apart from
each other and clear of the camera arc. Floor footprints (:func:`footprint`: ``("rect", cx, cy, hx, hy)``
or ``("circle", cx, cy, r, r)`` in metres) and their gaps (:func:`footprint_gap`) also keep the refiner
rooms' furniture apart. All randomness comes from the ``np.random.Generator`` passed in.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from tasks.datasets.config import CAMERA_CLEARANCE_M
from tasks.datasets.synthetic.cameras import arc_points, random_camera_path
from tasks.datasets.synthetic.constants import (
    MAX_PLACEMENT_TRIES,
    OBJECT_GAP_M,
    OBJECT_SIZE_M,
    PLACEMENT_MARGIN_M,
    ROOM_FACES,
)
from tasks.datasets.synthetic.scene import Box, CameraPath, Cylinder, OrientedBox, Primitive, Room, Sphere, bounds
from tasks.datasets.synthetic.textures import random_texture


def footprint(obj: Primitive) -> tuple[str, float, float, float, float]:
    """Floor footprint of an object: ``("rect", cx, cy, hx, hy)`` or ``("circle", cx, cy, r, r)``."""
    if isinstance(obj, Box):
        return ("rect", obj.center[0], obj.center[1], obj.half[0], obj.half[1])
    if isinstance(obj, OrientedBox):  # its axis-aligned bounding rectangle (conservative)
        lo, hi = bounds(obj)
        return ("rect", obj.center[0], obj.center[1], float(hi[0] - lo[0]) / 2, float(hi[1] - lo[1]) / 2)
    if isinstance(obj, Cylinder):
        return ("circle", obj.cx, obj.cy, obj.radius, obj.radius)
    return ("circle", obj.center[0], obj.center[1], obj.radius, obj.radius)


def footprint_distance(fp: tuple[str, float, float, float, float], xy: np.ndarray) -> np.ndarray:
    """Horizontal distance ``[N]`` (metres, 0 inside) from points ``xy`` ``[N, 2]`` to a footprint."""
    kind, cx, cy, a, b = fp
    dx, dy = np.abs(xy[:, 0] - cx), np.abs(xy[:, 1] - cy)
    if kind == "rect":
        return np.hypot(np.maximum(dx - a, 0.0), np.maximum(dy - b, 0.0))
    return np.maximum(np.hypot(dx, dy) - a, 0.0)


def footprint_gap(f1: tuple[str, float, float, float, float], f2: tuple[str, float, float, float, float]) -> float:
    """Horizontal gap (metres, <= 0 when they overlap) between two footprints (conservative for rects)."""
    if f1[0] == "rect" and f2[0] == "rect":
        gx = abs(f1[1] - f2[1]) - f1[3] - f2[3]
        gy = abs(f1[2] - f2[2]) - f1[4] - f2[4]
        return float(max(gx, gy))
    if f1[0] == "rect":
        f1, f2 = f2, f1
    # f1 is a circle: distance from its centre to f2, minus its radius.
    return float(footprint_distance(f2, np.array([[f1[1], f1[2]]]))[0] - f1[3])


def _sample_floor_object(rng: np.random.Generator, room_xy: np.ndarray, max_height: float) -> Primitive:
    """A box, cylinder or sphere standing on the floor at a random position in the room (mostly near its
    centre); it may still collide with walls or other objects (checked by :func:`place_objects`)."""
    smin, smax = OBJECT_SIZE_M
    kind = rng.choice(3, p=[0.45, 0.3, 0.25])
    texture = random_texture(rng)
    # Mostly near the room centre, which every camera of the arc looks across; sometimes anywhere.
    if rng.random() < 0.3:
        x, y = rng.uniform(-room_xy / 2, room_xy / 2)
    else:
        x, y = np.clip(rng.normal(0.0, 0.25 * room_xy), -room_xy / 2, room_xy / 2)
    if kind == 0:
        ex, ey = rng.uniform(smin, smax, size=2)
        ez = rng.uniform(smin, min(smax, max_height))
        return Box((float(x), float(y), float(ez / 2)), (float(ex / 2), float(ey / 2), float(ez / 2)), texture)
    if kind == 1:
        r = rng.uniform(smin / 2, smax / 2)
        h = rng.uniform(smin, min(smax, max_height))
        return Cylinder(float(x), float(y), float(r), 0.0, float(h), texture)
    r = rng.uniform(smin / 2, min(smax, max_height) / 2)
    return Sphere((float(x), float(y), float(r)), float(r), texture)


def _sphere_on_box(rng: np.random.Generator, box: Box, ceiling: float) -> Sphere | None:
    """A sphere resting on top of ``box`` (centred on it), or ``None`` when none fits under ``ceiling``."""
    top = box.center[2] + box.half[2]
    r_max = min(OBJECT_SIZE_M[1] / 2, box.half[0], box.half[1], (ceiling - top) / 2)
    if r_max < OBJECT_SIZE_M[0] / 2:
        return None
    r = float(rng.uniform(OBJECT_SIZE_M[0] / 2, r_max))
    return Sphere((box.center[0], box.center[1], float(top + r)), r, random_texture(rng))


def place_objects(
    rng: np.random.Generator, size: tuple[float, float, float], path: CameraPath, n_objects: int
) -> tuple[Primitive, ...]:
    """Furniture placed by rejection sampling: inside the walls, not touching each other, and at least
    ``CAMERA_CLEARANCE_M + PLACEMENT_MARGIN_M`` horizontally from the camera arc.

    An object that finds no valid place within :data:`MAX_PLACEMENT_TRIES` is skipped, so a crowded room
    may hold fewer than ``n_objects``. Objects stand on the floor; a sphere may instead rest on a box
    (one per box), which needs no floor space of its own.

    Args:
        rng: random generator.
        size: room extents ``(x, y, z)`` in metres.
        path: the camera arc to keep clear.
        n_objects: number of objects wanted.

    Returns:
        The placed primitives.
    """
    room_xy = np.array(size[:2], dtype=np.float64)
    arc = arc_points(path)
    ceiling = size[2] - 0.3  # keep objects clear of the ceiling
    sx, sy = room_xy
    walls = [  # half-metre-thick slabs just outside each wall, as footprints
        ("rect", -sx / 2 - 0.5, 0.0, 0.5, sy), ("rect", sx / 2 + 0.5, 0.0, 0.5, sy),
        ("rect", 0.0, -sy / 2 - 0.5, sx, 0.5), ("rect", 0.0, sy / 2 + 0.5, sx, 0.5),
    ]
    objects: list[Primitive] = []
    topped: set[int] = set()  # indices of boxes that already carry a sphere
    for _ in range(n_objects):
        free_boxes = [i for i, o in enumerate(objects) if isinstance(o, Box) and i not in topped]
        if free_boxes and rng.random() < 0.25:
            i = free_boxes[int(rng.integers(len(free_boxes)))]
            box = objects[i]
            assert isinstance(box, Box)  # one of free_boxes
            sphere = _sphere_on_box(rng, box, ceiling)
            if sphere is not None:
                objects.append(sphere)
                topped.add(i)
                continue
        for _ in range(MAX_PLACEMENT_TRIES):
            obj = _sample_floor_object(rng, room_xy, ceiling)
            fp = footprint(obj)
            if any(footprint_gap(fp, w) < OBJECT_GAP_M for w in walls):
                continue
            if footprint_distance(fp, arc).min() < CAMERA_CLEARANCE_M + PLACEMENT_MARGIN_M:
                continue
            if any(footprint_gap(fp, footprint(o)) < OBJECT_GAP_M for o in objects):
                continue
            objects.append(obj)
            break
    return tuple(objects)


def furniture_focus(objects: tuple[Primitive, ...], path: CameraPath) -> tuple[float, float]:
    """Footprint-area-weighted centre ``(x, y)`` (metres) of the furniture, pulled to within
    ``0.4 * min(path.axes)`` of the room centre so that cameras never look down steeply; ``(0, 0)``
    for an empty room."""
    if not objects:
        return (0.0, 0.0)
    fps = [footprint(o) for o in objects]
    xy = np.array([[f[1], f[2]] for f in fps])
    area = np.array([4 * f[3] * f[4] if f[0] == "rect" else np.pi * f[3] ** 2 for f in fps])
    c = area @ xy / area.sum()
    r_max = 0.4 * min(path.axes)
    c = c * min(1.0, r_max / max(float(np.linalg.norm(c)), 1e-12))
    return (float(c[0]), float(c[1]))


def random_room(
    rng: np.random.Generator, n_objects: int, room_size: tuple[float, float, float] | None = None
) -> Room:
    """A random furnished room with its camera arc.

    Args:
        rng: random generator (the only source of randomness).
        n_objects: furniture pieces wanted (see :func:`place_objects`).
        room_size: extents ``(x, y, z)`` in metres, or ``None`` for 4-6 x 3.5-5 x 2.4-3 m.
    """
    drawn = (rng.uniform(4.0, 6.0), rng.uniform(3.5, 5.0), rng.uniform(2.4, 3.0))
    sx, sy, sz = room_size if room_size is not None else drawn
    size = (float(sx), float(sy), float(sz))
    wall_textures = tuple(random_texture(rng) for _ in ROOM_FACES)
    path = random_camera_path(rng, size)
    objects = place_objects(rng, size, path, n_objects)
    path = replace(path, focus=furniture_focus(objects, path))
    return Room(size=size, wall_textures=wall_textures, objects=objects, path=path)
