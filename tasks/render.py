"""Reload a fitted NeRF from its export folder and render camera paths: PNG frames and an MP4.

``load_fit(paths.nerf/<scene>)`` rebuilds the field from ``config.json`` + ``field.safetensors`` (safetensors:
nothing is unpickled) and its occupancy grid from ``occupancy.safetensors`` (exports without one get a grid
recomputed from the field's density). :func:`camera_path` makes a path through the scene's train poses
(positions interpolated linearly, rotations by slerp) or an orbit around the scene box; :func:`render_path`
renders it with the same renderer as the test views and writes ``frames/00000.png, ...`` (RGB left, depth
right, coloured by distance) and ``video.mp4`` into a folder written under a temporary name.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image
from safetensors.torch import load_file
from scipy.spatial.transform import Rotation, Slerp

from models.camera import look_at
from models.nerf.field import NeRFField
from models.nerf.occupancy import OccupancyGrid
from models.nerf.rendering import rays_from_camera, render_rays
from models.nerf.sampling import near_far
from tasks.config import NerfStageConfig, Params
from tasks.errors import DataError
from tasks.files import atomic_dir
from tasks.nerf_layout import FitFolder, fits_on_disk
from tasks.progress import progress_bar
from tasks.store import SceneView, open_store

log = logging.getLogger(__name__)

PathKind = Literal["train", "orbit"]


@dataclass(frozen=True)
class FittedScene:
    """A fitted field with its occupancy grid, scene box ``aabb [2, 3]`` and the config it was fitted with."""

    field: NeRFField
    grid: OccupancyGrid
    aabb: np.ndarray
    cfg: NerfStageConfig


def load_fit(folder: str | Path, device: str | torch.device = "cpu") -> FittedScene:
    """The fitted scene exported in ``folder`` (``paths.nerf/<scene>``), in eval mode on ``device``."""
    fit = FitFolder(Path(folder))
    for path in (fit.config, fit.field):
        if not path.is_file():
            raise DataError(path, "not found: run dnerf fit-nerf for this scene first")
    try:
        cfg = NerfStageConfig.model_validate(fit.read_config()["nerf"])
    except (KeyError, ValueError) as err:
        raise DataError(fit.config, f"not a NeRF export config: {err}") from None
    aabb = fit.aabb().astype(np.float32)
    field_ = NeRFField(cfg.field, aabb)
    try:
        field_.load_state_dict(load_file(fit.field))
    except RuntimeError as err:
        raise DataError(fit.field, f"weights do not match config.json: {err}") from None
    field_ = field_.to(device).eval()
    grid = OccupancyGrid(aabb, cfg.occupancy.resolution).to(device)
    if fit.occupancy.is_file():
        grid.load_state_dict(load_file(fit.occupancy))
    else:  # older exports: mark the cells where the fitted field has density
        oc = cfg.occupancy
        with torch.no_grad():
            grid.update(oc.warmup_steps, field_.density, warmup_steps=0, decay=0.0, threshold=oc.threshold,
                        n_samples_per_cell=4, generator=torch.Generator(device=grid.density.device).manual_seed(0))
    return FittedScene(field_, grid, aabb, cfg)


def camera_path(c2w: np.ndarray, kind: PathKind, n_frames: int, aabb: np.ndarray) -> np.ndarray:
    """``[n_frames, 4, 4]`` camera-to-world poses (OpenCV axes).

    Args:
        c2w: ``[N, 4, 4]`` the scene's posed (train) cameras, in capture order.
        kind: ``train``: along those cameras (linear positions, slerped rotations, evenly in path length);
            ``orbit``: a circle around the box centre at the cameras' median distance and height, looking at it,
            with the cameras' mean up direction.
        n_frames: Poses to make.
        aabb: ``[2, 3]`` scene box.
    """
    c2w = np.asarray(c2w, dtype=np.float64)
    if len(c2w) == 0:
        raise ValueError("camera_path needs at least one posed camera")
    if kind == "train":
        if len(c2w) == 1:
            return np.repeat(c2w, n_frames, axis=0)
        steps = np.linalg.norm(np.diff(c2w[:, :3, 3], axis=0), axis=1) + 1e-6
        knots = np.concatenate([[0.0], np.cumsum(steps)])
        s = np.linspace(0.0, knots[-1], n_frames)
        rot = Slerp(knots, Rotation.from_matrix(c2w[:, :3, :3]))(s).as_matrix()
        out = np.tile(np.eye(4), (n_frames, 1, 1))
        out[:, :3, :3] = rot
        out[:, :3, 3] = np.stack([np.interp(s, knots, c2w[:, :3, 3][:, k]) for k in range(3)], axis=1)
        return out
    center = 0.5 * (aabb[0] + aabb[1])
    up = -c2w[:, :3, 1].mean(axis=0)  # OpenCV y points down in the image
    up /= np.linalg.norm(up)
    rel = c2w[:, :3, 3] - center
    height = float(np.median(rel @ up))
    radial = rel - np.outer(rel @ up, up)
    radius = max(float(np.median(np.linalg.norm(radial, axis=1))), 1e-3)
    e1 = radial[np.argmax(np.linalg.norm(radial, axis=1))]
    e1 = e1 / np.linalg.norm(e1) if np.linalg.norm(e1) > 1e-9 else np.cross(up, [1.0, 0.0, 0.0])
    e2 = np.cross(up, e1)
    angles = np.linspace(0.0, 2 * np.pi, n_frames, endpoint=False)
    eyes = center + height * up + radius * (np.cos(angles)[:, None] * e1 + np.sin(angles)[:, None] * e2)
    return np.stack([look_at(eye, center, up) for eye in eyes])


@torch.no_grad()
def render_pose(scene: FittedScene, K: np.ndarray, hw: tuple[int, int], c2w: np.ndarray,
                stop_below: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``rgb [H, W, 3]`` in [0, 1], z-depth ``[H, W]`` (metres) and opacity ``[H, W]`` of one camera.

    ``stop_below > 0`` ends each ray once its transmittance drops below it (early ray termination, see
    :func:`models.nerf.rendering.render_rays`): faster, and invisible below that level (e.g. in uint8 images).
    """
    h, w = hw
    tc = scene.cfg.train
    device = scene.grid.aabb.device
    box = torch.as_tensor(scene.aabb, device=device)
    o, d, zs = rays_from_camera(K, torch.as_tensor(c2w, device=device), h, w)
    near, far = near_far(o, d, box, tc.near)
    out = render_rays(scene.field, o, d, near, far, n_coarse=tc.n_coarse, n_fine=tc.n_fine, occupancy=scene.grid,
                      chunk=tc.chunk, z_scale=zs, stop_below=stop_below)
    assert out.z_depth is not None  # z_scale given
    return (out.rgb.float().clamp(0, 1).reshape(h, w, 3).cpu().numpy(),
            out.z_depth.float().reshape(h, w).cpu().numpy(), out.opacity.float().reshape(h, w).cpu().numpy())


def depth_colours(z: np.ndarray, opacity: np.ndarray, z_max: float) -> np.ndarray:
    """``[H, W, 3]`` in [0, 1]: z-depth ``[H, W]`` (metres) by the turbo colour map over ``[0, z_max]``, black
    where the opacity ``[H, W]`` is at most 0.5 (nothing there)."""
    return colormaps["turbo"](np.clip(z / z_max, 0.0, 1.0))[..., :3] * (opacity[..., None] > 0.5)


def side_by_side(rgb: np.ndarray, z: np.ndarray, opacity: np.ndarray, z_max: float) -> np.ndarray:
    """uint8 ``[H, 2W, 3]``: the colour and the depth (:func:`depth_colours`)."""
    return (np.concatenate([rgb, depth_colours(z, opacity, z_max)], axis=1) * 255 + 0.5).astype(np.uint8)


def scene_view(params: Params, scene: str) -> SceneView:
    """``scene`` of the scene store ``paths.scenes`` (its colour, intrinsics and poses); DataError if absent."""
    store = open_store(params.paths.scenes, "scenes")
    if scene not in store:
        raise DataError(params.paths.scenes, f"scene {scene!r} is not in the store")
    return SceneView(store[scene])


def render_path(scene: FittedScene, K: np.ndarray, hw: tuple[int, int], poses: np.ndarray, out: str | Path,
                fps: float = 15.0, progress: bool = True) -> dict:
    """Render ``poses`` into ``out``: ``frames/NNNNN.png`` and ``video.mp4`` (if OpenCV can encode MP4 here)."""
    out = Path(out)
    z_max = float(np.linalg.norm(scene.aabb[1] - scene.aabb[0]))
    with atomic_dir(out) as tmp:
        (tmp / "frames").mkdir()
        writer = cv2.VideoWriter(str(tmp / "video.mp4"), cv2.VideoWriter.fourcc("m", "p", "4", "v"), fps,
                                 (2 * hw[1], hw[0]))
        for i, pose in enumerate(progress_bar(poses, desc=f"render {out.name}", unit="frame", interactive=progress)):
            frame = side_by_side(*render_pose(scene, K, hw, pose), z_max)
            Image.fromarray(frame).save(tmp / "frames" / f"{i:05d}.png")
            if writer.isOpened():
                writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        video = writer.isOpened()
        writer.release()
        if not video:
            log.warning("OpenCV cannot encode MP4 here; wrote the PNG frames only")
            (tmp / "video.mp4").unlink(missing_ok=True)
    return {"frames": len(poses), "folder": str(out), "video": str(out / "video.mp4") if video else None}


def render_scene(params: Params, scene: str, kind: PathKind = "train", n_frames: int = 60, fps: float = 15.0,
                 downscale: int = 1, out: str | Path | None = None, progress: bool = True) -> dict:
    """``dnerf render``: the fitted ``scene`` (``paths.nerf/<scene>``) along a camera path built from its posed
    train views, at ``1 / downscale`` of its resolution with the first train view's intrinsics, into ``out``
    (default ``renders/<scene>-<kind>``)."""
    fitted = load_fit(fits_on_disk(params.paths.nerf) / scene)
    view = scene_view(params, scene)
    K, c2w = view.group["K"][:], view.group["c2w"][:]
    train = [i for i in view.indices("train") if np.all(np.isfinite(c2w[i]))]
    if not train:
        raise DataError(params.paths.scenes, f"scene {scene!r} has no posed train views")
    h, w = (s // downscale for s in view.shape)
    k = K[train[0]].copy()
    k[:2] /= downscale
    poses = camera_path(c2w[train], kind, n_frames, fitted.aabb)
    return render_path(fitted, k, (h, w), poses, out or Path("renders") / f"{scene}-{kind}", fps, progress)
