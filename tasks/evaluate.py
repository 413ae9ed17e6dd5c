"""The ``evaluate`` stage: how much refinement improves sensor depth, and how the NeRFs came out.

It ends with the figures and the self-contained HTML report of :mod:`tasks.report` under ``paths.report``.

Depth refinement is scored on every scene with a reference depth (synthetic scenes; real scenes with sensor
depth only are listed as skipped), on the frames of ``evaluate.split``: the noisy input, each classical
baseline (run here on the same noisy frames) and the refined depth, against the scene store's depth.
Only evaluation scenes are scored (scene attr ``role`` = ``"eval"``, the default when it is absent);
``train`` / ``val`` scenes are listed as skipped. Before scoring, the baselines' parameters are chosen by
:func:`models.baselines.tune_baselines` (a small grid search, lowest pooled RMSE) on at most
``evaluate.tune_frames`` frames of the ``val`` scenes; without a val scene with a reference depth,
``refine.baselines`` is used as given. The metrics record which (``baseline_params``).

Outputs (DVC metrics and plots):

- ``paths.eval_metrics`` (JSON): per method the mean over frames of RMSE, MAE, AbsRel, SqRel, RMSE(log), δ<1.25^k,
  coverage and edge precision / recall / F1; the same per scene; the calibration of the refinement's
  uncertainty (fraction of errors within 1σ and 2σ); and the NeRF summary from ``paths.nerf_metrics``.
- ``paths.plots/refinement_frames.csv``: one row per (scene, frame, method).
- ``paths.plots/refinement_scenes.csv``: one row per scene, ``<method>_rmse`` / ``<method>_edge_f1`` columns.
- ``paths.plots/error_vs_distance.csv``: RMSE per reference-depth bin, one column per method.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import trimesh

from models.baselines import BaselineConfig, TuningFrame, make_baselines, tune_baselines
from models.metrics import (
    depth_metrics,
    edge_f1,
    errors_by_distance,
    geometry_metrics,
    reprojection_consistency,
    uncertainty_calibration,
)
from tasks.config import Params
from tasks.errors import DataError
from tasks.files import write_text_atomic
from tasks.location import Location
from tasks.nerf_layout import FitFolder, FitJob
from tasks.progress import progress_bar
from tasks.report import (
    ablation_figure,
    depth_histogram,
    distance_figure,
    edge_figure,
    nerf_figure,
    refinement_panel,
    save_figure,
    training_figure,
    write_report,
)
from tasks.staging import staged
from tasks.store import SceneView, open_refined, open_store, scene_names

log = logging.getLogger(__name__)


class DistanceErrors:
    """Running per-bin squared and absolute error sums, per method, pooled over frames."""

    def __init__(self, bins: list[float]):
        self.bins = bins
        self.sums: dict[str, np.ndarray] = {}  # method -> [n_bins, 3]: n, sum sq, sum abs

    def add(self, method: str, pred: np.ndarray, gt: np.ndarray) -> None:
        rows = errors_by_distance(pred, gt, self.bins)
        part = np.array([[r["n"], r["n"] * r["rmse"] ** 2, r["n"] * r["mae"]] if r["n"] else [0, 0, 0] for r in rows])
        self.sums[method] = self.sums.get(method, 0) + part

    def table(self) -> pd.DataFrame:
        """``distance_m`` (bin centre), ``lo``, ``hi``, one RMSE column per method and ``n_<method>`` pixel counts."""
        lo, hi = np.array(self.bins[:-1]), np.array(self.bins[1:])
        df = pd.DataFrame({"distance_m": (lo + hi) / 2, "lo": lo, "hi": hi})
        with np.errstate(invalid="ignore", divide="ignore"):
            rmse = {m: np.sqrt(s[:, 1] / s[:, 0]) for m, s in self.sums.items()}
        counts = {f"n_{m}": s[:, 0].astype(int) for m, s in self.sums.items()}
        return df.assign(**rmse, **counts)


def frame_rows(scene: str, fid: str, preds: dict[str, np.ndarray], gt: np.ndarray, params: Params) -> list[dict]:
    """One metrics row per method for one frame."""
    cfg = params.evaluate
    rows = []
    for method, pred in preds.items():
        edges = edge_f1(pred, gt, cfg.edge_tolerance_px, cfg.edge_rel_threshold)
        rows.append({"scene": scene, "frame": fid, "method": method, **depth_metrics(pred, gt),
                     **{f"edge_{k}": v for k, v in edges.items()}})
    return rows


def validation_frames(params: Params) -> tuple[list[TuningFrame], list[str]]:
    """At most ``evaluate.tune_frames`` frames ``(rgb, noisy depth, reference depth, K)`` of the scenes with
    role ``val`` and a reference depth, evenly spread over all their frames; and those scenes' names. A real
    scene's sensor depth is the reference when the noisy store simulated its noise on it (``mode: simulate``),
    as the refiner's training uses it."""
    scenes = open_store(params.paths.scenes, "scenes")
    noisy = open_store(params.paths.noisy, "noisy")
    candidates: list[tuple[str, int]] = []
    for name in scene_names(scenes):
        view = SceneView(scenes[name])
        if view.role != "val":
            continue
        if view.attrs.get("depth_kind") != "reference" and noisy.attrs.get("mode") != "simulate":
            log.warning("%s: validation scene without a reference depth: not used to tune the baselines", name)
            continue
        if name not in noisy:
            raise DataError(params.paths.noisy, f"validation scene {name!r} is missing from the noisy store")
        candidates += [(name, i) for i in range(view.n_frames)]
    n = min(params.evaluate.tune_frames, len(candidates))
    picks = np.unique(np.linspace(0, len(candidates) - 1, n).round().astype(int)) if n else []
    frames = []
    for k in picks:
        name, i = candidates[k]
        g = scenes[name]
        frames.append((g["rgb"][i], np.asarray(noisy[name]["depth_noisy"][i], dtype=np.float32),
                       np.asarray(g["depth"][i], dtype=np.float32), g["K"][i]))
    return frames, sorted({candidates[k][0] for k in picks})


def evaluation_baselines(params: Params) -> tuple[BaselineConfig, dict]:
    """The baseline config to score with, and the ``baseline_params`` record of the metrics.

    Tuned on :func:`validation_frames` when there are any (``{"tuned": true, "frames", "scenes", "params",
    "validation_rmse": {baseline: {"tuned", "untuned"}}}``); otherwise ``refine.baselines`` as given
    (``{"tuned": false, "reason", "params"}``). ``params`` is the full config, usable as ``refine.baselines``.
    """
    frames, val_scenes = validation_frames(params)
    if not frames:
        reason = "no validation scene (role: val) with a reference depth: refine.baselines used as given"
        log.warning("baselines not tuned: %s", reason)
        return params.refine.baselines, {"tuned": False, "reason": reason,
                                         "params": params.refine.baselines.model_dump()}
    cfg, scores = tune_baselines(frames, params.evaluate.baselines, base=params.refine.baselines)
    log.info("baselines tuned on %d frames of %s: %s", len(frames), ", ".join(val_scenes),
             {name: s["params"] for name, s in scores.items()})
    return cfg, {"tuned": True, "frames": len(frames), "scenes": val_scenes, "params": cfg.model_dump(),
                 "validation_rmse": {name: {"tuned": s["rmse"], "untuned": s["base_rmse"]}
                                     for name, s in scores.items()}}


@dataclass(frozen=True)
class RefinementScores:
    """What :func:`evaluate_refinement` measured: noisy, baseline and refined depth against the reference.

    Attributes:
        frames: one row per (scene, frame, method): ``scene``, ``frame`` (frame id), ``method``, the errors of
            :func:`models.metrics.depth_metrics` (metres, or unitless for ratios) and ``edge_precision`` /
            ``edge_recall`` / ``edge_f1``; no rows when no scene was scored.
        distance: error against distance (:meth:`DistanceErrors.table`): bin centre ``distance_m`` and bounds
            ``lo`` / ``hi`` in metres of reference depth, one RMSE column (metres) per method and ``n_<method>``
            pixel counts.
        calibration: the refined depth's uncertainty over every scored pixel: ``n`` pixels, the fractions of
            errors ``within_1sigma`` / ``within_2sigma`` of the predicted standard deviation (``None`` without
            pixels), and a Gaussian's (``gaussian_1sigma``, ``gaussian_2sigma``) to compare with.
        skipped: scene name -> why it was not scored (not an evaluation scene, or no reference depth).
        samples: scene name -> its first scored frame for the figures: ``frame`` (id), ``rgb [H, W, 3]`` uint8,
            ``preds`` (method -> depth ``[H, W]``, metres), reference ``gt`` and refined ``std`` ``[H, W]`` (metres).
        depths: a random subsample of the scored reference depths (metres; at most 20 000 pixels per frame),
            for the depth histogram; empty when no scene was scored.
        baseline_params: the ``baseline_params`` record of the metrics (:func:`evaluation_baselines`).
    """

    frames: pd.DataFrame
    distance: pd.DataFrame
    calibration: dict
    skipped: dict[str, str]
    samples: dict[str, dict]
    depths: np.ndarray
    baseline_params: dict


def evaluate_refinement(params: Params, progress: bool = True) -> RefinementScores:
    """Score noisy / baselines / refined depth on every evaluation scene with a reference.

    The baselines run with :func:`evaluation_baselines` (tuned on the validation scenes when there are any).
    """
    cfg = params.evaluate
    scenes = open_store(params.paths.scenes, "scenes")
    noisy = open_store(params.paths.noisy, "noisy")
    refined = open_refined(params.paths.refined)
    baseline_cfg, baseline_params = evaluation_baselines(params)
    baselines = make_baselines(baseline_cfg)
    rows, skipped = [], {}
    dist = DistanceErrors(cfg.distance_bins_m)
    calib = np.zeros(3)  # n, within 1 sigma, within 2 sigma
    samples, depth_values = {}, []
    rng = np.random.default_rng(0)
    for name in scene_names(scenes):  # refiner rooms (train / val), whether or not refine wrote them
        role = SceneView(scenes[name]).role
        if role != "eval":
            skipped[name] = f"role {role!r}: only evaluation scenes (role 'eval') are scored"
            log.info("%s: %s", name, skipped[name])
    for name in scene_names(refined):
        if name not in scenes or name not in noisy:
            raise DataError(params.paths.refined, f"scene {name!r} is missing from the scene or noisy store")
        if name in skipped:
            continue
        view = SceneView(scenes[name])
        if view.attrs.get("depth_kind") != "reference":
            skipped[name] = "no reference depth (sensor depth only): refinement errors need a ground truth"
            log.warning("%s: %s", name, skipped[name])
            continue
        frames = view.indices("test") if cfg.split == "test" else list(range(view.n_frames))
        frames = frames or list(range(view.n_frames))
        for i in progress_bar(frames, desc=f"evaluate {name}", unit="frame", interactive=progress):
            gt = np.asarray(view.group["depth"][i], dtype=np.float32)
            rgb, K = view.group["rgb"][i], view.group["K"][i]
            d_noisy = np.asarray(noisy[name]["depth_noisy"][i], dtype=np.float32)
            preds = {"noisy": d_noisy}
            preds.update({b: baselines[b](rgb, d_noisy, K).astype(np.float32) for b in cfg.baselines})
            preds["refined"] = np.asarray(refined[name]["depth_refined"][i], dtype=np.float32)
            rows += frame_rows(name, view.frame_ids[i], preds, gt, params)
            for method, pred in preds.items():
                dist.add(method, pred, gt)
            std = np.asarray(refined[name]["depth_std"][i], dtype=np.float32)
            if name not in samples:
                samples[name] = {"frame": view.frame_ids[i], "rgb": rgb, "preds": preds, "gt": gt, "std": std}
            depth_values.append(rng.choice(gt.ravel(), size=min(gt.size, 20_000), replace=False))
            cal = uncertainty_calibration(preds["refined"], gt, std)
            if cal["n"]:
                calib += [cal["n"], cal["n"] * cal["within_1sigma"], cal["n"] * cal["within_2sigma"]]
    calibration = {"n": int(calib[0]),
                   "within_1sigma": float(calib[1] / calib[0]) if calib[0] else None,
                   "within_2sigma": float(calib[2] / calib[0]) if calib[0] else None,
                   "gaussian_1sigma": 0.6827, "gaussian_2sigma": 0.9545}
    depths = np.concatenate(depth_values) if depth_values else np.zeros(0, np.float32)
    return RefinementScores(pd.DataFrame(rows), dist.table(), calibration, skipped, samples, depths,
                            baseline_params)


def consistency_pairs(c2w: np.ndarray, offset: int, max_pairs: int) -> list[tuple[int, int]]:
    """Frame pairs ``(i, j)`` of posed frames ``offset`` apart in the sequence, at most ``max_pairs`` of them,
    evenly spread over it."""
    posed = [i for i in range(len(c2w)) if np.all(np.isfinite(c2w[i]))]
    pairs = list(zip(posed, posed[offset:], strict=False))
    if len(pairs) > max_pairs:
        pairs = [pairs[k] for k in np.unique(np.linspace(0, len(pairs) - 1, max_pairs).round().astype(int))]
    return pairs


def evaluate_consistency(params: Params) -> pd.DataFrame:
    """Multi-view consistency of the depth sources on every posed scene, with or without a ground truth:
    one row per (scene, frame pair, method) with :func:`models.metrics.reprojection_consistency`.

    Methods: ``noisy`` (the sensor depth on real scenes), ``refined``, and ``reference`` where the scene has one
    (its disagreement is the floor set by occlusions and pixel rounding).
    """
    cfg = params.evaluate
    scenes = open_store(params.paths.scenes, "scenes")
    noisy = open_store(params.paths.noisy, "noisy")
    refined = open_refined(params.paths.refined)
    rows = []
    for name in scene_names(refined):
        view = SceneView(scenes[name])
        K, c2w = view.group["K"][:], view.group["c2w"][:]
        sources = {"noisy": noisy[name]["depth_noisy"], "refined": refined[name]["depth_refined"]}
        if view.attrs.get("depth_kind") == "reference":
            sources["reference"] = view.group["depth"]
        for a, b in consistency_pairs(c2w, cfg.consistency_offset, cfg.consistency_pairs):
            for method, depth in sources.items():
                m = reprojection_consistency(depth[a], K[a], c2w[a], depth[b], K[b], c2w[b],
                                             cfg.consistency_threshold_m)
                rows.append({"scene": name, "frame_a": view.frame_ids[a], "frame_b": view.frame_ids[b],
                             "method": method, **m})
    return pd.DataFrame(rows, columns=["scene", "frame_a", "frame_b", "method", "n", "mean_abs_m",
                                       "median_abs_m", "consistent"])


NERF_COLUMNS = ("test_psnr", "test_ssim", "test_depth_rmse", "test_depth_mae", "train_seconds")


def mesh_points(path: Path, n: int, seed: int = 0) -> np.ndarray:
    """``[n, 3]`` points sampled uniformly on the surface of the mesh at ``path`` (empty for an empty mesh)."""
    mesh = trimesh.load(path, force="mesh")
    if len(mesh.faces) == 0:  # pyright: ignore[reportAttributeAccessIssue] - force="mesh" loads a Trimesh
        return np.zeros((0, 3))
    return np.asarray(trimesh.sample.sample_surface(mesh, n, seed=seed)[0])


def reference_points(view: SceneView, aabb: np.ndarray, n: int, seed: int = 0) -> np.ndarray | None:
    """Points on the scene's ground-truth mesh inside the NeRF's box ``aabb [2, 3]`` (what it can reconstruct);
    ``None`` without a ground-truth mesh."""
    mesh = view.mesh()
    if mesh is None:
        return None
    surface = trimesh.Trimesh(*mesh, process=False)
    pts = np.asarray(trimesh.sample.sample_surface(surface, 4 * n, seed=seed)[0])
    inside = np.all((pts >= aabb[0]) & (pts <= aabb[1]), axis=1)
    return pts[inside][:n]


def evaluate_nerf(params: Params, nerf: dict) -> pd.DataFrame:
    """One row per (scene, depth source) of the NeRF fits: test-view PSNR / SSIM and rendered-depth errors
    (from the fit_nerf summary), and geometry of the fit's mesh against the ground-truth mesh (Chamfer,
    precision / recall / F-score at ``evaluate.fscore_threshold_m``) where the scene has one."""
    cfg = params.evaluate
    scenes = open_store(params.paths.scenes, "scenes")
    main = nerf.get("depth_source", params.nerf.depth_source)
    rows = []
    for source, entry in nerf.get("by_source", {}).items():
        for scene, m in entry["scenes"].items():
            row = {"scene": scene, "depth_source": source, "label": f"{scene} / {source}",
                   **{k: m.get(k, np.nan) for k in NERF_COLUMNS}}
            fit = FitFolder(Path(FitJob(scene, source, ablation=source != main).folder(params.paths.nerf)))
            if scene in scenes and fit.mesh.is_file():
                gt = reference_points(SceneView(scenes[scene]), fit.aabb(), cfg.geometry_points)
                if gt is not None:
                    pred = mesh_points(fit.mesh, cfg.geometry_points)
                    row.update(geometry_metrics(pred, gt, cfg.fscore_threshold_m))
            rows.append(row)
    return pd.DataFrame(rows)


def method_means(frames: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean over frames of every metric column, grouped by ``by`` (NaN ignored)."""
    metric_cols = [c for c in frames.columns if c not in ("scene", "frame", "method")]
    return frames.groupby(by, sort=False)[metric_cols].mean()  # pyright: ignore[reportReturnType] - pandas: a frame


def nerf_summary(path: Path) -> dict:
    """The fit_nerf summary (per-scene test metrics and means), or an empty dict before any fit."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as err:
        raise DataError(path, f"not valid JSON: {err}") from None


def _clean(value: Any) -> Any:
    """JSON-safe: NaN -> None, numpy scalars -> Python."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, float | np.floating):
        return None if not np.isfinite(value) else round(float(value), 6)
    return value


def make_figures(params: Params, samples: dict, distance: pd.DataFrame | None, depths: np.ndarray,
                 ablation: pd.DataFrame) -> list[Path]:
    """Every PNG of the report, written under ``paths.report/figures`` (replaced as a whole)."""
    folder = Path(params.paths.report) / "figures"
    if folder.exists():
        shutil.rmtree(folder)
    cfg = params.evaluate
    out = []
    for name, s in samples.items():
        fig = refinement_panel(s["rgb"], s["preds"], s["gt"], s["std"], f"{name}, frame {s['frame']}")
        out.append(save_figure(fig, folder / f"refinement_{name}_{s['frame']}.png"))
        fig = edge_figure({m: s["preds"][m] for m in ("noisy", "refined")}, s["gt"], cfg.edge_rel_threshold,
                          cfg.edge_tolerance_px, f"depth edges, {name}, frame {s['frame']}")
        out.append(save_figure(fig, folder / f"edges_{name}_{s['frame']}.png"))
    if distance is not None:
        out.append(save_figure(distance_figure(distance), folder / "error_vs_distance.png"))
    if depths.size:
        out.append(save_figure(depth_histogram(depths), folder / "depth_distribution.png"))
    if not ablation.empty:
        out.append(save_figure(ablation_figure(ablation), folder / "nerf_ablation.png"))
    diffusion_curve = Path(params.paths.diffusion) / "curve.csv"  # the refiner's folder: tasks/refiner_files.py
    nerf_curves = {name: pd.read_csv(p) for name in scene_names(open_store(params.paths.scenes, "scenes"))
                   if (p := FitFolder(Path(params.paths.nerf) / name).curve).is_file()}
    if diffusion_curve.is_file() or nerf_curves:
        diffusion = pd.read_csv(diffusion_curve) if diffusion_curve.is_file() else None
        out.append(save_figure(training_figure(diffusion, nerf_curves), folder / "training_curves.png"))
    scenes = open_store(params.paths.scenes, "scenes")
    for name in scene_names(scenes):
        view = SceneView(scenes[name])
        test = view.indices("test")
        renders = FitFolder(Path(params.paths.nerf) / name).renders
        if not test or not renders.is_dir():
            continue
        fig = nerf_figure(renders, view.group["rgb"][test[0]], view.frame_ids[test[0]], f"NeRF {name}")
        if fig is not None:
            out.append(save_figure(fig, folder / f"nerf_{name}.png"))
    return out


def _records(df: pd.DataFrame, by: str) -> dict:
    """``{value of by: {column: mean}}`` over the numeric columns."""
    if df.empty:
        return {}
    means = df.groupby(by, sort=False).mean(numeric_only=True)
    return {k: row.to_dict() for k, row in means.iterrows()}  # pyright: ignore[reportAttributeAccessIssue] - a frame


def run_evaluate(params: Params, progress: bool = True) -> Location:
    """The ``evaluate`` stage; writes ``paths.eval_metrics``, the CSVs under ``paths.plots`` and the report (any of
    them, and the fits and refiner it reads, may be URLs: :mod:`tasks.staging`)."""
    with staged(params, inputs=["nerf", "nerf_metrics", "diffusion"],
                outputs=["eval_metrics", "plots", "report"]) as local:
        _evaluate(local, params, progress)
    return params.paths.eval_metrics


def _evaluate(params: Params, shown: Params, progress: bool) -> None:
    """:func:`run_evaluate` with every path local; the report shows the params ``shown`` (the run's own)."""
    scores = evaluate_refinement(params, progress)
    frames, distance = scores.frames, scores.distance
    plots = Path(params.paths.plots)
    metrics: dict = {"refinement": {}, "refinement_by_scene": {}, "calibration": scores.calibration,
                     "skipped": scores.skipped, "baseline_params": scores.baseline_params}
    if not frames.empty:
        overall = method_means(frames, ["method"])
        metrics["refinement"] = {m: row.to_dict() for m, row in overall.iterrows()}
        by_scene = method_means(frames, ["scene", "method"])
        for (scene, method), row in by_scene.iterrows():  # pyright: ignore[reportGeneralTypeIssues] - 2-level index
            metrics["refinement_by_scene"].setdefault(scene, {})[method] = row.to_dict()
        wide = by_scene[["rmse", "edge_f1"]].unstack("method")
        wide.columns = [f"{method}_{metric}" for metric, method in wide.columns]
        write_text_atomic(plots / "refinement_frames.csv", frames.to_csv(index=False))
        write_text_atomic(plots / "refinement_scenes.csv", wide.reset_index().to_csv(index=False))
        write_text_atomic(plots / "error_vs_distance.csv", distance.to_csv(index=False))
    else:  # no scene with a reference depth: the DVC plots are written, with their headers only
        write_text_atomic(plots / "refinement_frames.csv", "scene,frame,method\n")
        write_text_atomic(plots / "refinement_scenes.csv", "scene\n")
        write_text_atomic(plots / "error_vs_distance.csv", distance.to_csv(index=False))
    consistency = evaluate_consistency(params)
    write_text_atomic(plots / "consistency.csv", consistency.to_csv(index=False))
    metrics["consistency"] = _records(consistency.drop(columns=["scene", "frame_a", "frame_b"]), "method")
    nerf = nerf_summary(Path(params.paths.nerf_metrics))
    metrics["nerf"] = {k: v for k, v in nerf.items() if k.startswith("mean_")}
    metrics["nerf_by_scene"] = {s: {k: v for k, v in m.items() if k.startswith("test_") or k == "depth_source"}
                                for s, m in nerf.get("scenes", {}).items()}
    ablation = evaluate_nerf(params, nerf)
    write_text_atomic(plots / "nerf_ablation.csv", ablation.to_csv(index=False))
    metrics["nerf_ablation"] = _records(ablation.drop(columns=["scene", "label"], errors="ignore"), "depth_source")
    write_text_atomic(params.paths.eval_metrics, json.dumps(_clean(metrics), indent=2))
    figures = make_figures(params, scores.samples, distance if not frames.empty else None, scores.depths, ablation)
    write_report(shown, _clean(metrics), figures, Path(params.paths.report) / "index.html")
    if metrics["refinement"]:
        r = metrics["refinement"]
        log.info("refinement RMSE: noisy %.4f m, refined %.4f m; edge F1 %.3f -> %.3f",
                 r["noisy"]["rmse"], r["refined"]["rmse"], r["noisy"]["edge_f1"], r["refined"]["edge_f1"])
