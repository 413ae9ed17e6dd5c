"""Ground-truth meshes of synthetic rooms.

:func:`primitive_mesh` gives one primitive as a trimesh in world coordinates (cylinders and spheres
tessellated, :data:`CYLINDER_SECTIONS` / :data:`SPHERE_SUBDIVISIONS`); :func:`room_mesh` the whole room as
``vertices`` ``[V, 3]`` float32 world metres and ``faces`` ``[F, 3]`` int32, the room shell's normals facing
inwards.
"""

from __future__ import annotations

import numpy as np
import trimesh

from tasks.datasets.synthetic.constants import CYLINDER_SECTIONS, SPHERE_SUBDIVISIONS
from tasks.datasets.synthetic.scene import Box, Cylinder, OrientedBox, Primitive, Room


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
    faces = np.concatenate([f + o for (_, f), o in zip(parts, offsets, strict=True)]).astype(np.int32)
    return vertices, faces
