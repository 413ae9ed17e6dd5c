"""Figures and a self-contained HTML report for the ``evaluate`` stage.

Figures (PNG, matplotlib, written to ``paths.report/figures``):

- ``refinement_<scene>_<frame>.png``: RGB | noisy | each baseline | refined | reference, the absolute error
  of each method, and the refinement's uncertainty, for the first test frame of each scene;
- ``error_vs_distance.png``: RMSE per reference-depth bin for every method;
- ``depth_distribution.png``: the reference depth values of the scored frames;
- ``edges_<scene>_<frame>.png``: depth edges of the noisy and the refined depth against the reference's;
- ``nerf_<scene>.png``: a NeRF test view beside the ground truth, with its rendered depth;
- ``nerf_ablation.png``: test PSNR, rendered-depth RMSE and mesh F-score per depth source and scene;
- ``training_curves.png``: the diffusion refiner's training and validation loss against step, and each NeRF
  fit's train-batch PSNR against seconds of training.

``paths.report/index.html`` embeds every figure as base64 and has the headline tables and the run's params,
so it opens without a network or any other file.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from matplotlib.figure import Figure
from PIL import Image

from tasks.config import Params
from tasks.files import write_text_atomic

LPIPS_NOTE = ("LPIPS is not reported: it needs pretrained AlexNet/VGG weights from a model hub, and this "
              "pipeline runs without network access; PSNR and SSIM (scikit-image) are the image metrics.")

# Figures are built with matplotlib's object API (no pyplot): no global backend or figure registry, so
# evaluation can run in any thread of a task runner.


def save_figure(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def refinement_panel(rgb: np.ndarray, preds: dict[str, np.ndarray], gt: np.ndarray, std: np.ndarray | None,
                     title: str) -> Figure:
    """Top row: RGB, every method's depth and the reference; bottom row: each method's |error| and sigma."""
    methods = list(preds)
    cols = len(methods) + 2
    fig = Figure(figsize=(2.2 * cols, 4.4))
    axes = fig.subplots(2, cols)
    valid = gt > 0
    lo, hi = (np.percentile(gt[valid], [2, 98]) if valid.any() else (0.0, 1.0))
    err_max = max(0.05, float(np.percentile(np.abs(preds[methods[-1]] - gt)[valid], 98))) if valid.any() else 0.1
    axes[0, 0].imshow(rgb)
    axes[0, 0].set_title("RGB", fontsize=8)
    for k, m in enumerate(methods, start=1):
        axes[0, k].imshow(np.where(preds[m] > 0, preds[m], np.nan), cmap="turbo", vmin=lo, vmax=hi)
        axes[0, k].set_title(m, fontsize=8)
        err = np.where(valid & (preds[m] > 0), np.abs(preds[m] - gt), np.nan)
        axes[1, k].imshow(err, cmap="magma", vmin=0, vmax=err_max)
        axes[1, k].set_title(f"|error| {m}", fontsize=8)
    axes[0, -1].imshow(np.where(valid, gt, np.nan), cmap="turbo", vmin=lo, vmax=hi)
    axes[0, -1].set_title("reference", fontsize=8)
    if std is not None:
        axes[1, -1].imshow(std, cmap="viridis")
        axes[1, -1].set_title("refined sigma", fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    return fig


def distance_figure(distance: pd.DataFrame) -> Figure:
    fig = Figure(figsize=(5.5, 3.5))
    ax = fig.subplots()
    methods = [c for c in distance.columns if c not in ("distance_m", "lo", "hi") and not c.startswith("n_")]
    for m in methods:
        ax.plot(distance["distance_m"], distance[m], marker="o", lw=2.5 if m == "refined" else 1.2, label=m)
    ax.set_xlabel("reference depth (m)")
    ax.set_ylabel("RMSE (m)")
    ax.set_title("error against distance")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def depth_histogram(depths: np.ndarray) -> Figure:
    fig = Figure(figsize=(5.5, 3.0))
    ax = fig.subplots()
    ax.hist(depths[depths > 0], bins=60, color="steelblue")
    ax.set_xlabel("reference depth (m)")
    ax.set_ylabel("pixels")
    ax.set_title("depth values of the scored frames")
    return fig


def nerf_figure(renders: Path, gt_rgb: np.ndarray, frame_id: str, title: str) -> Figure | None:
    """The rendered test view beside the ground truth, and the rendered depth (16-bit mm PNG)."""
    rgb_path, depth_path = renders / f"{frame_id}_rgb.png", renders / f"{frame_id}_depth.png"
    if not rgb_path.is_file() or not depth_path.is_file():
        return None
    fig = Figure(figsize=(9, 2.8))
    axes = fig.subplots(1, 3)
    axes[0].imshow(gt_rgb)
    axes[0].set_title("ground truth", fontsize=8)
    axes[1].imshow(np.asarray(Image.open(rgb_path)))
    axes[1].set_title("NeRF render", fontsize=8)
    axes[2].imshow(np.asarray(Image.open(depth_path)).astype(np.float32) / 1000, cmap="turbo")
    axes[2].set_title("NeRF depth", fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    return fig


def edge_figure(preds: dict[str, np.ndarray], gt: np.ndarray, rel_threshold: float, tolerance_px: float,
                title: str) -> Figure:
    """Depth edges of each method against the reference's: matched edges (within ``tolerance_px`` of a
    reference edge) green, spurious ones red, reference edges the method missed grey."""
    from models.metrics import edge_matches

    fig = Figure(figsize=(3.0 * (len(preds) + 1), 2.8))
    axes = fig.subplots(1, len(preds) + 1)
    for ax, (method, pred) in zip(axes, preds.items(), strict=False):
        e = edge_matches(pred, gt, tolerance_px, rel_threshold)
        img = np.ones(gt.shape + (3,))
        img[e["gt"] & ~e["found"]] = (0.6, 0.6, 0.6)
        img[e["matched"]] = (0.1, 0.6, 0.1)
        img[e["pred"] & ~e["matched"]] = (0.85, 0.1, 0.1)
        ax.imshow(img, interpolation="nearest")
        ax.set_title(f"{method}: matched / spurious / missed", fontsize=7)
    axes[-1].imshow(np.where(e["gt"], 0.0, 1.0), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    axes[-1].set_title("reference edges", fontsize=7)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    return fig


def ablation_figure(ablation: pd.DataFrame) -> Figure:
    """The NeRF ablation: test PSNR, rendered-depth RMSE and (where measured) mesh F-score per depth source,
    one bar group per source, one bar per scene."""
    panels = [("test_psnr", "test PSNR (dB)"), ("test_depth_rmse", "rendered depth RMSE (m)")]
    if "fscore" in ablation and bool(ablation["fscore"].notna().any()):
        panels.append(("fscore", "mesh F-score"))
    order = [s for s in ("none", "noisy", "refined", "gt") if s in set(ablation["depth_source"])]
    scenes = list(dict.fromkeys(ablation["scene"]))
    fig = Figure(figsize=(3.6 * len(panels), 3.2))
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    width = 0.8 / max(len(scenes), 1)
    for ax, (col, label) in zip(axes, panels, strict=True):
        for k, scene in enumerate(scenes):
            sub = ablation[ablation["scene"] == scene].set_index("depth_source").reindex(order)
            ax.bar(np.arange(len(order)) + (k - (len(scenes) - 1) / 2) * width, sub[col], width, label=scene)
        if col == "test_psnr" and bool(ablation[col].notna().any()):  # PSNR differences are small next to its value
            lo, hi = ablation[col].min(), ablation[col].max()  # a column's: scalars (pandas annotates a union)
            ax.set_ylim(max(0.0, float(lo) - 3.0), float(hi) + 1.0)  # pyright: ignore[reportArgumentType]
        ax.set_xticks(np.arange(len(order)), order)
        ax.set_xlabel("depth supervision")
        ax.set_title(label, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("Does refined depth give a better NeRF?", fontsize=10)
    return fig


def training_figure(diffusion: pd.DataFrame | None, nerf: dict[str, pd.DataFrame]) -> Figure:
    """Left: the refiner's loss (``total``) and validation loss against step; right: train PSNR against seconds
    for each NeRF fit in ``nerf`` (scene -> its ``curve.csv``)."""
    fig = Figure(figsize=(10, 3.6))
    ax_d, ax_n = fig.subplots(1, 2)
    if diffusion is not None and not diffusion.empty:
        ax_d.plot(diffusion["step"], diffusion["total"], lw=0.8, label="training loss")
        val = diffusion.dropna(subset=["val_loss"])
        ax_d.plot(val["step"], val["val_loss"], "o-", ms=3, label="validation loss")
        ax_d.set_yscale("log")
        ax_d.legend(fontsize=8)
    ax_d.set(xlabel="step", ylabel="loss", title="diffusion refiner")
    for scene, curve in nerf.items():
        ax_n.plot(curve["seconds"], curve["psnr"].rolling(20, min_periods=1).mean(), lw=1.0, label=scene)
    if nerf:
        ax_n.legend(fontsize=8)
    ax_n.set(xlabel="seconds of training", ylabel="train PSNR (dB, 20-step mean)", title="NeRF fits")
    return fig


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(path.stem)}">'
            f"<figcaption>{html.escape(path.stem)}</figcaption></figure>")


def _table(df: pd.DataFrame, caption: str) -> str:
    return f"<h3>{html.escape(caption)}</h3>" + df.to_html(float_format=lambda v: f"{v:.4g}", na_rep="–", border=0)


def write_report(params: Params, metrics: dict, figures: list[Path], path: Path) -> Path:
    """``index.html`` with the headline tables, every figure (embedded) and the params of the run."""
    parts = ["<h1>DiffusionNeRF-3D evaluation</h1>"]
    if metrics.get("refinement"):
        ref = pd.DataFrame(metrics["refinement"]).T
        cols = [c for c in ("rmse", "mae", "abs_rel", "sq_rel", "rmse_log", "delta1", "delta2", "delta3", "coverage",
                            "edge_precision", "edge_recall", "edge_f1") if c in ref]
        parts.append(_table(ref[cols], "Depth refinement (mean over scored frames; metres)"))  # pyright: ignore[reportArgumentType] - a list of columns selects a frame
    bp = metrics.get("baseline_params")
    if bp:
        how = (f"tuned by grid search on {bp['frames']} frames of the validation scenes ({', '.join(bp['scenes'])})"
               if bp["tuned"] else f"not tuned ({bp['reason']})")
        parts.append(f"<p>Baseline parameters: {html.escape(how)}.</p>")
    cal = metrics.get("calibration", {})
    if cal.get("n"):
        parts.append(f"<p>Uncertainty calibration: {cal['within_1sigma']:.1%} of errors within 1σ "
                     f"(Gaussian 68.3 %), {cal['within_2sigma']:.1%} within 2σ (95.4 %).</p>")
    if metrics.get("consistency"):
        parts.append(_table(pd.DataFrame(metrics["consistency"]).T,
                            "Multi-view consistency (frame depth reprojected into a neighbour; no ground truth "
                            "needed; noisy = sensor depth on real scenes)"))
    if metrics.get("nerf_ablation"):
        abl = pd.DataFrame(metrics["nerf_ablation"]).T
        parts.append(_table(abl, "NeRF by depth supervision (mean over scenes; geometry against the "
                                 "ground-truth mesh where there is one)"))
    if metrics.get("nerf_by_scene"):
        parts.append(_table(pd.DataFrame(metrics["nerf_by_scene"]).T, "NeRF test views (main fit)"))
    parts.append(f"<p>{html.escape(LPIPS_NOTE)}</p>")
    for name, why in metrics.get("skipped", {}).items():
        parts.append(f"<p>Skipped {html.escape(name)}: {html.escape(why)}</p>")
    parts += ["<h2>Figures</h2>", *(_img(f) for f in figures)]
    dumped = yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False)
    parts += ["<h2>Params</h2>", f"<pre>{html.escape(dumped)}</pre>"]
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0}td,th{padding:2px 8px;text-align:right}"
             "tr:nth-child(even){background:#f3f3f3}img{max-width:100%}figure{margin:1em 0}")
    doc = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>DiffusionNeRF-3D evaluation</title>"
           f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
    write_text_atomic(path, doc)
    return path
