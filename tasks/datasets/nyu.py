"""Reader of the NYU Depth V2 labeled file (``nyu_depth_v2_labeled.mat``, 1449 frames).

The file is MATLAB v7.3, i.e. HDF5 behind a 512-byte user block. MATLAB stores arrays column-major,
so h5py sees every axis reversed: the MATLAB ``480 x 640 x 3 x N`` image array is ``(N, 3, 640, 480)``
here and the ``480 x 640 x N`` depth arrays are ``(N, 640, 480)``. Per frame:

  * ``images[i].transpose(2, 1, 0)`` -> ``[480, 640, 3]`` uint8 RGB;
  * ``depths[i].T`` -> ``[480, 640]`` metres, inpainted (hole-free) reference depth (Levin colorization);
  * ``rawDepths[i].T`` -> ``[480, 640]`` metres, the projected Kinect depth, 0 = hole;
  * ``scenes`` / ``sceneTypes``: ``(1, N)`` cell arrays of object references to MATLAB char arrays
    (uint16 code units, shape ``(len, 1)``), e.g. ``kitchen_0028a`` / ``kitchen``.

The official train / test split (795 / 654 frames) is in ``splits.mat`` (old MATLAB format), as
1-based indices ``trainNdxs`` / ``testNdxs``. The frames have no poses, so ``c2w`` is all NaN.
Frames are read lazily: every ``SceneSource.load`` call opens the file, reads one frame and closes it,
so sources stay valid (and picklable by path) after :func:`nyu_scenes` returns.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import h5py
import numpy as np
import scipy.io

from models.camera import intrinsics_matrix
from tasks.datasets.base import UNKNOWN_POSE, Frame, SceneSource, Split, scale_intrinsics
from tasks.datasets.config import NyuConfig
from tasks.errors import DataError

NYU_INTRINSICS = (5.1885790117450188e02, 5.1946961112127485e02, 3.2558244941119034e02, 2.5373616633400465e02)
"""``(fx, fy, cx, cy)`` in pixels of the 640x480 colour camera (NYU toolbox ``camera_params.m``)."""

NYU_FRAME_SIZE = (640, 480)
"""``(width, height)`` of the labeled frames, the size :data:`NYU_INTRINSICS` belongs to."""

SOURCE = "nyu_labeled"
REQUIRED_DATASETS = ("images", "depths", "rawDepths", "scenes")
SPLIT_KEYS = ("trainNdxs", "testNdxs")
_SCENE_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def nyu_scenes(mat_path: Path, splits_path: Path | None, cfg: NyuConfig) -> list[SceneSource]:
    """Scenes of the NYU Depth V2 labeled file, with lazily loaded frames.

    The file's layout is checked here, once; frames are read on ``load``.

    Args:
        mat_path: ``nyu_depth_v2_labeled.mat`` (or any file of the same layout and any frame size).
        splits_path: ``splits.mat`` with 1-based ``trainNdxs`` / ``testNdxs``; ``None`` = no official split.
        cfg: reader settings (only ``group_by_scene`` matters here; fetching is the caller's job).

    Returns:
        One :class:`SceneSource` per NYU scene name in order of first appearance (or a single
        ``nyu_labeled`` scene). Frame ids are the frame's index in the file (``"00042"``); frames carry
        ``depth`` (reference, metres), ``depth_sensor`` (raw Kinect, metres, 0 = hole), ``K`` (scaled when
        the frames are not 640x480) and an all-NaN ``c2w``.

    Raises:
        DataError: naming the file and the key, when the file is missing, not HDF5 / MATLAB v7.3, lacks a
            dataset, has inconsistent frame counts or wrong shapes, or the split is invalid.
    """
    mat_path = Path(mat_path)
    with _open_mat(mat_path) as f:
        n, width, height = _check_layout(f, mat_path)
        names = _read_strings(f, "scenes", n, mat_path)
        types = _read_strings(f, "sceneTypes", n, mat_path) if "sceneTypes" in f else None
    for i, name in enumerate(names):
        if not _SCENE_NAME.fullmatch(name):
            raise DataError(mat_path, f"'scenes' entry {i} is {name!r}, not a scene name (letters, digits, -_.)")
    splits = None if splits_path is None else read_splits(Path(splits_path), n)
    K, note = frame_intrinsics(width, height)
    load = partial(load_frame, mat_path, K)
    common = {"dataset": "NYU Depth V2 labeled", "mat_file": mat_path.name, "frame_size": [width, height]}
    if note:
        common["intrinsics_note"] = note
    if not cfg.group_by_scene:
        attrs = {**common, "nyu_scenes": names} | ({"scene_types": types} if types is not None else {})
        return [_scene(SOURCE, list(range(n)), load, splits, attrs)]
    return [
        _scene(name, idx, load, splits, {**common, "nyu_scene": name}
               | ({"scene_type": types[idx[0]]} if types is not None else {}))
        for name, idx in group_indices(names).items()
    ]


def load_frame(mat_path: Path, K: np.ndarray, index: int) -> Frame:
    """Read frame ``index`` of the labeled file (opens and closes the file).

    Args:
        mat_path: the labeled ``.mat`` file, already checked by :func:`nyu_scenes`.
        K: ``[3, 3]`` intrinsics of the file's frame size.
        index: 0-based frame index in the file.

    Returns:
        The frame: ``rgb`` ``[H, W, 3]`` uint8, ``depth`` / ``depth_sensor`` ``[H, W]`` float32 metres.
    """
    where = f"{mat_path} [frame {index}]"
    try:
        with h5py.File(mat_path, "r") as f:
            # h5py annotates f[name] as a dataset, group or datatype; nyu_scenes checked these are datasets
            rgb = np.ascontiguousarray(f["images"][index].transpose(2, 1, 0))  # pyright: ignore[reportIndexIssue, reportAttributeAccessIssue]
            depth = np.ascontiguousarray(f["depths"][index].T, dtype=np.float32)  # pyright: ignore[reportIndexIssue, reportAttributeAccessIssue]
            raw = np.ascontiguousarray(f["rawDepths"][index].T, dtype=np.float32)  # pyright: ignore[reportIndexIssue, reportAttributeAccessIssue]
    except (OSError, KeyError) as e:  # moved, truncated or rewritten after nyu_scenes checked it
        raise DataError(where, f"cannot read the frame: {e}") from e
    return Frame(frame_id=f"{index:05d}", rgb=rgb, depth=depth, K=K.copy(), c2w=UNKNOWN_POSE.copy(),
                 depth_sensor=raw, source=where)


def frame_intrinsics(width: int, height: int) -> tuple[np.ndarray, str]:
    """``[3, 3]`` NYU intrinsics for ``width x height`` frames and a note when they had to be scaled."""
    K = intrinsics_matrix(*NYU_INTRINSICS)
    if (width, height) == NYU_FRAME_SIZE:
        return K, ""
    sx, sy = width / NYU_FRAME_SIZE[0], height / NYU_FRAME_SIZE[1]
    note = (f"frames are {width}x{height}, not {NYU_FRAME_SIZE[0]}x{NYU_FRAME_SIZE[1]}: NYU intrinsics scaled "
            f"by {sx:g} x {sy:g}")
    return scale_intrinsics(K, sx, sy), note


def group_indices(names: Sequence[str]) -> dict[str, list[int]]:
    """Frame indices per name, names in order of first appearance, indices ascending."""
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(name, []).append(i)
    return groups


def read_splits(path: Path, n: int) -> list[Split]:
    """Per-frame ``train`` / ``test`` from a ``splits.mat`` with 1-based ``trainNdxs`` / ``testNdxs``.

    Args:
        path: the split file (old MATLAB format; v7.3 / HDF5 is accepted too).
        n: number of frames of the labeled file.

    Raises:
        DataError: naming the file and key, when a key is missing, an index is not an integer in
            ``1..n``, a frame appears twice, or some frame is in neither list.
    """
    data = _load_small_mat(path, SPLIT_KEYS)
    train = _split_indices(data["trainNdxs"], "trainNdxs", n, path)
    test = _split_indices(data["testNdxs"], "testNdxs", n, path)
    both = sorted(set(train) & set(test))
    if both:
        raise DataError(path, f"{len(both)} frames are in both 'trainNdxs' and 'testNdxs' (e.g. {both[0] + 1})")
    neither = sorted(set(range(n)) - set(train) - set(test))
    if neither:
        raise DataError(path, f"{len(neither)} of the {n} frames are in neither 'trainNdxs' nor 'testNdxs' "
                              f"(e.g. {neither[0] + 1}); the split does not belong to this labeled file")
    splits: list[Split] = ["train"] * n
    for i in test:
        splits[i] = "test"
    return splits


def _scene(name: str, indices: list[int], load, splits: list[Split] | None, attrs: dict) -> SceneSource:
    return SceneSource(
        name=name,
        source=SOURCE,
        frame_ids=[f"{i:05d}" for i in indices],
        load=lambda j: load(indices[j]),
        depth_kind="reference",
        has_sensor_depth=True,
        splits=None if splits is None else [splits[i] for i in indices],
        attrs=attrs,
    )


def _open_mat(path: Path) -> h5py.File:
    """Open the labeled file read-only, or raise a :class:`DataError` saying what it is instead."""
    if not path.is_file():
        raise DataError(path, "no such file; the download stage fetches it from NyuConfig.url")
    if not h5py.is_hdf5(path):
        with open(path, "rb") as f:
            head = f.read(128)
        if head.startswith(b"MATLAB 5.0 MAT-file"):
            problem = ("an old-format (v5) MATLAB file, not the MATLAB v7.3 (HDF5) NYU Depth V2 labeled file; "
                       "did you pass splits.mat, or re-save with save(..., '-v7.3')?")
        else:
            problem = "not an HDF5 / MATLAB v7.3 .mat file (an incomplete download or an HTML error page?)"
        raise DataError(path, problem)
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise DataError(path, f"cannot open as HDF5 (truncated or corrupted?): {e}") from e


def _dataset(f: h5py.File, key: str, path: Path) -> h5py.Dataset:
    if key not in f:
        raise DataError(path, f"missing dataset '{key}'; this is not the NYU Depth V2 labeled file")
    obj = f[key]
    if not isinstance(obj, h5py.Dataset):
        raise DataError(path, f"'{key}' is a {type(obj).__name__}, expected a dataset")
    return obj


def _check_layout(f: h5py.File, path: Path) -> tuple[int, int, int]:
    """Check the datasets' shapes and types; ``(n_frames, width, height)``."""
    images = _dataset(f, "images", path)
    if images.ndim != 4 or images.shape[1] != 3 or images.dtype != np.uint8:
        raise DataError(path, f"dataset 'images' must be uint8 (N, 3, W, H) (MATLAB H x W x 3 x N), got "
                              f"{images.dtype} {images.shape}")
    n, _, width, height = images.shape
    if n == 0 or width == 0 or height == 0:
        raise DataError(path, f"dataset 'images' is empty: shape {images.shape}")
    for key in ("depths", "rawDepths"):
        d = _dataset(f, key, path)
        if d.ndim != 3 or not np.issubdtype(d.dtype, np.floating):
            raise DataError(path, f"dataset '{key}' must be float (N, W, H), got {d.dtype} {d.shape}")
        if d.shape[0] != n:
            raise DataError(path, f"inconsistent frame counts: dataset '{key}' has {d.shape[0]} frames but "
                                  f"'images' has {n}")
        if d.shape[1:] != (width, height):
            raise DataError(path, f"dataset '{key}' has frames of shape {d.shape[1:]} but 'images' has "
                                  f"{(width, height)} (W, H); wrong shape")
    _dataset(f, "scenes", path)
    return n, width, height


def _read_strings(f: h5py.File, key: str, n: int, path: Path) -> list[str]:
    """The ``n`` strings of a MATLAB cell array of char arrays (a ``(1, n)`` dataset of references)."""
    cell = _dataset(f, key, path)
    if h5py.check_dtype(ref=cell.dtype) is not h5py.Reference:
        raise DataError(path, f"dataset '{key}' must be a MATLAB cell array (object references), got {cell.dtype}")
    if cell.ndim != 2 or 1 not in cell.shape or cell.size != n:
        raise DataError(path, f"inconsistent frame counts: dataset '{key}' has shape {cell.shape}, expected "
                              f"(1, {n}) for the {n} frames of 'images'")
    return [_matlab_string(f, ref, f"{key}[{i}]", path) for i, ref in enumerate(cell[()].ravel())]


def _matlab_string(f: h5py.File, ref: h5py.Reference, where: str, path: Path) -> str:
    """Decode a MATLAB char array (uint16 UTF-16 code units, ``(len, 1)``) that ``ref`` points to."""
    if not ref:
        raise DataError(path, f"'{where}' is a null reference")
    try:
        obj = f[ref]
    except (KeyError, ValueError, OSError) as e:
        raise DataError(path, f"'{where}' points nowhere: {e}") from e
    if not isinstance(obj, h5py.Dataset):
        raise DataError(path, f"'{where}' points to a {type(obj).__name__}, expected a char array")
    if obj.attrs.get("MATLAB_empty", 0):
        return ""
    codes = np.asarray(obj[()])
    if not np.issubdtype(codes.dtype, np.integer) or (codes.size and (codes.min() < 0 or codes.max() > 0xFFFF)):
        raise DataError(path, f"'{where}' is not a MATLAB char array: {codes.dtype} {codes.shape}")
    try:
        return codes.astype("<u2").ravel().tobytes().decode("utf-16-le")
    except UnicodeDecodeError as e:
        raise DataError(path, f"'{where}' is not valid UTF-16 text: {e}") from e


def _load_small_mat(path: Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """Variables ``keys`` of a small ``.mat`` file: old format via scipy, v7.3 via h5py."""
    if not path.is_file():
        raise DataError(path, "no such file; the download stage fetches it from NyuConfig.splits_url")
    if h5py.is_hdf5(path):  # MATLAB v7.3
        try:
            with h5py.File(path, "r") as f:
                data = {k: np.asarray(v[()]) for k in keys if k in f and isinstance(v := f[k], h5py.Dataset)}
        except OSError as e:
            raise DataError(path, f"cannot open as MATLAB v7.3 / HDF5: {e}") from e
    else:
        try:
            data = scipy.io.loadmat(path, variable_names=list(keys))
        except (ValueError, TypeError, OSError, NotImplementedError, scipy.io.matlab.MatReadError) as e:
            raise DataError(path, f"not a MATLAB .mat file: {e}") from e
    for k in keys:
        if k not in data:
            raise DataError(path, f"missing variable '{k}'")
    return {k: data[k] for k in keys}


def _split_indices(values: np.ndarray, key: str, n: int, path: Path) -> list[int]:
    """0-based frame indices from the 1-based MATLAB index vector ``values`` of ``key``."""
    v = np.asarray(values).ravel()
    if v.size == 0:
        return []
    if not (np.issubdtype(v.dtype, np.integer) or np.issubdtype(v.dtype, np.floating)):
        raise DataError(path, f"'{key}' must hold numbers, got {v.dtype}")
    if not np.all(np.isfinite(v)) or np.any(v != np.round(v)):
        raise DataError(path, f"'{key}' must hold whole numbers (1-based frame indices)")
    idx = v.astype(np.int64)
    bad = idx[(idx < 1) | (idx > n)]
    if bad.size:
        raise DataError(path, f"'{key}' has indices out of range 1..{n} (the labeled file's frames): "
                              f"{bad[:5].tolist()}")
    if np.unique(idx).size != idx.size:
        raise DataError(path, f"'{key}' lists some frames more than once")
    return (idx - 1).tolist()
