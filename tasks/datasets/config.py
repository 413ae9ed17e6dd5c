"""The configs of the dataset readers (synthetic rooms, NYU Depth V2 labeled, phone captures) and the scene
roles, apart from their implementation (:mod:`tasks.datasets.synthetic`, :mod:`tasks.datasets.nyu`,
:mod:`tasks.datasets.phone`, :mod:`tasks.datasets.base`) so that params parsing (:mod:`tasks.config`) does not
import the renderer, h5py, SciPy or OpenCV. Those modules re-export these names.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from models.config import StrictConfig

__all__ = [
    "CAMERA_CLEARANCE_M",
    "MIN_ROOM_XY_M",
    "MIN_ROOM_Z_M",
    "ROLES",
    "NyuConfig",
    "PhoneConfig",
    "Role",
    "SyntheticConfig",
]

#: What a scene is for: ``train`` (the depth refiner learns from all its frames), ``val`` (the refiner's
#: validation, early stopping and calibration, and baseline tuning) or ``eval`` (NeRFs are fitted on it and
#: it is scored). Refiner rooms (train / val) and evaluation rooms never share a scene.
Role = Literal["train", "val", "eval"]
ROLES: tuple[Role, ...] = ("train", "val", "eval")

# Synthetic rooms (see :mod:`tasks.datasets.synthetic`).
CAMERA_CLEARANCE_M = 0.6  # minimum camera distance to walls, floor, ceiling and objects
MIN_ROOM_XY_M = 3.0  # smallest allowed room_size along x / y
MIN_ROOM_Z_M = 2.4  # smallest allowed room height


class SyntheticConfig(StrictConfig):
    """Settings of the procedural room generator.

    The first seven settings describe the evaluation rooms (role ``eval``: NeRFs are fitted on them and
    they are scored); the ``refiner_*`` settings describe the separately generated refiner rooms (roles
    ``train`` and ``val``), rendered at a depth camera's resolution and field of view.

    Attributes:
        n_scenes: number of evaluation rooms.
        n_frames: frames per evaluation room along the camera arc.
        height: image height of the evaluation rooms in pixels.
        width: image width of the evaluation rooms in pixels.
        fov_deg: horizontal field of view of the evaluation rooms in degrees.
        n_objects: furniture pieces per evaluation room (fewer when they do not fit).
        room_size: evaluation room extents ``(x, y, z)`` in metres; ``None`` draws one per scene
            (4-6 x 3.5-5 m floor, 2.4-3 m high).
        refiner_train_scenes: refiner rooms the depth refiner learns from (role ``train``).
        refiner_val_scenes: refiner rooms for its validation and calibration (role ``val``).
        refiner_frames: frames per refiner room, each from an independent hand-held-like viewpoint.
        refiner_sizes: image sizes ``[width, height]``, cycled over the refiner rooms of each role.
        refiner_fov_deg: horizontal field of view of the refiner rooms (Kinect v1: about 58 x 45 degrees).
        refiner_objects: range ``[min, max]`` of furniture pieces and clutter items per refiner room.
    """

    n_scenes: int = Field(default=2, ge=1)
    n_frames: int = Field(default=32, ge=1)
    height: int = Field(default=120, ge=8)
    width: int = Field(default=160, ge=8)
    fov_deg: float = Field(default=65.0, gt=10.0, lt=150.0)
    n_objects: int = Field(default=6, ge=0)
    room_size: tuple[float, float, float] | None = None
    refiner_train_scenes: int = Field(default=12, ge=0)
    refiner_val_scenes: int = Field(default=3, ge=0)
    refiner_frames: int = Field(default=4, ge=1)
    refiner_sizes: list[tuple[int, int]] = Field(
        default_factory=lambda: [(640, 480), (320, 240), (160, 120)], min_length=1
    )
    refiner_fov_deg: float = Field(default=58.0, gt=10.0, lt=150.0)
    refiner_objects: tuple[int, int] = (6, 16)

    @field_validator("refiner_sizes")
    @classmethod
    def _sizes_positive(cls, v: list[tuple[int, int]]) -> list[tuple[int, int]]:
        bad = [list(wh) for wh in v if min(wh) < 8]
        if bad:
            raise ValueError(f"refiner_sizes are [width, height] pairs of at least 8 pixels, got {bad}")
        return v

    @field_validator("refiner_objects")
    @classmethod
    def _objects_range(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 0 <= v[0] <= v[1]:
            raise ValueError(f"refiner_objects must be a range [min, max] with 0 <= min <= max, got {list(v)}")
        return v

    @field_validator("room_size")
    @classmethod
    def _room_fits_camera(cls, v: tuple[float, float, float] | None) -> tuple[float, float, float] | None:
        if v is not None and (v[0] < MIN_ROOM_XY_M or v[1] < MIN_ROOM_XY_M or v[2] < MIN_ROOM_Z_M):
            raise ValueError(
                f"room_size must be at least {MIN_ROOM_XY_M} x {MIN_ROOM_XY_M} x {MIN_ROOM_Z_M} m so the "
                f"camera keeps {CAMERA_CLEARANCE_M} m from the walls, got {v}"
            )
        return v


class NyuConfig(StrictConfig):
    """Where the NYU Depth V2 labeled file comes from and how its frames become scenes.

    Attributes:
        url: the labeled ``.mat`` file (about 2.8 GB); also a ``file://`` URL or local path.
        sha256: expected SHA-256 of the file, verified when given. No official hash is published.
        size: expected size in bytes, verified when given.
        splits_url: ``splits.mat`` with the official train / test split; ``None`` = no official split
            (the download stage then holds out every k-th frame).
        group_by_scene: one scene per NYU scene name (e.g. ``kitchen_0028a``); ``False`` = a single scene
            ``nyu_labeled`` with all frames.
    """

    url: str = "http://horatio.cs.nyu.edu/mit/silberman/nyu_depth_v2/nyu_depth_v2_labeled.mat"
    sha256: str | None = None
    size: int | None = Field(default=None, gt=0)
    splits_url: str | None = "http://horatio.cs.nyu.edu/mit/silberman/indoor_seg_sup/splits.mat"
    group_by_scene: bool = True

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", v):
            raise ValueError(f"sha256 must be 64 hex digits, got {v!r}")
        return None if v is None else v.lower()


class PhoneConfig(StrictConfig):
    """Phone LiDAR (Stray Scanner) specifics."""

    min_confidence: int = Field(
        default=2, ge=0, le=2,
        description="keep depth whose ARKit confidence is at least this (0 low, 1 medium, 2 high)"
    )
    depth_upsample: int = Field(
        default=2, ge=1, le=8, description="store resolution = depth map resolution x this (256x192 x 2 = 512x384)"
    )
