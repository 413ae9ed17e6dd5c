"""Camera placement: the evaluation rooms' smooth arc and the refiner rooms' hand-held views.

Poses are camera-to-world ``[n, 4, 4]`` (OpenCV axes) in world metres.

* Evaluation rooms: :func:`random_camera_path` draws a :class:`CameraPath`, an arc of an ellipse around the
  room centre at least :data:`CAMERA_CLEARANCE_M` from every wall, floor and ceiling (:func:`arc_points`
  samples it densely, so that furniture can be kept off it); :func:`camera_poses` places the frames along
  it, looking across the room centre towards the furniture.
* Refiner rooms: :func:`scan_poses` draws independent hand-held-like views 0.5-4 m from a target, clear of
  every surface, seeing the target unoccluded and showing enough surfaces (both checked with the ray caster).
"""

from __future__ import annotations

import numpy as np

from models.camera import camera_rays, intrinsics_from_fov, look_at
from tasks.datasets.config import CAMERA_CLEARANCE_M
from tasks.datasets.synthetic.constants import (
    BARE_VIEW_PROB,
    MAX_ORBIT_ASPECT,
    MAX_ORBIT_STEP_DEG,
    MAX_VIEW_TRIES,
    MIN_VIEW_SURFACES,
    REFINER_EYE_CLEARANCE_M,
    REFINER_EYE_Z_M,
    REFINER_MAX_ROLL_DEG,
    REFINER_VIEW_M,
)
from tasks.datasets.synthetic.raycast import cast_rays
from tasks.datasets.synthetic.scene import CameraPath, Room, bounds

# --- evaluation rooms: the camera arc ----------------------------------------------------------------


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
    return np.stack([look_at(e, t, up) for e, t in zip(eye, target, strict=True)])


# --- refiner rooms: hand-held views ------------------------------------------------------------------


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
