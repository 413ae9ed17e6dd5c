"""Rays and supervision for the per-scene NeRF, sampled from the stores on the fly.

A scene's frames stay in the zarr stores; a small pool of frames is held in memory and refreshed every few
hundred rays batches, so memory does not grow with the number of frames. Rays come in ``p x p`` pixel
patches so the edge-aware depth term can compare depth differences between neighbouring pixels.

Depth supervision per pixel is a z-depth (what sensors measure) with a standard deviation:

* ``refined``: the diffusion refiner's output and the spread of its samples (``depth_std``);
* ``noisy``: the sensor depth, with the Kinect axial noise model's sigma;
* ``gt``: the exact depth of synthetic scenes (sigma 0, floored by the loss);
* ``none``: no depth (RGB only).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import zarr

from models.noise import axial_sigma
from tasks.config import DepthSource
from tasks.errors import DataError
from tasks.location import Location
from tasks.store import SceneView, open_refined, open_store


@dataclass(frozen=True)
class SceneFrames:
    """Everything a NeRF fit reads for one scene (arrays stay in their zarr stores).

    ``depth``/``depth_std`` are zarr arrays ``[N, H, W]`` (metres) or ``None`` for ``depth_source=none``.
    ``observed`` is the sensor's (noisy) depth ``[N, H, W]`` whatever the depth source, or ``None`` when no
    noisy store was given: the scene box comes from it, so every depth source gets the same box.
    """

    view: SceneView
    K: np.ndarray  # [N, 3, 3]
    c2w: np.ndarray  # [N, 4, 4]
    train: list[int]
    test: list[int]
    depth: zarr.Array | None
    depth_std: zarr.Array | None
    depth_source: DepthSource
    observed: zarr.Array | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.view.shape


def check_cameras(view: SceneView, K: np.ndarray, c2w: np.ndarray) -> None:
    """Raise DataError naming the first frame with non-finite pose or degenerate intrinsics."""
    ids = view.frame_ids
    for i in range(len(ids)):
        where = f"{view.group.store_path}/{view.name}[{i}] ({ids[i]})"
        if not np.all(np.isfinite(c2w[i])):
            raise DataError(where, "pose is not finite")
        R = c2w[i, :3, :3]
        if abs(np.linalg.det(R) - 1) > 1e-2:
            raise DataError(where, f"pose rotation is not a rotation (det {np.linalg.det(R):.4f})")
        if not np.all(np.isfinite(K[i])) or K[i, 0, 0] <= 0 or K[i, 1, 1] <= 0:
            raise DataError(where, f"degenerate intrinsics K = {K[i].tolist()}")


def open_scene(
    scenes_path: Location, name: str, depth_source: DepthSource, noisy_path: Location | None,
    refined_path: Location | None,
) -> SceneFrames:
    """The frames, cameras and depth supervision of one scene."""
    view = SceneView(open_store(scenes_path, "scenes")[name])
    K, c2w = view.group["K"][:], view.group["c2w"][:]
    check_cameras(view, K, c2w)
    depth = std = observed = None
    if noisy_path is not None:
        noisy = open_store(noisy_path, "noisy")
        if name not in noisy:
            raise DataError(noisy_path, f"scene {name!r} of {scenes_path} is missing")
        observed = noisy[name]["depth_noisy"]
    if depth_source == "gt":
        if view.attrs.get("depth_kind") != "reference":
            raise DataError(scenes_path, f"scene {name!r} has sensor depth only; depth_source=gt needs a reference")
        depth = view.group["depth"]
    elif depth_source == "noisy":
        if observed is None:
            raise DataError(scenes_path, f"scene {name!r}: depth_source=noisy needs the noisy store")
        depth = observed
    elif depth_source == "refined":
        if refined_path is None:
            raise DataError(scenes_path, f"scene {name!r}: depth_source=refined needs the refined store")
        refined = open_refined(refined_path)
        depth, std = refined[name]["depth_refined"], refined[name]["depth_std"]
    train, test = view.indices("train"), view.indices("test")
    if not train:
        raise DataError(scenes_path, f"scene {name!r} has no train views")
    return SceneFrames(view, K, c2w, train, test, depth, std, depth_source, observed)


def sparse_views(frames: SceneFrames, n: int | None) -> SceneFrames:
    """``frames`` with at most ``n`` train views, evenly spaced along the sequence (``None``: all)."""
    if n is None or n >= len(frames.train):
        return frames
    keep = np.unique(np.round(np.linspace(0, len(frames.train) - 1, n)).astype(int))
    return replace(frames, train=[frames.train[k] for k in keep])


def frame_depth(frames: SceneFrames, i: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``(z [H, W], sigma [H, W])`` supervision of frame ``i`` in metres, or None without depth."""
    if frames.depth is None:
        return None
    z = np.asarray(frames.depth[i], dtype=np.float32)
    if frames.depth_std is not None:
        s = np.asarray(frames.depth_std[i], dtype=np.float32)
    elif frames.depth_source == "noisy":
        s = axial_sigma(np.where(z > 0, z, 1.0)).astype(np.float32)
    else:
        s = np.zeros_like(z)
    return z, s


def box_depth(frames: SceneFrames, i: int) -> np.ndarray | None:
    """The depth ``[H, W]`` (metres) frame ``i`` contributes to the scene box: observed, else supervision."""
    if frames.observed is not None:
        return np.asarray(frames.observed[i], dtype=np.float32)
    sup = frame_depth(frames, i)
    return None if sup is None else sup[0]


def scene_bounds(frames: SceneFrames, padding: float = 0.05, max_points: int = 200_000, seed: int = 0) -> np.ndarray:
    """Axis-aligned box ``[2, 3]`` around the scene: the observed (sensor) depth of the train views
    back-projected to world points (robust percentiles) and the camera centres, padded by ``padding`` of its
    size. It does not depend on the depth source, so colour-only and depth-supervised fits of a scene share one
    box (and one mesh crop). Without an observed depth the supervision depth is used; without either, a box
    around the cameras extended 3 m along their viewing directions."""
    rng = np.random.default_rng(seed)
    pts = [frames.c2w[frames.train, :3, 3]]
    per_frame = max(1, max_points // len(frames.train))
    for i in frames.train:
        z = box_depth(frames, i)
        K, c2w = frames.K[i], frames.c2w[i]
        if z is None:
            pts.append(c2w[:3, 3] + 3.0 * c2w[:3, 2])
            continue
        v, u = np.nonzero(z > 0)
        if len(v) == 0:
            continue
        pick = rng.choice(len(v), size=min(per_frame, len(v)), replace=False)
        v, u, zz = v[pick], u[pick], z[v[pick], u[pick]]
        cam = np.stack([(u - K[0, 2]) / K[0, 0] * zz, (v - K[1, 2]) / K[1, 1] * zz, zz], axis=-1)
        pts.append(cam @ c2w[:3, :3].T + c2w[:3, 3])
    allp = np.concatenate([np.atleast_2d(p) for p in pts])
    lo, hi = np.percentile(allp, 0.5, axis=0), np.percentile(allp, 99.5, axis=0)
    cams = frames.c2w[frames.train, :3, 3]
    lo, hi = np.minimum(lo, cams.min(0)), np.maximum(hi, cams.max(0))
    size = np.maximum(hi - lo, 1e-3)
    return np.stack([lo - padding * size, hi + padding * size]).astype(np.float32)


@dataclass(frozen=True)
class SamplerState:
    """Where a :class:`RaySampler`'s draws stand: enough to continue them exactly, and JSON-able (a fit's
    checkpoint saves it).

    Attributes:
        rng: the NumPy generator's ``bit_generator.state``.
        calls: batches drawn so far (the pool is refreshed every ``refresh_every`` of them).
        pool: indices of the frames held in the pool, in pool order.
    """

    rng: Mapping[str, Any]
    calls: int
    pool: list[int]


class RaySampler:
    """Random ``p x p`` pixel patches from a pool of train frames, with their colour and depth supervision.

    Memory holds ``pool_frames`` frames at a time (refreshed every ``refresh_every`` batches), so it does not
    grow with the number of frames in the scene. Every draw (pool frames, patches) comes from the sampler's own
    NumPy generator ``rng``: ``seed`` is an int it is seeded with, or a ``np.random.Generator`` used as is, never
    a global RNG (``rng.bit_generator.state`` is what a checkpoint saves).
    """

    def __init__(self, frames: SceneFrames, patch: int, pool_frames: int, refresh_every: int,
                 seed: int | np.random.Generator):
        self.frames, self.patch = frames, patch
        self.pool_frames, self.refresh_every = pool_frames, refresh_every
        self.rng = np.random.default_rng(seed)
        self.calls = 0
        self.pool: list[tuple[int, np.ndarray, tuple[np.ndarray, np.ndarray] | None]] = []

    @property
    def pool_ids(self) -> list[int]:
        return [i for i, _, _ in self.pool]

    def load_pool(self, ids: list[int]) -> None:
        """Hold frames ``ids`` (colour and depth supervision) in memory."""
        rgb = self.frames.view.group["rgb"]
        self.pool = [(i, rgb[i], frame_depth(self.frames, i)) for i in ids]

    def get_state(self) -> SamplerState:
        """Where the draws stand now."""
        return SamplerState(self.rng.bit_generator.state, self.calls, self.pool_ids)

    def set_state(self, state: SamplerState) -> None:
        """Continue the draws from ``state``: its generator state and batch count, and its pool's frames (read
        from the stores again)."""
        self.rng.bit_generator.state = state.rng
        self.calls = state.calls
        self.load_pool(state.pool)

    def _refresh(self) -> None:
        train = self.frames.train
        pick = self.rng.choice(len(train), size=min(self.pool_frames, len(train)), replace=False)
        self.load_pool([train[k] for k in sorted(pick)])

    def sample(self, n_rays: int) -> dict[str, torch.Tensor]:
        """About ``n_rays`` rays (a multiple of ``patch**2``): ``frame [n]``, ``pixel [n]`` flat indices,
        ``rgb [n, 3]`` in [0, 1], ``z [n]`` and ``sigma [n]`` metres (z = 0: no depth)."""
        if self.calls % self.refresh_every == 0:
            self._refresh()
        self.calls += 1
        h, w = self.frames.shape
        p = self.patch
        n_patches = max(1, n_rays // (p * p))
        which = self.rng.integers(len(self.pool), size=n_patches)
        v0 = self.rng.integers(0, h - p + 1, size=n_patches)
        u0 = self.rng.integers(0, w - p + 1, size=n_patches)
        dv, du = np.divmod(np.arange(p * p), p)
        v = (v0[:, None] + dv[None]).reshape(-1)
        u = (u0[:, None] + du[None]).reshape(-1)
        slot = np.repeat(which, p * p)
        rgb = np.empty((len(v), 3), np.float32)
        z = np.zeros(len(v), np.float32)
        sigma = np.zeros(len(v), np.float32)
        frame = np.empty(len(v), np.int64)
        for k in np.unique(slot):
            sel = slot == k
            idx, img, sup = self.pool[k]
            frame[sel] = idx
            rgb[sel] = img[v[sel], u[sel]] / 255.0
            if sup is not None:
                z[sel], sigma[sel] = sup[0][v[sel], u[sel]], sup[1][v[sel], u[sel]]
        return {
            "frame": torch.from_numpy(frame),
            "pixel": torch.from_numpy(v * w + u),
            "rgb": torch.from_numpy(rgb),
            "z": torch.from_numpy(z),
            "sigma": torch.from_numpy(sigma),
        }
