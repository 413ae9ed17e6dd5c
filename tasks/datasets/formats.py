"""Image files and native depth encodings, with errors that name the file.

Decoders return float32 depth in metres with 0 where the sensor gave no measurement:

* ``uint16`` PNG scaled by a fixed factor: 7-Scenes / 3DMatch (millimetres, 1000 per metre),
  TUM RGB-D and ICL-NUIM (5000 per metre);
* NYU Depth V2 raw frames: 16-bit PGM whose samples are **little-endian** Kinect disparity
  (2047 = invalid), metres = 351.3 / (1092.5 - raw);
* SUN RGB-D: uint16 rotated right by 3 bits, then millimetres.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from tasks.errors import DataError

TUM_DEPTH_SCALE = 5000.0
SEVENSCENES_DEPTH_SCALE = 1000.0
NYU_RAW_INVALID = 2047


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file fully (so truncation is detected) into an array; DataError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(path, f"cannot decode image ({err}); the file is truncated or not an image") from None


def read_rgb(path: str | Path) -> np.ndarray:
    """Colour image as uint8 ``[H, W, 3]`` (grey is expanded, alpha dropped)."""
    a = read_image(path)
    if a.dtype != np.uint8:
        raise DataError(path, f"expected an 8-bit colour image, got {a.dtype}")
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise DataError(path, f"expected an RGB image, got array shape {a.shape}")
    return np.ascontiguousarray(a[..., :3])


def read_uint16_image(path: str | Path) -> np.ndarray:
    """A single-channel 16-bit image (a depth PNG or PGM) as uint16 ``[H, W]``."""
    a = read_image(path)
    if a.ndim != 2 or a.dtype not in (np.uint16, np.int32):
        raise DataError(path, f"expected a single-channel 16-bit depth image, got {a.dtype} {a.shape}")
    if a.dtype == np.int32 and (a.min() < 0 or a.max() > 65535):
        raise DataError(path, "depth values outside the 16-bit range")
    return a.astype(np.uint16)


def decode_scaled_depth(path: str | Path, units_per_metre: float) -> np.ndarray:
    """uint16 depth PNG -> float32 metres (``raw / units_per_metre``; 0 stays 0)."""
    return (read_uint16_image(path).astype(np.float32) / np.float32(units_per_metre)).astype(np.float32)


def decode_tum_depth(path: str | Path) -> np.ndarray:
    """TUM RGB-D / ICL-NUIM depth PNG (5000 units per metre) -> float32 metres."""
    return decode_scaled_depth(path, TUM_DEPTH_SCALE)


def decode_sun_depth(path: str | Path) -> np.ndarray:
    """SUN RGB-D depth PNG: each uint16 is rotated right by 3 bits, then millimetres -> float32 metres."""
    v = read_uint16_image(path).astype(np.uint32)
    mm = ((v >> 3) | (v << 13)) & 0xFFFF
    return (mm.astype(np.float32) / 1000.0).astype(np.float32)


def read_pgm16_le(path: str | Path) -> np.ndarray:
    """A binary 16-bit PGM (``P5``) whose samples are stored little-endian (as NYU's raw dumps are).

    The PGM standard says big-endian, so generic readers (PIL, OpenCV) byte-swap these files.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(path, f"cannot read file: {err.strerror or err}") from None
    tokens: list[bytes] = []
    pos = 0
    while len(tokens) < 4:
        while pos < len(data) and data[pos : pos + 1].isspace():
            pos += 1
        if data[pos : pos + 1] == b"#":  # comment line
            pos = data.find(b"\n", pos) + 1 or len(data)
            continue
        end = pos
        while end < len(data) and not data[end : end + 1].isspace():
            end += 1
        if end == pos:
            raise DataError(path, "truncated PGM header")
        tokens.append(data[pos:end])
        pos = end
    magic, w, h, maxval = tokens
    if magic != b"P5":
        raise DataError(path, f"not a binary PGM (magic {magic!r})")
    try:
        width, height, maxv = int(w), int(h), int(maxval)
    except ValueError:
        raise DataError(path, "malformed PGM header") from None
    if maxv < 256:
        raise DataError(path, f"expected a 16-bit PGM, maxval is {maxv}")
    pos += 1  # the single whitespace after maxval
    n = width * height * 2
    if len(data) - pos < n:
        raise DataError(path, f"truncated PGM: {len(data) - pos} bytes of pixel data, expected {n}")
    return np.frombuffer(data, dtype="<u2", count=width * height, offset=pos).reshape(height, width)


def nyu_disparity_to_metres(raw: np.ndarray) -> np.ndarray:
    """Kinect v1 raw disparity (NYU raw dumps) -> float32 metres; 2047 (and nonsense values) -> 0."""
    raw = raw.astype(np.float64)
    valid = (raw < NYU_RAW_INVALID) & (raw < 1092.5)
    with np.errstate(divide="ignore"):
        z = np.where(valid, 351.3 / (1092.5 - raw), 0.0)
    return z.astype(np.float32)


def decode_nyu_raw_depth(path: str | Path) -> np.ndarray:
    """NYU Depth V2 raw ``.pgm`` (little-endian disparity) -> float32 metres."""
    return nyu_disparity_to_metres(read_pgm16_le(path))


def read_text_numbers(path: Path) -> np.ndarray:
    """Every whitespace-separated number of a text file, flat (float64; ``-inf`` / ``nan`` allowed): matrices
    of 7-Scenes and ScanNet exports; a DataError names the file."""
    try:
        return np.array(path.read_text().split(), dtype=np.float64)
    except OSError as err:
        raise DataError(path, f"cannot read file: {err.strerror or err}") from None
    except ValueError:
        raise DataError(path, "expected whitespace-separated numbers") from None
