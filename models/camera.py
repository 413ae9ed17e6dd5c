"""Pinhole cameras: intrinsics, poses, pixel rays, back-projection and normals from depth.

Conventions: OpenCV camera axes (x right, y down, z forward); pixel ``(u, v)`` has its centre at integer
coordinates; ``c2w`` is a ``[4, 4]`` camera-to-world matrix; depth is z-depth (distance along the optical
axis), not distance along the ray. Functions accept NumPy arrays and return NumPy arrays (float64 unless
noted), so they serve the data readers and the noise model alike; the NeRF has its own torch versions.
"""

from __future__ import annotations

import numpy as np


def intrinsics_matrix(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """``[3, 3]`` pinhole matrix from focal lengths and principal point, in pixels."""
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=np.float64)


def intrinsics_from_fov(width: int, height: int, fov_x_deg: float) -> np.ndarray:
    """Square-pixel intrinsics with horizontal field of view ``fov_x_deg`` and a centred principal point."""
    f = 0.5 * width / np.tan(0.5 * np.deg2rad(fov_x_deg))
    return intrinsics_matrix(f, f, (width - 1) / 2.0, (height - 1) / 2.0)


def pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(u, v)``, each ``[H, W]`` float64."""
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    return u, v


def camera_rays(K: np.ndarray, height: int, width: int) -> np.ndarray:
    """Camera-frame ray directions ``[H, W, 3]`` scaled to unit z (so ``point = z_depth * ray``)."""
    u, v = pixel_grid(height, width)
    x = (u - K[0, 2]) / K[0, 0]
    y = (v - K[1, 2]) / K[1, 1]
    return np.stack([x, y, np.ones_like(x)], axis=-1)


def backproject(depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Camera-frame 3D points ``[H, W, 3]`` (metres) of a z-depth map ``[H, W]``."""
    return camera_rays(K, *depth.shape)[..., :] * depth[..., None]


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Camera-to-world ``[4, 4]`` (OpenCV axes) of a camera at ``eye`` looking at ``target``.

    ``up`` is the world's up direction; the camera's y axis (down in the image) points against it.
    """
    eye, target, up = (np.asarray(a, dtype=np.float64) for a in (eye, target, up))
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    n = np.linalg.norm(x)
    if n < 1e-9:
        raise ValueError("look_at: viewing direction is parallel to up")
    x /= n
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, eye
    return c2w


def quaternion_to_matrix(q_xyzw: np.ndarray) -> np.ndarray:
    """Rotation matrix ``[3, 3]`` of a quaternion given as ``(qx, qy, qz, qw)`` (normalised here)."""
    x, y, z, w = np.asarray(q_xyzw, dtype=np.float64) / np.linalg.norm(q_xyzw)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def pose_from_tum(t_xyz: np.ndarray, q_xyzw: np.ndarray) -> np.ndarray:
    """Camera-to-world ``[4, 4]`` from a TUM-style translation and ``(qx, qy, qz, qw)`` quaternion."""
    c2w = np.eye(4)
    c2w[:3, :3] = quaternion_to_matrix(q_xyzw)
    c2w[:3, 3] = t_xyz
    return c2w


def normals_from_depth(depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Unit surface normals ``[H, W, 3]`` (camera frame, facing the camera) from central differences.

    Pixels whose neighbours lack depth get a NaN normal.
    """
    p = backproject(depth, K)
    dpu = np.zeros_like(p)
    dpv = np.zeros_like(p)
    dpu[:, 1:-1] = p[:, 2:] - p[:, :-2]
    dpv[1:-1, :] = p[2:, :] - p[:-2, :]
    n = np.cross(dpv, dpu)
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    valid = depth > 0
    nb = valid.copy()
    nb[:, 1:-1] &= valid[:, 2:] & valid[:, :-2]
    nb[1:-1, :] &= valid[2:, :] & valid[:-2, :]
    nb[0, :] = nb[-1, :] = nb[:, 0] = nb[:, -1] = False
    with np.errstate(invalid="ignore", divide="ignore"):
        n = n / norm
    # Orient towards the camera: the normal must point against the viewing ray.
    flip = np.sum(n * p, axis=-1) > 0
    n[flip] *= -1
    n[~nb | (norm[..., 0] == 0)] = np.nan
    return n


def incidence_angle(depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Angle ``[H, W]`` (radians) between each pixel's viewing ray and the surface normal; NaN where unknown."""
    n = normals_from_depth(depth, K)
    rays = camera_rays(K, *depth.shape)
    rays /= np.linalg.norm(rays, axis=-1, keepdims=True)
    cos = np.clip(-np.sum(n * rays, axis=-1), -1.0, 1.0)
    return np.arccos(cos)
