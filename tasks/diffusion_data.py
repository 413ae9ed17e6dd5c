"""Training data for the diffusion refiner: frames of (scenes, noisy) store pairs, random crops, batches.

A training frame has RGB, the clean reference depth, the noisy depth the refiner sees, and what the refiner
derives from the noisy depth (:func:`models.diffusion.pipeline.observe`: the hole-filled ``base``, the sensor
model's expected spread and the trusted-measurement mask), computed on the whole frame exactly as the refine
stage does, then cropped.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import cv2
import numpy as np
import torch

from models.diffusion.pipeline import DiffusionConfig, observe
from models.noise import SensorPrior
from tasks.errors import DataError
from tasks.location import Location
from tasks.store import SceneView, open_store, scene_names

if TYPE_CHECKING:
    import zarr

Role = Literal["train", "val", "eval"]


@dataclass(frozen=True)
class TrainFrame:
    """One frame's arrays: ``rgb`` uint8 [H,W,3]; ``clean``, ``noisy``, ``base``, ``sigma`` float32 [H,W]
    metres; ``trusted`` bool [H,W]; ``focal`` the focal length in pixels at this resolution."""

    rgb: np.ndarray
    clean: np.ndarray
    noisy: np.ndarray
    base: np.ndarray
    sigma: np.ndarray
    trusted: np.ndarray
    focal: float


def check_depth_input(noisy: np.ndarray, where: str) -> None:
    """Refuse depth the refiner cannot use: non-finite values, negative values, or no valid pixel."""
    if not np.all(np.isfinite(noisy)):
        raise DataError(where, f"depth has {int(np.sum(~np.isfinite(noisy)))} non-finite values")
    if np.any(noisy < 0):
        raise DataError(where, "depth has negative values")
    if not np.any(noisy > 0):
        raise DataError(where, "depth is all zero (no valid measurement to refine)")


class FramePairs:
    """Random access to every frame of the scenes with one role across (scenes store, noisy store) pairs.

    The role of a scene is its ``role`` attribute in the scene store (``train``, ``val`` or ``eval``; stores
    without one hold ``eval`` scenes). Observations are cached (least recently used first out) since
    inpainting a large frame is not free.
    """

    def __init__(
        self, pairs: list[tuple[Location, Location]], role: Role, sensor: SensorPrior, schedule: DiffusionConfig,
        cache_frames: int = 512,
    ):
        self.sensor, self.schedule = sensor, schedule
        self.refs: list[tuple[SceneView, zarr.Array, int, str]] = []
        self.scenes: list[tuple[Location, str]] = []
        for scenes_path, noisy_path in pairs:
            scenes = open_store(scenes_path, "scenes")
            noisy = open_store(noisy_path, "noisy")
            for name in scene_names(scenes):
                view = SceneView(scenes[name])
                if view.role != role:
                    continue
                if name not in noisy:
                    raise DataError(noisy_path, f"scene {name!r} of {scenes_path} is missing")
                if noisy[name]["depth_noisy"].shape != view.group["depth"].shape:
                    raise DataError(noisy_path, f"scene {name!r}: depth_noisy shape differs from {scenes_path}")
                self.scenes.append((scenes_path, name))
                self.refs += [
                    (view, noisy[name]["depth_noisy"], i, f"{noisy_path}/{name}[{i}]") for i in range(view.n_frames)
                ]
        self._cache: OrderedDict[int, TrainFrame] = OrderedDict()
        self._cache_frames = cache_frames

    def __len__(self) -> int:
        return len(self.refs)

    def focal_range(self) -> tuple[float, float]:
        """Smallest and largest focal length (pixels) among the frames: the image scales the model sees."""
        focals = [float(view.group["K"][i][0, 0]) for view, _, i, _ in self.refs]
        return min(focals), max(focals)

    def __getitem__(self, k: int) -> TrainFrame:
        if k in self._cache:
            self._cache.move_to_end(k)
            return self._cache[k]
        view, noisy_arr, i, where = self.refs[k]
        noisy = np.asarray(noisy_arr[i], dtype=np.float32)
        check_depth_input(noisy, where)
        focal = float(view.group["K"][i][0, 0])
        obs = observe(noisy, focal, self.sensor, self.schedule)
        frame = TrainFrame(
            rgb=view.group["rgb"][i],
            clean=view.group["depth"][i],
            noisy=noisy,
            base=obs.base,
            sigma=obs.sigma,
            trusted=obs.trusted,
            focal=focal,
        )
        self._cache[k] = frame
        if len(self._cache) > self._cache_frames:
            self._cache.popitem(last=False)
        return frame


def random_crop(
    f: TrainFrame, size: int, rng: np.random.Generator, scale_jitter: float = 0.0, flip: bool = False
) -> TrainFrame:
    """A ``size x size`` crop (smaller frames give their full extent) with optional zoom and flip.

    Zoom picks a window of ``size / s`` pixels, ``s ~ U(1 - jitter, 1 + jitter)``, resized to the crop size:
    colour linearly, depths by nearest neighbour (no invented depths across edges or holes).
    """
    h, w = f.clean.shape
    s = rng.uniform(1 - scale_jitter, 1 + scale_jitter) if scale_jitter > 0 else 1.0
    ch, cw = min(size, h), min(size, w)
    wh, ww = min(h, max(2, round(ch / s))), min(w, max(2, round(cw / s)))
    y0 = int(rng.integers(0, h - wh + 1))
    x0 = int(rng.integers(0, w - ww + 1))
    sl = (slice(y0, y0 + wh), slice(x0, x0 + ww))

    def take(a: np.ndarray, interp: int) -> np.ndarray:
        a = a[sl]
        if a.shape[:2] != (ch, cw):
            a = cv2.resize(a, (cw, ch), interpolation=interp)
        return np.ascontiguousarray(a[:, ::-1]) if do_flip else a

    do_flip = flip and rng.random() < 0.5
    nearest = cv2.INTER_NEAREST_EXACT
    return TrainFrame(
        rgb=take(f.rgb, cv2.INTER_LINEAR),
        clean=take(f.clean, nearest),
        noisy=take(f.noisy, nearest),
        base=take(f.base, nearest),
        sigma=take(f.sigma, nearest),
        trusted=take(f.trusted.view(np.uint8), nearest).astype(bool),
        focal=f.focal * ch / wh,
    )


def collate(frames: list[TrainFrame]) -> dict[str, torch.Tensor]:
    """Stack frames into tensors: ``rgb`` [B,3,H,W] in [0,1]; ``clean``, ``noisy``, ``base``, ``sigma``
    [B,1,H,W] metres; ``trusted`` [B,1,H,W] 0/1; ``focal`` [B] pixels."""
    return {
        "focal": torch.tensor([f.focal for f in frames], dtype=torch.float32),
        "rgb": torch.from_numpy(np.stack([f.rgb for f in frames])).permute(0, 3, 1, 2).float() / 255.0,
        "clean": torch.from_numpy(np.stack([f.clean for f in frames]))[:, None].float(),
        "noisy": torch.from_numpy(np.stack([f.noisy for f in frames]))[:, None].float(),
        "base": torch.from_numpy(np.stack([f.base for f in frames]))[:, None].float(),
        "sigma": torch.from_numpy(np.stack([f.sigma for f in frames]))[:, None].float(),
        "trusted": torch.from_numpy(np.stack([f.trusted for f in frames]))[:, None].float(),
    }
