"""The dataset entry points: synthetic rooms as :class:`SceneSource` s, their frames rendered lazily.

:func:`synthetic_scenes` gives the evaluation rooms (``synthetic_{i:03d}``, role ``eval``, with exact
reference depth, poses and the ground-truth mesh), then the refiner rooms (:func:`refiner_scenes`:
``refiner_train_{i:03d}`` / ``refiner_val_{i:03d}``, no mesh). Every room draws from its own random stream,
derived from the seed and a spawn key (:func:`scene_rng`: ``(index,)``; :func:`refiner_rng`:
``(REFINER_SPAWN_BRANCH, role, index)``), so a room depends on neither how many rooms there are nor the image
size, and a refiner room never repeats an evaluation room. Everything is deterministic for
``(config, seed)``.
"""

from __future__ import annotations

import functools
from typing import Literal

import numpy as np

from models.camera import intrinsics_from_fov
from tasks.datasets.base import Frame, Role, SceneSource
from tasks.datasets.config import SyntheticConfig
from tasks.datasets.synthetic.cameras import camera_poses, scan_poses
from tasks.datasets.synthetic.constants import GENERATOR, REFINER_ROLE_KEYS, REFINER_SPAWN_BRANCH
from tasks.datasets.synthetic.mesh import room_mesh
from tasks.datasets.synthetic.raycast import render_frame
from tasks.datasets.synthetic.refiner_rooms import random_refiner_room
from tasks.datasets.synthetic.rooms import random_room
from tasks.datasets.synthetic.scene import Box, Cylinder, OrientedBox, Primitive, Room


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
    counts: tuple[tuple[Literal["train", "val"], int], ...] = (("train", cfg.refiner_train_scenes),
                                                                ("val", cfg.refiner_val_scenes))
    for role, count in counts:
        for i in range(count):
            room, pieces, poses = refiner_room(cfg, seed, role, i)  # poses independent of the image size
            assert room.light is not None  # refiner rooms carry their own light
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
