"""Microsoft 7-Scenes / 3DMatch RGB-D folders.

Each folder below ``root`` that holds ``frame-XXXXXX.depth.png`` files is one sequence (one scene of the
store), with, per frame:

* ``frame-XXXXXX.color.png`` (or ``.color.jpg``): colour;
* ``frame-XXXXXX.depth.png``: uint16 depth in millimetres, 0 or 65535 = no measurement;
* ``frame-XXXXXX.pose.txt``: 4x4 camera-to-world matrix (OpenCV axes, metres); missing or non-finite
  poses are stored as unknown (NaN).

Intrinsics come from ``camera-intrinsics.txt`` (a 3x3 matrix) in the sequence folder or any folder above it
up to ``root``, or from ``data.intrinsics``. 7-Scenes itself ships none: its documented values are
fx = fy = 585, cx = 320, cy = 240, which users pass as ``--set data.intrinsics=[585,585,320,240]``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from models.camera import intrinsics_matrix
from tasks.datasets.base import UNKNOWN_POSE, Frame, SceneSource
from tasks.datasets.formats import SEVENSCENES_DEPTH_SCALE, read_rgb, read_text_numbers, read_uint16_image
from tasks.errors import DataError

log = logging.getLogger(__name__)

INVALID_MM = 65535
_FRAME_RE = re.compile(r"^(frame-\d+)\.depth\.png$")


def read_matrix(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A whitespace-separated text matrix of the given shape (float64); DataError naming the file."""
    values = read_text_numbers(path)
    if values.size != shape[0] * shape[1]:
        raise DataError(path, f"expected a {shape[0]}x{shape[1]} matrix, found {values.size} numbers")
    return values.reshape(shape)


def find_intrinsics(folder: Path, root: Path) -> Path | None:
    """The nearest ``camera-intrinsics.txt`` from ``folder`` up to ``root``."""
    for d in [folder, *folder.parents]:
        candidate = d / "camera-intrinsics.txt"
        if candidate.is_file():
            return candidate
        if d == root:
            break
    return None


def scene_name(root: Path, folder: Path, n_sequences: int) -> str:
    """Store scene name: the root folder's name, plus the sequence path when there are several."""
    rel = folder.relative_to(root)
    name = root.resolve().name if n_sequences == 1 or rel == Path(".") else f"{root.resolve().name}_{rel.as_posix()}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _color_path(folder: Path, stem: str) -> Path:
    for ext in ("png", "jpg"):
        p = folder / f"{stem}.color.{ext}"
        if p.is_file():
            return p
    raise DataError(folder / f"{stem}.color.png", "colour image not found (tried .color.png and .color.jpg)")


def _load_frame(folder: Path, stem: str, K: np.ndarray, units_per_metre: float) -> Frame:
    depth_path = folder / f"{stem}.depth.png"
    raw = read_uint16_image(depth_path).astype(np.float32)
    raw[raw >= INVALID_MM] = 0
    depth = raw / np.float32(units_per_metre)
    rgb = read_rgb(_color_path(folder, stem))
    pose_path = folder / f"{stem}.pose.txt"
    c2w = read_matrix(pose_path, (4, 4)) if pose_path.is_file() else UNKNOWN_POSE.copy()
    if not np.all(np.isfinite(c2w)):
        log.warning("%s: pose is not finite (tracking lost); stored as unknown", pose_path)
        c2w = UNKNOWN_POSE.copy()
    return Frame(frame_id=stem, rgb=rgb, depth=depth, K=K, c2w=c2w, source=str(depth_path))


def sevenscenes_scenes(
    root: str | Path,
    intrinsics: tuple[float, float, float, float] | None = None,
    depth_scale: float | None = None,
) -> list[SceneSource]:
    """One :class:`SceneSource` per sequence folder below ``root`` (sorted by path).

    Args:
        root: dataset folder.
        intrinsics: ``(fx, fy, cx, cy)`` overriding ``camera-intrinsics.txt``.
        depth_scale: raw units per metre (default 1000: millimetres).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "7-Scenes folder not found")
    units = depth_scale or SEVENSCENES_DEPTH_SCALE
    sequences: dict[Path, list[str]] = {}
    for p in sorted(root.rglob("frame-*.depth.png")):
        m = _FRAME_RE.match(p.name)
        if m:
            sequences.setdefault(p.parent, []).append(m.group(1))
    if not sequences:
        raise DataError(root, "no frame-XXXXXX.depth.png files found (expected a 7-Scenes / 3DMatch folder)")
    scenes = []
    for folder, stems in sequences.items():
        if intrinsics is not None:
            K = intrinsics_matrix(*intrinsics)
        else:
            k_path = find_intrinsics(folder, root)
            if k_path is None:
                raise DataError(
                    folder,
                    "missing intrinsics: no camera-intrinsics.txt here or above, and data.intrinsics is not set "
                    "(7-Scenes: --set data.intrinsics=[585,585,320,240])",
                )
            K = read_matrix(k_path, (3, 3))
        scenes.append(
            SceneSource(
                name=scene_name(root, folder, len(sequences)),
                source="sevenscenes",
                frame_ids=stems,
                load=lambda i, folder=folder, stems=stems, K=K: _load_frame(folder, stems[i], K, units),
                depth_kind="sensor",
                attrs={"folder": str(folder), "depth_units_per_metre": units},
            )
        )
    return scenes
