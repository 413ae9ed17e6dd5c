"""Common types of the dataset readers: a frame, a scene source, and the generic frame transforms.

Every reader (synthetic, NYU labeled, 7-Scenes, TUM) turns its native layout into :class:`SceneSource`
objects. A source gives random access to its frames, so frame selection (stride, max frames) and
resizing are applied here once, for every reader alike, and a whole scene is never held in memory.

Conventions shared by all readers:
  * ``rgb`` uint8 ``[H, W, 3]``; ``depth`` float32 ``[H, W]`` z-depth in metres, 0 = no measurement.
  * ``K`` float64 ``[3, 3]`` pinhole intrinsics in pixels, pixel centres at integer coordinates.
  * ``c2w`` float64 ``[4, 4]`` camera-to-world, OpenCV camera axes (x right, y down, z forward), metres;
    all NaN when the pose is unknown.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import cv2
import numpy as np

from tasks.datasets.config import ROLES, Role  # noqa: F401 (re-exported)
from tasks.errors import DataError

DepthKind = Literal["reference", "sensor"]
Split = Literal["train", "test"]

UNKNOWN_POSE = np.full((4, 4), np.nan)


@dataclass(frozen=True)
class Frame:
    """One RGB-D frame.

    Attributes:
        frame_id: stable identifier within its scene (file stem, timestamp or index).
        rgb: ``[H, W, 3]`` uint8 colour.
        depth: ``[H, W]`` float32 z-depth in metres (0 = no measurement). The best depth the source has:
            exact for synthetic scenes, the inpainted reference for NYU, the sensor for 7-Scenes / TUM.
        K: ``[3, 3]`` intrinsics in pixels.
        c2w: ``[4, 4]`` camera-to-world pose (OpenCV axes), NaN when unknown.
        depth_sensor: ``[H, W]`` float32 raw sensor depth in metres when the source has it in addition to
            a reference (NYU ``rawDepths``); ``None`` otherwise.
        source: where the frame came from (a file path or a description), used in error messages.
    """

    frame_id: str
    rgb: np.ndarray
    depth: np.ndarray
    K: np.ndarray
    c2w: np.ndarray
    depth_sensor: np.ndarray | None = None
    source: str = ""

    @property
    def height(self) -> int:
        return int(self.depth.shape[0])

    @property
    def width(self) -> int:
        return int(self.depth.shape[1])


@dataclass
class SceneSource:
    """A scene of a dataset with lazy, random access to its frames.

    Attributes:
        name: scene name, unique within a store (a zarr group name: letters, digits, ``-_.``).
        source: reader name (``synthetic``, ``nyu_labeled``, ``sevenscenes``, ``tum``).
        frame_ids: identifiers of the frames, in order.
        load: ``load(i) -> Frame`` for ``0 <= i < len(frame_ids)``.
        depth_kind: what ``Frame.depth`` holds: ``reference`` (clean or inpainted ground truth) or
            ``sensor`` (the measured depth is the best there is).
        has_sensor_depth: whether frames carry ``depth_sensor``.
        splits: per-frame ``train`` / ``test`` from the dataset itself (e.g. NYU's official split), or
            ``None`` to let the download stage hold out every k-th frame.
        attrs: extra JSON-serialisable metadata stored with the scene.
        mesh: ground-truth geometry ``(vertices [V, 3] float32 metres, faces [F, 3] int32)`` in world
            coordinates, when the source knows it exactly (synthetic scenes).
        role: what the scene is for (:data:`Role`): ``train`` / ``val`` for the depth refiner, ``eval`` for
            NeRF fitting and scoring.
        native_size: ``(height, width)`` of the frames when the source knows it without loading one
            (rendered scenes); ``None`` = read it from the first frame.
    """

    name: str
    source: str
    frame_ids: list[str]
    load: Callable[[int], Frame]
    depth_kind: DepthKind = "sensor"
    has_sensor_depth: bool = False
    splits: list[Split] | None = None
    attrs: dict = field(default_factory=dict)
    mesh: tuple[np.ndarray, np.ndarray] | None = None
    role: Role = "eval"
    native_size: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.frame_ids)

    def select(self, indices: Sequence[int]) -> SceneSource:
        """The same scene restricted to ``indices`` (in that order)."""
        indices = [int(i) for i in indices]
        base_load = self.load
        return replace(
            self,
            frame_ids=[self.frame_ids[i] for i in indices],
            load=lambda j: base_load(indices[j]),
            splits=None if self.splits is None else [self.splits[i] for i in indices],
        )

    def map_frames(self, fn: Callable[[Frame], Frame]) -> SceneSource:
        """The same scene with ``fn`` applied to every frame when it is loaded."""
        base_load = self.load
        return replace(self, load=lambda j: fn(base_load(j)))


def select_indices(n: int, stride: int = 1, max_frames: int | None = None, start: int = 0) -> list[int]:
    """Frame indices ``start, start + stride, ...`` below ``n``, at most ``max_frames`` of them."""
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    idx = list(range(start, n, stride))
    return idx if max_frames is None else idx[:max_frames]


def holdout_splits(n: int, test_every: int, offset: int = -1) -> list[Split]:
    """Hold out every ``test_every``-th frame as a test view: frames ``i`` with ``i % k == offset % k``;
    ``offset -1`` holds out ``k-1, 2k-1, ...``, ``offset 0`` holds out ``0, k, 2k, ...`` (nerfstudio's
    ``interval`` split). ``test_every = 0``: no test views."""
    if test_every <= 0:
        return ["train"] * n
    return ["test" if (i % test_every) == offset % test_every else "train" for i in range(n)]


def scale_intrinsics(K: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """Intrinsics of an image resized by ``sx`` horizontally and ``sy`` vertically.

    Pixel centres sit at integer coordinates, so a resize maps ``u -> (u + 0.5) * s - 0.5``.
    """
    K2 = np.array(K, dtype=np.float64, copy=True)
    K2[0, 0] *= sx
    K2[0, 1] *= sx
    K2[1, 1] *= sy
    K2[0, 2] = (K2[0, 2] + 0.5) * sx - 0.5
    K2[1, 2] = (K2[1, 2] + 0.5) * sy - 0.5
    return K2


def resize_frame(frame: Frame, height: int, width: int) -> Frame:
    """Resize a frame to ``height x width``: area-averaged colour, nearest-neighbour depth.

    Depth uses nearest neighbour on purpose: averaging across a depth edge or a hole would invent
    surfaces that do not exist (flying pixels) and smear the zeros that mark missing measurements.
    """
    if (frame.height, frame.width) == (height, width):
        return frame
    sx, sy = width / frame.width, height / frame.height
    shrink = sx < 1 and sy < 1
    rgb = cv2.resize(frame.rgb, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)

    def nearest(d: np.ndarray | None) -> np.ndarray | None:
        if d is None:
            return None
        return cv2.resize(d, (width, height), interpolation=cv2.INTER_NEAREST_EXACT)

    return replace(
        frame,
        rgb=rgb,
        depth=nearest(frame.depth),
        depth_sensor=nearest(frame.depth_sensor),
        K=scale_intrinsics(frame.K, sx, sy),
    )


def check_frame(frame: Frame, max_depth_m: float = 20.0) -> Frame:
    """Validate a frame against the store's conventions; raise :class:`DataError` naming the frame.

    Checks shapes and dtypes, that RGB and depth sizes agree, that intrinsics are finite with positive
    focal lengths, that depth is finite and non-negative, and that depth is in metres (a median valid
    depth above ``max_depth_m`` almost always means millimetres or raw sensor units).
    """
    where = frame.source or frame.frame_id
    if frame.rgb.ndim != 3 or frame.rgb.shape[2] != 3 or frame.rgb.dtype != np.uint8:
        raise DataError(where, f"RGB must be uint8 [H, W, 3], got {frame.rgb.dtype} {frame.rgb.shape}")
    depths = {"depth": frame.depth}
    if frame.depth_sensor is not None:
        depths["depth_sensor"] = frame.depth_sensor
    for key, d in depths.items():
        if d.ndim != 2:
            raise DataError(where, f"{key} must be [H, W], got shape {d.shape}")
        if d.shape != frame.rgb.shape[:2]:
            raise DataError(
                where,
                f"RGB is {frame.rgb.shape[1]}x{frame.rgb.shape[0]} but {key} is {d.shape[1]}x{d.shape[0]} "
                "(width x height); colour and depth must have the same size",
            )
        if not np.all(np.isfinite(d)):
            raise DataError(where, f"{key} has {int(np.sum(~np.isfinite(d)))} non-finite values")
        if np.any(d < 0):
            raise DataError(where, f"{key} has negative values (min {float(d.min()):.4g}); 0 marks no measurement")
        valid = d[d > 0]
        if valid.size and float(np.median(valid)) > max_depth_m:
            raise DataError(
                where,
                f"{key} median is {float(np.median(valid)):.4g} but depth must be in metres (limit "
                f"{max_depth_m} m); it looks like millimetres or raw sensor units: check the depth scale",
            )
    K = np.asarray(frame.K)
    if K.shape != (3, 3) or not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise DataError(where, f"intrinsics are degenerate: K = {K.tolist()}")
    c2w = np.asarray(frame.c2w)
    if c2w.shape != (4, 4):
        raise DataError(where, f"pose must be 4x4, got shape {c2w.shape}")
    if np.any(np.isfinite(c2w)) and not np.all(np.isfinite(c2w)):
        raise DataError(where, "pose is partly non-finite; a pose is either fully known or all NaN")
    return frame
