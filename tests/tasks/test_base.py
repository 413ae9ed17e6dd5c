"""Generic frame transforms: selection, split, resizing with consistent intrinsics, validation."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.datasets.base import (
    Frame,
    SceneSource,
    check_frame,
    holdout_splits,
    resize_frame,
    scale_intrinsics,
    select_indices,
)
from tasks.errors import DataError


def frame(h=48, w=64, **kw) -> Frame:
    base = {
        "frame_id": "f",
        "rgb": np.zeros((h, w, 3), np.uint8),
        "depth": np.full((h, w), 2.0, np.float32),
        "K": np.array([[50.0, 0, 31.5], [0, 50, 23.5], [0, 0, 1]]),
        "c2w": np.eye(4),
        "source": "cam/f.png",
    }
    base.update(kw)
    return Frame(**base)


def test_select_and_holdout():
    assert select_indices(10, stride=3) == [0, 3, 6, 9]
    assert select_indices(10, stride=2, max_frames=2) == [0, 2]
    assert holdout_splits(6, 3) == ["train", "train", "test", "train", "train", "test"]
    assert holdout_splits(3, 0) == ["train"] * 3
    # nerfstudio's interval split of 50 frames: 0, 8, ..., 48 held out (43 train / 7 eval)
    interval = holdout_splits(50, 8, offset=0)
    assert [i for i, s in enumerate(interval) if s == "test"] == [0, 8, 16, 24, 32, 40, 48]
    src = SceneSource("s", "unit", ["a", "b", "c", "d"], load=lambda i: i, splits=["train", "test", "train", "test"])
    sub = src.select([3, 1])
    assert sub.frame_ids == ["d", "b"] and sub.load(0) == 3 and sub.splits == ["test", "test"]
    assert sub.map_frames(lambda x: x * 10).load(1) == 10


def test_scaled_intrinsics_project_the_same_ray_to_the_resized_pixel():
    """A 3D point seen at pixel u at full size is seen at (u + 0.5) * s - 0.5 after resizing by s."""
    K = np.array([[500.0, 0, 319.5], [0, 480, 239.5], [0, 0, 1]])
    X = np.array([0.3, -0.2, 2.0])
    uv = (K @ X)[:2] / X[2]
    K2 = scale_intrinsics(K, 0.25, 0.5)
    uv2 = (K2 @ X)[:2] / X[2]
    np.testing.assert_allclose(uv2, (uv + 0.5) * [0.25, 0.5] - 0.5)


def test_resize_keeps_depth_values_and_holes():
    d = np.full((48, 64), 3.0, np.float32)
    d[:, :32] = 1.0
    d[10:20, 40:50] = 0.0
    f = resize_frame(frame(depth=d), 24, 32)
    assert f.depth.shape == (24, 32) and f.rgb.shape == (24, 32, 3)
    assert set(np.unique(f.depth)) <= {0.0, 1.0, 3.0}, "nearest neighbour: no invented depths at edges"
    assert np.any(f.depth == 0)
    np.testing.assert_allclose(f.K[0, 0], 25.0)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"depth": np.full((40, 64), 2.0, np.float32)}, "RGB is 64x48 but depth is 64x40"),
        ({"depth": np.full((48, 64), np.nan, np.float32)}, "non-finite"),
        ({"depth": np.full((48, 64), -1.0, np.float32)}, "negative"),
        ({"depth": np.full((48, 64), 1500.0, np.float32)}, "looks like millimetres"),
        ({"K": np.zeros((3, 3))}, "intrinsics are degenerate"),
        ({"c2w": np.array([[1.0, 0, 0, np.inf]] + [[0, 1, 0, 0]] * 3)}, "partly non-finite"),
        ({"rgb": np.zeros((48, 64), np.uint8)}, "RGB must be uint8"),
    ],
)
def test_check_frame_names_frame_and_problem(kw, match):
    with pytest.raises(DataError, match=match) as err:
        check_frame(frame(**kw))
    assert str(err.value).startswith("cam/f.png: ")


def test_check_frame_accepts_valid_and_unknown_pose():
    check_frame(frame(c2w=np.full((4, 4), np.nan)))
