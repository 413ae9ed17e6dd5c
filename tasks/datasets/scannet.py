"""ScanNet-style RGB-D exports (ScanNet's SensReader output and the many RGB-D exports that copy it).

``data.path`` is a scene folder, or a folder whose sub-folders are scene folders (one store scene each, named
after the folder, e.g. ``scene0000_00``). A scene folder holds, per frame ``<i>`` (0, 1, 2, ... ordered by
number):

* ``color/<i>.jpg`` (or ``.png``): colour (ScanNet: 1296x968);
* ``depth/<i>.png``: uint16 depth, ``data.depth_scale`` units per metre (default 1000, ScanNet's depth shift:
  millimetres), 0 = no measurement (ScanNet: 640x480);
* ``pose/<i>.txt``: 4x4 camera-to-world (OpenCV axes, metres); ``-inf`` / ``nan`` entries (tracking lost) or
  a missing file make the pose unknown (NaN);

and once per scene ``intrinsic/intrinsic_color.txt`` and ``intrinsic/intrinsic_depth.txt`` (4x4, or 3x3,
matrices; ``data.intrinsics`` overrides the colour one), and optionally ``intrinsic/extrinsic_color.txt`` /
``extrinsic_depth.txt``: each camera's mapping to the sensor's base frame (ScanNet's SensorData: "typically
depth to colour; the colour extrinsic is the identity"); both default to the identity, as ScanNet ships them.

**Depth is registered to the colour camera**, since colour and depth differ in size and intrinsics: the store
frame is the colour camera at the colour resolution (the download stage's ``data.downscale`` /
``data.height`` / ``data.width`` then resize it like any source's; ScanNet: ``data.downscale=2`` gives
648x484, close to the depth's own sampling). :func:`register_depth` back-projects each depth pixel with the
depth intrinsics, moves it into the colour camera (``T_color_from_depth = inv(E_color) @ E_depth``) and
projects it with the colour intrinsics, z-buffered (the nearest surface wins). A point splat would leave
about three in four colour pixels empty when the colour is sampled ~2x finer than the depth (ScanNet), so
each depth pixel is splatted as its **footprint**: the projection of the pixel's square, its corners shared
with the neighbours on the same surface (depths within 5 %) so that footprints tile despite the parallax
between the cameras. Every colour pixel whose centre lies in a footprint takes that sample's depth
(nearest-neighbour upsampling, as every resize of depth in the store: no values invented across depth edges),
so a surface seen by both cameras is covered without holes, and only what the depth camera did not see
(outside its view, behind occluders from its viewpoint, or unmeasured) stays 0. (A hole-filling min filter
would instead fatten foreground objects into the disoccluded background.) Poses are the base frame's, so the
colour camera's pose is ``pose @ E_color``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from models.camera import intrinsics_matrix
from tasks.datasets.base import UNKNOWN_POSE, Frame, SceneSource
from tasks.datasets.formats import SEVENSCENES_DEPTH_SCALE, read_rgb, read_text_numbers, read_uint16_image
from tasks.errors import DataError

SCANNET_DEPTH_SHIFT = SEVENSCENES_DEPTH_SCALE  # raw units per metre: millimetres
COLOR_EXTENSIONS = ("jpg", "png", "jpeg")
MAX_FOOTPRINT_PX = 16  # a footprint wider than this (degenerate geometry) is clipped
SURFACE_REL_TOL = 0.05  # neighbouring depths within 5 % belong to the same surface (share footprint corners)


def read_text_matrix(path: Path, sizes: tuple[int, ...] = (4,)) -> np.ndarray:
    """A whitespace-separated square matrix of one of ``sizes`` (float64; ``-inf`` / ``nan`` allowed)."""
    values = read_text_numbers(path)
    for n in sizes:
        if values.size == n * n:
            return values.reshape(n, n)
    want = " or ".join(f"{n}x{n}" for n in sizes)
    raise DataError(path, f"expected a {want} matrix, found {values.size} numbers")


def corner_depths(depth: np.ndarray, rel_tol: float = SURFACE_REL_TOL) -> dict[tuple[int, int], np.ndarray]:
    """Depth at the four corners of every pixel, interpolated over the pixel's own surface.

    Corner ``(su, sv)`` (each ``-1`` or ``+1``) of pixel ``(u, v)`` sits at ``(u + su/2, v + sv/2)``, shared by
    the pixels ``(u, v)``, ``(u + su, v)``, ``(u, v + sv)`` and ``(u + su, v + sv)``. Its depth is the mean of
    those of them that are measured and within ``rel_tol`` of ``depth[v, u]`` (the same surface), so the pixels
    of a continuous surface agree on their shared corners and across a depth edge each side keeps its own.

    Args:
        depth: ``[h, w]`` float64 depth, 0 = no measurement.
    Returns:
        ``{(su, sv): [h, w] float64}``.
    """
    h, w = depth.shape
    padded = np.pad(depth, 1)
    out = {}
    for su in (-1, 1):
        for sv in (-1, 1):
            total, count = np.zeros_like(depth), np.zeros_like(depth)
            for du, dv in ((0, 0), (su, 0), (0, sv), (su, sv)):
                nb = padded[1 + dv : 1 + dv + h, 1 + du : 1 + du + w]
                same = (nb > 0) & (np.abs(nb - depth) <= rel_tol * depth)
                total += np.where(same, nb, 0.0)
                count += same
            out[(su, sv)] = np.where(count > 0, total / np.maximum(count, 1), depth)
    return out


def register_depth(
    depth_m: np.ndarray,
    K_depth: np.ndarray,
    K_color: np.ndarray,
    T_color_from_depth: np.ndarray,
    out_hw: tuple[int, int],
) -> np.ndarray:
    """Depth seen by the depth camera, re-rendered as z-depth of the colour camera.

    Each valid depth pixel ``(u, v)`` is the surface patch over its square ``[u - 0.5, u + 0.5] x
    [v - 0.5, v + 0.5]``, its corners at the depths :func:`corner_depths` interpolates over its surface. The
    corners are back-projected with ``K_depth``, moved by ``T_color_from_depth`` and projected with ``K_color``;
    every colour pixel whose centre ``(x, y)`` lies in the projected box (``x0 <= x < x1``, half-open so that
    neighbouring footprints tile) takes the colour-camera z of the sample's centre point. Where several samples
    cover a pixel the nearest wins (z-buffer). With identical cameras this is the identity; when the colour is
    sampled more finely it is nearest-neighbour upsampling without holes, also with parallax between the
    cameras (shared corners); when more coarsely, point sampling. What the depth camera does not see (outside
    its view, hidden behind a nearer surface from its viewpoint, unmeasured) stays 0.

    Args:
        depth_m: ``[h, w]`` float z-depth of the depth camera in metres, 0 (or non-finite) = no measurement.
        K_depth: ``[3, 3]`` depth intrinsics in pixels (pixel centres at integer coordinates).
        K_color: ``[3, 3]`` colour intrinsics at the output resolution.
        T_color_from_depth: ``[4, 4]`` rigid transform from depth-camera to colour-camera coordinates
            (OpenCV axes, metres).
        out_hw: ``(H, W)`` of the output.

    Returns:
        ``[H, W]`` float32 z-depth of the colour camera in metres, 0 where no depth sample lands.
    """
    H, W = (int(s) for s in out_hw)
    out = np.zeros((H, W), np.float32)
    depth = np.asarray(depth_m, dtype=np.float64)
    depth = np.where(np.isfinite(depth) & (depth > 0), depth, 0.0)
    v, u = np.nonzero(depth)
    if u.size == 0:
        return out
    K_inv = np.linalg.inv(np.asarray(K_depth, dtype=np.float64))
    K_c = np.asarray(K_color, dtype=np.float64)
    T = np.asarray(T_color_from_depth, dtype=np.float64)
    R, t = T[:3, :3], T[:3, 3]

    def to_color(du: float, dv: float, z: np.ndarray) -> np.ndarray:
        """``[3, n]`` colour-camera points of the depth pixels offset by ``(du, dv)``, at depths ``z``."""
        pix = np.stack([u + du, v + dv, np.ones(u.size)])
        return R @ ((K_inv @ pix) * z) + t[:, None]

    def project(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        q = K_c @ p
        with np.errstate(divide="ignore", invalid="ignore"):
            return q[0] / q[2], q[1] / q[2]

    z_c = to_color(0.0, 0.0, depth[v, u])[2]
    corners = [to_color(0.5 * su, 0.5 * sv, zc[v, u]) for (su, sv), zc in corner_depths(depth).items()]
    in_front = (z_c > 0) & np.all([c[2] > 0 for c in corners], axis=0)
    xs, ys = zip(*(project(c) for c in corners), strict=True)
    x0, x1 = np.ceil(np.min(xs, axis=0)), np.ceil(np.max(xs, axis=0))  # covered centres: x0 <= x < x1
    y0, y1 = np.ceil(np.min(ys, axis=0)), np.ceil(np.max(ys, axis=0))
    keep = in_front & np.isfinite(x0 + x1 + y0 + y1) & (x1 > 0) & (x0 < W) & (y1 > 0) & (y0 < H)
    if not np.any(keep):
        return out
    x0, x1, y0, y1, z_c = x0[keep], x1[keep], y0[keep], y1[keep], z_c[keep]
    nx = np.minimum(x1 - x0, MAX_FOOTPRINT_PX).astype(np.int64)
    ny = np.minimum(y1 - y0, MAX_FOOTPRINT_PX).astype(np.int64)
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    index, value = [], []
    for oy in range(int(ny.max())):
        for ox in range(int(nx.max())):
            x, y = x0 + ox, y0 + oy
            ok = (ox < nx) & (oy < ny) & (x >= 0) & (x < W) & (y >= 0) & (y < H)
            index.append(y[ok] * W + x[ok])
            value.append(z_c[ok])
    if not index:
        return out
    index_all, value_all = np.concatenate(index), np.concatenate(value)
    order = np.lexsort((value_all, index_all))  # by pixel, nearest first
    index_all, value_all = index_all[order], value_all[order]
    first = np.ones(index_all.size, bool)
    first[1:] = index_all[1:] != index_all[:-1]
    out.reshape(-1)[index_all[first]] = value_all[first]
    return out


def _numbered_files(folder: Path, extensions: tuple[str, ...]) -> dict[int, Path]:
    """``{frame number: file}`` of the files ``<number>.<ext>`` in ``folder``."""
    files: dict[int, Path] = {}
    for p in folder.iterdir():
        if p.suffix.lower().lstrip(".") in extensions and p.stem.isdigit():
            files.setdefault(int(p.stem), p)
    return files


def _intrinsics(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(path, "file not found (a ScanNet export has intrinsic/intrinsic_color.txt and "
                              "intrinsic_depth.txt: export them with SensReader's --export_intrinsics)")
    K = read_text_matrix(path, (4, 3))[:3, :3]
    if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise DataError(path, f"intrinsics are degenerate: {K.tolist()}")
    return K


def _extrinsic(path: Path) -> np.ndarray:
    if not path.is_file():
        return np.eye(4)
    E = read_text_matrix(path, (4,))
    if not np.all(np.isfinite(E)) or abs(np.linalg.det(E[:3, :3]) - 1.0) > 1e-3:
        raise DataError(path, "extrinsic must be a finite rigid 4x4 transform")
    return E


def _pose(path: Path, E_color: np.ndarray) -> np.ndarray:
    """Colour camera-to-world ``[4, 4]``, NaN when the file is missing or not finite (tracking lost)."""
    if not path.is_file():
        return UNKNOWN_POSE.copy()
    pose = read_text_matrix(path, (4,))
    return pose @ E_color if np.all(np.isfinite(pose)) else UNKNOWN_POSE.copy()


def _load_frame(
    color_path: Path,
    depth_path: Path,
    pose_path: Path,
    calib: dict[str, np.ndarray],
    units_per_metre: float,
) -> Frame:
    rgb = read_rgb(color_path)
    raw = read_uint16_image(depth_path)
    depth = raw.astype(np.float32) / np.float32(units_per_metre)
    registered = register_depth(depth, calib["K_depth"], calib["K_color"], calib["T_color_from_depth"],
                                rgb.shape[:2])
    return Frame(frame_id=color_path.stem, rgb=rgb, depth=registered, K=calib["K_color"],
                 c2w=_pose(pose_path, calib["E_color"]), source=str(depth_path))


def find_scenes(root: Path) -> list[Path]:
    """Scene folders: ``root`` itself when it has ``color/``, else its sub-folders that do (sorted)."""
    if not root.is_dir():
        raise DataError(root, "ScanNet folder not found")
    if (root / "color").is_dir():
        return [root]
    scenes = sorted(p for p in root.iterdir() if (p / "color").is_dir())
    if not scenes:
        raise DataError(root, "no color/ folder here or in any sub-folder (expected a ScanNet export: color/, "
                              "depth/, pose/, intrinsic/)")
    return scenes


def scannet_scene(
    folder: str | Path,
    intrinsics: tuple[float, float, float, float] | None = None,
    depth_scale: float | None = None,
) -> SceneSource:
    """One exported ScanNet scene as a :class:`SceneSource` (frames ordered by number).

    Args:
        folder: the scene folder (with ``color/``, ``depth/``, ``pose/``, ``intrinsic/``).
        intrinsics: ``(fx, fy, cx, cy)`` of the colour camera at its native resolution, overriding
            ``intrinsic_color.txt``.
        depth_scale: raw depth units per metre (default 1000, ScanNet's depth shift).
    """
    folder = Path(folder)
    units = depth_scale or SCANNET_DEPTH_SHIFT
    for sub in ("color", "depth"):
        if not (folder / sub).is_dir():
            raise DataError(folder / sub, "folder not found (expected a ScanNet export: color/, depth/, pose/, "
                                          "intrinsic/)")
    colors = _numbered_files(folder / "color", COLOR_EXTENSIONS)
    if not colors:
        raise DataError(folder / "color", "no numbered colour images (<i>.jpg or <i>.png)")
    depths = _numbered_files(folder / "depth", ("png",))
    numbers = sorted(colors)
    missing = [i for i in numbers if i not in depths]
    if missing:
        raise DataError(folder / "depth" / f"{missing[0]}.png",
                        f"depth image not found ({len(missing)} of {len(numbers)} colour frames have no depth)")
    intr = folder / "intrinsic"
    E_color, E_depth = _extrinsic(intr / "extrinsic_color.txt"), _extrinsic(intr / "extrinsic_depth.txt")
    calib = {
        "K_color": intrinsics_matrix(*intrinsics) if intrinsics else _intrinsics(intr / "intrinsic_color.txt"),
        "K_depth": _intrinsics(intr / "intrinsic_depth.txt"),
        "E_color": E_color,
        "T_color_from_depth": np.linalg.inv(E_color) @ E_depth,
    }
    return SceneSource(
        name=re.sub(r"[^A-Za-z0-9_.-]+", "_", folder.resolve().name) or "scannet",
        source="scannet",
        frame_ids=[colors[i].stem for i in numbers],
        load=lambda k: _load_frame(colors[numbers[k]], depths[numbers[k]],
                                   folder / "pose" / f"{colors[numbers[k]].stem}.txt", calib, units),
        depth_kind="sensor",
        attrs={"folder": str(folder), "depth_units_per_metre": units, "depth_registered_to": "color",
               "K_depth": calib["K_depth"].tolist(), "T_color_from_depth": calib["T_color_from_depth"].tolist()},
    )


def scannet_scenes(
    root: str | Path,
    intrinsics: tuple[float, float, float, float] | None = None,
    depth_scale: float | None = None,
) -> list[SceneSource]:
    """Every scene folder at or below ``root`` (see :func:`find_scenes`) as a :class:`SceneSource`."""
    return [scannet_scene(f, intrinsics=intrinsics, depth_scale=depth_scale) for f in find_scenes(Path(root))]
