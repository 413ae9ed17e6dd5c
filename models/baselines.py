"""Classical depth-refinement baselines (hole filling + edge-aware smoothing) behind one interface.

The diffusion refiner is compared against these. Every baseline is a :class:`Refiner`: a small frozen
dataclass with a ``name`` that maps ``(rgb, depth, K)`` to refined depth. All of them are pure functions of
their inputs and config (no module state, no randomness) and are built on OpenCV:

================== ======================================================================================
``inpaint``        :func:`fill_holes` only (``cv2.inpaint``, Navier-Stokes by default).
``median``         fill holes, then a ``median_ksize`` x ``median_ksize`` median filter (5x5 by default).
``bilateral``      fill holes, then ``cv2.bilateralFilter`` on the float32 depth (range sigma in metres).
``joint_bilateral`` fill holes, then ``cv2.ximgproc.jointBilateralFilter`` with the RGB image as the guide
                   (range sigma in 8-bit colour units).
``guided``         fill holes, then ``cv2.ximgproc.guidedFilter`` with the RGB image (scaled to ``[0, 1]``)
                   as the guide; ``eps`` is a variance on that normalised guide.
================== ======================================================================================

Their parameters are not meant to be set by hand: :func:`tune_baselines` picks each baseline's own parameters
by a small grid search (:data:`TUNING_GRID`) on validation frames with a reference depth.

Conventions follow :mod:`models.camera`: ``depth`` is z-depth in metres, ``0`` = hole. ``K`` is part of the
interface (the diffusion refiner and later baselines may need it); these baselines only validate it.

Notes on ``cv2.inpaint`` with float32 depth (measured with OpenCV 5.0, see ``tests/models/test_baselines.py``):

* It accepts 32-bit float single-channel images, so depth is inpainted in metres without a uint16 round trip.
* ``INPAINT_NS`` is scale-invariant in practice and accurate on smooth surfaces (sub-centimetre on a slanted
  plane with 10 % random holes plus 8x8 px blocks).
* ``INPAINT_TELEA`` is *not* scale-invariant: on depth in metres it returns values off by ~1 m. It behaves
  once the values are in millimetres, so ``method="telea"`` inpaints ``depth * 1000`` and divides back.

The median filter is exact at every allowed size (3, 5, 7, 9): ``cv2.medianBlur`` only takes float32 input for
ksize 3 and 5, so 7 and 9 use ``scipy.ndimage.median_filter`` with ``mode="nearest"`` (the same replicated
border; both give identical results at 3 and 5, see the tests). Depth is never quantised to 8 bits for it.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast, runtime_checkable

import cv2
import numpy as np
import scipy.ndimage

from models.baselines_config import BaselineConfig, InpaintMethod

_CV_INPAINT = {"ns": cv2.INPAINT_NS, "telea": cv2.INPAINT_TELEA}
# Depth is multiplied by this before INPAINT_TELEA (metres -> millimetres); see the module docstring.
_TELEA_SCALE = 1000.0


# -------------------------------------------------------------------------------------------- interface


@runtime_checkable
class Refiner(Protocol):
    """A depth refiner: ``refined = refiner(rgb, depth, K)``.

    Args (of ``__call__``):
        rgb: uint8 RGB image ``[H, W, 3]`` aligned with ``depth``.
        depth: Noisy sensor depth ``[H, W]`` in metres (float), ``0`` = hole; must be finite and ``>= 0``.
        K: Intrinsics ``[3, 3]`` in pixels.

    Returns:
        Refined depth ``[H, W]`` float32 in metres. Holes are filled where possible; a refiner may leave ``0``
        where it cannot fill (every baseline here fills all holes unless the frame has no valid pixel, in which
        case it returns zeros).
    """

    @property
    def name(self) -> str: ...

    def __call__(self, rgb: np.ndarray, depth: np.ndarray, K: np.ndarray) -> np.ndarray: ...


# ---------------------------------------------------------------------------------------------- helpers


def _check_depth(depth: np.ndarray) -> np.ndarray:
    """Validated float32 copy-or-view of ``depth [H, W]``; raises ``ValueError`` naming the problem."""
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise ValueError(f"depth must be [H, W], got shape {depth.shape}")
    if not np.issubdtype(depth.dtype, np.floating):
        raise ValueError(f"depth must be a float array in metres, got dtype {depth.dtype}")
    if np.isnan(depth).any():
        raise ValueError(f"depth contains {int(np.isnan(depth).sum())} NaN values; use 0 for holes")
    if not np.isfinite(depth).all():
        raise ValueError("depth contains infinite values; use 0 for holes")
    if (depth < 0).any():
        raise ValueError(f"depth contains negative values (min {float(depth.min())}); use 0 for holes")
    return depth.astype(np.float32, copy=False)


def _check_inputs(rgb: np.ndarray, depth: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate a refiner's inputs; returns ``(rgb, depth as float32)``."""
    depth = _check_depth(depth)
    rgb = np.asarray(rgb)
    if rgb.shape != (*depth.shape, 3):
        raise ValueError(f"rgb must be [H, W, 3] matching depth {depth.shape}, got shape {rgb.shape}")
    if rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be uint8, got {rgb.dtype}")
    if np.shape(K) != (3, 3):
        raise ValueError(f"K must be [3, 3], got shape {np.shape(K)}")
    return rgb, depth


def fill_holes(depth: np.ndarray, radius: int = 5, method: InpaintMethod = "ns") -> np.ndarray:
    """Fill the holes (``0``) of a depth map with ``cv2.inpaint``.

    Valid pixels (``> 0``) are returned bit-for-bit unchanged; only holes are written. Filled values are clipped
    to ``[min, max]`` of the valid input, so inpainting never extrapolates beyond the observed depth range.
    Every hole is filled unless the frame has no valid pixel, in which case zeros are returned.

    Args:
        depth: Depth ``[H, W]`` in metres (float), ``0`` = hole; must be finite and ``>= 0``.
        radius: Neighbourhood radius in pixels considered by ``cv2.inpaint``.
        method: ``"ns"`` (``cv2.INPAINT_NS``, on metres) or ``"telea"`` (``cv2.INPAINT_TELEA``, run on
            millimetres because it is not scale-invariant).

    Returns:
        Filled depth ``[H, W]`` float32 in metres.

    Raises:
        ValueError: Depth of the wrong shape / dtype, NaN, infinite or negative values, or a bad method / radius.
    """
    depth = _check_depth(depth)
    if method not in _CV_INPAINT:
        raise ValueError(f"method must be one of {sorted(_CV_INPAINT)}, got {method!r}")
    if radius < 1:
        raise ValueError(f"radius must be >= 1, got {radius}")
    holes = depth <= 0
    if not holes.any():
        return depth.copy()
    if holes.all():
        return np.zeros_like(depth)
    scale = _TELEA_SCALE if method == "telea" else 1.0
    filled = cv2.inpaint(depth * np.float32(scale), holes.astype(np.uint8), float(radius), _CV_INPAINT[method])
    filled = filled / np.float32(scale)
    valid = depth[~holes]
    filled = np.clip(filled, valid.min(), valid.max())
    return np.where(holes, filled, depth).astype(np.float32)


# --------------------------------------------------------------------------------------------- refiners


@dataclass(frozen=True)
class InpaintRefiner:
    """Holes filled by :func:`fill_holes`, nothing else; the filtering refiners below smooth the result."""

    cfg: BaselineConfig
    name: str = field(default="inpaint", init=False)

    def __call__(self, rgb: np.ndarray, depth: np.ndarray, K: np.ndarray) -> np.ndarray:
        rgb, depth = _check_inputs(rgb, depth, K)
        filled = fill_holes(depth, self.cfg.inpaint_radius, self.cfg.inpaint_method)
        return self.smooth(rgb, filled) if filled.any() else filled

    def smooth(self, rgb: np.ndarray, filled: np.ndarray) -> np.ndarray:
        """Filter the hole-filled depth ``[H, W]`` float32 (identity here)."""
        return filled


def median_filter(depth: np.ndarray, ksize: int) -> np.ndarray:
    """Exact ``ksize`` x ``ksize`` median of a float32 depth map ``[H, W]`` (border replicated).

    ``cv2.medianBlur`` for ksize 3 / 5 (the only sizes it takes on float32), ``scipy.ndimage.median_filter``
    with the same border rule for larger windows.
    """
    if ksize < 3 or ksize % 2 == 0:
        raise ValueError(f"ksize must be odd and >= 3, got {ksize}")
    depth = np.ascontiguousarray(depth, dtype=np.float32)
    if ksize <= 5:
        return cv2.medianBlur(depth, ksize)
    return scipy.ndimage.median_filter(depth, size=ksize, mode="nearest")


@dataclass(frozen=True)
class MedianRefiner(InpaintRefiner):
    """Holes filled, then a ``median_ksize`` x ``median_ksize`` median filter (robust to flying pixels)."""

    name: str = field(default="median", init=False)

    def smooth(self, rgb: np.ndarray, filled: np.ndarray) -> np.ndarray:
        return median_filter(filled, self.cfg.median_ksize)


@dataclass(frozen=True)
class BilateralRefiner(InpaintRefiner):
    """Holes filled, then a plain bilateral filter on the float32 depth (range sigma in metres)."""

    name: str = field(default="bilateral", init=False)

    def smooth(self, rgb: np.ndarray, filled: np.ndarray) -> np.ndarray:
        c = self.cfg
        return cv2.bilateralFilter(filled, c.bilateral_d, c.bilateral_sigma_color_m, c.bilateral_sigma_space)


@dataclass(frozen=True)
class JointBilateralRefiner(InpaintRefiner):
    """Holes filled, then a joint (cross) bilateral filter whose range kernel is computed on the RGB image."""

    name: str = field(default="joint_bilateral", init=False)

    def smooth(self, rgb: np.ndarray, filled: np.ndarray) -> np.ndarray:
        c = self.cfg
        # jointBilateralFilter needs guide and source of the same depth (CV_8U or CV_32F): a float32 guide
        # keeps 8-bit units, so sigma_color is in 8-bit colour levels.
        guide = rgb.astype(np.float32)
        return cv2.ximgproc.jointBilateralFilter(guide, filled, c.joint_d, c.joint_sigma_color, c.joint_sigma_space)


@dataclass(frozen=True)
class GuidedRefiner(InpaintRefiner):
    """Holes filled, then He et al.'s guided filter with the RGB image (in ``[0, 1]``) as a colour guide."""

    name: str = field(default="guided", init=False)

    def smooth(self, rgb: np.ndarray, filled: np.ndarray) -> np.ndarray:
        guide = rgb.astype(np.float32) / np.float32(255.0)
        out = cv2.ximgproc.guidedFilter(guide, filled, self.cfg.guided_radius, self.cfg.guided_eps)
        return out.astype(np.float32, copy=False)


def inpaint_refiner(cfg: BaselineConfig) -> Refiner:
    """The ``"inpaint"`` baseline: holes filled only."""
    return InpaintRefiner(cfg)


def median_refiner(cfg: BaselineConfig) -> Refiner:
    """The ``"median"`` baseline: holes filled, then a ``median_ksize`` median filter."""
    return MedianRefiner(cfg)


def bilateral_refiner(cfg: BaselineConfig) -> Refiner:
    """The ``"bilateral"`` baseline: holes filled, then ``cv2.bilateralFilter`` on depth."""
    return BilateralRefiner(cfg)


def joint_bilateral_refiner(cfg: BaselineConfig) -> Refiner:
    """The ``"joint_bilateral"`` baseline: holes filled, then ``cv2.ximgproc.jointBilateralFilter`` (RGB guide)."""
    return JointBilateralRefiner(cfg)


def guided_refiner(cfg: BaselineConfig) -> Refiner:
    """The ``"guided"`` baseline: holes filled, then ``cv2.ximgproc.guidedFilter`` (RGB guide)."""
    return GuidedRefiner(cfg)


def make_baselines(cfg: BaselineConfig) -> dict[str, Refiner]:
    """Every baseline by name: ``inpaint``, ``median``, ``bilateral``, ``joint_bilateral``, ``guided`` (in that
    order)."""
    refiners = (inpaint_refiner(cfg), median_refiner(cfg), bilateral_refiner(cfg), joint_bilateral_refiner(cfg),
                guided_refiner(cfg))
    return {r.name: r for r in refiners}


# ----------------------------------------------------------------------------------------------- tuning

BASELINE_NAMES = ("inpaint", "median", "bilateral", "joint_bilateral", "guided")

#: The :class:`BaselineConfig` fields each baseline reads besides hole filling (``inpaint``: the hole filling,
#: shared by every baseline).
BASELINE_PARAMS: dict[str, tuple[str, ...]] = {
    "inpaint": ("inpaint_radius", "inpaint_method"),
    "median": ("median_ksize",),
    "bilateral": ("bilateral_d", "bilateral_sigma_color_m", "bilateral_sigma_space"),
    "joint_bilateral": ("joint_d", "joint_sigma_color", "joint_sigma_space"),
    "guided": ("guided_radius", "guided_eps"),
}

#: The default search of :func:`tune_baselines`: per baseline, a few values of each of its own parameters
#: (every combination is tried; 4 to 12 settings per baseline). Each grid contains the
#: :class:`BaselineConfig` defaults, so the search can always return them. About 15 s for 8 frames of
#: 640x480 on two cores, most of it in ``cv2.inpaint`` and the 7x7 / 9x9 medians.
TUNING_GRID: dict[str, dict[str, tuple]] = {
    "inpaint": {"inpaint_radius": (3, 5, 9), "inpaint_method": ("ns", "telea")},  # 6
    "median": {"median_ksize": (3, 5, 7, 9)},  # 4
    "bilateral": {  # 12
        "bilateral_d": (5, 9),
        "bilateral_sigma_color_m": (0.02, 0.05, 0.1),
        "bilateral_sigma_space": (3.0, 6.0),
    },
    "joint_bilateral": {  # 12
        "joint_d": (7, 11),
        "joint_sigma_color": (10.0, 20.0, 40.0),
        "joint_sigma_space": (5.0, 10.0),
    },
    "guided": {"guided_radius": (2, 4, 8), "guided_eps": (1e-3, 1e-2, 1e-1)},  # 9
}

#: One validation frame: ``(rgb uint8 [H, W, 3], noisy depth [H, W] metres (0 = hole), reference depth
#: [H, W] metres (0 = no reference), K [3, 3])``.
TuningFrame = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def grid_points(axes: Mapping[str, Sequence]) -> list[dict[str, Any]]:
    """Every combination of the values in ``axes`` (``{field: values}``), the last field varying fastest."""
    keys = list(axes)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(axes[k] for k in keys))]


def _resolve_grid(grid: Mapping[str, Mapping[str, Sequence]] | None) -> dict[str, list[dict[str, Any]]]:
    """The grid points per baseline: ``grid``'s axes where it gives a baseline, :data:`TUNING_GRID` elsewhere."""
    grid = dict(grid or {})
    unknown = sorted(set(grid) - set(BASELINE_PARAMS))
    if unknown:
        raise ValueError(f"grid names unknown baselines {unknown}; known: {list(BASELINE_PARAMS)}")
    out = {}
    for name, own in BASELINE_PARAMS.items():
        axes = grid.get(name, TUNING_GRID[name])
        foreign = sorted(set(axes) - set(own))
        if foreign:
            raise ValueError(f"grid[{name!r}] sets {foreign}, which the {name} baseline does not read; "
                             f"its parameters are {list(own)}")
        empty = [k for k, v in axes.items() if len(v) == 0]
        if empty or not axes:
            raise ValueError(f"grid[{name!r}] has no values to try (empty: {empty or 'all'})")
        out[name] = grid_points(axes)
    return out


def _check_tuning_frame(k: int, frame: TuningFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(rgb, noisy depth float32, reference mask, reference values float64 at the mask)``."""
    try:
        rgb, noisy, ref, K = frame
    except (TypeError, ValueError):
        raise ValueError(f"frame {k}: expected a tuple (rgb, noisy depth, reference depth, K)") from None
    try:
        rgb, noisy = _check_inputs(rgb, noisy, K)
        ref = _check_depth(ref)
    except ValueError as err:
        raise ValueError(f"frame {k}: {err}") from None
    if ref.shape != noisy.shape:
        raise ValueError(f"frame {k}: reference depth {ref.shape} does not match noisy depth {noisy.shape}")
    mask = ref > 0
    return rgb, noisy, mask, ref[mask].astype(np.float64)


def tune_baselines(
    frames: Sequence[TuningFrame],
    names: Sequence[str] = BASELINE_NAMES,
    grid: Mapping[str, Mapping[str, Sequence]] | None = None,
    base: BaselineConfig | None = None,
) -> tuple[BaselineConfig, dict[str, dict[str, Any]]]:
    """Choose each baseline's own parameters by a grid search on validation frames.

    The score of a setting is the RMSE (metres) against the reference depth over every pixel where the
    reference is valid (``> 0``), pooled over all frames (each pixel counts once, whatever its frame). The
    setting with the smallest score wins; ties go to the earlier grid point.

    Hole filling is shared by every baseline (one ``inpaint_*`` pair in the config), so it is tuned first,
    on the ``inpaint`` baseline (fill only: only the hole pixels differ between settings), and then each
    filtering baseline's own grid is searched on the frames filled that way. The hole filling is always
    tuned, whether or not ``"inpaint"`` is among ``names``; baselines not in ``names`` keep ``base``'s values.

    Args:
        frames: Validation frames ``(rgb uint8 [H, W, 3], noisy depth [H, W] m (0 = hole), reference depth
            [H, W] m (0 = no reference), K [3, 3])``; frames may differ in size.
        names: Baselines to tune, from :data:`BASELINE_NAMES`.
        grid: Per baseline, ``{field: values}`` to search instead of :data:`TUNING_GRID` (every combination;
            only that baseline's own fields, see :data:`BASELINE_PARAMS`).
        base: Starting config (default: :class:`BaselineConfig` defaults): the values not tuned, and the
            "untuned" reference each score is reported against.

    Returns:
        ``(config, scores)``: the tuned :class:`BaselineConfig`, and per tuned baseline (``inpaint`` always
        included) ``{"params": chosen {field: value}, "rmse": its score, "base_rmse": the score of ``base``,
        "grid": [{"params": ..., "rmse": ...} for every grid point]}`` (plain Python types).

    Raises:
        ValueError: No frames, no reference pixel in any frame, a malformed frame (naming its index), an
            unknown baseline name, or a grid naming another baseline's fields or holding no values;
            ``pydantic.ValidationError`` (a ``ValueError``) for a grid value the config rejects.
    """
    base = base or BaselineConfig()
    names = list(dict.fromkeys(names))
    unknown = [n for n in names if n not in BASELINE_PARAMS]
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; known: {list(BASELINE_NAMES)}")
    frames = list(frames)
    if not frames:
        raise ValueError("tune_baselines needs at least one validation frame (with a reference depth), got none")
    data = [_check_tuning_frame(k, f) for k, f in enumerate(frames)]
    n_ref = sum(int(m.sum()) for _, _, m, _ in data)
    if n_ref == 0:
        raise ValueError(f"none of the {len(frames)} validation frames has a reference pixel (reference depth > 0)")
    points = _resolve_grid(grid)

    def rmse(preds: list[np.ndarray]) -> float:
        sse = 0.0
        for pred, (_, _, mask, ref) in zip(preds, data, strict=True):
            diff = pred[mask].astype(np.float64) - ref
            sse += float(diff @ diff)
        return float(np.sqrt(sse / n_ref))

    def config(*updates: Mapping[str, Any]) -> BaselineConfig:
        values = base.model_dump()
        for u in updates:
            values.update(u)
        return BaselineConfig(**values)  # validated: a bad grid value raises naming the field

    def fill(cfg: BaselineConfig) -> list[np.ndarray]:
        return [fill_holes(d, cfg.inpaint_radius, cfg.inpaint_method) for _, d, _, _ in data]

    def search(name: str, run) -> tuple[dict[str, Any], dict[str, Any]]:
        """Best grid point of ``name``: ``run(point) -> preds``; returns ``(point, score entry)``."""
        tried, best, best_score = [], None, np.inf
        for point in points[name]:
            score = run(point)
            tried.append({"params": _plain(point), "rmse": score})
            if score < best_score:
                best, best_score = point, score
        assert best is not None, f"no grid point of {name} scored below infinity"
        return best, {"params": _plain(best), "rmse": best_score, "grid": tried}

    # 1. hole filling, on the fill-only baseline; the winner's fills (and the base's) are kept for step 2.
    fills: dict[tuple, list[np.ndarray]] = {}
    base_key = (base.inpaint_radius, base.inpaint_method)

    def run_fill(point: dict[str, Any]) -> float:
        cfg = config(point)
        key = (cfg.inpaint_radius, cfg.inpaint_method)
        filled = fills.get(key) or fill(cfg)
        fills[key] = filled  # at most 6 settings by default: a few frames' worth of memory each
        return rmse(filled)

    fill_point, entry = search("inpaint", run_fill)
    tuned_fill = config(fill_point)
    fill_key = (tuned_fill.inpaint_radius, tuned_fill.inpaint_method)
    if base_key not in fills:
        fills[base_key] = fill(base)
    fills = {k: v for k, v in fills.items() if k in (fill_key, base_key)}
    scores: dict[str, dict[str, Any]] = {"inpaint": {**entry, "base_rmse": rmse(fills[base_key])}}
    chosen: dict[str, Any] = dict(fill_point)

    # 2. each filtering baseline's own parameters, on the tuned fill.
    def smoothed(cfg: BaselineConfig, name: str, filled: list[np.ndarray]) -> list[np.ndarray]:
        refiner = cast(InpaintRefiner, make_baselines(cfg)[name])  # every baseline smooths an inpainted depth
        return [refiner.smooth(rgb, f) if f.any() else f for (rgb, _, _, _), f in zip(data, filled, strict=True)]

    for name in names:
        if name == "inpaint":
            continue
        point, entry = search(name, lambda p, n=name: rmse(smoothed(config(fill_point, p), n, fills[fill_key])))
        entry["base_rmse"] = rmse(smoothed(base, name, fills[base_key]))
        scores[name] = entry
        chosen.update(point)
    return config(chosen), scores


def _plain(point: Mapping[str, Any]) -> dict[str, Any]:
    """A grid point with numpy scalars turned into Python ones (JSON-safe)."""
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in point.items()}
