"""The scene model: what a synthetic room is made of, as frozen dataclasses.

A :class:`Room` is a closed box (floor, ceiling and four walls, seen from inside) with one :class:`Texture`
per face, furniture primitives (:class:`Box`, :class:`OrientedBox`, :class:`Cylinder`, :class:`Sphere`),
the evaluation rooms' camera arc (:class:`CameraPath`) and the refiner rooms' :class:`Light`.
:class:`RayHits` is what the ray caster returns. :func:`bounds` and :func:`bounding_sphere` give a
primitive's axis-aligned bounding box and enclosing sphere, which placement, view selection and ray culling
use.

World frame: z up, metres; the room is centred on the origin in x / y and its floor is at ``z = 0``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tasks.datasets.synthetic.constants import TextureKind


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
