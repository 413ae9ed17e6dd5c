"""nerfstudio / Instant-NGP ``transforms.json`` captures (phone, RealSense, ``ns-process-data`` output).

``data.path`` is the capture folder holding ``transforms.json`` (or the file itself). Read, per the format:

* intrinsics ``fl_x``, ``fl_y``, ``cx``, ``cy``, ``w``, ``h`` at the top level and/or per frame (a frame's keys
  win); Instant-NGP's ``camera_angle_x`` / ``camera_angle_y`` (radians) stand in for missing focal lengths,
  and a missing ``cx`` / ``cy`` is the image centre. Distortion coefficients other than 0 are refused (the
  store is pinhole): undistort first (``ns-process-data`` does);
* ``frames[i].file_path``: the colour image, relative to the folder; ``transform_matrix``: camera-to-world
  in OpenGL / Blender camera axes (x right, y up, z backwards), converted to the store's OpenCV axes
  (x right, y down, z forward) by flipping the camera's y and z axes;
* ``frames[i].depth_file_path`` (optional): a uint16 depth image, metres = raw * ``depth_unit_scale_factor``
  (top level, default 1e-3 as in nerfstudio; ``data.depth_scale`` overrides it in units per metre). A depth
  image of another size than the colour is resized to it (nearest neighbour: the same camera sampled more
  or less finely). Frames without depth get no measurement (all 0): fit such scenes with ``nerf.depth_source=none``;
* ``frames[i].mask_path`` (optional): 0 = ignore; masked-out pixels get no depth (colour is kept: the NeRF
  still sees them);
* the split: a frame's ``"split"`` (``train`` / ``test``, as :mod:`tasks.export` writes it) or nerfstudio's
  top-level ``train_filenames`` / ``val_filenames`` / ``test_filenames`` (val counts as test); with neither,
  the download stage holds out every ``data.test_every``-th frame.

One capture is one scene of the store, named after the folder.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import cv2
import numpy as np

from models.camera import intrinsics_matrix
from tasks.datasets.base import Frame, SceneSource
from tasks.datasets.formats import read_image, read_rgb, read_uint16_image
from tasks.errors import DataError

#: OpenGL (x right, y up, z back) <-> OpenCV (x right, y down, z forward) camera axes; its own inverse.
GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])
DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")
DEFAULT_DEPTH_UNIT = 1e-3  # nerfstudio's depth_unit_scale_factor default: millimetres


def _intrinsics(meta: dict, frame: dict, image_hw: tuple[int, int], where: str) -> np.ndarray:
    """``[3, 3]`` pinhole K of one frame: its own keys, else the file's, else Instant-NGP's angles."""

    def get(key: str):
        return frame.get(key, meta.get(key))

    h, w = image_hw
    for key in DISTORTION_KEYS:
        if float(get(key) or 0.0) != 0.0:
            raise DataError(where, f"distortion {key}={get(key)} is not supported: undistort the images first "
                                   "(ns-process-data does)")
    fx, fy = get("fl_x"), get("fl_y")
    angle_x, angle_y = get("camera_angle_x"), get("camera_angle_y")
    if fx is None and angle_x is not None:
        fx = 0.5 * w / math.tan(0.5 * float(angle_x))
    if fy is None and angle_y is not None:
        fy = 0.5 * h / math.tan(0.5 * float(angle_y))
    fy = fy if fy is not None else fx
    fx = fx if fx is not None else fy
    if fx is None or fy is None:  # both or neither
        raise DataError(where, "no focal length: set fl_x / fl_y (or camera_angle_x) in transforms.json")
    cx, cy = get("cx"), get("cy")
    cx = cx if cx is not None else w / 2.0
    cy = cy if cy is not None else h / 2.0
    for key in ("w", "h"):
        want = get(key)
        have = w if key == "w" else h
        if want is not None and int(want) != have:
            raise DataError(where, f"transforms.json says {key}={want} but the image is {w}x{h}")
    return intrinsics_matrix(float(fx), float(fy), float(cx), float(cy))


def _pose(frame: dict, where: str) -> np.ndarray:
    try:
        m = np.asarray(frame["transform_matrix"], dtype=np.float64)
    except KeyError:
        raise DataError(where, "frame has no transform_matrix") from None
    except (TypeError, ValueError):
        raise DataError(where, "transform_matrix is not a 4x4 list of numbers") from None
    if m.shape == (3, 4):
        m = np.vstack([m, [0.0, 0.0, 0.0, 1.0]])
    if m.shape != (4, 4):
        raise DataError(where, f"transform_matrix must be 4x4, got shape {list(m.shape)}")
    return m @ GL_TO_CV


def _load_frame(root: Path, meta: dict, frame: dict, index: int, frame_id: str, units_per_metre: float) -> Frame:
    if "file_path" not in frame:
        raise DataError(root / "transforms.json", f"frames[{index}] has no file_path")
    rgb_path = root / frame["file_path"]
    where = f"{root / 'transforms.json'} frames[{index}] ({frame['file_path']})"
    rgb = read_rgb(rgb_path)
    h, w = rgb.shape[:2]
    depth = np.zeros((h, w), np.float32)
    if frame.get("depth_file_path"):
        depth_path = root / frame["depth_file_path"]
        depth = read_uint16_image(depth_path).astype(np.float32) / np.float32(units_per_metre)
        if depth.shape != (h, w):
            depth = cv2.resize(depth, (w, h), interpolation=cv2.INTER_NEAREST)
    if frame.get("mask_path"):
        mask = read_image(root / frame["mask_path"])
        mask = mask[..., 0] if mask.ndim == 3 else mask
        if mask.shape != (h, w):
            mask = cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
        depth = np.where(mask > 0, depth, np.float32(0.0)).astype(np.float32)
    return Frame(frame_id=frame_id, rgb=rgb, depth=depth,
                 K=_intrinsics(meta, frame, (h, w), where), c2w=_pose(frame, where), source=str(rgb_path))


def _frame_id(file_path: str, index: int) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(file_path).stem)
    return stem or f"{index:06d}"


def _splits(meta: dict, frames: list[dict], file: Path) -> list[str] | None:
    """Per-frame train / test from the file, or None when it gives no split."""
    if all("split" in f for f in frames):
        bad = sorted({str(f["split"]) for f in frames} - {"train", "test", "val"})
        if bad:
            raise DataError(file, f"unknown frame split {bad[0]!r} (expected train, val or test)")
        return ["train" if f["split"] == "train" else "test" for f in frames]
    held_out = set(meta.get("test_filenames", [])) | set(meta.get("val_filenames", []))
    if "train_filenames" in meta or held_out:
        return ["test" if f.get("file_path") in held_out else "train" for f in frames]
    return None


def read_transforms(path: str | Path) -> tuple[Path, dict]:
    """The capture folder and the parsed ``transforms.json`` (``path``: the folder or the file)."""
    path = Path(path)
    file = path / "transforms.json" if path.is_dir() else path
    if not file.is_file():
        raise DataError(file, "transforms.json not found (expected a nerfstudio / Instant-NGP capture folder)")
    try:
        meta = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(file, f"cannot parse transforms.json: {err}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list) or not meta["frames"]:
        raise DataError(file, "transforms.json has no frames list")
    return file.parent, meta


def nerfstudio_scene(path: str | Path, depth_scale: float | None = None) -> SceneSource:
    """The capture at ``path`` as one :class:`SceneSource` (frames in file order).

    Args:
        path: capture folder (or its ``transforms.json``).
        depth_scale: raw depth units per metre, overriding ``depth_unit_scale_factor``.
    """
    root, meta = read_transforms(path)
    units = depth_scale or 1.0 / float(meta.get("depth_unit_scale_factor", DEFAULT_DEPTH_UNIT))
    frames = meta["frames"]
    has_depth = any(f.get("depth_file_path") for f in frames)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", root.resolve().name) or "capture"
    ids = [_frame_id(f.get("file_path", ""), i) for i, f in enumerate(frames)]
    if len(set(ids)) < len(ids):  # the same file name in several folders: keep them apart by index
        ids = [f"{i:06d}_{fid}" for i, fid in enumerate(ids)]
    return SceneSource(
        name=name,
        source="nerfstudio",
        frame_ids=ids,
        load=lambda i: _load_frame(root, meta, frames[i], i, ids[i], units),
        depth_kind="sensor",
        splits=_splits(meta, frames, root / "transforms.json"),  # type: ignore[arg-type]
        attrs={"folder": str(root), "depth_units_per_metre": units, "has_depth": has_depth},
    )
