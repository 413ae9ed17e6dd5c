"""Textures and materials: random palettes and textures, procedural texture evaluation, and shading.

* Materials, drawn from the ``np.random.Generator`` passed in: :func:`random_palette` and
  :func:`dark_palette` (three linear RGB colours in ``[0, 1]``), :func:`random_texture` (kind, colours,
  scale in metres, orientation, offset, noise seed) and the refiner rooms' choice of kind by use
  (:func:`_refiner_texture`, see :data:`REFINER_TEXTURES`).
* Evaluation, a pure function of the texture: :func:`texture_albedo` gives the albedo ``[N, 3]`` in
  ``[0, 1]`` at texture coordinates ``q`` ``[N, 3]`` in metres (planar faces pass ``(u, v, 0)``, curved
  surfaces 3D offsets from the object): checkerboard, stripes, wood rings, multi-octave value noise or
  tiles with grout, all modulated by fine noise. The noise (:func:`value_noise`, :func:`fbm`) hashes
  integer lattice cells with the texture's own seed (:func:`hash_cells`).
* :func:`shade`: view-independent Lambertian shading ``[N, 3]`` from a directional light plus ambient, so a
  surface point has the same colour in every view.
"""

from __future__ import annotations

import colorsys

import numpy as np

from tasks.datasets.synthetic.constants import (
    AMBIENT,
    LIGHT_DIR,
    MIN_ALBEDO_LUMA,
    REFINER_MIN_LUMA,
    REFINER_TEXTURES,
    TEXTURE_KINDS,
    TEXTURE_SCALE_M,
    TextureKind,
)
from tasks.datasets.synthetic.scene import Light, Texture

# --- random materials --------------------------------------------------------------------------------


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


def _triple(values: np.ndarray | tuple[float, float, float]) -> tuple[float, float, float]:
    """Three values as Python floats."""
    return float(values[0]), float(values[1]), float(values[2])


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
    return tuple(_triple(c) for c in cols)


def dark_palette(rng: np.random.Generator) -> tuple[tuple[float, float, float], ...]:
    """Three dark colours (value 0.03-0.16, luma below ~0.16): black furniture, dark fabric, a TV. Shaded,
    much of such a surface falls under the sensor model's dark threshold and loses its depth."""
    h0 = rng.random()
    hues = (h0, (h0 + rng.uniform(-0.1, 0.1)) % 1.0, rng.random())
    cols = [colorsys.hsv_to_rgb(h, rng.uniform(0.0, 0.5), rng.uniform(0.03, 0.16)) for h in hues]
    return tuple(_triple(c) for c in cols)


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
        direction=_triple(direction),
        offset=_triple(rng.uniform(0.25, 0.75, size=3)),
        seed=int(rng.integers(0, 2**62)),
        detail=float(rng.uniform(0.06, 0.15)),
    )


def _refiner_texture(rng: np.random.Generator, use: str, dark_prob: float = 0.0) -> Texture:
    """A texture for a refiner room's furniture, walls, floor or ceiling (``use``, see :data:`REFINER_TEXTURES`)."""
    kinds, p = REFINER_TEXTURES[use]
    kind = kinds[int(rng.choice(len(kinds), p=p))]
    return random_texture(rng, kind, min_luma=REFINER_MIN_LUMA, dark=bool(rng.random() < dark_prob))


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
