"""Refiner rooms (roles ``train`` / ``val``): random cluttered rooms for the depth refiner.

:func:`random_refiner_room` draws a 3-7 x 2.8-6 m room, 2.4-3.2 m high, with its own :class:`Light`, textured
walls, floor and ceiling, and furniture pieces (:mod:`tasks.datasets.synthetic.furniture`) set with their
back against a wall or anywhere at any angle, without overlapping (floor footprints apart by
:data:`REFINER_GAP_M`); tables may get chairs around them, and walls get pictures, screens and shelves. A
piece's pose in the room is ``(x, y, cos, sin)``: position in metres and its turn about the vertical. Its
camera views come from :func:`tasks.datasets.synthetic.cameras.scan_poses`.
"""

from __future__ import annotations

import numpy as np

from tasks.datasets.synthetic.constants import MAX_PLACEMENT_TRIES, PIECE_KINDS, REFINER_GAP_M, REFINER_ROOM_M
from tasks.datasets.synthetic.furniture import PIECE_BUILDERS, Piece, _posed, chair_piece, wall_item
from tasks.datasets.synthetic.rooms import footprint_gap
from tasks.datasets.synthetic.scene import Light, Primitive, Room, bounds
from tasks.datasets.synthetic.textures import _refiner_texture

QUARTER_TURNS = ((1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0))  # exact (cos, sin) of 0, 90, 180, 270 deg
#: ``(cos, sin)`` that turn a piece's back (``+y``) towards each wall, in :data:`ROOM_FACES` order.
_BACK_TO_WALL = ((0.0, 1.0), (0.0, -1.0), (-1.0, 0.0), (1.0, 0.0))


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
    sx, sy, sz = (float(rng.uniform(lo, hi)) for lo, hi in REFINER_ROOM_M)
    size = (sx, sy, sz)
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
