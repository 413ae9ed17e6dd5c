"""TUM RGB-D sequences (``rgb.txt``, ``depth.txt``, ``groundtruth.txt``).

* ``rgb.txt`` / ``depth.txt``: ``timestamp filename`` per line (``#`` comments), filenames relative to
  the sequence folder; depth PNGs are uint16 with 5000 units per metre.
* ``groundtruth.txt``: ``timestamp tx ty tz qx qy qz qw``, the colour camera's optical centre in the world
  (camera-to-world, OpenCV axes), at about 100 Hz.

Each depth frame is associated with the colour frame nearest in time (one-to-one, at most ``max_dt``
apart, as TUM's ``associate.py``); its pose is interpolated at the depth timestamp (linear translation,
spherical-linear rotation) between the two surrounding ground-truth samples, and is unknown (NaN) when
those are further than ``max_gap`` seconds apart or the timestamp is outside the recording.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

from models.camera import intrinsics_matrix
from tasks.datasets.base import UNKNOWN_POSE, Frame, SceneSource
from tasks.datasets.formats import TUM_DEPTH_SCALE, decode_scaled_depth, read_rgb
from tasks.errors import DataError

# Calibrated colour intrinsics (fx, fy, cx, cy) published with the dataset, per recording setup.
TUM_INTRINSICS = {
    "freiburg1": (517.3, 516.5, 318.6, 255.3),
    "freiburg2": (520.9, 521.0, 325.1, 249.7),
    "freiburg3": (535.4, 539.2, 320.1, 247.6),
}
MAX_POSE_GAP_S = 0.1


def read_list(path: Path, n_values: int) -> tuple[np.ndarray, list[list[str]]]:
    """Parse a TUM list file: timestamps ``[N]`` and the remaining ``n_values`` fields per line."""
    if not path.is_file():
        raise DataError(path, "file not found (expected a TUM RGB-D sequence folder)")
    stamps, rows = [], []
    for lineno, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) != n_values + 1:
            raise DataError(path, f"line {lineno}: expected {n_values + 1} fields, got {len(fields)}")
        try:
            stamps.append(float(fields[0]))
        except ValueError:
            raise DataError(path, f"line {lineno}: bad timestamp {fields[0]!r}") from None
        rows.append(fields[1:])
    return np.array(stamps, dtype=np.float64), rows


def associate(t_a: np.ndarray, t_b: np.ndarray, max_dt: float) -> list[tuple[int, int]]:
    """One-to-one matches ``(i, j)`` between two timestamp lists, closest pairs first, ``|dt| <= max_dt``.

    Returns pairs sorted by ``i``.
    """
    diff = np.abs(t_a[:, None] - t_b[None, :])
    cand = np.argwhere(diff <= max_dt)
    order = np.argsort(diff[cand[:, 0], cand[:, 1]], kind="stable")
    used_a, used_b, pairs = set(), set(), []
    for i, j in cand[order]:
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            pairs.append((int(i), int(j)))
    return sorted(pairs)


def interpolate_poses(t_gt: np.ndarray, poses: np.ndarray, t: np.ndarray,
                      max_gap: float = MAX_POSE_GAP_S) -> np.ndarray:
    """Camera-to-world ``[len(t), 4, 4]`` at times ``t`` from ground truth ``poses [M, 7]`` (xyz, qxyzw).

    NaN where ``t`` is outside ``t_gt`` or the bracketing samples are more than ``max_gap`` apart.
    """
    out = np.repeat(UNKNOWN_POSE[None], len(t), axis=0)
    t_gt, first = np.unique(t_gt, return_index=True)  # sorted, strictly increasing (Slerp needs it)
    poses = poses[first]
    if len(t_gt) < 2:
        return out
    hi = np.clip(np.searchsorted(t_gt, t, side="left"), 1, len(t_gt) - 1)
    inside = (t >= t_gt[0]) & (t <= t_gt[-1])
    ok = inside & (t_gt[hi] - t_gt[hi - 1] <= max_gap)
    if not np.any(ok):
        return out
    slerp = Slerp(t_gt, Rotation.from_quat(poses[:, 3:7]))
    tq = t[ok]
    R = slerp(tq).as_matrix()
    trans = np.stack([np.interp(tq, t_gt, poses[:, k]) for k in range(3)], axis=-1)
    out[ok, :3, :3] = R
    out[ok, :3, 3] = trans
    out[ok, 3] = [0, 0, 0, 1]
    return out


def default_intrinsics(folder: Path) -> tuple[float, float, float, float] | None:
    """Published intrinsics when the folder name names the recording setup (``freiburg1`` ...)."""
    m = re.search(r"freiburg([123])", str(folder.resolve()))
    return TUM_INTRINSICS[f"freiburg{m.group(1)}"] if m else None


def tum_scene(
    folder: str | Path,
    *,
    max_dt: float = 0.02,
    require_pose: bool = False,
    intrinsics: tuple[float, float, float, float] | None = None,
    depth_scale: float | None = None,
) -> SceneSource:
    """The TUM sequence in ``folder`` as one :class:`SceneSource` of associated RGB-D frames."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "TUM sequence folder not found")
    intr = intrinsics or default_intrinsics(folder)
    if intr is None:
        raise DataError(
            folder,
            "missing intrinsics: the folder name does not say freiburg1/2/3 and data.intrinsics is not set "
            "(e.g. --set data.intrinsics=[525,525,319.5,239.5] for the ROS default)",
        )
    K = intrinsics_matrix(*intr)
    units = depth_scale or TUM_DEPTH_SCALE
    t_rgb, rgb_rows = read_list(folder / "rgb.txt", 1)
    t_depth, depth_rows = read_list(folder / "depth.txt", 1)
    pairs = associate(t_depth, t_rgb, max_dt)
    if not pairs:
        raise DataError(folder, f"no depth frame has a colour frame within {max_dt} s")
    t = np.array([t_depth[i] for i, _ in pairs])
    gt_path = folder / "groundtruth.txt"
    if gt_path.is_file():
        t_gt, gt_rows = read_list(gt_path, 7)
        try:
            gt = np.array(gt_rows, dtype=np.float64).reshape(-1, 7)
        except ValueError:
            raise DataError(gt_path, "pose fields must be numbers") from None
        poses = interpolate_poses(t_gt, gt, t)
    else:
        poses = np.repeat(UNKNOWN_POSE[None], len(t), axis=0)
    has_pose = np.all(np.isfinite(poses.reshape(len(t), -1)), axis=1)
    keep = [k for k in range(len(pairs)) if has_pose[k] or not require_pose]
    if not keep:
        raise DataError(folder, "no frame has a ground-truth pose (groundtruth.txt missing or not overlapping)")

    def load(k: int) -> Frame:
        i, j = pairs[keep[k]]
        depth_path = folder / depth_rows[i][0]
        return Frame(
            frame_id=f"{t_depth[i]:.6f}",
            rgb=read_rgb(folder / rgb_rows[j][0]),
            depth=decode_scaled_depth(depth_path, units),
            K=K,
            c2w=poses[keep[k]],
            source=str(depth_path),
        )

    return SceneSource(
        name=re.sub(r"[^A-Za-z0-9_.-]+", "_", folder.resolve().name),
        source="tum",
        frame_ids=[f"{t_depth[pairs[k][0]]:.6f}" for k in keep],
        load=load,
        depth_kind="sensor",
        attrs={"folder": str(folder), "depth_units_per_metre": units, "intrinsics": list(intr)},
    )
