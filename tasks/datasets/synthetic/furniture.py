"""Furniture of the refiner rooms: composed pieces and wall items, with small objects on their surfaces.

Pieces are tables and chairs on thin legs, shelves with boards, cabinets with handles, sofas, floor lamps,
plants, floor clutter and thin panels (:data:`PIECE_BUILDERS`, one builder per kind of :data:`PIECE_KINDS`);
wall items are pictures, screens and wall shelves (:func:`wall_item`). A :class:`Piece` is built in its own
frame: footprint centred on the origin, standing on ``z = 0``, back towards ``+y``; metres throughout.
:func:`_posed` turns and moves its primitives into the room. Builders draw from the
``np.random.Generator`` passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import MappingProxyType

import numpy as np

from tasks.datasets.synthetic.constants import REFINER_DARK_PROB, REFINER_MIN_LUMA
from tasks.datasets.synthetic.scene import Box, Cylinder, OrientedBox, Primitive, Sphere, Texture
from tasks.datasets.synthetic.textures import _refiner_texture, random_texture


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
    return Box((float(x), float(y), float(z0 + half[2])), (float(half[0]), float(half[1]), float(half[2])), tex)


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
        parts: list[Box] = []
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
