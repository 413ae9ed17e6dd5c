"""Export scenes as nerfstudio datasets: ``transforms.json``, colour PNGs and depth as 16-bit millimetre PNGs.

``ns-train depth-nerfacto`` / ``splatfacto`` (or any ``transforms.json`` reader) can then train on our depth,
refined by default. Layout, per scene, under the output folder::

    <scene>/transforms.json
    <scene>/images/<frame id>.png         colour
    <scene>/depth/<frame id>.png          uint16 millimetres (0 = no depth), depth_unit_scale_factor 0.001
    <scene>/pointcloud.ply                the exported depth of every posed frame in world coordinates, coloured
                                          (at most ``max_points``, evenly subsampled; not with ``--depth none``)

``transforms.json`` holds per-frame pinhole intrinsics (``fl_x``, ``fl_y``, ``cx``, ``cy``, ``w``, ``h``),
``transform_matrix`` (camera-to-world in nerfstudio's OpenGL camera axes), ``depth_file_path`` and the
frame's split (``"split"``: train / test). Frames without a pose are left out (nerfstudio needs poses) and
counted in the returned summary. :func:`tasks.datasets.nerfstudio.nerfstudio_scene` reads the export back.
Each scene's folder is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
import trimesh
from PIL import Image

from models.camera import backproject
from tasks.config import Params
from tasks.datasets.nerfstudio import GL_TO_CV
from tasks.errors import DataError
from tasks.files import atomic_dir
from tasks.store import SceneView, open_refined, open_store, scene_names

ExportDepth = Literal["refined", "noisy", "gt", "none"]
MM_PER_METRE = 1000.0


def depth_arrays(params: Params, name: str, depth: ExportDepth):
    """The ``[N, H, W]`` array (zarr) of the depth to export for scene ``name``, or None for ``none``."""
    paths = params.paths
    if depth == "none":
        return None
    if depth == "gt":
        view = SceneView(open_store(paths.scenes, "scenes")[name])
        if view.attrs.get("depth_kind") != "reference":
            raise DataError(paths.scenes, f"scene {name!r} has sensor depth only; --depth gt needs a reference")
        return view.group["depth"]
    if depth == "noisy":
        return open_store(paths.noisy, "noisy")[name]["depth_noisy"]
    return open_refined(paths.refined)[name]["depth_refined"]


def millimetre_png(z: np.ndarray) -> np.ndarray:
    """Metres -> uint16 millimetres (rounded; 0 and non-finite stay 0; beyond 65.535 m clipped)."""
    z = np.where(np.isfinite(z) & (z > 0), z, 0.0)
    return np.clip(np.round(z * MM_PER_METRE), 0, 65535).astype(np.uint16)


def world_points(z: np.ndarray, rgb: np.ndarray, K: np.ndarray, c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World points ``[n, 3]`` and their colours ``[n, 3]`` uint8 of a frame's measured pixels (``z > 0``)."""
    valid = np.isfinite(z) & (z > 0)
    cam = backproject(np.where(valid, z, 0.0), K)[valid]
    return cam @ c2w[:3, :3].T + c2w[:3, 3], rgb[valid]


def export_scene(params: Params, name: str, out: Path, depth: ExportDepth = "refined",
                 max_points: int = 500_000) -> dict:
    """Write scene ``name`` to ``out/<name>`` as a nerfstudio dataset; a summary of what was written."""
    view = SceneView(open_store(params.paths.scenes, "scenes")[name])
    g = view.group
    z_all = depth_arrays(params, name, depth)
    K, c2w, ids = g["K"][:], g["c2w"][:], view.frame_ids
    h, w = view.shape
    frames, skipped, points, colours = [], [], [], []
    with atomic_dir(Path(out) / name) as tmp:
        (tmp / "images").mkdir()
        if z_all is not None:
            (tmp / "depth").mkdir()
        for i, fid in enumerate(ids):
            if not np.all(np.isfinite(c2w[i])):
                skipped.append(fid)
                continue
            Image.fromarray(np.asarray(g["rgb"][i])).save(tmp / "images" / f"{fid}.png")
            entry = {
                "file_path": f"images/{fid}.png",
                "transform_matrix": (c2w[i] @ GL_TO_CV).tolist(),
                "fl_x": float(K[i, 0, 0]), "fl_y": float(K[i, 1, 1]), "cx": float(K[i, 0, 2]), "cy": float(K[i, 1, 2]),
                "w": w, "h": h, "split": view.split[i],
            }
            if z_all is not None:
                z = np.asarray(z_all[i], dtype=np.float64)
                Image.fromarray(millimetre_png(z)).save(tmp / "depth" / f"{fid}.png")
                entry["depth_file_path"] = f"depth/{fid}.png"
                p, c = world_points(z, np.asarray(g["rgb"][i]), K[i], c2w[i])
                points.append(p)
                colours.append(c)
            frames.append(entry)
        if not frames:
            raise DataError(params.paths.scenes, f"scene {name!r} has no posed frames to export")
        meta = {"camera_model": "OPENCV", "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0,
                "depth_unit_scale_factor": 1.0 / MM_PER_METRE, "depth_source": depth, "frames": frames}
        (tmp / "transforms.json").write_text(json.dumps(meta, indent=2))
        n_points = 0
        if points:
            pts, cols = np.concatenate(points), np.concatenate(colours)
            keep = np.linspace(0, len(pts) - 1, min(len(pts), max_points)).astype(int) if len(pts) else []
            n_points = len(keep)
            trimesh.PointCloud(pts[keep], colors=cols[keep]).export(tmp / "pointcloud.ply")
    return {"scene": name, "frames": len(frames), "skipped_without_pose": skipped, "depth": depth,
            "points": n_points, "folder": str(Path(out) / name)}


def export_nerfstudio(params: Params, out: str | Path, depth: ExportDepth = "refined",
                      scenes: list[str] | None = None) -> list[dict]:
    """Export ``scenes`` (default: every evaluation scene of ``paths.scenes``) under ``out``."""
    root = open_store(params.paths.scenes, "scenes")
    names = scenes or [n for n in scene_names(root) if SceneView(root[n]).role == "eval"]
    for n in names:
        if n not in root:
            raise DataError(params.paths.scenes, f"scene {n!r} is not in the store")
    return [export_scene(params, n, Path(out), depth) for n in names]
