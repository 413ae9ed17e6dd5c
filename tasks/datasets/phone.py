"""Phone LiDAR captures in the Stray Scanner layout (iPhone / iPad Pro, ARKit scene depth).

``data.path`` is the capture folder (Stray Scanner's ``docs/format.md``):

* ``rgb.mp4``: the colour video (HEVC, 1920x1440), decoded with OpenCV (``cv2.VideoCapture``); video frame
  ``k`` is capture frame ``k``. A folder ``rgb/`` of numbered frames (``000000.jpg`` / ``.png``), where there
  is one, is read instead: the fallback for captures without a video, or whose video OpenCV cannot decode
  (``ffmpeg -i rgb.mp4 -start_number 0 rgb/%06d.png``);
* ``depth/NNNNNN.png``: uint16 depth in millimetres (``data.depth_scale`` overrides the 1000 units per metre),
  256x192, the same camera and field of view as the colour; older app versions wrote ``.npy`` (also
  millimetres), read as well. A frame without a depth file (the app skips depth it did not get) has none;
* ``confidence/NNNNNN.png``: ARKit's confidence per depth pixel, 0 = low, 1 = medium, 2 = high. Depth with a
  confidence below ``data.phone.min_confidence`` (default 2) becomes 0 = no measurement: the refiner fills
  holes, while a wrong value misleads both the refiner and the NeRF's depth term, and ARKit's low / medium
  values sit at depth edges, on far, dark or specular surfaces, where the LiDAR's errors are largest;
* ``odometry.csv``: header ``timestamp, frame, x, y, z, qx, qy, qz, qw``, one row per frame: the camera-to-world
  position (metres, ARKit's gravity-aligned world, y up) and orientation quaternion. The app writes
  ``q = q_WA * q_AC`` with ``q_AC`` the half turn about x (Stray Scanner's ``OdometryEncoder.swift``), i.e. it
  already turns ARKit's OpenGL-like camera axes (x right, y up, z back) into OpenCV axes (x right, y down,
  z forward), the store's: the pose is used as written. Per-frame ``fx, fy, cx, cy`` columns, where an export
  adds them, win over ``camera_matrix.csv``;
* ``camera_matrix.csv``: the 3x3 intrinsics at the video resolution (comma-separated rows).

Resolution: the store frame is the depth map's grid times ``data.phone.depth_upsample`` (default 2:
256x192 -> 512x384): the colour is area-averaged down from the video, the depth repeated nearest-neighbour
(no values invented across depth edges), and the intrinsics scaled from the video resolution. The LiDAR
resolves no finer detail than its 256x192 grid, so storing 1920x1440 would mostly store copies of depth
pixels; ``data.downscale`` / ``data.height`` / ``data.width`` then resize as for every source.

Record3D exports are not read (their ``.r3d`` depth is LZFSE-compressed and the EXR export needs OpenEXR):
convert them to this layout first.
"""

from __future__ import annotations

import csv
import re
import threading
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from models.camera import intrinsics_matrix, pose_from_tum
from tasks.datasets.base import UNKNOWN_POSE, Frame, SceneSource, scale_intrinsics
from tasks.datasets.config import PhoneConfig
from tasks.datasets.formats import read_image, read_rgb, read_uint16_image
from tasks.errors import DataError

PHONE_DEPTH_SCALE = 1000.0  # millimetres
ODOMETRY_COLUMNS = ("frame", "x", "y", "z", "qx", "qy", "qz", "qw")
RGB_EXTENSIONS = ("jpg", "jpeg", "png")


def read_camera_matrix(path: Path) -> np.ndarray:
    """``camera_matrix.csv``: a 3x3 matrix, comma- (or space-) separated rows -> ``[3, 3]`` float64."""
    if not path.is_file():
        raise DataError(path, "file not found (expected a Stray Scanner capture folder)")
    try:
        values = np.array(re.split(r"[,\s]+", path.read_text().strip()), dtype=np.float64)
    except ValueError:
        raise DataError(path, "expected comma-separated numbers") from None
    if values.size != 9:
        raise DataError(path, f"expected a 3x3 matrix, found {values.size} numbers")
    K = values.reshape(3, 3)
    if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise DataError(path, f"intrinsics are degenerate: {K.tolist()}")
    return K


def read_odometry(path: Path) -> tuple[list[int], np.ndarray, np.ndarray | None]:
    """``odometry.csv`` -> frame numbers ``[N]``, camera-to-world ``[N, 4, 4]`` (OpenCV axes as written; NaN
    where a value is not finite) and per-frame ``(fx, fy, cx, cy)`` ``[N, 4]`` when the file has them."""
    if not path.is_file():
        raise DataError(path, "file not found (expected a Stray Scanner capture folder)")
    with path.open(newline="") as fh:
        rows = [r for r in csv.reader(fh) if any(c.strip() for c in r)]
    if not rows:
        raise DataError(path, "empty file")
    header = [c.strip().lower() for c in rows[0]]
    missing = [c for c in ODOMETRY_COLUMNS if c not in header]
    if missing:
        raise DataError(path, f"header lacks column(s) {', '.join(missing)} (expected 'timestamp, frame, x, y, z, "
                              "qx, qy, qz, qw')")
    col = {name: header.index(name) for name in header if name}
    has_k = all(k in col for k in ("fx", "fy", "cx", "cy"))
    frames, poses, ks = [], [], []
    for lineno, row in enumerate(rows[1:], start=2):
        cells = {name: row[i].strip() if i < len(row) else "" for name, i in col.items()}
        try:
            frames.append(int(float(cells["frame"])))
            t = np.array([float(cells[c]) for c in ("x", "y", "z")])
            q = np.array([float(cells[c]) for c in ("qx", "qy", "qz", "qw")])
            ks.append([float(cells[c]) if cells[c] else np.nan for c in ("fx", "fy", "cx", "cy")] if has_k else [])
        except ValueError:
            raise DataError(path, f"line {lineno}: expected numbers in columns {', '.join(ODOMETRY_COLUMNS)}") from None
        ok = np.all(np.isfinite(t)) and np.all(np.isfinite(q)) and np.linalg.norm(q) > 0
        poses.append(pose_from_tum(t, q) if ok else UNKNOWN_POSE.copy())
    if not frames:
        raise DataError(path, "no frames")
    if len(set(frames)) < len(frames):
        raise DataError(path, "a frame number appears twice")
    k_arr = np.array(ks, dtype=np.float64)
    return frames, np.stack(poses), k_arr if has_k else None


class VideoFrames:
    """Frames of a video by index, decoded in order with OpenCV (seeking in compressed video is inexact, so
    a frame behind the last one read reopens the file). Thread-safe."""

    def __init__(self, path: Path):
        self.path = path
        self._cap: cv2.VideoCapture | None = None
        self._next = 0
        self._lock = threading.Lock()

    def _open(self) -> None:
        if self._cap is not None:
            self._cap.release()
        self._cap = cv2.VideoCapture(str(self.path))
        self._next = 0
        if not self._cap.isOpened():
            raise DataError(self.path, "cannot open the video (no OpenCV decoder for it?): extract its frames "
                                       "to rgb/ (ffmpeg -i rgb.mp4 -start_number 0 rgb/%06d.png)")

    def read(self, index: int) -> np.ndarray:
        """Frame ``index`` as uint8 RGB ``[H, W, 3]``."""
        with self._lock:
            if self._cap is None or index < self._next:
                self._open()
            assert self._cap is not None
            while self._next < index:
                if not self._cap.grab():
                    raise DataError(self.path, f"the video has only {self._next} frames, frame {index} is missing")
                self._next += 1
            ok, bgr = self._cap.read()
            if not ok:
                raise DataError(self.path, f"the video has only {self._next} frames, frame {index} is missing")
            self._next += 1
            return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _rgb_reader(root: Path) -> Callable[[int], np.ndarray]:
    """``read(frame) -> [H, W, 3] uint8``: the ``rgb/`` folder's frames when it has any, else the video."""
    video = root / "rgb.mp4"
    folder = root / "rgb"
    if folder.is_dir():
        files = {int(p.stem): p for p in folder.iterdir()
                 if p.suffix.lower().lstrip(".") in RGB_EXTENSIONS and p.stem.isdigit()}
        if files:
            def read_file(frame: int) -> np.ndarray:
                if frame not in files:
                    raise DataError(folder / f"{frame:06d}.jpg", "colour frame not found")
                return read_rgb(files[frame])
            return read_file
    if video.is_file():
        return VideoFrames(video).read
    raise DataError(video, "file not found, and no rgb/ folder of numbered frames (expected a Stray Scanner "
                           "capture folder)")


def _depth_path(root: Path, frame: int) -> Path | None:
    for ext in ("png", "npy"):
        p = root / "depth" / f"{frame:06d}.{ext}"
        if p.is_file():
            return p
    return None


def read_depth_raw(path: Path) -> np.ndarray:
    """A depth frame (uint16 PNG or ``.npy``) as raw units ``[h, w]`` float32."""
    if path.suffix == ".npy":
        try:
            a = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise DataError(path, f"cannot read .npy depth: {err}") from None
        if a.ndim != 2:
            raise DataError(path, f"expected a 2-D depth array, got shape {a.shape}")
        return np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    return read_uint16_image(path).astype(np.float32)


def phone_depth(
    raw: np.ndarray, confidence: np.ndarray | None, min_confidence: int, units_per_metre: float
) -> np.ndarray:
    """Metric depth ``[h, w]`` float32 from raw units, 0 where ``confidence < min_confidence`` (or no reading)."""
    depth = (raw / np.float32(units_per_metre)).astype(np.float32)
    depth[~(depth > 0)] = 0.0
    if confidence is not None:
        depth[confidence < min_confidence] = 0.0
    return depth


def store_size(depth_hw: tuple[int, int], video_hw: tuple[int, int], upsample: int, where: str) -> tuple[int, int]:
    """``(H, W)`` of the store frame: the depth grid times ``upsample``; the video must have its aspect."""
    (h, w), (vh, vw) = depth_hw, video_hw
    if abs((vw / vh) / (w / h) - 1.0) > 0.01:
        raise DataError(where, f"the colour is {vw}x{vh} but the depth {w}x{h}: different aspect ratios, so "
                               "they are not the same camera's view")
    return h * upsample, w * upsample


def _load_frame(root: Path, frame: int, read_rgb_frame: Callable[[int], np.ndarray], K_video: np.ndarray,
                c2w: np.ndarray, depth_hw: tuple[int, int], cfg: PhoneConfig, units: float) -> Frame:
    rgb_video = read_rgb_frame(frame)
    where = f"{root} frame {frame:06d}"
    H, W = store_size(depth_hw, rgb_video.shape[:2], cfg.depth_upsample, where)
    depth = np.zeros(depth_hw, np.float32)
    depth_path = _depth_path(root, frame)
    if depth_path is not None:
        raw = read_depth_raw(depth_path)
        if raw.shape != depth_hw:
            raise DataError(depth_path, f"depth is {raw.shape[1]}x{raw.shape[0]}, the capture's first depth frame "
                                        f"{depth_hw[1]}x{depth_hw[0]}")
        confidence = None
        if cfg.min_confidence > 0:
            conf_path = root / "confidence" / f"{frame:06d}.png"
            if not conf_path.is_file():
                raise DataError(conf_path, "confidence map not found; set data.phone.min_confidence=0 to use the "
                                           "depth unfiltered")
            confidence = read_image(conf_path)
            if confidence.shape != depth_hw:
                raise DataError(conf_path, f"confidence is {confidence.shape[::-1]} (width x height), depth "
                                           f"{depth_hw[1]}x{depth_hw[0]}")
        depth = phone_depth(raw, confidence, cfg.min_confidence, units)
    vh, vw = rgb_video.shape[:2]
    rgb = cv2.resize(rgb_video, (W, H), interpolation=cv2.INTER_AREA if vw > W else cv2.INTER_LINEAR)
    depth = cv2.resize(depth, (W, H), interpolation=cv2.INTER_NEAREST_EXACT)
    return Frame(frame_id=f"{frame:06d}", rgb=rgb, depth=depth, K=scale_intrinsics(K_video, W / vw, H / vh),
                 c2w=c2w, source=str(depth_path or where))


def phone_scene(
    path: str | Path,
    cfg: PhoneConfig | None = None,
    intrinsics: tuple[float, float, float, float] | None = None,
    depth_scale: float | None = None,
) -> SceneSource:
    """The Stray Scanner capture at ``path`` as one :class:`SceneSource` (frames in ``odometry.csv`` order).

    Args:
        path: the capture folder.
        cfg: confidence threshold and store resolution.
        intrinsics: ``(fx, fy, cx, cy)`` at the video resolution, overriding ``camera_matrix.csv``.
        depth_scale: raw depth units per metre (default 1000: millimetres).
    """
    root = Path(path)
    cfg = cfg or PhoneConfig()
    if not root.is_dir():
        raise DataError(root, "phone capture folder not found")
    units = depth_scale or PHONE_DEPTH_SCALE
    frames, poses, per_frame_k = read_odometry(root / "odometry.csv")
    K = intrinsics_matrix(*intrinsics) if intrinsics else read_camera_matrix(root / "camera_matrix.csv")
    first_depth = next((p for p in (_depth_path(root, f) for f in frames) if p is not None), None)
    if first_depth is None:
        raise DataError(root / "depth", "no depth frames (depth/NNNNNN.png) for the frames of odometry.csv")
    depth_hw = read_depth_raw(first_depth).shape
    read_rgb_frame = _rgb_reader(root)

    def frame_K(k: int) -> np.ndarray:
        if intrinsics is None and per_frame_k is not None and np.all(np.isfinite(per_frame_k[k])):
            return intrinsics_matrix(*per_frame_k[k])
        return K

    return SceneSource(
        name=re.sub(r"[^A-Za-z0-9_.-]+", "_", root.resolve().name) or "phone",
        source="phone",
        frame_ids=[f"{f:06d}" for f in frames],
        load=lambda k: _load_frame(root, frames[k], read_rgb_frame, frame_K(k), poses[k], depth_hw, cfg, units),
        depth_kind="sensor",
        attrs={"folder": str(root), "depth_units_per_metre": units, "min_confidence": cfg.min_confidence,
               "depth_hw": list(depth_hw), "depth_upsample": cfg.depth_upsample},
    )
