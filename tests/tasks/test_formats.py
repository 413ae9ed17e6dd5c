"""Native depth encodings, decoded from the real sample frames and from files written here."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tasks.datasets.formats import (
    decode_nyu_raw_depth,
    decode_sun_depth,
    decode_tum_depth,
    nyu_disparity_to_metres,
    read_pgm16_le,
    read_rgb,
)
from tasks.errors import DataError


def test_nyu_disparity_formula_and_invalid_marker():
    raw = np.array([[0, 500, 900, 2047]], dtype=np.uint16)
    z = nyu_disparity_to_metres(raw)
    np.testing.assert_allclose(z[0, :3], 351.3 / (1092.5 - raw[0, :3].astype(float)), rtol=1e-6)
    assert z[0, 3] == 0


def test_pgm_is_read_little_endian(tmp_path):
    values = np.array([[1, 2, 300], [2047, 65535, 0x0102]], dtype="<u2")
    p = tmp_path / "d.pgm"
    p.write_bytes(b"P5\n# comment\n3 2\n65535\n" + values.tobytes())
    np.testing.assert_array_equal(read_pgm16_le(p), values)
    p.write_bytes(b"P5\n3 2\n65535\n" + values.tobytes()[:-3])
    with pytest.raises(DataError, match="truncated PGM"):
        read_pgm16_le(p)
    p.write_bytes(b"P2\n3 2\n65535\n1 2 3 4 5 6")
    with pytest.raises(DataError, match="not a binary PGM"):
        read_pgm16_le(p)


def test_sun_bit_rotation_round_trip(tmp_path):
    mm = np.array([[0, 1000, 2500, 8191]], dtype=np.uint16)
    rotated = ((mm.astype(np.uint32) << 3) | (mm.astype(np.uint32) >> 13)).astype(np.uint16)  # rotate left 3
    p = tmp_path / "sun.png"
    Image.fromarray(rotated).save(p)
    np.testing.assert_allclose(decode_sun_depth(p), mm / 1000.0, rtol=1e-6)


def test_real_native_frames_decode_to_plausible_metres(rgbd_dir):
    f = rgbd_dir / "formats"
    for depth in (
        decode_nyu_raw_depth(f / "NYU_depth.pgm"),
        decode_tum_depth(f / "TUM_depth.png"),
        decode_sun_depth(f / "SUN_depth.png"),
    ):
        assert depth.shape == (480, 640) and depth.dtype == np.float32
        valid = depth[depth > 0]
        assert 0.5 < valid.size / depth.size <= 1.0
        assert 1.0 < float(np.median(valid)) < 5.0, "indoor scenes are metres away"
        assert float(valid.max()) < 12.0
    # Read big-endian (as PIL does), the NYU disparities would be nonsense: most pixels "invalid".
    be = np.asarray(Image.open(f / "NYU_depth.pgm")).astype(np.uint16)
    assert np.mean(nyu_disparity_to_metres(be) > 0) < 0.5
    assert read_rgb(f / "NYU_color.ppm").shape == (480, 640, 3)


def test_tum_pair_depth_scale(rgbd_dir):
    d = decode_tum_depth(rgbd_dir / "tum-pair" / "1_depth.png")
    raw = np.asarray(Image.open(rgbd_dir / "tum-pair" / "1_depth.png"))
    np.testing.assert_allclose(d, raw / 5000.0, rtol=1e-6)
    assert 0.3 < float(np.median(d[d > 0])) < 4.0


def test_truncated_and_missing_images_name_the_file(tmp_path, rgbd_dir):
    src = (rgbd_dir / "tum-pair" / "1.png").read_bytes()
    p = tmp_path / "cut.png"
    p.write_bytes(src[: len(src) // 2])
    with pytest.raises(DataError, match=r"cut\.png: cannot decode image"):
        read_rgb(p)
    with pytest.raises(DataError, match=r"nothere\.png: file not found"):
        read_rgb(tmp_path / "nothere.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(DataError, match=r"text\.png"):
        decode_tum_depth(tmp_path / "text.png")
    with pytest.raises(DataError, match="16-bit"):
        decode_tum_depth(rgbd_dir / "tum-pair" / "1.png")
