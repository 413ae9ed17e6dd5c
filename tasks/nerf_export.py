"""Render, score and export a fitted NeRF: writes the fit folder described by :mod:`tasks.nerf_layout`.

:func:`export_scene` renders the test views of the fitted field (:func:`render_view`), scores them against the
scene (:func:`evaluate_views`: colour PSNR / SSIM, depth errors against the scene's reference depth) and writes,
under a temporary name moved into place when complete: ``field.safetensors`` and ``occupancy.safetensors``,
``config.json``, ``renders/`` (test-view RGB PNGs and 16-bit millimetre depth PNGs, :func:`write_renders`),
``pointcloud.ply`` (coloured, from the rendered test-view depth, :func:`point_cloud`), ``mesh.ply`` (marching
cubes on the density grid, :func:`density_mesh`), ``curve.csv`` (the training curve, :data:`CURVE_COLUMNS`) and
``metrics.json``. Training (and when to export) is :mod:`tasks.fit_nerf`'s.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import torch
import trimesh
from PIL import Image
from skimage.measure import marching_cubes

from models.metrics import depth_metrics, psnr, ssim
from models.nerf.field import NeRFField
from models.nerf.rendering import rays_from_camera, render_rays
from models.nerf.sampling import near_far
from tasks.config import NerfStageConfig
from tasks.files import atomic_dir, save_tensors
from tasks.nerf_data import SceneFrames
from tasks.nerf_layout import FitFolder

log = logging.getLogger(__name__)


class FitRecord(Protocol):
    """What an export reads of a fit's progress (``tasks.fit_nerf.FitState`` is one): steps taken, training
    seconds and the per-step curve (rows with the :data:`CURVE_COLUMNS` keys)."""

    step: int
    seconds: float
    curve: list[dict]


# ----------------------------------------------------------------------------------------- rendering


@torch.no_grad()
def render_view(field_, grid, frames: SceneFrames, i: int, aabb: torch.Tensor, cfg: NerfStageConfig, device):
    """Render frame ``i``'s camera: ``rgb [H, W, 3]`` in [0, 1], ``z [H, W]`` metres, ``opacity [H, W]``."""
    h, w = frames.shape
    field_.eval()
    rgb, z, acc = [], [], []
    for start in range(0, h * w, cfg.train.chunk):
        pix = torch.arange(start, min(start + cfg.train.chunk, h * w))
        o, d, zs = rays_from_camera(frames.K[i], frames.c2w[i], h, w, pix)
        o, d, zs = o.to(device), d.to(device), zs.to(device)
        near, far = near_far(o, d, aabb, cfg.train.near)
        out = render_rays(field_, o, d, near, far, n_coarse=cfg.train.n_coarse, n_fine=cfg.train.n_fine,
                          occupancy=grid, perturb=False, chunk=cfg.train.chunk, z_scale=zs)
        assert out.z_depth is not None  # z_scale given
        rgb.append(out.rgb.float().cpu())
        z.append(out.z_depth.float().cpu())
        acc.append(out.opacity.float().cpu())
    return (
        torch.cat(rgb).reshape(h, w, 3).clamp(0, 1).numpy(),
        torch.cat(z).reshape(h, w).numpy(),
        torch.cat(acc).reshape(h, w).numpy(),
    )


def evaluate_views(field_, grid, frames: SceneFrames, views: list[int], aabb, cfg, device) -> tuple[dict, list]:
    """Render ``views`` and score them: colour PSNR / SSIM, depth errors against the scene's depth."""
    rows, renders = [], []
    for i in views:
        rgb, z, acc = render_view(field_, grid, frames, i, aabb, cfg, device)
        gt_rgb = frames.view.group["rgb"][i] / 255.0
        gt_z = frames.view.group["depth"][i]
        row = {"psnr": psnr(rgb, gt_rgb), "ssim": ssim(rgb, gt_rgb)}
        row.update({f"depth_{k}": v for k, v in depth_metrics(z, gt_z).items()
                    if k in ("rmse", "mae", "abs_rel", "delta1")})
        rows.append(row)
        renders.append((i, rgb, z, acc))
    keys = rows[0].keys() if rows else []
    return {k: float(np.mean([r[k] for r in rows])) for k in keys}, renders


# ------------------------------------------------------------------------------------------- exports


def write_renders(folder: Path, frames: SceneFrames, renders: list) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, rgb, z, _ in renders:
        fid = frames.view.frame_ids[i]
        Image.fromarray((rgb * 255 + 0.5).astype(np.uint8)).save(folder / f"{fid}_rgb.png")
        Image.fromarray(np.clip(z * 1000 + 0.5, 0, 65535).astype(np.uint16)).save(folder / f"{fid}_depth.png")


def point_cloud(frames: SceneFrames, renders: list, min_opacity: float = 0.5) -> trimesh.PointCloud:
    """World points (and colours) of the rendered depth of each render, where the rendering is opaque."""
    pts, cols = [], []
    for i, rgb, z, acc in renders:
        K, c2w = frames.K[i], frames.c2w[i]
        v, u = np.nonzero((acc > min_opacity) & (z > 0))
        zz = z[v, u]
        cam = np.stack([(u - K[0, 2]) / K[0, 0] * zz, (v - K[1, 2]) / K[1, 1] * zz, zz], -1)
        pts.append(cam @ c2w[:3, :3].T + c2w[:3, 3])
        cols.append((rgb[v, u] * 255).astype(np.uint8))
    if not pts:
        return trimesh.PointCloud(np.zeros((0, 3)))
    return trimesh.PointCloud(np.concatenate(pts), colors=np.concatenate(cols))


@torch.no_grad()
def default_mesh_level(field_: NeRFField, surface: np.ndarray, cell: float, device) -> float:
    """Iso-level for marching cubes: the density at which one grid cell is half opaque (``ln 2 / cell``),
    lowered to half the median density at the rendered surface points ``surface [n, 3]`` when the field's
    surfaces are softer than that (short fits), so the mesh follows the surfaces the renders show."""
    level = float(np.log(2) / cell)
    if len(surface):
        pts = torch.from_numpy(surface[:: max(1, len(surface) // 20000)].astype(np.float32)).to(device)
        at_surface = float(field_.density(pts).float().median())
        if at_surface > 0:
            level = min(level, 0.5 * at_surface)
    return level


@torch.no_grad()
def density_mesh(field_: NeRFField, aabb: np.ndarray, resolution: int, level: float | None, device,
                 surface: np.ndarray | None = None) -> trimesh.Trimesh:
    """Marching cubes (scikit-image) on the density sampled on a ``resolution^3`` grid over the scene box.

    ``level`` defaults to :func:`default_mesh_level` (using the rendered ``surface`` points when given).
    """
    lo, hi = aabb
    axes = [np.linspace(lo[k], hi[k], resolution, dtype=np.float32) for k in range(3)]
    grid_pts = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    field_.eval()
    dens = torch.cat([
        field_.density(torch.from_numpy(grid_pts[s : s + 2**18]).to(device)).float().cpu()
        for s in range(0, len(grid_pts), 2**18)
    ]).reshape(resolution, resolution, resolution).numpy()
    spacing = (hi - lo) / (resolution - 1)
    if level is None:
        level = default_mesh_level(field_, surface if surface is not None else np.zeros((0, 3)), spacing.mean(), device)
    if not (dens.min() < level < dens.max()):
        log.warning("density never crosses the mesh level %.3g; the mesh is empty", level)
        return trimesh.Trimesh()
    verts, faces, normals, _ = marching_cubes(dens, level=level, spacing=tuple(spacing.tolist()))
    verts = verts + lo
    v_t = torch.from_numpy(verts.astype(np.float32)).to(device)
    n_t = torch.from_numpy(normals.astype(np.float32)).to(device)
    n_t = torch.nn.functional.normalize(n_t, dim=-1)
    colors = torch.cat([field_(v_t[s : s + 2**16], -n_t[s : s + 2**16])[0].float().cpu()
                        for s in range(0, len(v_t), 2**16)])
    return trimesh.Trimesh(verts, faces, vertex_colors=(colors.clamp(0, 1).numpy() * 255).astype(np.uint8),
                           process=False)


#: The training curve of a fit (``curve.csv`` of its export): per step, train-batch PSNR and loss terms.
CURVE_COLUMNS = ["step", "seconds", "psnr", "rgb", "depth", "edge", "ds", "rays", "samples_per_ray", "occupied"]


def export_scene(folder: Path, field_, grid, frames, aabb_np, cfg: NerfStageConfig, state: FitRecord, device) -> dict:
    """Render, score and export one fitted scene into ``folder`` (written under a temporary name)."""
    with atomic_dir(folder) as tmp:
        return _export_into(tmp, field_, grid, frames, aabb_np, cfg, state, device)


def _export_into(tmp: Path, field_, grid, frames, aabb_np, cfg: NerfStageConfig, state: FitRecord, device) -> dict:
    aabb = torch.from_numpy(aabb_np).to(device)
    views = frames.test or frames.train[:1]
    scores, renders = evaluate_views(field_, grid, frames, views, aabb, cfg, device)
    out = FitFolder(tmp)
    write_renders(out.renders, frames, renders)
    cloud = point_cloud(frames, renders)
    cloud.export(out.pointcloud)
    mesh = density_mesh(field_, aabb_np, cfg.export.mesh_resolution, cfg.export.mesh_level, device,
                        surface=np.asarray(cloud.vertices))
    mesh.export(out.mesh)
    save_tensors(out.field, field_.state_dict())
    save_tensors(out.occupancy, grid.state_dict())  # renders reload it (tasks.render.load_fit)
    out.config.write_text(json.dumps({"nerf": cfg.model_dump(mode="json"), "aabb": aabb_np.tolist()}, indent=2))
    evals = list(state.curve)
    metrics = {
        "scene": frames.view.name,
        "depth_source": cfg.depth_source,
        "test_views": len(frames.test),
        "train_views": len(frames.train),
        **{f"test_{k}": v for k, v in scores.items()},
        "steps": state.step,
        "train_seconds": round(state.seconds, 2),
        "final_train_psnr": float(np.mean([r["psnr"] for r in evals[-20:]])) if evals else float("nan"),
        "samples_per_ray": float(np.mean([r["samples_per_ray"] for r in evals[-20:]])) if evals else float("nan"),
        "occupied_fraction": grid.occupied_fraction,
    }
    out.metrics.write_text(json.dumps(metrics, indent=2))
    pd.DataFrame(state.curve, columns=CURVE_COLUMNS).to_csv(out.curve, index=False)
    return metrics
