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

Besides these evaluation rooms (role ``eval``: NeRFs are fitted on them and they are scored), the
generator makes *refiner rooms* (roles ``train`` / ``val``) for the depth refiner, from their own branch of
random streams so they never repeat an evaluation room. They look like what a depth camera records when
someone scans a room: 640 x 480 / 320 x 240 frames at Kinect v1's ~58 degree field of view, independent
hand-held views 0.5-4 m from their target (some looking down at table tops), cluttered with composed
furniture (tables and chairs on thin legs, shelves with boards and things on them, cabinets with handles,
sofas, lamps on thin poles, plants, thin panels, wall shelves and pictures), boxes turned to any angle
(:class:`OrientedBox`), plain, textured and dark materials (which the sensor model drops), and per-room
lighting (:class:`Light`). Rays are only intersected with the objects whose bounding sphere they pass.

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

from models.camera import camera_rays, intrinsics_from_fov, look_at
from tasks.datasets.base import Frame, Role, SceneSource
from tasks.datasets.config import CAMERA_CLEARANCE_M, MIN_ROOM_XY_M, MIN_ROOM_Z_M, SyntheticConfig  # noqa: F401 (re-exported)

# --- constants (immutable) ---------------------------------------------------------------------------
# (CAMERA_CLEARANCE_M, MIN_ROOM_XY_M and MIN_ROOM_Z_M live in tasks.datasets.config with SyntheticConfig.)

GENERATOR = "dnerf.synthetic"
LIGHT_DIR = (0.36, -0.48, 0.80)  # towards the light, normalised when used
AMBIENT = 0.45  # fraction of the albedo every surface gets regardless of orientation
MIN_ALBEDO_LUMA = 0.35  # palette colours are lifted to at least this luma (Rec. 601)
PLACEMENT_MARGIN_M = 0.1  # extra clearance used when placing objects away from the camera arc
OBJECT_GAP_M = 0.05  # minimum horizontal gap between objects and between objects and walls
OBJECT_SIZE_M = (0.2, 1.2)  # range of object extents (box sides, diameters, heights)
MAX_PLACEMENT_TRIES = 200  # rejection-sampling attempts per object before it is skipped
MAX_ORBIT_STEP_DEG = 6.0  # largest orbit angle between consecutive frames
MAX_ORBIT_ASPECT = 1.3  # largest ratio of the camera ellipse's semi-axes
RAY_CHUNK = 32768  # rays cast at once by render_frame
RAY_EPS = 1e-9  # hits closer than this along the ray are ignored
CYLINDER_SECTIONS = 64  # mesh tessellation of cylinders
SPHERE_SUBDIVISIONS = 3  # icosphere subdivisions of sphere meshes

# Refiner rooms (roles train / val): separately seeded, denser, darker, lit per room, seen from hand-held views.
REFINER_SPAWN_BRANCH = 0x5EF1_AE55  # first spawn-key word of refiner rooms (evaluation rooms use (index,))
REFINER_ROLE_KEYS = MappingProxyType({"train": 0, "val": 1})  # second spawn-key word, by role
REFINER_ROOM_M = ((3.0, 7.0), (2.8, 6.0), (2.4, 3.2))  # ranges of the room extents x, y, z
REFINER_MIN_LUMA = 0.12  # palette colours of refiner rooms are lifted to at least this luma
REFINER_DARK_PROB = 0.18  # probability that a furniture texture is dark (dark_palette)
REFINER_GAP_M = 0.03  # minimum horizontal gap between furniture pieces (and 0.01 to the walls)
REFINER_VIEW_M = (0.5, 4.0)  # camera-to-target distance range of the hand-held views
REFINER_EYE_Z_M = (0.3, 2.2)  # camera height range
REFINER_EYE_CLEARANCE_M = 0.15  # minimum distance from the camera to any surface's bounding box / the room
REFINER_MAX_ROLL_DEG = 6.0
MAX_VIEW_TRIES = 200  # random viewpoints tried per frame before falling back
MIN_VIEW_SURFACES = 4  # a view should show at least this many surfaces (objects and room faces) ...
BARE_VIEW_PROB = 0.1  # ... except for this fraction of otherwise acceptable views
#: Texture kinds (and their probabilities) of refiner rooms: furniture, walls, floor, ceiling.
REFINER_TEXTURES = MappingProxyType({
    "object": (("checker", "stripes", "wood", "noise", "tiles", "plain"), (0.08, 0.1, 0.22, 0.2, 0.05, 0.35)),
    "wall": (("stripes", "noise", "tiles", "checker", "wood", "plain"), (0.1, 0.15, 0.05, 0.03, 0.07, 0.6)),
    "floor": (("wood", "tiles", "noise", "checker", "plain"), (0.4, 0.2, 0.2, 0.08, 0.12)),
    "ceiling": (("plain", "noise"), (0.8, 0.2)),
})
#: Furniture kinds of refiner rooms and their probabilities.
PIECE_KINDS = MappingProxyType({
    "table": 0.17, "chair": 0.14, "shelf": 0.12, "cabinet": 0.12, "sofa": 0.06, "lamp": 0.08, "plant": 0.06,
    "clutter": 0.19, "panel": 0.06,
})

TextureKind = Literal["checker", "stripes", "wood", "noise", "tiles", "plain"]
#: Texture kinds of the evaluation rooms (``plain`` surfaces appear in refiner rooms only, so that the
#: evaluation rooms render exactly as before it existed).
TEXTURE_KINDS: tuple[TextureKind, ...] = ("checker", "stripes", "wood", "noise", "tiles")
#: Characteristic size range (metres) of each texture kind: square, period, ring spacing, feature, tile,
#: and for ``plain`` the size of its faint fine-noise modulation.
TEXTURE_SCALE_M = MappingProxyType(
    {"checker": (0.15, 0.5), "stripes": (0.1, 0.35), "wood": (0.06, 0.18), "noise": (0.2, 0.6), "tiles": (0.2, 0.5),
     "plain": (0.2, 0.6)}
)
ROOM_FACES = ("wall -x", "wall +x", "wall -y", "wall +y", "floor", "ceiling")  # face = 2 * axis + hi side
_OTHER_AXES = np.array([[1, 2], [0, 2], [0, 1]])  # in-plane axes of a face, by its normal axis


# --- scene description -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Texture:
    """A procedural texture, evaluated at texture coordinates ``q`` in metres.

    Attributes:
        kind: pattern: ``checker``, ``stripes``, ``wood``, ``noise``, ``tiles`` or ``plain`` (``colors[0]``).
        colors: three linear RGB colours in ``[0, 1]``; in evaluation rooms each of luma >=
            :data:`MIN_ALBEDO_LUMA`, in refiner rooms down to :data:`REFINER_MIN_LUMA`, or dark
            (:func:`dark_palette`).
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
class OrientedBox:
    """Box turned by ``yaw`` radians about the vertical axis through its ``center``; ``half`` extents
    ``(x, y, z)`` along its own axes (metres). Furniture of the refiner rooms stands at any angle."""

    center: tuple[float, float, float]
    half: tuple[float, float, float]
    yaw: float
    texture: Texture

    def rotation(self) -> np.ndarray:
        """``[3, 3]`` rotation from the box's axes to the world's."""
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


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


Primitive = Box | OrientedBox | Cylinder | Sphere


@dataclass(frozen=True)
class Light:
    """A room's lighting: a directional light plus ambient (see :func:`shade`).

    Attributes:
        direction: unit vector towards the light.
        intensity: scale of the shaded colour (clipped to 1).
        ambient: fraction of the albedo every surface gets regardless of orientation.
    """

    direction: tuple[float, float, float]
    intensity: float
    ambient: float


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
        path: the camera arc (evaluation rooms); ``None`` for refiner rooms, whose views are drawn one by
            one (:func:`scan_poses`).
        light: the lighting; ``None`` = the fixed :data:`LIGHT_DIR` / :data:`AMBIENT` of evaluation rooms.
    """

    size: tuple[float, float, float]
    wall_textures: tuple[Texture, ...]
    objects: tuple[Primitive, ...]
    path: CameraPath | None
    light: Light | None = None

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


def random_palette(
    rng: np.random.Generator, min_luma: float = MIN_ALBEDO_LUMA
) -> tuple[tuple[float, float, float], ...]:
    """Three colours for a texture: a bright and a darker one of related or contrasting hue, and an
    accent; all of luma >= ``min_luma`` (by default :data:`MIN_ALBEDO_LUMA`, so shaded colours never get
    near black)."""
    h0 = rng.random()
    h1 = (h0 + (rng.uniform(-0.12, 0.12) if rng.random() < 0.6 else 0.5)) % 1.0
    h2 = rng.random()
    hsv = [
        (h0, rng.uniform(0.15, 0.7), rng.uniform(0.75, 1.0)),
        (h1, rng.uniform(0.25, 0.8), rng.uniform(0.35, 0.6)),
        (h2, rng.uniform(0.1, 0.6), rng.uniform(0.5, 0.95)),
    ]
    cols = [_lift_luma(np.array(colorsys.hsv_to_rgb(*c)), min_luma) for c in hsv]
    return tuple(tuple(float(x) for x in c) for c in cols)


def dark_palette(rng: np.random.Generator) -> tuple[tuple[float, float, float], ...]:
    """Three dark colours (value 0.03-0.16, luma below ~0.16): black furniture, dark fabric, a TV. Shaded,
    much of such a surface falls under the sensor model's dark threshold and loses its depth."""
    h0 = rng.random()
    hues = (h0, (h0 + rng.uniform(-0.1, 0.1)) % 1.0, rng.random())
    cols = [colorsys.hsv_to_rgb(h, rng.uniform(0.0, 0.5), rng.uniform(0.03, 0.16)) for h in hues]
    return tuple(tuple(float(x) for x in c) for c in cols)


def random_texture(
    rng: np.random.Generator, kind: TextureKind | None = None, min_luma: float = MIN_ALBEDO_LUMA, dark: bool = False
) -> Texture:
    """A texture of random kind (or ``kind``), colours, scale, orientation and noise seed.

    ``min_luma`` lifts the palette's colours (:func:`random_palette`); ``dark`` draws a dark palette
    instead (:func:`dark_palette`). The defaults are those of the evaluation rooms.
    """
    kind = kind if kind is not None else TEXTURE_KINDS[int(rng.integers(len(TEXTURE_KINDS)))]
    lo, hi = TEXTURE_SCALE_M[kind]
    direction = rng.normal(size=3)
    if kind == "stripes":
        direction[2] *= 0.3  # mostly in-plane so the stripes show on faces with uv = (q0, q1)
    direction /= np.linalg.norm(direction)
    return Texture(
        kind=kind,
        colors=dark_palette(rng) if dark else random_palette(rng, min_luma),
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
    if p is None:
        raise ValueError("the room has no camera arc (a refiner room: its views come from scan_poses)")
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


# --- refiner rooms -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Piece:
    """A furniture composition in its own frame: footprint centred on the origin, standing on ``z = 0``
    (wall items: hanging at their height), back towards ``+y`` (the side put against a wall).

    Attributes:
        kind: what it is (a key of :data:`PIECE_KINDS`, or ``wall item``).
        parts: primitives in the piece's frame.
        half: half extents ``(hx, hy)`` of its footprint in metres.
        wall: whether it prefers its back against a wall.
    """

    kind: str
    parts: tuple[Primitive, ...]
    half: tuple[float, float]
    wall: bool


QUARTER_TURNS = ((1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0))  # exact (cos, sin) of 0, 90, 180, 270 deg
#: ``(cos, sin)`` that turn a piece's back (``+y``) towards each wall, in :data:`ROOM_FACES` order.
_BACK_TO_WALL = ((0.0, 1.0), (0.0, -1.0), (-1.0, 0.0), (1.0, 0.0))


def _refiner_texture(rng: np.random.Generator, use: str, dark_prob: float = 0.0) -> Texture:
    """A texture for a refiner room's furniture, walls, floor or ceiling (``use``, see :data:`REFINER_TEXTURES`)."""
    kinds, p = REFINER_TEXTURES[use]
    kind = kinds[int(rng.choice(len(kinds), p=p))]
    return random_texture(rng, kind, min_luma=REFINER_MIN_LUMA, dark=bool(rng.random() < dark_prob))


def _material(rng: np.random.Generator) -> Texture:
    return _refiner_texture(rng, "object", REFINER_DARK_PROB)


def _moved(obj: Primitive, dx: float, dy: float, dz: float) -> Primitive:
    """``obj`` translated by ``(dx, dy, dz)`` metres."""
    if isinstance(obj, Cylinder):
        return replace(obj, cx=obj.cx + dx, cy=obj.cy + dy, z0=obj.z0 + dz, z1=obj.z1 + dz)
    x, y, z = obj.center
    return replace(obj, center=(float(x + dx), float(y + dy), float(z + dz)))


def _posed(obj: Primitive, x: float, y: float, cos: float, sin: float) -> Primitive:
    """``obj`` turned by the angle of ``(cos, sin)`` about the vertical through the origin, then moved to
    ``(x, y)``. Boxes stay axis-aligned :class:`Box` es under exact quarter turns."""

    def move(px: float, py: float) -> tuple[float, float]:
        return float(cos * px - sin * py + x), float(sin * px + cos * py + y)

    if isinstance(obj, Cylinder):
        cx, cy = move(obj.cx, obj.cy)
        return replace(obj, cx=cx, cy=cy)
    cx, cy = move(obj.center[0], obj.center[1])
    center = (cx, cy, float(obj.center[2]))
    if isinstance(obj, Box):
        if sin == 0.0:
            return Box(center, obj.half, obj.texture)
        if cos == 0.0:
            return Box(center, (obj.half[1], obj.half[0], obj.half[2]), obj.texture)
        return OrientedBox(center, obj.half, float(np.arctan2(sin, cos)), obj.texture)
    if isinstance(obj, OrientedBox):
        return OrientedBox(center, obj.half, float(obj.yaw + np.arctan2(sin, cos)), obj.texture)
    return replace(obj, center=center)


def _standing_box(x: float, y: float, z0: float, half: tuple[float, float, float], tex: Texture) -> Box:
    """Axis-aligned box with its bottom at height ``z0`` (metres)."""
    return Box((float(x), float(y), float(z0 + half[2])), tuple(float(h) for h in half), tex)


def small_object(rng: np.random.Generator, max_height: float) -> tuple[Primitive, float] | None:
    """A small object standing on ``z = 0`` at the origin (a book or flat box at any angle, a carton, a
    cup / can / bottle, a ball) at most ``max_height`` tall, and the radius of its footprint; ``None``
    when nothing fits under ``max_height``."""
    if max_height < 0.04:
        return None
    tex = _material(rng)
    kind = int(rng.choice(4, p=[0.4, 0.2, 0.25, 0.15]))
    if kind == 0:
        hx, hy = rng.uniform(0.06, 0.16), rng.uniform(0.04, 0.12)
        hz = min(rng.uniform(0.01, 0.03), max_height / 2)
        yaw = float(rng.uniform(0.0, np.pi))
        return OrientedBox((0.0, 0.0, float(hz)), (float(hx), float(hy), float(hz)), yaw, tex), float(np.hypot(hx, hy))
    if kind == 1:
        hx, hy, hz = rng.uniform(0.03, 0.12, size=3)
        hz = min(hz, max_height / 2)
        return _standing_box(0.0, 0.0, 0.0, (hx, hy, hz), tex), float(np.hypot(hx, hy))
    if kind == 2:
        r, h = rng.uniform(0.025, 0.05), min(rng.uniform(0.06, 0.32), max_height)
        return Cylinder(0.0, 0.0, float(r), 0.0, float(h), tex), float(r)
    r = min(rng.uniform(0.025, 0.1), max_height / 2)
    return Sphere((0.0, 0.0, float(r)), float(r), tex), float(r)


def objects_on_surface(
    rng: np.random.Generator, rect: tuple[float, float, float, float], z: float, clearance: float, n: int
) -> list[Primitive]:
    """Up to ``n`` small objects (:func:`small_object`) standing on a horizontal surface at height ``z``
    inside ``rect = (cx, cy, hx, hy)``, apart from each other and at most ``clearance`` tall."""
    cx, cy, hx, hy = rect
    placed: list[tuple[float, float, float]] = []
    out: list[Primitive] = []
    for _ in range(n):
        for _ in range(20):
            drawn = small_object(rng, clearance)
            if drawn is None:
                return out
            obj, r = drawn
            if r > min(hx, hy):
                continue
            x, y = rng.uniform(cx - hx + r, cx + hx - r), rng.uniform(cy - hy + r, cy + hy - r)
            if any(np.hypot(x - px, y - py) < r + pr + 0.01 for px, py, pr in placed):
                continue
            placed.append((x, y, r))
            out.append(_moved(obj, float(x), float(y), float(z)))
            break
    return out


def _legs(w: float, d: float, height: float, side: float, inset: float, round_: bool, tex: Texture) -> list[Primitive]:
    """Four thin legs (square boxes or cylinders of width ``side``) under the corners of a ``w x d`` top."""
    legs: list[Primitive] = []
    for sx in (-1, 1):
        for sy in (-1, 1):
            x, y = sx * (w / 2 - inset - side / 2), sy * (d / 2 - inset - side / 2)
            if round_:
                legs.append(Cylinder(float(x), float(y), float(side / 2), 0.0, float(height), tex))
            else:
                legs.append(_standing_box(x, y, 0.0, (side / 2, side / 2, height / 2), tex))
    return legs


def table_piece(rng: np.random.Generator) -> Piece:
    """A table (coffee table to desk): a 2-5 cm top on four thin legs, sometimes a low shelf between the
    legs, small objects on top."""
    w, d, h = rng.uniform(0.6, 1.8), rng.uniform(0.5, 1.0), rng.uniform(0.45, 0.8)
    th = rng.uniform(0.02, 0.05)
    top = _material(rng)
    leg_tex = top if rng.random() < 0.6 else _material(rng)
    side, inset, round_ = rng.uniform(0.03, 0.07), rng.uniform(0.0, 0.1), bool(rng.random() < 0.4)
    parts: list[Primitive] = [_standing_box(0.0, 0.0, h - th, (w / 2, d / 2, th / 2), top)]
    parts += _legs(w, d, h - th, side, inset, round_, leg_tex)
    if h > 0.55 and rng.random() < 0.3:
        z, bt = rng.uniform(0.1, 0.25), 0.02
        ihx, ihy = w / 2 - inset - side, d / 2 - inset - side
        parts.append(_standing_box(0.0, 0.0, z, (ihx, ihy, bt / 2), leg_tex))
        parts += objects_on_surface(rng, (0.0, 0.0, ihx, ihy), z + bt, h - th - z - bt - 0.05, int(rng.integers(0, 3)))
    parts += objects_on_surface(rng, (0.0, 0.0, w / 2 - 0.03, d / 2 - 0.03), h, 0.4, int(rng.integers(0, 6)))
    return Piece("table", tuple(parts), (float(w / 2), float(d / 2)), wall=bool(rng.random() < 0.3))


def chair_piece(rng: np.random.Generator) -> Piece:
    """A chair: seat on four thin legs, and a solid back or two posts with a rail (at ``+y``)."""
    w, d = rng.uniform(0.38, 0.5, size=2)
    sh, st = rng.uniform(0.42, 0.5), rng.uniform(0.03, 0.06)
    tex = _material(rng)
    leg_tex = tex if rng.random() < 0.5 else _material(rng)
    side, inset = rng.uniform(0.025, 0.045), rng.uniform(0.0, 0.03)
    parts: list[Primitive] = [_standing_box(0.0, 0.0, sh - st, (w / 2, d / 2, st / 2), tex)]
    parts += _legs(w, d, sh - st, side, inset, bool(rng.random() < 0.3), leg_tex)
    bh, bt = rng.uniform(0.3, 0.5), rng.uniform(0.02, 0.04)
    if rng.random() < 0.6:
        parts.append(_standing_box(0.0, d / 2 - bt / 2, sh, (w / 2, bt / 2, bh / 2), tex))
    else:
        y = d / 2 - inset - side / 2
        for sx in (-1, 1):
            parts.append(_standing_box(sx * (w / 2 - inset - side / 2), y, sh, (side / 2, side / 2, bh / 2), leg_tex))
        rail = rng.uniform(0.04, 0.1)
        parts.append(_standing_box(0.0, y, sh + bh - rail, (w / 2 - inset - side, side / 2, rail / 2), tex))
    return Piece("chair", tuple(parts), (float(w / 2), float(d / 2)), wall=False)


def shelf_piece(rng: np.random.Generator) -> Piece:
    """A bookshelf: two side panels, 3-6 boards of 1.5-3 cm, sometimes a back panel; things on the boards."""
    w, d, h = rng.uniform(0.5, 1.4), rng.uniform(0.22, 0.45), rng.uniform(0.7, 2.0)
    t = rng.uniform(0.015, 0.03)
    tex = _material(rng)
    parts: list[Primitive] = [
        _standing_box(sx * (w / 2 - t / 2), 0.0, 0.0, (t / 2, d / 2, h / 2), tex) for sx in (-1, 1)
    ]
    bt = 0.008 if rng.random() < 0.5 else 0.0
    if bt:
        parts.append(_standing_box(0.0, d / 2 - bt / 2, 0.0, (w / 2 - t, bt / 2, h / 2), tex))
    zs = np.linspace(rng.uniform(0.02, 0.1), h - t, int(rng.integers(3, 7)))
    hx, hy, y0 = w / 2 - t, (d - bt) / 2, -bt / 2
    for k, z in enumerate(zs):
        parts.append(_standing_box(0.0, y0, z, (hx, hy, t / 2), tex))
        clearance = zs[k + 1] - z - t - 0.02 if k + 1 < len(zs) else 0.35
        parts += objects_on_surface(rng, (0.0, y0, hx - 0.01, hy - 0.01), z + t, clearance, int(rng.integers(0, 5)))
    return Piece("shelf", tuple(parts), (float(w / 2), float(d / 2)), wall=bool(rng.random() < 0.85))


def cabinet_piece(rng: np.random.Generator) -> Piece:
    """A cabinet / chest of drawers: a block, sometimes an overhanging top, thin handles on the front
    (``-y``), things on top."""
    w, d, h = rng.uniform(0.4, 1.4), rng.uniform(0.35, 0.65), rng.uniform(0.4, 1.2)
    tex = _material(rng)
    over, tt = (rng.uniform(0.01, 0.03), rng.uniform(0.02, 0.04)) if rng.random() < 0.4 else (0.0, 0.0)
    body = h - tt
    parts: list[Primitive] = [_standing_box(0.0, 0.0, 0.0, (w / 2, d / 2, body / 2), tex)]
    if tt:
        parts.append(_standing_box(0.0, 0.0, body, (w / 2 + over, d / 2 + over, tt / 2), _material(rng)))
    stick = 0.0
    if rng.random() < 0.6:
        hx, stick, hz = rng.uniform(0.04, 0.1), rng.uniform(0.01, 0.025), rng.uniform(0.005, 0.012)
        metal = _material(rng)
        xs = (0.0,) if rng.random() < 0.5 else (-w / 4, w / 4)
        for x in xs:
            z = rng.uniform(0.5, 0.85) * body
            parts.append(_standing_box(x, -d / 2 - stick / 2, z, (hx, stick / 2, hz), metal))
    parts += objects_on_surface(rng, (0.0, 0.0, w / 2 - 0.03, d / 2 - 0.03), h, 0.45, int(rng.integers(0, 5)))
    return Piece("cabinet", tuple(parts), (float(w / 2 + over), float(d / 2 + max(over, stick))),
                 wall=bool(rng.random() < 0.7))


def sofa_piece(rng: np.random.Generator) -> Piece:
    """A sofa: seat block, back at ``+y``, usually arms, sometimes cushions against the back."""
    w, d = rng.uniform(1.2, 2.2), rng.uniform(0.75, 1.0)
    sh, bt, bh = rng.uniform(0.38, 0.48), rng.uniform(0.15, 0.25), rng.uniform(0.7, 0.9)
    tex = _material(rng)
    aw = rng.uniform(0.1, 0.2) if rng.random() < 0.7 else 0.0
    sd = d - bt
    parts: list[Primitive] = [
        _standing_box(0.0, -bt / 2, 0.0, (w / 2 - aw, sd / 2, sh / 2), tex),
        _standing_box(0.0, d / 2 - bt / 2, 0.0, (w / 2, bt / 2, bh / 2), tex),
    ]
    if aw:
        ah = rng.uniform(0.55, 0.65)
        parts += [_standing_box(sx * (w / 2 - aw / 2), -bt / 2, 0.0, (aw / 2, sd / 2, ah / 2), tex) for sx in (-1, 1)]
    n_cushions = int(rng.integers(0, 3))
    for k in range(n_cushions):
        chx, chy, chz = rng.uniform(0.15, 0.25), rng.uniform(0.05, 0.09), rng.uniform(0.15, 0.22)
        x = (k - (n_cushions - 1) / 2) * (w - 2 * aw) / max(n_cushions, 1)
        parts.append(_standing_box(x, d / 2 - bt - chy, sh, (chx, chy, chz), _material(rng)))
    return Piece("sofa", tuple(parts), (float(w / 2), float(d / 2)), wall=bool(rng.random() < 0.8))


def lamp_piece(rng: np.random.Generator) -> Piece:
    """A floor lamp: a base disc, a 1.6-4 cm pole and a cylindrical or round shade."""
    tex = _material(rng)
    br, bh, top = rng.uniform(0.1, 0.18), rng.uniform(0.02, 0.04), rng.uniform(1.1, 1.8)
    parts: list[Primitive] = [Cylinder(0.0, 0.0, float(br), 0.0, float(bh), tex),
                              Cylinder(0.0, 0.0, float(rng.uniform(0.008, 0.02)), float(bh), float(top), tex)]
    if rng.random() < 0.6:
        sr = rng.uniform(0.12, 0.25)
        parts.append(Cylinder(0.0, 0.0, float(sr), float(top), float(top + rng.uniform(0.15, 0.3)), _material(rng)))
    else:
        sr = rng.uniform(0.08, 0.16)
        parts.append(Sphere((0.0, 0.0, float(top + sr)), float(sr), _material(rng)))
    r = float(max(br, sr))
    return Piece("lamp", tuple(parts), (r, r), wall=False)


def plant_piece(rng: np.random.Generator) -> Piece:
    """A potted plant: a cylindrical pot and one to three overlapping round crowns."""
    pr, ph = rng.uniform(0.1, 0.25), rng.uniform(0.15, 0.5)
    parts: list[Primitive] = [Cylinder(0.0, 0.0, float(pr), 0.0, float(ph), _material(rng))]
    leaves = random_texture(rng, "noise", min_luma=REFINER_MIN_LUMA)
    reach = pr
    for _ in range(int(rng.integers(1, 4))):
        r = rng.uniform(0.9, 1.6) * pr
        dx, dy = rng.uniform(-0.3, 0.3, size=2) * pr
        parts.append(Sphere((float(dx), float(dy), float(ph + 0.8 * r)), float(r), leaves))
        reach = max(reach, float(np.hypot(dx, dy) + r))
    return Piece("plant", tuple(parts), (reach, reach), wall=False)


def clutter_piece(rng: np.random.Generator) -> Piece:
    """Something on the floor: a box or a stack of cartons, a bin / stool, or a ball."""
    tex = _material(rng)
    kind = int(rng.choice(4, p=[0.35, 0.25, 0.2, 0.2]))
    if kind == 0:
        hx, hy = rng.uniform(0.05, 0.35, size=2)
        hz = rng.uniform(0.05, 0.45)
        return Piece("clutter", (_standing_box(0.0, 0.0, 0.0, (hx, hy, hz), tex),), (float(hx), float(hy)), wall=False)
    if kind == 1:
        parts: list[Primitive] = []
        hx, hy, z = rng.uniform(0.15, 0.35), rng.uniform(0.12, 0.3), 0.0
        for _ in range(int(rng.integers(2, 4))):
            hz = rng.uniform(0.08, 0.2)
            dx, dy = rng.uniform(-0.03, 0.03, size=2)
            parts.append(_standing_box(dx, dy, z, (hx, hy, hz), _material(rng)))
            z += 2 * hz
            hx, hy = hx * rng.uniform(0.6, 0.95), hy * rng.uniform(0.6, 0.95)
        return Piece("cartons", tuple(parts), (float(parts[0].half[0] + 0.03), float(parts[0].half[1] + 0.03)),
                     wall=bool(rng.random() < 0.5))
    if kind == 2:
        r = rng.uniform(0.05, 0.3)
        return Piece("clutter", (Cylinder(0.0, 0.0, float(r), 0.0, float(rng.uniform(0.1, 1.0)), tex),),
                     (float(r), float(r)), wall=False)
    r = rng.uniform(0.05, 0.35)
    return Piece("clutter", (Sphere((0.0, 0.0, float(r)), float(r), tex),), (float(r), float(r)), wall=False)


def panel_piece(rng: np.random.Generator) -> Piece:
    """A thin standing board (2-5 cm: a screen, a mirror, a room divider), sometimes on two feet."""
    t, w, h = rng.uniform(0.02, 0.05), rng.uniform(0.3, 1.2), rng.uniform(0.4, 1.6)
    tex = _material(rng)
    feet = rng.random() < 0.5
    fz = 0.03 if feet else 0.0
    parts: list[Primitive] = [_standing_box(0.0, 0.0, fz, (w / 2, t / 2, h / 2), tex)]
    hy = t / 2
    if feet:
        hy = rng.uniform(0.08, 0.18)
        parts += [_standing_box(sx * (w / 2 - 0.03), 0.0, 0.0, (0.02, hy, fz / 2), tex) for sx in (-1, 1)]
    return Piece("panel", tuple(parts), (float(w / 2), float(hy)), wall=bool(rng.random() < 0.5))


PIECE_BUILDERS = MappingProxyType({
    "table": table_piece, "chair": chair_piece, "shelf": shelf_piece, "cabinet": cabinet_piece,
    "sofa": sofa_piece, "lamp": lamp_piece, "plant": plant_piece, "clutter": clutter_piece, "panel": panel_piece,
})


def wall_item(rng: np.random.Generator, ceiling: float) -> Piece | None:
    """Something hanging on a wall at ``y = +half[1]`` of its frame: a picture frame, a dark screen or a
    wall shelf (2-3 cm board) with things on it; ``None`` when the room is too low."""
    kind = int(rng.choice(3, p=[0.45, 0.2, 0.35]))
    if kind == 2:
        w, d, t = rng.uniform(0.4, 1.2), rng.uniform(0.15, 0.3), rng.uniform(0.02, 0.03)
        z = rng.uniform(0.9, 1.9)
        if z + t + 0.3 > ceiling:
            return None
        parts: list[Primitive] = [_standing_box(0.0, 0.0, z, (w / 2, d / 2, t / 2), _material(rng))]
        parts += objects_on_surface(rng, (0.0, 0.0, w / 2 - 0.02, d / 2 - 0.02), z + t, 0.3, int(rng.integers(0, 4)))
        return Piece("wall shelf", tuple(parts), (float(w / 2), float(d / 2)), wall=True)
    w, h = rng.uniform(0.25, 1.2), rng.uniform(0.2, 0.9)
    t = rng.uniform(0.015, 0.04) if kind == 0 else rng.uniform(0.03, 0.07)
    z = rng.uniform(0.7, 1.5)
    if z + h > ceiling:
        return None
    tex = _material(rng) if kind == 0 else random_texture(rng, "plain", dark=True)
    return Piece("picture" if kind == 0 else "screen", (_standing_box(0.0, 0.0, z, (w / 2, t / 2, h / 2), tex),),
                 (float(w / 2), float(t / 2)), wall=True)


def _turned_half(half: tuple[float, float], cos: float, sin: float) -> tuple[float, float]:
    """Half extents of the axis-aligned bounding rectangle of a ``2 half`` rectangle turned by ``(cos, sin)``."""
    return (abs(cos) * half[0] + abs(sin) * half[1], abs(sin) * half[0] + abs(cos) * half[1])


Pose = tuple[float, float, float, float]  # (x, y, cos, sin) of a piece in the room


def _wall_pose(rng: np.random.Generator, piece: Piece, size: tuple[float, float, float]) -> Pose | None:
    """``(x, y, cos, sin)`` of ``piece`` with its back against a random wall, or ``None`` if it is too wide."""
    k = int(rng.integers(4))
    cos, sin = _BACK_TO_WALL[k]
    ex, ey = _turned_half(piece.half, cos, sin)
    axis = k // 2  # the wall's normal axis
    half_room = np.array(size[:2]) / 2
    along_axis = 1 - axis
    e = (ex, ey)
    room_along = half_room[along_axis] - e[along_axis] - 0.01
    if room_along < 0:
        return None
    pos = np.zeros(2)
    pos[along_axis] = rng.uniform(-room_along, room_along)
    pos[axis] = (1 if k % 2 else -1) * (half_room[axis] - e[axis] - 0.005)
    return float(pos[0]), float(pos[1]), cos, sin


def _free_pose(rng: np.random.Generator, piece: Piece, size: tuple[float, float, float]) -> Pose | None:
    """``(x, y, cos, sin)`` of ``piece`` anywhere in the room: at a quarter turn or at any angle."""
    if rng.random() < 0.5:
        cos, sin = QUARTER_TURNS[int(rng.integers(4))]
    else:
        yaw = rng.uniform(0.0, 2 * np.pi)
        cos, sin = float(np.cos(yaw)), float(np.sin(yaw))
    ex, ey = _turned_half(piece.half, cos, sin)
    rx, ry = size[0] / 2 - ex - 0.01, size[1] / 2 - ey - 0.01
    if rx < 0 or ry < 0:
        return None
    return float(rng.uniform(-rx, rx)), float(rng.uniform(-ry, ry)), cos, sin


def _chairs_around(rng: np.random.Generator, table: Piece) -> list[Piece]:
    """One to four chairs facing the sides of ``table`` (in the table's frame), pulled out a little."""
    out = []
    tx, ty = table.half
    for side in rng.permutation(4)[: int(rng.integers(1, 5))]:
        chair = chair_piece(rng)
        cx, cy = chair.half
        gap = rng.uniform(0.02, 0.3)
        # (cos, sin) turning the chair's back (+y) away from the table, and the chair centre, per side.
        cos, sin = ((1.0, 0.0), (-1.0, 0.0), (0.0, -1.0), (0.0, 1.0))[int(side)]
        along_half = tx if side < 2 else ty
        if cx > along_half - 0.05:
            continue
        along = rng.uniform(-(along_half - cx - 0.05), along_half - cx - 0.05)
        if side == 0:
            x, y = along, ty + gap + cy
        elif side == 1:
            x, y = along, -(ty + gap + cy)
        elif side == 2:
            x, y = tx + gap + cy, along
        else:
            x, y = -(tx + gap + cy), along
        parts = tuple(_posed(p, x, y, cos, sin) for p in chair.parts)
        out.append(Piece("chair", parts, (0.0, 0.0), wall=False))
    return out


def _parts_rect(parts: tuple[Primitive, ...]) -> tuple[str, float, float, float, float]:
    """Axis-aligned floor footprint ``("rect", cx, cy, hx, hy)`` of primitives (their bounding rectangle)."""
    lo = np.min([bounds(p)[0] for p in parts], axis=0)
    hi = np.max([bounds(p)[1] for p in parts], axis=0)
    c, h = (lo + hi) / 2, (hi - lo) / 2
    return ("rect", float(c[0]), float(c[1]), float(h[0]), float(h[1]))


def _boxes_overlap(parts: tuple[Primitive, ...], others: list[Primitive], margin: float) -> bool:
    """Whether the bounding box of any of ``parts`` comes within ``margin`` of one of ``others``."""
    if not others:
        return False
    olo = np.array([bounds(o)[0] for o in others]) - margin
    ohi = np.array([bounds(o)[1] for o in others]) + margin
    for p in parts:
        lo, hi = bounds(p)
        if np.any(np.all((lo < ohi) & (hi > olo), axis=1)):
            return True
    return False


def random_refiner_room(
    rng: np.random.Generator, n_pieces: tuple[int, int] = (6, 16)
) -> tuple[Room, tuple[str, ...]]:
    """A random cluttered room for the depth refiner, and a description of its furniture.

    Rooms are 3-7 x 2.8-6 m, 2.4-3.2 m high, lit by their own light (direction, intensity, ambient). Between
    ``n_pieces[0]`` and ``n_pieces[1]`` pieces (tables, chairs, shelves, cabinets, sofas, lamps, plants,
    panels, floor clutter; some of them dark) stand against the walls or anywhere at any angle, without
    overlapping; tables get chairs around them, surfaces get small objects, walls get pictures, screens and
    shelves. Pieces that do not fit are skipped.

    Args:
        rng: random generator (the only source of randomness).
        n_pieces: range ``(min, max)`` of furniture pieces drawn.
    """
    size = tuple(float(rng.uniform(lo, hi)) for lo, hi in REFINER_ROOM_M)
    walls = tuple(_refiner_texture(rng, "wall", 0.03) for _ in range(4))
    wall_textures = (*walls, _refiner_texture(rng, "floor", 0.15), _refiner_texture(rng, "ceiling"))
    el, az = np.deg2rad(rng.uniform(25.0, 85.0)), rng.uniform(0.0, 2 * np.pi)
    light = Light(
        direction=(float(np.cos(el) * np.cos(az)), float(np.cos(el) * np.sin(az)), float(np.sin(el))),
        intensity=float(rng.uniform(0.65, 1.15)),
        ambient=float(rng.uniform(0.2, 0.6)),
    )
    kinds = tuple(PIECE_KINDS)
    probs = np.array([PIECE_KINDS[k] for k in kinds])
    walls_fp = [  # half-metre-thick slabs just outside each wall, as footprints
        ("rect", -size[0] / 2 - 0.5, 0.0, 0.5, size[1]), ("rect", size[0] / 2 + 0.5, 0.0, 0.5, size[1]),
        ("rect", 0.0, -size[1] / 2 - 0.5, size[0], 0.5), ("rect", 0.0, size[1] / 2 + 0.5, size[0], 0.5),
    ]
    objects: list[Primitive] = []
    footprints: list[tuple[str, float, float, float, float]] = []
    names: list[str] = []

    def fits(fp: tuple[str, float, float, float, float]) -> bool:
        return all(footprint_gap(fp, w) >= 0.0 for w in walls_fp) and all(
            footprint_gap(fp, o) >= REFINER_GAP_M for o in footprints)

    for _ in range(int(rng.integers(n_pieces[0], n_pieces[1] + 1))):
        piece = PIECE_BUILDERS[kinds[int(rng.choice(len(kinds), p=probs / probs.sum()))]](rng)
        for _ in range(MAX_PLACEMENT_TRIES // 4):
            against_wall = piece.wall and rng.random() < 0.85
            pose = _wall_pose(rng, piece, size) if against_wall else _free_pose(rng, piece, size)
            if pose is None:
                continue
            parts = tuple(_posed(p, *pose) for p in piece.parts)
            fp = _parts_rect(parts)
            if not fits(fp):
                continue
            objects += parts
            footprints.append(fp)
            names.append(f"{piece.kind} at ({pose[0]:.2f}, {pose[1]:.2f})" + (" by the wall" if against_wall else ""))
            if piece.kind == "table" and not against_wall and rng.random() < 0.6:
                for chair in _chairs_around(rng, piece):
                    parts = tuple(_posed(p, *pose) for p in chair.parts)
                    fp = _parts_rect(parts)
                    if fits(fp):
                        objects += parts
                        footprints.append(fp)
                        names.append(f"chair at the table at ({fp[1]:.2f}, {fp[2]:.2f})")
            break
    for _ in range(int(rng.integers(0, 5))):
        item = wall_item(rng, size[2] - 0.1)
        if item is None:
            continue
        for _ in range(20):
            pose = _wall_pose(rng, item, size)
            if pose is None:
                continue
            parts = tuple(_posed(p, *pose) for p in item.parts)
            if not _boxes_overlap(parts, objects, 0.02):
                objects += parts
                names.append(f"{item.kind} on the wall at ({pose[0]:.2f}, {pose[1]:.2f})")
                break
    room = Room(size=size, wall_textures=wall_textures, objects=tuple(objects), path=None, light=light)
    return room, tuple(names)


def _eye_clear(eye: np.ndarray, room: Room, lo: np.ndarray, hi: np.ndarray) -> bool:
    """Whether a camera at ``eye`` keeps :data:`REFINER_EYE_CLEARANCE_M` from the room's shell and from the
    bounding box of every object (``lo`` / ``hi`` ``[n, 3]``)."""
    c = REFINER_EYE_CLEARANCE_M
    if np.any(eye <= room.lo + c) or np.any(eye >= room.hi - c):
        return False
    if not REFINER_EYE_Z_M[0] <= eye[2] <= REFINER_EYE_Z_M[1]:
        return False
    return not (len(lo) and np.any(np.all((eye > lo - c) & (eye < hi + c), axis=1)))


def _roll(c2w: np.ndarray, deg: float) -> np.ndarray:
    """``c2w`` turned by ``deg`` degrees about its own viewing axis."""
    a = np.deg2rad(deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    out = c2w.copy()
    out[:3, :3] = c2w[:3, :3] @ rz
    return out


def _surfaces_seen(room: Room, c2w: np.ndarray, probe: np.ndarray) -> int:
    """Number of distinct surfaces (objects and room faces) hit by the ``probe`` camera rays ``[n, 3]``."""
    hits = cast_rays(room, c2w[:3, 3], probe @ np.ascontiguousarray(c2w[:3, :3].T))
    return len(np.unique(np.where(hits.primitive >= 0, hits.primitive, -1 - hits.face)))


def scan_poses(rng: np.random.Generator, room: Room, n_frames: int, fov_deg: float = 58.0) -> np.ndarray:
    """Camera-to-world poses ``[n_frames, 4, 4]`` (OpenCV axes) of independent hand-held-like views.

    Each view looks at a target: a point of a random object (mostly; small objects are many, so tables
    and shelves are looked at often) or of the walls / floor, from 0.5-4 m (log-uniform), from slightly
    below to 35 degrees above it, or steeply (35-70 degrees) down at low targets such as table tops, with
    a few degrees of roll. The camera keeps :data:`REFINER_EYE_CLEARANCE_M` from every surface, stays
    0.3-2.2 m above the floor, and sees its target unoccluded. Views of fewer than
    :data:`MIN_VIEW_SURFACES` surfaces (a bare wall) are mostly redrawn; a coarse 12 x 9 ray grid of a
    camera with horizontal field of view ``fov_deg`` tells.
    """
    lo = np.array([bounds(o)[0] for o in room.objects]).reshape(-1, 3)
    hi = np.array([bounds(o)[1] for o in room.objects]).reshape(-1, 3)
    up = np.array([0.0, 0.0, 1.0])
    probe = camera_rays(intrinsics_from_fov(12, 9, fov_deg), 9, 12).reshape(-1, 3)
    poses = []
    for _ in range(n_frames):
        pose = None
        for _ in range(MAX_VIEW_TRIES):
            if len(lo) and rng.random() < 0.75:
                j = int(rng.integers(len(lo)))
                target = np.clip(rng.uniform(lo[j], hi[j]), room.lo + 0.02, room.hi - 0.02)
            else:
                target = rng.uniform(room.lo * 0.9, np.array([*room.hi[:2] * 0.9, 2.0]))
            steep = target[2] < 1.1 and rng.random() < 0.4
            el = np.deg2rad(rng.uniform(35.0, 70.0) if steep else rng.uniform(-15.0, 35.0))
            az = rng.uniform(0.0, 2 * np.pi)
            dist = np.exp(rng.uniform(*np.log(REFINER_VIEW_M)))
            eye = target + dist * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
            if not _eye_clear(eye, room, lo, hi):
                continue
            if cast_rays(room, eye, (target - eye)[None]).t[0] < 0.9:  # t = 1 at the target
                continue
            pose = _roll(look_at(eye, target, up), rng.uniform(-REFINER_MAX_ROLL_DEG, REFINER_MAX_ROLL_DEG))
            if _surfaces_seen(room, pose, probe) >= MIN_VIEW_SURFACES or rng.random() < BARE_VIEW_PROB:
                break
            pose = None
        if pose is None:  # no view found: look level across the room from any clear spot
            for _ in range(10 * MAX_VIEW_TRIES):
                eye = rng.uniform(room.lo, room.hi)
                if _eye_clear(eye, room, lo, hi):
                    break
            else:
                raise RuntimeError(f"no free camera position in a refiner room of size {room.size}")
            yaw = rng.uniform(0.0, 2 * np.pi)
            pose = look_at(eye, eye + np.array([np.cos(yaw), np.sin(yaw), -0.3]), up)
        poses.append(pose)
    return np.stack(poses)


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
    elif tex.kind == "plain":
        albedo = np.broadcast_to(c0, q.shape)
    else:
        raise ValueError(f"unknown texture kind {tex.kind!r}")
    detail = 1.0 + tex.detail * (2.0 * fbm(q * (4.0 / tex.scale), tex.seed ^ 0x5DEECE66D, 2) - 1.0)
    return np.clip(albedo * detail[:, None], 0.0, 1.0)


def shade(albedo: np.ndarray, normals: np.ndarray, light: Light | None = None) -> np.ndarray:
    """View-independent Lambertian shading ``[N, 3]`` in ``[0, 1]``:
    ``intensity * albedo * (ambient + (1 - ambient) * max(0, n.l))``; ``light=None`` is the evaluation
    rooms' fixed :data:`LIGHT_DIR` and :data:`AMBIENT` at intensity 1."""
    if light is None:
        light_dir = np.asarray(LIGHT_DIR) / np.linalg.norm(LIGHT_DIR)
        lambert = np.maximum(normals @ light_dir, 0.0)
        return albedo * (AMBIENT + (1.0 - AMBIENT) * lambert)[:, None]
    lambert = np.maximum(normals @ np.asarray(light.direction), 0.0)
    gain = light.intensity * (light.ambient + (1.0 - light.ambient) * lambert)
    return np.clip(albedo * gain[:, None], 0.0, 1.0)


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
    for k, rows in zip(keys, np.split(order, starts[1:])):
        if k < 0:
            f = face[rows]
            normals[rows] = _axis_face_normals(f, outward=False)
            rgb[rows] = texture_albedo(room.wall_textures[int(k) + len(ROOM_FACES)], _face_uv(points[rows], f, lo))
        else:
            obj = room.objects[int(k)]
            normals[rows], q = _surface(obj, points[rows], face[rows])
            rgb[rows] = texture_albedo(obj.texture, q)
    return RayHits(t=t, primitive=prim, face=face, points=points, normals=normals, rgb=shade(rgb, normals, room.light))


def bounding_sphere(obj: Primitive) -> tuple[np.ndarray, float]:
    """Centre ``[3]`` and radius (metres) of a sphere enclosing a primitive."""
    if isinstance(obj, (Box, OrientedBox)):
        return np.asarray(obj.center, dtype=np.float64), float(np.linalg.norm(obj.half))
    if isinstance(obj, Cylinder):
        h = (obj.z1 - obj.z0) / 2
        return np.array([obj.cx, obj.cy, obj.z0 + h]), float(np.hypot(obj.radius, h))
    return np.asarray(obj.center, dtype=np.float64), float(obj.radius)


def bounds(obj: Primitive) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned bounding box ``(lo [3], hi [3])`` of a primitive in world metres."""
    if isinstance(obj, Box):
        c, h = np.asarray(obj.center), np.asarray(obj.half)
    elif isinstance(obj, OrientedBox):
        c, h = np.asarray(obj.center), np.abs(obj.rotation()) @ np.asarray(obj.half)
    elif isinstance(obj, Cylinder):
        c = np.array([obj.cx, obj.cy, (obj.z0 + obj.z1) / 2])
        h = np.array([obj.radius, obj.radius, (obj.z1 - obj.z0) / 2])
    else:
        c, h = np.asarray(obj.center), np.full(3, obj.radius)
    return c - h, c + h


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


# --- ground-truth mesh -------------------------------------------------------------------------------


def primitive_mesh(obj: Primitive) -> trimesh.Trimesh:
    """Triangle mesh of one primitive in world coordinates (curved ones tessellated)."""
    if isinstance(obj, Box):
        return trimesh.creation.box(extents=2 * np.asarray(obj.half), transform=_translation(obj.center))
    if isinstance(obj, OrientedBox):
        T = _translation(obj.center)
        T[:3, :3] = obj.rotation()
        return trimesh.creation.box(extents=2 * np.asarray(obj.half), transform=T)
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
    if isinstance(obj, OrientedBox):
        e = 2 * np.asarray(obj.half)
        return (f"box {e[0]:.2f}x{e[1]:.2f}x{e[2]:.2f} m at ({obj.center[0]:.2f}, {obj.center[1]:.2f}, "
                f"{obj.center[2]:.2f}) turned {np.degrees(obj.yaw):.0f} deg, {obj.texture.kind}")
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


def refiner_rng(seed: int, role: Literal["train", "val"], index: int) -> np.random.Generator:
    """Random generator of refiner room ``index`` of ``role`` for ``seed``: its own spawn-key branch, so a
    refiner room never repeats an evaluation room (keys ``(index,)``) nor a room of the other role."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    key = (REFINER_SPAWN_BRANCH, REFINER_ROLE_KEYS[role], index)
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=key))


def refiner_room(
    cfg: SyntheticConfig, seed: int, role: Literal["train", "val"], index: int = 0
) -> tuple[Room, tuple[str, ...], np.ndarray]:
    """Refiner room ``index`` of ``role``: the :class:`Room`, its furniture description and its
    ``cfg.refiner_frames`` camera poses ``[n, 4, 4]``. Depends on ``seed``, ``role``, ``index`` and
    ``refiner_objects`` only (the first ``k`` poses also not on ``refiner_frames``)."""
    rng = refiner_rng(seed, role, index)
    room, pieces = random_refiner_room(rng, cfg.refiner_objects)
    return room, pieces, scan_poses(rng, room, cfg.refiner_frames, cfg.refiner_fov_deg)


def refiner_scenes(cfg: SyntheticConfig, seed: int) -> list[SceneSource]:
    """The refiner rooms as scene sources: ``refiner_train_{i:03d}`` (role ``train``) and
    ``refiner_val_{i:03d}`` (role ``val``), ``cfg.refiner_frames`` frames each, all of split ``train``, at
    ``cfg.refiner_sizes[i % len(refiner_sizes)]`` and ``cfg.refiner_fov_deg``; no mesh (nothing is fitted
    or scored on them)."""
    scenes = []
    for role, count in (("train", cfg.refiner_train_scenes), ("val", cfg.refiner_val_scenes)):
        for i in range(count):
            room, pieces, poses = refiner_room(cfg, seed, role, i)  # poses independent of the image size
            width, height = cfg.refiner_sizes[i % len(cfg.refiner_sizes)]
            K = intrinsics_from_fov(width, height, cfg.refiner_fov_deg)
            attrs = {
                "pieces": list(pieces),
                "n_primitives": len(room.objects),
                "light": {"direction": list(room.light.direction), "intensity": room.light.intensity,
                          "ambient": room.light.ambient},
            }
            scenes.append(room_source(f"refiner_{role}_{i:03d}", room, poses, K, (height, width), seed, attrs,
                                      role=role, splits=["train"] * cfg.refiner_frames))
    return scenes


def room_source(
    name: str, room: Room, poses: np.ndarray, K: np.ndarray, size: tuple[int, int], seed: int, attrs: dict,
    role: Role, splits: list | None = None, mesh: tuple[np.ndarray, np.ndarray] | None = None,
) -> SceneSource:
    """A synthetic room as a scene source: frames rendered lazily at ``size`` ``(height, width)`` from ``poses``."""
    height, width = size
    return SceneSource(
        name=name,
        source="synthetic",
        frame_ids=[f"{k:06d}" for k in range(len(poses))],
        load=functools.partial(_load_frame, room, poses, K, height, width, name),
        depth_kind="reference",
        has_sensor_depth=False,
        splits=splits,
        attrs={"generator": GENERATOR, "seed": int(seed), "room_size": [float(s) for s in room.size], **attrs},
        mesh=mesh,
        role=role,
        native_size=(height, width),
    )


def synthetic_scenes(cfg: SyntheticConfig, seed: int) -> list[SceneSource]:
    """Procedural rooms as scene sources; frames are rendered lazily by ``SceneSource.load(i)``.

    Deterministic for ``(cfg, seed)``. First the evaluation rooms (role ``eval``): scene ``i`` is named
    ``synthetic_{i:03d}``; its content depends only on ``seed``, ``i``, ``n_objects`` and ``room_size``
    (not on image size, frame count or the refiner settings). Then the refiner rooms
    (:func:`refiner_scenes`, roles ``train`` and ``val``).

    Args:
        cfg: generator settings.
        seed: non-negative random seed.

    Returns:
        ``cfg.n_scenes`` evaluation rooms with exact reference depth, poses and the ground-truth mesh,
        then ``cfg.refiner_train_scenes + cfg.refiner_val_scenes`` refiner rooms.
    """
    K = intrinsics_from_fov(cfg.width, cfg.height, cfg.fov_deg)
    scenes = []
    for i in range(cfg.n_scenes):
        room = random_room(scene_rng(seed, i), cfg.n_objects, cfg.room_size)
        poses = camera_poses(room, cfg.n_frames)
        scenes.append(room_source(f"synthetic_{i:03d}", room, poses, K, (cfg.height, cfg.width), seed,
                                  {"objects": [describe(o) for o in room.objects]}, role="eval", mesh=room_mesh(room)))
    return scenes + refiner_scenes(cfg, seed)


def synthetic_room(cfg: SyntheticConfig, seed: int, index: int = 0) -> Room:
    """The :class:`Room` behind scene ``index`` of :func:`synthetic_scenes` (for tests and tools)."""
    return random_room(scene_rng(seed, index), cfg.n_objects, cfg.room_size)
