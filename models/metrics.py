"""Evaluation metrics: depth maps against a reference, depth-edge accuracy, and image quality.

Depth is z-depth in metres with ``0`` (or a non-finite value) meaning "no measurement", as in the stores.
Functions take NumPy arrays and return plain Python floats, so rows can be written straight to JSON/CSV and
averaged with :func:`aggregate`. Undefined values (nothing to evaluate) are NaN, never an exception.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from scipy import ndimage
from skimage.metrics import structural_similarity

from models.camera import backproject

_DELTA = 1.25
_NAN = float("nan")


def _valid_depth(depth: np.ndarray, min_valid: float = 0.0) -> np.ndarray:
    """Bool mask of finite depth ``> min_valid``, same shape."""
    return np.isfinite(depth) & (depth > min_valid)


def depth_metrics(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None) -> dict[str, float]:
    """Standard depth-estimation errors (Eigen et al. 2014) plus coverage.

    Pixels are *gt-valid* where ``gt > 0`` (finite) and ``valid`` (if given). ``coverage`` is the fraction of
    gt-valid pixels where ``pred > 0`` (finite); the error metrics are computed on gt-valid pixels where pred
    is valid too, so holes in ``pred`` lower ``coverage`` instead of producing huge errors or NaNs. Report
    both: a method can trade coverage for accuracy. With ``[N, H, W]`` inputs all pixels are pooled.

    Args:
        pred: ``[H, W]`` or ``[N, H, W]`` predicted depth, metres (``0`` = hole).
        gt: Reference depth, same shape, metres (``0`` = unknown).
        valid: Optional bool mask, same shape, restricting the evaluation.

    Returns:
        ``rmse``, ``mae`` (metres), ``abs_rel`` (mean ``|p - g| / g``), ``sq_rel`` (mean ``(p - g)^2 / g``,
        metres), ``rmse_log`` (RMSE of ``ln p - ln g``), ``delta1``/``delta2``/``delta3`` (fraction with
        ``max(p/g, g/p) < 1.25^k``), ``coverage``.
        Error metrics are NaN when no pixel is evaluated; ``coverage`` is NaN when no pixel is gt-valid.
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"pred shape {pred.shape} != gt shape {gt.shape}")
    gt_ok = _valid_depth(gt)
    if valid is not None:
        gt_ok &= np.asarray(valid, dtype=bool)
    both = gt_ok & _valid_depth(pred)
    n_gt, n = int(gt_ok.sum()), int(both.sum())
    out = {"coverage": n / n_gt if n_gt else _NAN}
    if n == 0:
        return dict.fromkeys(("rmse", "mae", "abs_rel", "sq_rel", "rmse_log", "delta1", "delta2", "delta3"), _NAN) | out
    p, g = pred[both], gt[both]
    err = p - g
    ratio = np.maximum(p / g, g / p)
    return {
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae": float(np.mean(np.abs(err))),
        "abs_rel": float(np.mean(np.abs(err) / g)),
        "sq_rel": float(np.mean(err**2 / g)),
        "rmse_log": float(np.sqrt(np.mean((np.log(p) - np.log(g)) ** 2))),
        "delta1": float(np.mean(ratio < _DELTA)),
        "delta2": float(np.mean(ratio < _DELTA**2)),
        "delta3": float(np.mean(ratio < _DELTA**3)),
    } | out


def depth_edges(depth: np.ndarray, rel_threshold: float = 0.05, min_valid: float = 0.0) -> np.ndarray:
    """Depth discontinuities: pixels with a large *relative* depth jump to a 4-neighbour.

    A pair of valid 4-neighbours ``(z1, z2)`` is a discontinuity when ``|z1 - z2| / min(z1, z2) >
    rel_threshold``; both pixels of the pair are marked (edges are 2 px wide). Relative jumps make the
    detector scale-free (a 5 cm step at 1 m counts like a 20 cm step at 4 m). A jump to a hole is not an edge.

    Args:
        depth: ``[H, W]`` z-depth (any unit), ``0``/non-finite = hole.
        rel_threshold: Relative jump threshold.
        min_valid: Depth must exceed this to count as valid.

    Returns:
        Bool ``[H, W]``.
    """
    z = np.asarray(depth, dtype=np.float64)
    ok = _valid_depth(z, min_valid)
    zs = np.where(ok, z, 1.0)  # placeholder keeps the divisions finite; masked by ``ok`` below
    edges = np.zeros(z.shape, dtype=bool)
    for axis in (0, 1):
        a = [slice(None)] * 2
        b = [slice(None)] * 2
        a[axis], b[axis] = slice(1, None), slice(None, -1)
        a, b = tuple(a), tuple(b)
        jump = np.abs(zs[a] - zs[b]) / np.minimum(zs[a], zs[b]) > rel_threshold
        jump &= ok[a] & ok[b]
        edges[a] |= jump
        edges[b] |= jump
    return edges


def _within(mask: np.ndarray, tolerance_px: float) -> np.ndarray:
    """Pixels within ``tolerance_px`` (Euclidean) of a True pixel of ``mask`` (none if ``mask`` is empty)."""
    if not mask.any():
        return np.zeros_like(mask)
    distance = ndimage.distance_transform_edt(~mask)  # an array (no return_indices)
    return distance <= tolerance_px  # pyright: ignore[reportOperatorIssue] - scipy's stub returns a union


def edge_matches(
    pred: np.ndarray, gt: np.ndarray, tolerance_px: float = 2.0, rel_threshold: float = 0.05
) -> dict[str, np.ndarray]:
    """Depth edges of ``pred`` and ``gt`` and how they match (the masks behind :func:`edge_f1`).

    Returns:
        ``[H, W]`` bool masks: ``gt`` (reference edges), ``pred`` (predicted edges where ``gt`` is valid),
        ``matched`` (predicted edges within ``tolerance_px`` of a reference edge) and ``found`` (reference
        edges within ``tolerance_px`` of a predicted edge).
    """
    gt = np.asarray(gt, dtype=np.float64)
    gt_edges = depth_edges(gt, rel_threshold)
    pred_edges = depth_edges(pred, rel_threshold) & _valid_depth(gt)
    return {"gt": gt_edges, "pred": pred_edges, "matched": pred_edges & _within(gt_edges, tolerance_px),
            "found": gt_edges & _within(pred_edges, tolerance_px)}


def edge_f1(
    pred: np.ndarray, gt: np.ndarray, tolerance_px: float = 2.0, rel_threshold: float = 0.05
) -> dict[str, float]:
    """Precision, recall and F1 of predicted depth edges against reference edges, with a distance tolerance.

    Edges come from :func:`depth_edges`. Predicted edges count only where ``gt`` is valid. Precision is the
    fraction of predicted edge pixels within ``tolerance_px`` (Euclidean) of a reference edge pixel; recall
    the fraction of reference edge pixels within ``tolerance_px`` of a predicted one. Holes in ``pred`` lose
    their edges (lower recall). Empty cases: no edges on either side -> all 1; no predicted edges (but
    reference edges) or no reference edges (but predicted ones) -> all 0.

    Args:
        pred: ``[H, W]`` predicted depth (``0`` = hole).
        gt: ``[H, W]`` reference depth, same units.
        tolerance_px: Matching distance in pixels.
        rel_threshold: Relative jump threshold of :func:`depth_edges`.

    Returns:
        ``precision``, ``recall``, ``f1`` in ``[0, 1]``.
    """
    e = edge_matches(pred, gt, tolerance_px, rel_threshold)
    n_gt, n_pred = int(e["gt"].sum()), int(e["pred"].sum())
    if n_gt == 0 and n_pred == 0:
        return {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    if n_gt == 0 or n_pred == 0:
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    precision = float(e["matched"].sum() / n_pred)
    recall = float(e["found"].sum() / n_gt)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": float(f1)}


def psnr(pred: np.ndarray, gt: np.ndarray, data_range: float = 1.0, mask: np.ndarray | None = None) -> float:
    """Peak signal-to-noise ratio ``10 log10(data_range^2 / MSE)`` in dB.

    Args:
        pred: ``[H, W]`` or ``[H, W, C]`` image.
        gt: Reference, same shape.
        data_range: Peak value range (1 for images in [0, 1], 255 for uint8).
        mask: Optional bool ``[H, W]`` (broadcast over channels) or full-shape mask of pixels to score.

    Returns:
        PSNR in dB; ``inf`` for identical images, NaN for an empty mask.
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    sq = (pred - gt) ** 2
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.ndim < sq.ndim:
            m = m.reshape(m.shape + (1,) * (sq.ndim - m.ndim))
        sq = sq[np.broadcast_to(m, sq.shape)]
    if sq.size == 0:
        return _NAN
    mse = float(np.mean(sq))
    if mse == 0.0:
        return math.inf
    return float(10.0 * np.log10(data_range**2 / mse))


def ssim(pred_rgb: np.ndarray, gt_rgb: np.ndarray, data_range: float = 1.0) -> float:
    """Mean SSIM via :func:`skimage.metrics.structural_similarity` (default 7x7 box window).

    Args:
        pred_rgb: ``[H, W, 3]`` (or ``[H, W]``) image, ``H, W >= 7``.
        gt_rgb: Reference, same shape.
        data_range: Value range (1 for images in [0, 1]).

    Returns:
        Mean SSIM (1 = identical).
    """
    pred_rgb = np.asarray(pred_rgb, dtype=np.float64)
    gt_rgb = np.asarray(gt_rgb, dtype=np.float64)
    channel_axis = -1 if pred_rgb.ndim == 3 else None
    score = structural_similarity(pred_rgb, gt_rgb, data_range=data_range, channel_axis=channel_axis)
    return float(score)  # pyright: ignore[reportArgumentType] - a float without full=True; skimage's stub is a union


def aggregate(rows: list[dict[str, float]]) -> dict[str, float]:
    """Per-key mean over frames, ignoring NaN (a key missing from a row counts as NaN).

    Args:
        rows: One metrics dict per frame.

    Returns:
        ``{key: mean}`` over the union of keys, in first-seen order; NaN where a key has no finite-or-inf value.
    """
    keys = list(dict.fromkeys(k for row in rows for k in row))
    out = {}
    for k in keys:
        vals = np.array([row.get(k, _NAN) for row in rows], dtype=np.float64)
        vals = vals[~np.isnan(vals)]
        out[k] = float(vals.mean()) if vals.size else _NAN
    return out


def errors_by_distance(
    pred: np.ndarray, gt: np.ndarray, bin_edges: list[float] | np.ndarray
) -> list[dict[str, float]]:
    """How the error grows with depth: RMSE and MAE of ``pred`` within each reference-depth bin.

    Args:
        pred: ``[...]`` predicted depth, metres (``0`` = hole; holes are left out, as in :func:`depth_metrics`).
        gt: Reference depth, same shape, metres (``0`` = unknown).
        bin_edges: Increasing edges ``[b0, b1, ..., bk]`` in metres; bin ``i`` is ``b_i <= gt < b_{i+1}``.

    Returns:
        One dict per bin: ``lo``, ``hi``, ``n`` (pixels evaluated), ``rmse``, ``mae`` (NaN when ``n = 0``).
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    both = _valid_depth(gt) & _valid_depth(pred)
    edges = np.asarray(bin_edges, dtype=np.float64)
    rows = []
    for lo, hi in itertools.pairwise(edges):
        sel = both & (gt >= lo) & (gt < hi)
        err = pred[sel] - gt[sel]
        n = int(sel.sum())
        rows.append({"lo": float(lo), "hi": float(hi), "n": n,
                     "rmse": float(np.sqrt(np.mean(err**2))) if n else _NAN,
                     "mae": float(np.mean(np.abs(err))) if n else _NAN})
    return rows


def uncertainty_calibration(pred: np.ndarray, gt: np.ndarray, std: np.ndarray) -> dict[str, float]:
    """Is the predicted per-pixel uncertainty honest? The fraction of errors within 1 and 2 sigma.

    A calibrated Gaussian uncertainty gives about 0.683 and 0.954. Pixels count where both depths are valid
    and ``std > 0``.

    Args:
        pred, gt, std: Same shape, metres.

    Returns:
        ``within_1sigma``, ``within_2sigma`` (NaN without pixels), ``n``.
    """
    pred, gt, std = (np.asarray(a, dtype=np.float64) for a in (pred, gt, std))
    sel = _valid_depth(gt) & _valid_depth(pred) & np.isfinite(std) & (std > 0)
    n = int(sel.sum())
    if n == 0:
        return {"within_1sigma": _NAN, "within_2sigma": _NAN, "n": 0}
    z = np.abs(pred[sel] - gt[sel]) / std[sel]
    return {"within_1sigma": float(np.mean(z <= 1)), "within_2sigma": float(np.mean(z <= 2)), "n": n}


def reprojection_consistency(
    depth_a: np.ndarray, K_a: np.ndarray, c2w_a: np.ndarray,
    depth_b: np.ndarray, K_b: np.ndarray, c2w_b: np.ndarray, threshold_m: float = 0.05,
) -> dict[str, float]:
    """Multi-view agreement of two depth maps, without a ground truth: frame ``a``'s depth is lifted to 3D,
    moved into camera ``b`` and compared with ``b``'s depth at the nearest pixel it lands on.

    Pixels count where ``a`` has depth, the point lands inside ``b``'s image in front of it, and ``b`` has depth
    there. Occluded points (hidden in ``b``) count as disagreements for every depth source alike, so compare
    sources on the same frame pairs.

    Args:
        depth_a, depth_b: ``[H, W]`` z-depth in metres (``0`` = hole); the sizes may differ.
        K_a, K_b: ``[3, 3]`` intrinsics. c2w_a, c2w_b: ``[4, 4]`` camera-to-world (OpenCV axes).
        threshold_m: Agreement tolerance in metres.

    Returns:
        ``n`` (pixels compared), ``mean_abs_m`` and ``median_abs_m`` of ``|z_a->b - depth_b|``, ``consistent``
        (fraction within ``threshold_m``); NaN when ``n = 0``.
    """
    depth_a = np.asarray(depth_a, dtype=np.float64)
    depth_b = np.asarray(depth_b, dtype=np.float64)
    ok_a = _valid_depth(depth_a)
    pts = backproject(np.where(ok_a, depth_a, 0.0), np.asarray(K_a, np.float64))[ok_a]  # [n, 3] camera a
    a2b = np.linalg.inv(np.asarray(c2w_b, np.float64)) @ np.asarray(c2w_a, np.float64)
    p_b = pts @ a2b[:3, :3].T + a2b[:3, 3]
    z = p_b[:, 2]
    front = z > 1e-6
    uvw = p_b[front] @ np.asarray(K_b, np.float64).T
    u = np.rint(uvw[:, 0] / uvw[:, 2]).astype(np.int64)
    v = np.rint(uvw[:, 1] / uvw[:, 2]).astype(np.int64)
    h, w = depth_b.shape
    inside = (u >= 0) & (u < w) & (v >= 0) & (v < h)
    z_in_b = z[front][inside]
    d_b = depth_b[v[inside], u[inside]]
    sel = _valid_depth(d_b)
    diff = np.abs(z_in_b[sel] - d_b[sel])
    n = int(diff.size)
    if n == 0:
        return {"n": 0, "mean_abs_m": _NAN, "median_abs_m": _NAN, "consistent": _NAN}
    return {"n": n, "mean_abs_m": float(diff.mean()), "median_abs_m": float(np.median(diff)),
            "consistent": float(np.mean(diff <= threshold_m))}


def geometry_metrics(pred_pts: np.ndarray, gt_pts: np.ndarray, threshold_m: float = 0.05) -> dict[str, float]:
    """Reconstructed geometry against a reference, both as point samples (e.g. of two meshes' surfaces).

    Accuracy is the mean distance from each predicted point to the nearest reference point, completeness the
    reverse; the Chamfer distance is their average. Precision / recall are the fractions of predicted /
    reference points within ``threshold_m`` of the other set, and the F-score their harmonic mean
    (Knapitsch et al., Tanks and Temples, 2017).

    Args:
        pred_pts: ``[N, 3]`` metres. gt_pts: ``[M, 3]`` metres.
        threshold_m: Distance for precision / recall / F-score.

    Returns:
        ``accuracy_m``, ``completeness_m``, ``chamfer_m``, ``precision``, ``recall``, ``fscore`` (NaN when either
        set is empty; F-score 0 when precision and recall are both 0).
    """
    from scipy.spatial import cKDTree  # pyright: ignore[reportAttributeAccessIssue] - exported; missing from scipy's stub

    pred_pts = np.asarray(pred_pts, dtype=np.float64).reshape(-1, 3)
    gt_pts = np.asarray(gt_pts, dtype=np.float64).reshape(-1, 3)
    if len(pred_pts) == 0 or len(gt_pts) == 0:
        return dict.fromkeys(("accuracy_m", "completeness_m", "chamfer_m", "precision", "recall", "fscore"), _NAN)
    to_gt, _ = cKDTree(gt_pts).query(pred_pts)
    to_pred, _ = cKDTree(pred_pts).query(gt_pts)
    precision, recall = float(np.mean(to_gt <= threshold_m)), float(np.mean(to_pred <= threshold_m))
    fscore = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"accuracy_m": float(to_gt.mean()), "completeness_m": float(to_pred.mean()),
            "chamfer_m": float(0.5 * (to_gt.mean() + to_pred.mean())), "precision": precision, "recall": recall,
            "fscore": float(fscore)}
