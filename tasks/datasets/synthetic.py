"""Procedurally generated indoor rooms, rendered by analytic ray casting.

Each scene is a closed box room (floor, ceiling and four walls, seen from inside) furnished with
axis-aligned boxes and vertical cylinders standing on the floor and spheres resting on the floor or on a
box. Every surface carries a procedural texture (checkerboard, stripes, wood rings, multi-octave value
noise or tiles with grout) evaluated at the hit point, with random colours, and view-independent
Lambertian shading from a fixed light plus ambient, so a surface point has the same colour in every view.

Rendering intersects all pixel rays with every primitive analytically at once (slab test for the boxes
and the room, quadratics for spheres and cylinder sides, planes for cylinder caps) and keeps the nearest
hit. The room is closed, so every pixel has exact z-depth: no holes, no noise.

World frame: z up, metres; the room is centred on the origin in x / y and its floor is at ``z = 0``.
Cameras follow a smooth arc of an ellipse around the room centre at a clearance of at least
:data:`CAMERA_CLEARANCE_M` from every wall and object, looking across the room centre.

Everything is deterministic for ``(config, seed)``: the randomness comes from ``np.random.Generator``
objects derived from the seed and passed explicitly, and textures hash their own integer seeds.
"""

from __future__ import annotations

import colorsys
import functools
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Literal

import numpy as np
import trimesh
from pydantic import Field, field_validator

from models.camera import camera_rays, intrinsics_from_fov, look_at
from models.config import StrictConfig
from tasks.datasets.base import Frame, SceneSource

# --- constants (immutable) ---------------------------------------------------------------------------

GENERATOR = "dnerf.synthetic"
LIGHT_DIR = (0.36, -0.48, 0.80)  # towards the light, normalised when used
AMBIENT = 0.45  # fraction of the albedo every surface gets regardless of orientation
MIN_ALBEDO_LUMA = 0.35  # palette colours are lifted to at least this luma (Rec. 601)
CAMERA_CLEARANCE_M = 0.6  # minimum camera distance to walls, floor, ceiling and objects
PLACEMENT_MARGIN_M = 0.1  # extra clearance used when placing objects away from the camera arc
OBJECT_GAP_M = 0.05  # minimum horizontal gap between objects and between objects and walls
OBJECT_SIZE_M = (0.2, 1.2)  # range of object extents (box sides, diameters, heights)
MAX_PLACEMENT_TRIES = 200  # rejection-sampling attempts per object before it is skipped
MAX_ORBIT_STEP_DEG = 6.0  # largest orbit angle between consecutive frames
MAX_ORBIT_ASPECT = 1.3  # largest ratio of the camera ellipse's semi-axes
MIN_ROOM_XY_M = 3.0  # smallest allowed room_size along x / y
MIN_ROOM_Z_M = 2.4  # smallest allowed room height
RAY_CHUNK = 32768  # rays cast at once by render_frame
RAY_EPS = 1e-9  # hits closer than this along the ray are ignored
CYLINDER_SECTIONS = 64  # mesh tessellation of cylinders
SPHERE_SUBDIVISIONS = 3  # icosphere subdivisions of sphere meshes

TextureKind = Literal["checker", "stripes", "wood", "noise", "tiles"]
TEXTURE_KINDS: tuple[TextureKind, ...] = ("checker", "stripes", "wood", "noise", "tiles")
#: Characteristic size range (metres) of each texture kind: square, period, ring spacing, feature, tile.
TEXTURE_SCALE_M = MappingProxyType(
    {"checker": (0.15, 0.5), "stripes": (0.1, 0.35), "wood": (0.06, 0.18), "noise": (0.2, 0.6), "tiles": (0.2, 0.5)}
)
ROOM_FACES = ("wall -x", "wall +x", "wall -y", "wall +y", "floor", "ceiling")  # face = 2 * axis + hi side
_OTHER_AXES = np.array([[1, 2], [0, 2], [0, 1]])  # in-plane axes of a face, by its normal axis


# --- configuration -----------------------------------------------------------------------------------


class SyntheticConfig(StrictConfig):
    """Settings of the procedural room generator.

    Attributes:
        n_scenes: number of rooms.
        n_frames: frames per room along the camera arc.
        height: image height in pixels.
        width: image width in pixels.
        fov_deg: horizontal field of view in degrees.
        n_objects: furniture pieces per room (fewer when they do not fit).
        room_size: room extents ``(x, y, z)`` in metres; ``None`` draws one per scene
            (4-6 x 3.5-5 m floor, 2.4-3 m high).
    """

    n_scenes: int = Field(2, ge=1)
    n_frames: int = Field(32, ge=1)
    height: int = Field(120, ge=8)
    width: int = Field(160, ge=8)
    fov_deg: float = Field(65.0, gt=10.0, lt=150.0)
    n_objects: int = Field(6, ge=0)
    room_size: tuple[float, float, float] | None = None

    @field_validator("room_size")
    @classmethod
    def _room_fits_camera(cls, v: tuple[float, float, float] | None) -> tuple[float, float, float] | None:
        if v is not None and (v[0] < MIN_ROOM_XY_M or v[1] < MIN_ROOM_XY_M or v[2] < MIN_ROOM_Z_M):
            raise ValueError(
                f"room_size must be at least {MIN_ROOM_XY_M} x {MIN_ROOM_XY_M} x {MIN_ROOM_Z_M} m so the "
                f"camera keeps {CAMERA_CLEARANCE_M} m from the walls, got {v}"
            )
        return v


# --- scene description -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Texture:
    """A procedural texture, evaluated at texture coordinates ``q`` in metres.

    Attributes:
        kind: pattern: ``checker``, ``stripes``, ``wood``, ``noise`` or ``tiles``.
        colors: three linear RGB colours in ``[0, 1]``, each of luma >= :data:`MIN_ALBEDO_LUMA`.
        scale: characteristic size of the pattern in metres.
        direction: unit vector: stripe normal, or the wood's growth axis.
        offset: shift of the pattern in pattern units (each in ``[0.25, 0.75]`` so that a face at a
            constant third coordinate never sits on a pattern boundary).
        seed: integer seed of the texture's hash noise.
        detail: amplitude of the fine multiplicative noise added to every pattern, in ``[0, 0.15]``.
    """

    kind: TextureKind
    colors: tuple[tuple[float, float, float], ...]
    scale: float
    direction: tuple[float, float, float]
    offset: tuple[float, float, float]
    seed: int
    detail: float


@dataclass(frozen=True)
class Box:
    """Axis-aligned box: ``center`` and ``half`` extents ``(x, y, z)`` in metres."""

    center: tuple[float, float, float]
    half: tuple[float, float, float]
    texture: Texture


@dataclass(frozen=True)
class Cylinder:
    """Vertical cylinder of ``radius`` around ``(cx, cy)`` from ``z0`` to ``z1`` (metres)."""

    cx: float
    cy: float
    radius: float
    z0: float
    z1: float
    texture: Texture


@dataclass(frozen=True)
class Sphere:
    """Sphere of ``radius`` around ``center`` (metres)."""

    center: tuple[float, float, float]
    radius: float
    texture: Texture


Primitive = Box | Cylinder | Sphere


@dataclass(frozen=True)
class CameraPath:
    """Parameters of a scene's camera arc (see :func:`camera_poses`).

    Attributes:
        center_deg: orbit angle of the middle of the arc (degrees, around +z from +x).
        span_deg: orbit angle the whole arc covers (degrees); shorter when there are few frames.
        axes: semi-axes ``(ax, ay)`` of the orbit ellipse in metres.
        height: mean camera height in metres.
        height_amp: amplitude of the sinusoidal height variation in metres.
        height_cycles: number of height oscillations along the arc.
        height_phase: phase of the height oscillation in radians.
        look_beyond: distance (m) beyond the room centre, away from the camera, of the look-at target.
        target_height: mean height of the look-at target in metres.
        wobble_amp: amplitude (m) of the sideways / vertical look-at target wobble.
        wobble_phase: phase of the wobble in radians.
        focus_weight: how far (0-1) the look-at target is pulled from the point beyond the centre
            towards ``focus``.
        focus: ``(x, y)`` centre of the furniture in metres (see :func:`furniture_focus`).
    """

    center_deg: float
    span_deg: float
    axes: tuple[float, float]
    height: float
    height_amp: float
    height_cycles: float
    height_phase: float
    look_beyond: float
    target_height: float
    wobble_amp: float
    wobble_phase: float
    focus_weight: float
    focus: tuple[float, float] = (0.0, 0.0)


@dataclass(frozen=True)
class Room:
    """A procedural room.

    Attributes:
        size: extents ``(x, y, z)`` in metres; the room spans ``[-x/2, x/2] x [-y/2, y/2] x [0, z]``.
        wall_textures: one texture per room face, in :data:`ROOM_FACES` order.
        objects: furniture primitives.
        path: the camera arc.
    """

    size: tuple[float, float, float]
    wall_textures: tuple[Texture, ...]
    objects: tuple[Primitive, ...]
    path: CameraPath

    @property
    def lo(self) -> np.ndarray:
        """``[3]`` minimum corner of the room in metres."""
        return np.array([-self.size[0] / 2, -self.size[1] / 2, 0.0])

    @property
    def hi(self) -> np.ndarray:
        """``[3]`` maximum corner of the room in metres."""
        return np.array([self.size[0] / 2, self.size[1] / 2, self.size[2]])


@dataclass(frozen=True)
class RayHits:
    """Nearest hits of a bundle of rays.

    Attributes:
        t: ``[N]`` ray parameter of the hit (``point = origin + t * dir``); the z-depth for camera rays of
            unit z (:func:`models.camera.camera_rays`).
        primitive: ``[N]`` int, ``-1`` for the room, else the index into ``Room.objects``.
        face: ``[N]`` int, face within the primitive (room / box: ``2 * axis + hi``; cylinder: 0 side,
            1 top, 2 bottom; sphere: 0).
        points: ``[N, 3]`` world hit points in metres.
        normals: ``[N, 3]`` unit surface normals, facing into the free space of the room.
        rgb: ``[N, 3]`` shaded colour, float in ``[0, 1]``.
    """

    t: np.ndarray
    primitive: np.ndarray
    face: np.ndarray
    points: np.ndarray
    normals: np.ndarray
    rgb: np.ndarray


# --- random scene generation -------------------------------------------------------------------------


def _luma(rgb: np.ndarray) -> np.ndarray:
    """Rec. 601 luma ``[...]`` of linear RGB ``[..., 3]`` in ``[0, 1]``."""
    return rgb @ np.array([0.299, 0.587, 0.114])


def _lift_luma(rgb: np.ndarray, min_luma: float) -> np.ndarray:
    """``rgb`` ``[3]`` brightened (by adding grey, which raises luma 1:1) to luma >= ``min_luma``."""
    rgb = np.asarray(rgb, dtype=np.float64)
    for _ in range(8):  # adding grey may clip at 1; a few rounds always converge
        deficit = min_luma - float(_luma(rgb))
        if deficit <= 0:
            break
        rgb = np.minimum(rgb + deficit + 1e-6, 1.0)
    return rgb


def random_palette(rng: np.random.Generator) -> tuple[tuple[float, float, float], ...]:
    """Three colours for a texture: a bright and a darker one of related or contrasting hue, and an
    accent; all of luma >= :data:`MIN_ALBEDO_LUMA` so shaded colours never get near black."""
    h0 = rng.random()
    h1 = (h0 + (rng.uniform(-0.12, 0.12) if rng.random() < 0.6 else 0.5)) % 1.0
    h2 = rng.random()
    hsv = [
        (h0, rng.uniform(0.15, 0.7), rng.uniform(0.75, 1.0)),
        (h1, rng.uniform(0.25, 0.8), rng.uniform(0.35, 0.6)),
        (h2, rng.uniform(0.1, 0.6), rng.uniform(0.5, 0.95)),
    ]
    cols = [_lift_luma(np.array(colorsys.hsv_to_rgb(*c)), MIN_ALBEDO_LUMA) for c in hsv]
    return tuple(tuple(float(x) for x in c) for c in cols)


def random_texture(rng: np.random.Generator, kind: TextureKind | None = None) -> Texture:
    """A texture of random kind (or ``kind``), colours, scale, orientation and noise seed."""
    kind = kind if kind is not None else TEXTURE_KINDS[int(rng.integers(len(TEXTURE_KINDS)))]
    lo, hi = TEXTURE_SCALE_M[kind]
    direction = rng.normal(size=3)
    if kind == "stripes":
        direction[2] *= 0.3  # mostly in-plane so the stripes show on faces with uv = (q0, q1)
    direction /= np.linalg.norm(direction)
    return Texture(
        kind=kind,
        colors=random_palette(rng),
        scale=float(rng.uniform(lo, hi)),
        direction=tuple(float(x) for x in direction),
        offset=tuple(float(x) for x in rng.uniform(0.25, 0.75, size=3)),
        seed=int(rng.integers(0, 2**62)),
        detail=float(rng.uniform(0.06, 0.15)),
    )


def random_camera_path(rng: np.random.Generator, size: tuple[float, float, float]) -> CameraPath:
    """A camera arc that keeps at least :data:`CAMERA_CLEARANCE_M` from every wall, floor and ceiling.

    Args:
        rng: random generator.
        size: room extents ``(x, y, z)`` in metres.
    """
    clear = rng.uniform(0.72, 0.9, size=2)
    ax, ay = size[0] / 2 - clear[0], size[1] / 2 - clear[1]
    # A near-circular orbit keeps the camera speed and turning rate even along the arc.
    axes = (float(min(ax, MAX_ORBIT_ASPECT * ay)), float(min(ay, MAX_ORBIT_ASPECT * ax)))
    height_amp = float(rng.uniform(0.04, 0.12))
    top = size[2] - CAMERA_CLEARANCE_M - height_amp - 0.05
    height = float(min(rng.uniform(1.3, 1.55), top))
    return CameraPath(
        center_deg=float(rng.uniform(0.0, 360.0)),
        span_deg=float(rng.uniform(105.0, 170.0)),
        axes=axes,
        height=height,
        height_amp=height_amp,
        height_cycles=float(rng.uniform(0.5, 1.5)),
        height_phase=float(rng.uniform(0.0, 2 * np.pi)),
        look_beyond=float(rng.uniform(0.3, 0.8)),
        target_height=float(rng.uniform(0.35, 0.65)),
        wobble_amp=float(rng.uniform(0.1, 0.25)),
        wobble_phase=float(rng.uniform(0.0, 2 * np.pi)),
        focus_weight=float(rng.uniform(0.5, 0.8)),
    )


def arc_points(path: CameraPath, n: int = 181) -> np.ndarray:
    """``[n, 2]`` x / y positions (metres) densely covering the full camera arc of ``path``."""
    theta = np.deg2rad(path.center_deg + path.span_deg * (np.linspace(0.0, 1.0, n) - 0.5))
    return np.stack([path.axes[0] * np.cos(theta), path.axes[1] * np.sin(theta)], axis=-1)


def footprint(obj: Primitive) -> tuple[str, float, float, float, float]:
    """Floor footprint of an object: ``("rect", cx, cy, hx, hy)`` or ``("circle", cx, cy, r, r)``."""
    if isinstance(obj, Box):
        return ("rect", obj.center[0], obj.center[1], obj.half[0], obj.half[1])
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
            sphere = _sphere_on_box(rng, objects[i], ceiling)
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
    size = tuple(float(s) for s in (room_size if room_size is not None else drawn))
    wall_textures = tuple(random_texture(rng) for _ in ROOM_FACES)
    path = random_camera_path(rng, size)
    objects = place_objects(rng, size, path, n_objects)
    path = replace(path, focus=furniture_focus(objects, path))
    return Room(size=size, wall_textures=wall_textures, objects=objects, path=path)


# --- camera trajectory -------------------------------------------------------------------------------


def camera_poses(room: Room, n_frames: int) -> np.ndarray:
    """Camera-to-world poses ``[n_frames, 4, 4]`` (OpenCV axes) along the room's camera arc.

    The orbit angle advances uniformly over ``min(span_deg, MAX_ORBIT_STEP_DEG * (n_frames - 1))``
    degrees centred on the arc's middle, so consecutive frames stay close however few there are. Height
    and look-at target vary smoothly (sinusoids); the target lies ``look_beyond`` metres past the room
    centre pulled towards the furniture (``focus``), so the camera looks across the room at it.
    """
    p = room.path
    span = min(p.span_deg, MAX_ORBIT_STEP_DEG * (n_frames - 1))
    s = np.linspace(0.0, 1.0, n_frames) if n_frames > 1 else np.array([0.5])
    theta = np.deg2rad(p.center_deg + span * (s - 0.5))
    eye = np.stack(
        [
            p.axes[0] * np.cos(theta),
            p.axes[1] * np.sin(theta),
            p.height + p.height_amp * np.sin(2 * np.pi * p.height_cycles * s + p.height_phase),
        ],
        axis=-1,
    )
    out = eye[:, :2] / np.linalg.norm(eye[:, :2], axis=-1, keepdims=True)  # from the centre to the eye
    side = np.stack([-out[:, 1], out[:, 0]], axis=-1)
    wobble = p.wobble_amp * np.sin(np.pi * s + p.wobble_phase)
    beyond = -out * p.look_beyond
    target_xy = beyond + p.focus_weight * (np.asarray(p.focus) - beyond) + side * wobble[:, None]
    target = np.concatenate([target_xy, (p.target_height + 0.5 * wobble)[:, None]], axis=-1)
    up = np.array([0.0, 0.0, 1.0])
    return np.stack([look_at(e, t, up) for e, t in zip(eye, target)])


# --- procedural textures -----------------------------------------------------------------------------

_HASH_MUL = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F), np.uint64(0x165667B19E3779F9))


def _mix64(h: np.ndarray) -> np.ndarray:
    """Cheap 64-bit avalanche of uint64 ``h`` (xorshift-multiply-xorshift, wrapping arithmetic)."""
    h = h ^ (h >> np.uint64(32))
    h = h * np.uint64(0xD6E8FEB86659FD93)
    return h ^ (h >> np.uint64(29))


def _to_unit(h: np.ndarray) -> np.ndarray:
    """uint64 hashes to floats in ``[0, 1]``."""
    return h.astype(np.float64) * (1.0 / 2**64)


def hash_cells(cells: np.ndarray, seed: int) -> np.ndarray:
    """Pseudo-random values ``[N]`` in ``[0, 1]`` of integer lattice cells ``[N, 3]`` (pure function)."""
    c = cells.astype(np.int64).astype(np.uint64)
    h = (c[:, 0] * _HASH_MUL[0]) ^ (c[:, 1] * _HASH_MUL[1]) ^ (c[:, 2] * _HASH_MUL[2]) ^ np.uint64(seed)
    return _to_unit(_mix64(h))


def value_noise(q: np.ndarray, seed: int) -> np.ndarray:
    """Smooth 3D value noise ``[N]`` in ``[0, 1]`` at points ``q`` ``[N, 3]`` (lattice spacing 1).

    Random values at the integer lattice (:func:`hash_cells`), blended with smoothstep weights so the
    noise is continuous with continuous first derivatives.
    """
    base = np.floor(q)
    f = q - base
    w = f * f * (3.0 - 2.0 * f)
    ci = base.astype(np.int64).astype(np.uint64)
    one, s = np.uint64(1), np.uint64(seed)
    hx = [ci[:, 0] * _HASH_MUL[0] ^ s, (ci[:, 0] + one) * _HASH_MUL[0] ^ s]
    hy = [ci[:, 1] * _HASH_MUL[1], (ci[:, 1] + one) * _HASH_MUL[1]]
    hz = [ci[:, 2] * _HASH_MUL[2], (ci[:, 2] + one) * _HASH_MUL[2]]

    def corner(dx: int, dy: int, dz: int) -> np.ndarray:
        return _to_unit(_mix64(hx[dx] ^ hy[dy] ^ hz[dz]))

    def lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
        return a + (b - a) * t

    wx, wy, wz = w[:, 0], w[:, 1], w[:, 2]
    planes = []
    for dz in (0, 1):
        rows = [lerp(corner(0, dy, dz), corner(1, dy, dz), wx) for dy in (0, 1)]
        planes.append(lerp(rows[0], rows[1], wy))
    return lerp(planes[0], planes[1], wz)


def fbm(q: np.ndarray, seed: int, octaves: int) -> np.ndarray:
    """Fractal (multi-octave) value noise ``[N]`` in ``[0, 1]`` at ``q`` ``[N, 3]``; octave k has
    frequency ``2**k`` and amplitude ``0.5**k``."""
    total = np.zeros(len(q))
    norm = 0.0
    for k in range(octaves):
        shift = np.array([17.31, 5.77, 11.13]) * k  # decorrelate octaves' lattices
        total += 0.5**k * value_noise(q * 2.0**k + shift, seed + 7919 * k)
        norm += 0.5**k
    return total / norm


def _lerp(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Per-point blend ``[N, 3]`` of colours ``a`` and ``b`` ``[3]`` with weights ``w`` ``[N]``."""
    return a + (b - a) * w[:, None]


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def texture_albedo(tex: Texture, q: np.ndarray) -> np.ndarray:
    """Albedo ``[N, 3]`` in ``[0, 1]`` of texture ``tex`` at texture coordinates ``q`` ``[N, 3]`` (metres).

    Planar faces pass their in-plane coordinates as ``(u, v, 0)``; curved surfaces pass 3D positions
    relative to the object (a solid texture). Every pattern is modulated by fine fractal noise of
    amplitude ``tex.detail``, so no region is flat. Luma stays >= ``MIN_ALBEDO_LUMA * (1 - detail)``.
    """
    c0, c1, c2 = (np.asarray(c) for c in tex.colors)
    p = q / tex.scale + np.asarray(tex.offset)
    if tex.kind == "checker":
        parity = np.floor(p).sum(axis=1) % 2.0
        albedo = _lerp(c0, c1, parity)
    elif tex.kind == "stripes":
        phase = p @ np.asarray(tex.direction)
        w = _smoothstep(0.3, 0.7, 0.5 + 0.5 * np.sin(2 * np.pi * phase))
        accent = _smoothstep(0.93, 0.98, 0.5 + 0.5 * np.sin(np.pi * phase + 0.7))  # thin accent lines
        albedo = _lerp(_lerp(c0, c1, w), c2, accent)
    elif tex.kind == "wood":
        a = np.asarray(tex.direction)
        radial = np.linalg.norm(p - np.outer(p @ a, a), axis=1)
        ring = (radial + 0.6 * fbm(p * 0.35, tex.seed, 2)) % 1.0
        albedo = _lerp(c0, c1, ring**2.5)
    elif tex.kind == "noise":
        n = np.clip(0.5 + 1.8 * (fbm(p, tex.seed, 4) - 0.5), 0.0, 1.0)
        albedo = np.where((n < 0.5)[:, None], _lerp(c0, c1, 2 * n), _lerp(c1, c2, 2 * n - 1))
    elif tex.kind == "tiles":
        cell = np.floor(p)
        frac = p - cell
        grout_w = 0.06
        grout = np.any((frac < grout_w) | (frac > 1.0 - grout_w), axis=1)
        albedo = np.where(grout[:, None], c2, _lerp(c0, c1, hash_cells(cell, tex.seed)))
    else:
        raise ValueError(f"unknown texture kind {tex.kind!r}")
    detail = 1.0 + tex.detail * (2.0 * fbm(q * (4.0 / tex.scale), tex.seed ^ 0x5DEECE66D, 2) - 1.0)
    return np.clip(albedo * detail[:, None], 0.0, 1.0)


def shade(albedo: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """View-independent Lambertian shading ``[N, 3]``: ``albedo * (ambient + (1 - ambient) * max(0, n.l))``."""
    light = np.asarray(LIGHT_DIR) / np.linalg.norm(LIGHT_DIR)
    lambert = np.maximum(normals @ light, 0.0)
    return albedo * (AMBIENT + (1.0 - AMBIENT) * lambert)[:, None]


# --- ray / primitive intersection --------------------------------------------------------------------


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
    for j, obj in enumerate(room.objects):
        tj, fj = intersect(origin, dirs, obj)
        closer = tj < t
        t = np.where(closer, tj, t)
        face = np.where(closer, fj, face)
        prim[closer] = j
    points = origin + t[:, None] * dirs
    normals = np.zeros_like(points)
    rgb = np.zeros_like(points)
    room_hit = prim == -1
    for f, tex in enumerate(room.wall_textures):
        m = room_hit & (face == f)
        if np.any(m):
            normals[m] = _axis_face_normals(face[m], outward=False)
            rgb[m] = texture_albedo(tex, _face_uv(points[m], face[m], lo))
    for j, obj in enumerate(room.objects):
        m = prim == j
        if np.any(m):
            normals[m], q = _surface(obj, points[m], face[m])
            rgb[m] = texture_albedo(obj.texture, q)
    return RayHits(t=t, primitive=prim, face=face, points=points, normals=normals, rgb=shade(rgb, normals))


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
    dirs = rays @ c2w[:3, :3].T
    depth = np.empty(len(dirs), dtype=np.float32)
    rgb = np.empty((len(dirs), 3), dtype=np.uint8)
    for start in range(0, len(dirs), RAY_CHUNK):  # chunks keep the working set in cache
        hits = cast_rays(room, c2w[:3, 3], dirs[start : start + RAY_CHUNK])
        depth[start : start + RAY_CHUNK] = hits.t
        rgb[start : start + RAY_CHUNK] = np.round(hits.rgb * 255.0)
    depth, rgb = depth.reshape(height, width), rgb.reshape(height, width, 3)
    return Frame(frame_id=frame_id, rgb=rgb, depth=depth, K=K, c2w=c2w, source=source)


# --- ground-truth mesh -------------------------------------------------------------------------------


def primitive_mesh(obj: Primitive) -> trimesh.Trimesh:
    """Triangle mesh of one primitive in world coordinates (curved ones tessellated)."""
    if isinstance(obj, Box):
        return trimesh.creation.box(extents=2 * np.asarray(obj.half), transform=_translation(obj.center))
    if isinstance(obj, Cylinder):
        return trimesh.creation.cylinder(
            radius=obj.radius, height=obj.z1 - obj.z0, sections=CYLINDER_SECTIONS,
            transform=_translation((obj.cx, obj.cy, (obj.z0 + obj.z1) / 2)),
        )
    mesh = trimesh.creation.icosphere(subdivisions=SPHERE_SUBDIVISIONS, radius=obj.radius)
    mesh.apply_translation(obj.center)
    return mesh


def _translation(xyz: tuple[float, float, float] | np.ndarray) -> np.ndarray:
    """``[4, 4]`` homogeneous translation."""
    T = np.eye(4)
    T[:3, 3] = xyz
    return T


def room_mesh(room: Room) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth mesh of the scene: the room box (normals facing inwards) plus every object.

    Returns:
        ``vertices`` ``[V, 3]`` float32 world metres and ``faces`` ``[F, 3]`` int32.
    """
    shell = trimesh.creation.box(extents=room.size, transform=_translation((0.0, 0.0, room.size[2] / 2)))
    parts = [(np.asarray(shell.vertices), np.asarray(shell.faces)[:, ::-1])]  # inverted: seen from inside
    parts += [(np.asarray(m.vertices), np.asarray(m.faces)) for m in map(primitive_mesh, room.objects)]
    offsets = np.cumsum([0] + [len(v) for v, _ in parts[:-1]])
    vertices = np.concatenate([v for v, _ in parts]).astype(np.float32)
    faces = np.concatenate([f + o for (_, f), o in zip(parts, offsets)]).astype(np.int32)
    return vertices, faces


# --- scene sources -----------------------------------------------------------------------------------


def describe(obj: Primitive) -> str:
    """Short human-readable description of a primitive (kind, size, position, texture)."""
    if isinstance(obj, Box):
        e = 2 * np.asarray(obj.half)
        return (f"box {e[0]:.2f}x{e[1]:.2f}x{e[2]:.2f} m at ({obj.center[0]:.2f}, {obj.center[1]:.2f}), "
                f"{obj.texture.kind}")
    if isinstance(obj, Cylinder):
        return (f"cylinder r={obj.radius:.2f} h={obj.z1 - obj.z0:.2f} m at ({obj.cx:.2f}, {obj.cy:.2f}), "
                f"{obj.texture.kind}")
    x, y, z = obj.center
    where = "floor" if abs(z - obj.radius) < 1e-9 else "box"
    return f"sphere r={obj.radius:.2f} m on {where} at ({x:.2f}, {y:.2f}, {z:.2f}), {obj.texture.kind}"


def scene_rng(seed: int, index: int) -> np.random.Generator:
    """Random generator of scene ``index`` for ``seed``; independent of how many scenes there are."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(index,)))


def _load_frame(room: Room, poses: np.ndarray, K: np.ndarray, height: int, width: int, name: str, i: int) -> Frame:
    """Render frame ``i`` of a scene (the ``SceneSource.load`` of synthetic scenes)."""
    frame_id = f"{i:06d}"
    return render_frame(room, poses[i], K, height, width, frame_id=frame_id, source=f"{name}/{frame_id}")


def synthetic_scenes(cfg: SyntheticConfig, seed: int) -> list[SceneSource]:
    """Procedural rooms as scene sources; frames are rendered lazily by ``SceneSource.load(i)``.

    Deterministic for ``(cfg, seed)``. Scene ``i`` is named ``synthetic_{i:03d}``; its content depends
    only on ``seed``, ``i``, ``n_objects`` and ``room_size`` (not on image size or frame count).

    Args:
        cfg: generator settings.
        seed: non-negative random seed.

    Returns:
        ``cfg.n_scenes`` sources with exact reference depth, poses and the ground-truth mesh.
    """
    K = intrinsics_from_fov(cfg.width, cfg.height, cfg.fov_deg)
    scenes = []
    for i in range(cfg.n_scenes):
        room = random_room(scene_rng(seed, i), cfg.n_objects, cfg.room_size)
        poses = camera_poses(room, cfg.n_frames)
        name = f"synthetic_{i:03d}"
        scenes.append(
            SceneSource(
                name=name,
                source="synthetic",
                frame_ids=[f"{k:06d}" for k in range(cfg.n_frames)],
                load=functools.partial(_load_frame, room, poses, K, cfg.height, cfg.width, name),
                depth_kind="reference",
                has_sensor_depth=False,
                splits=None,
                attrs={
                    "generator": GENERATOR,
                    "seed": int(seed),
                    "room_size": [float(s) for s in room.size],
                    "objects": [describe(o) for o in room.objects],
                },
                mesh=room_mesh(room),
            )
        )
    return scenes


def synthetic_room(cfg: SyntheticConfig, seed: int, index: int = 0) -> Room:
    """The :class:`Room` behind scene ``index`` of :func:`synthetic_scenes` (for tests and tools)."""
    return random_room(scene_rng(seed, index), cfg.n_objects, cfg.room_size)
