"""Tests of the evaluation metrics (models/metrics.py) against hand-computed values on tiny arrays."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from models.metrics import (
    aggregate,
    depth_edges,
    depth_metrics,
    edge_f1,
    errors_by_distance,
    geometry_metrics,
    psnr,
    reprojection_consistency,
    ssim,
    uncertainty_calibration,
)

H, W = 20, 24


def step(col: int = W // 2, near: float = 1.0, far: float = 2.0) -> np.ndarray:
    """``[H, W]`` depth: ``near`` left of ``col``, ``far`` from ``col`` on."""
    return np.where(np.arange(W)[None, :] < col, near, far) * np.ones((H, 1))


# ------------------------------------------------------------------------------------------- depth errors


def test_depth_metrics_hand_computed():
    gt = np.array([[1.0, 2.0], [4.0, 0.0]])  # the 0 is unknown: not scored
    pred = np.array([[1.1, 1.8], [4.0, 9.0]])
    m = depth_metrics(pred, gt)
    err = np.array([0.1, -0.2, 0.0])
    g = np.array([1.0, 2.0, 4.0])
    assert m["rmse"] == pytest.approx(math.sqrt(np.mean(err**2)))
    assert m["mae"] == pytest.approx(0.1)
    assert m["abs_rel"] == pytest.approx(np.mean([0.1, 0.1, 0.0]))
    assert m["sq_rel"] == pytest.approx(np.mean(err**2 / g))
    assert m["rmse_log"] == pytest.approx(math.sqrt((math.log(1.1) ** 2 + math.log(0.9) ** 2 + 0.0) / 3))
    assert m["delta1"] == 1.0
    assert m["coverage"] == 1.0


def test_depth_metrics_delta_thresholds():
    gt = np.ones((1, 4))
    pred = np.array([[1.2, 1.5, 1.9, 2.5]])  # ratios under 1.25 / 1.5625 / 1.953 / none
    m = depth_metrics(pred, gt)
    assert (m["delta1"], m["delta2"], m["delta3"]) == (0.25, 0.5, 0.75)
    inverse = depth_metrics(1.0 / pred, gt)  # max(p/g, g/p): symmetric in under/over-estimation
    assert (inverse["delta1"], inverse["delta2"], inverse["delta3"]) == (0.25, 0.5, 0.75)


def test_depth_metrics_scale_error():
    gt = 1.0 + np.arange(12, dtype=float).reshape(3, 4) / 4
    m = depth_metrics(1.3 * gt, gt)
    assert m["delta1"] == 0.0
    assert m["abs_rel"] == pytest.approx(0.3)
    assert m["mae"] == pytest.approx(0.3 * gt.mean())


def test_depth_metrics_pred_holes_reduce_coverage_without_nan():
    gt = np.full((4, 4), 2.0)
    pred = gt + 0.1
    pred[0, :] = 0.0
    pred[1, 0] = np.nan
    m = depth_metrics(pred, gt)
    assert m["coverage"] == pytest.approx(11 / 16)
    assert m["mae"] == pytest.approx(0.1) and m["rmse"] == pytest.approx(0.1)
    assert all(np.isfinite(v) for v in m.values())


def test_depth_metrics_valid_mask_batches_and_empty():
    gt = np.stack([np.full((3, 3), 1.0), np.full((3, 3), 2.0)])
    pred = gt + np.array([0.5, 0.2])[:, None, None]
    valid = np.zeros_like(gt, dtype=bool)
    valid[1] = True
    m = depth_metrics(pred, gt, valid)
    assert m["mae"] == pytest.approx(0.2) and m["coverage"] == 1.0
    empty = depth_metrics(pred, gt, np.zeros_like(valid))
    assert math.isnan(empty["rmse"]) and math.isnan(empty["coverage"])
    no_pred = depth_metrics(np.zeros_like(gt), gt)
    assert no_pred["coverage"] == 0.0 and math.isnan(no_pred["mae"])
    with pytest.raises(ValueError, match="shape"):
        depth_metrics(pred[0], gt)


# ---------------------------------------------------------------------------------------------- edges


def test_depth_edges_relative_threshold_and_holes():
    e = depth_edges(step(near=1.0, far=1.04), rel_threshold=0.05)
    assert not e.any()  # 4 % jump
    e = depth_edges(step(near=1.0, far=1.06), rel_threshold=0.05)
    assert e[:, W // 2 - 1].all() and e[:, W // 2].all() and e.sum() == 2 * H
    assert depth_edges(step(near=4.0, far=4.24), rel_threshold=0.05).sum() == 2 * H  # scale-free
    holes = step()
    holes[:, W // 2] = 0.0  # a jump to a hole is no edge
    assert not depth_edges(holes).any()


def test_edge_f1_identical_and_shift_tolerance():
    gt = step()
    assert edge_f1(gt, gt) == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert edge_f1(step(col=W // 2 + 1), gt, tolerance_px=2)["f1"] == 1.0
    far = edge_f1(step(col=W // 2 + 4), gt, tolerance_px=2)
    assert far["f1"] == 0.0 and far["precision"] == 0.0 and far["recall"] == 0.0


def test_edge_f1_blurred_step_spreads_then_loses_edges():
    gt = step()
    smeared = edge_f1(gaussian_filter(gt, sigma=(0, 3), mode="nearest"), gt)
    assert smeared["recall"] == 1.0 and smeared["precision"] < 0.9  # a wide band of small jumps
    # Smoothed so much that no neighbour jump exceeds 5 %: the edge is gone.
    lost = edge_f1(gaussian_filter(gt, sigma=(0, 6), mode="nearest"), gt)
    assert lost["recall"] == 0.0 and lost["f1"] == 0.0


def test_edge_f1_empty_cases_and_pred_holes():
    flat = np.full((H, W), 2.0)
    assert edge_f1(flat, flat)["f1"] == 1.0
    assert edge_f1(flat, step()) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert edge_f1(step(), flat)["f1"] == 0.0
    pred = step()
    pred[: H // 2] = 0.0  # half the edge falls in a pred hole: recall halves, precision stays
    r = edge_f1(pred, step())
    assert r["precision"] == 1.0 and r["recall"] == pytest.approx(0.5, abs=0.1)
    assert all(np.isfinite(v) for v in r.values())


# ------------------------------------------------------------------------------------- image quality


def test_psnr_analytic_mask_and_edge_cases():
    gt = np.random.default_rng(0).random((8, 8, 3))
    for e, rng in ((0.1, 1.0), (5.0, 255.0)):
        assert psnr(gt + e, gt, data_range=rng) == pytest.approx(10 * math.log10(rng**2 / e**2))
    pred = gt.copy()
    pred[:4] += 0.5  # only outside the mask
    mask = np.zeros((8, 8), dtype=bool)
    mask[4:] = True
    assert psnr(pred, gt, mask=mask) == math.inf
    assert math.isnan(psnr(pred, gt, mask=np.zeros((8, 8), dtype=bool)))


def test_ssim_identical_is_one_and_noise_lowers_it():
    gt = gaussian_filter(np.random.default_rng(0).random((16, 16, 3)), sigma=(1, 1, 0))
    assert ssim(gt, gt) == pytest.approx(1.0)
    noisy = np.clip(gt + 0.1 * np.random.default_rng(1).normal(size=gt.shape), 0, 1)
    assert ssim(noisy, gt) < 0.9


def test_aggregate_ignores_nan_and_missing_keys():
    rows = [{"a": 1.0, "b": float("nan")}, {"a": 3.0, "b": 2.0}, {"a": float("nan"), "c": 5.0}]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = aggregate(rows + [{"d": float("nan")}])
    assert out["a"] == 2.0 and out["b"] == 2.0 and out["c"] == 5.0 and math.isnan(out["d"])
    assert list(out) == ["a", "b", "c", "d"]
    assert aggregate([]) == {}


def test_errors_by_distance_hand_computed():
    gt = np.array([0.5, 0.9, 1.5, 1.5, 3.0, 0.0])
    pred = np.array([0.6, 0.9, 1.2, 1.9, 0.0, 2.0])  # last: unknown reference; 3.0 m: a hole in pred
    rows = errors_by_distance(pred, gt, [0.0, 1.0, 2.0, 4.0])
    assert [r["n"] for r in rows] == [2, 2, 0]
    assert rows[0]["rmse"] == pytest.approx(np.sqrt((0.1**2 + 0) / 2))
    assert rows[0]["mae"] == pytest.approx(0.05)
    assert rows[1]["rmse"] == pytest.approx(np.sqrt((0.3**2 + 0.4**2) / 2))
    assert rows[1]["mae"] == pytest.approx(0.35)
    assert np.isnan(rows[2]["rmse"]) and (rows[2]["lo"], rows[2]["hi"]) == (2.0, 4.0)


def test_uncertainty_calibration_counts_errors_within_sigma():
    gt = np.full(5, 2.0)
    pred = np.array([2.05, 2.15, 1.75, 2.0, 2.5])
    std = np.array([0.1, 0.1, 0.1, 0.0, 0.1])  # std 0: left out
    cal = uncertainty_calibration(pred, gt, std)
    assert cal["n"] == 4
    assert cal["within_1sigma"] == pytest.approx(1 / 4)  # 0.5 sigma
    assert cal["within_2sigma"] == pytest.approx(2 / 4)  # 0.5 and 1.5 sigma; 2.5 and 5 sigma are out
    rng = np.random.default_rng(0)  # a calibrated Gaussian gives the textbook fractions
    g = np.full(200_000, 3.0)
    s = rng.uniform(0.01, 0.2, g.shape)
    cal = uncertainty_calibration(g + rng.normal(0, s), g, s)
    assert cal["within_1sigma"] == pytest.approx(0.6827, abs=0.005)
    assert cal["within_2sigma"] == pytest.approx(0.9545, abs=0.005)
    assert np.isnan(uncertainty_calibration(g, g, np.zeros_like(g))["within_1sigma"])


def test_geometry_metrics_hand_computed():
    gt = np.array([[0.0, 0, 0], [1, 0, 0]])
    pred = np.array([[0.0, 0, 0.1], [1, 0, 0.1], [5, 0, 0]])
    m = geometry_metrics(pred, gt, threshold_m=0.2)
    assert m["accuracy_m"] == pytest.approx((0.1 + 0.1 + 4.0) / 3)
    assert m["completeness_m"] == pytest.approx(0.1)
    assert m["chamfer_m"] == pytest.approx(0.5 * (1.4 + 0.1))
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == 1.0
    assert m["fscore"] == pytest.approx(2 * (2 / 3) / (5 / 3))
    assert geometry_metrics(pred, gt, threshold_m=0.05)["fscore"] == 0.0
    assert math.isnan(geometry_metrics(np.zeros((0, 3)), gt)["chamfer_m"])


def test_reprojection_consistency_of_a_plane_seen_from_two_cameras():
    h, w, f, z0, baseline = 40, 60, 50.0, 2.0, 0.2
    K = np.array([[f, 0, (w - 1) / 2], [0, f, (h - 1) / 2], [0, 0, 1]])
    a, b = np.eye(4), np.eye(4)
    b[0, 3] = baseline  # camera b moved 0.2 m to the right, same fronto-parallel plane at z = 2 m
    plane = np.full((h, w), z0)
    m = reprojection_consistency(plane, K, a, plane, K, b)
    shift = f * baseline / z0  # 5 px: that many columns of a fall outside b
    assert m["n"] == h * (w - shift)
    assert m["mean_abs_m"] == pytest.approx(0.0, abs=1e-12) and m["consistent"] == 1.0
    off = reprojection_consistency(plane, K, a, plane + 0.1, K, b, threshold_m=0.05)
    assert off["mean_abs_m"] == pytest.approx(0.1) and off["median_abs_m"] == pytest.approx(0.1)
    assert off["consistent"] == 0.0
    holes = plane.copy()
    holes[:, :10] = 0  # holes in b: those pixels are not compared
    assert reprojection_consistency(plane, K, a, holes, K, b)["n"] == h * (w - shift - 10)
    behind = reprojection_consistency(plane, K, a, plane, K, np.diag([-1.0, 1, -1, 1]))  # b looks away
    assert behind["n"] == 0 and math.isnan(behind["consistent"])
