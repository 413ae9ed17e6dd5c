"""tasks.datasets.nyu on small files written with the labeled file's exact layout (the ``nyu`` fixture)."""

from __future__ import annotations

import hashlib
import pickle

import h5py
import numpy as np
import pydantic
import pytest
import scipy.io

from tasks.datasets.base import check_frame, scale_intrinsics
from tasks.datasets.nyu import NYU_INTRINSICS, NyuConfig, nyu_scenes
from tasks.errors import DataError
from tasks.fetch import fetch

W, H = 64, 48
GROUPED = NyuConfig()
FLAT = NyuConfig(group_by_scene=False)


@pytest.fixture
def files(nyu, tmp_path):
    return nyu.write_mat(tmp_path / "nyu.mat"), nyu.write_splits(tmp_path / "splits.mat")


def expected_K() -> np.ndarray:
    fx, fy, cx, cy = NYU_INTRINSICS
    K640 = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=np.float64)
    return scale_intrinsics(K640, W / 640, H / 480)


def test_written_file_has_matlab_layout(files):
    mat, _ = files
    assert mat.read_bytes()[:19] == b"MATLAB 7.3 MAT-file"
    with pytest.raises(NotImplementedError):  # scipy recognises it as v7.3
        scipy.io.loadmat(mat)
    with h5py.File(mat, "r") as f:
        assert f.userblock_size == 512
        assert f["images"].shape == (5, 3, W, H) and f["depths"].shape == (5, W, H)
        assert f[f["scenes"][0, 0]].shape == (len("kitchen_0028a"), 1)


def test_frames_transposed_grouped_and_split(nyu, files):
    mat, splits = files
    scenes = nyu_scenes(mat, splits, GROUPED)
    assert [s.name for s in scenes] == ["kitchen_0028a", "bedroom_0001", "office_0003"]
    kitchen, bedroom, office = scenes
    assert kitchen.frame_ids == ["00000", "00001", "00003"]
    assert bedroom.frame_ids == ["00002"] and office.frame_ids == ["00004"]
    # official split: train 1, 3, 5 / test 2, 4 (1-based) -> frames 0, 2, 4 train; 1, 3 test
    assert kitchen.splits == ["train", "test", "test"]
    assert bedroom.splits == ["train"] and office.splits == ["train"]
    assert kitchen.attrs["nyu_scene"] == "kitchen_0028a" and kitchen.attrs["scene_type"] == "kitchen"
    assert office.attrs["scene_type"] == "office"
    assert "64x48" in kitchen.attrs["intrinsics_note"]
    for s in scenes:
        assert s.source == "nyu_labeled" and s.depth_kind == "reference" and s.has_sensor_depth
    for s in scenes:
        for j, fid in enumerate(s.frame_ids):
            i = int(fid)
            fr = check_frame(s.load(j))
            assert fr.frame_id == fid
            assert fr.rgb.shape == (H, W, 3) and fr.rgb.dtype == np.uint8
            np.testing.assert_array_equal(fr.rgb, nyu.rgb(i, W, H))
            assert fr.rgb[5, 7].tolist() == [7, 5, i]  # rgb[v, u] = (u, v, frame)
            assert fr.depth.dtype == np.float32 and fr.depth_sensor.dtype == np.float32
            np.testing.assert_array_equal(fr.depth, nyu.depth(i, W, H))
            np.testing.assert_array_equal(fr.depth_sensor, nyu.raw_depth(i, W, H))
            assert fr.depth_sensor[0, 0] == 0  # a hole stays 0
            np.testing.assert_allclose(fr.K, expected_K())
            assert fr.c2w.shape == (4, 4) and np.all(np.isnan(fr.c2w))


def test_single_scene_without_splits(nyu, files):
    mat, _ = files
    (scene,) = nyu_scenes(mat, None, FLAT)
    assert scene.name == "nyu_labeled"
    assert scene.frame_ids == [f"{i:05d}" for i in range(5)]
    assert scene.splits is None
    assert scene.attrs["nyu_scenes"] == list(nyu.scenes)
    assert scene.attrs["scene_types"] == list(nyu.types)
    np.testing.assert_array_equal(scene.load(3).rgb, nyu.rgb(3, W, H))


def test_full_size_frames_keep_intrinsics(nyu, tmp_path):
    mat = nyu.write_mat(tmp_path / "big.mat", width=640, height=480, scenes=["a_1"], scene_types=["a"])
    (scene,) = nyu_scenes(mat, None, GROUPED)
    fr = scene.load(0)
    assert fr.rgb.shape == (480, 640, 3)
    fx, fy, cx, cy = NYU_INTRINSICS
    np.testing.assert_array_equal(fr.K, [[fx, 0, cx], [0, fy, cy], [0, 0, 1]])
    assert "intrinsics_note" not in scene.attrs


def test_sources_survive_return_and_select(nyu, files):
    mat, splits = files
    kitchen = nyu_scenes(mat, splits, GROUPED)[0]
    sub = kitchen.select([2, 0])
    assert sub.frame_ids == ["00003", "00000"] and sub.splits == ["test", "train"]
    np.testing.assert_array_equal(sub.load(0).depth, nyu.depth(3, W, H))
    frame = pickle.loads(pickle.dumps(kitchen.load(1)))
    np.testing.assert_array_equal(frame.rgb, nyu.rgb(1, W, H))


def test_scene_types_optional(nyu, tmp_path):
    mat = nyu.write_mat(tmp_path / "nyu.mat", drop=("sceneTypes",))
    scenes = nyu_scenes(mat, None, GROUPED)
    assert "scene_type" not in scenes[0].attrs
    assert "scene_types" not in nyu_scenes(mat, None, FLAT)[0].attrs


# --- bad input ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["images", "depths", "rawDepths", "scenes"])
def test_missing_dataset(nyu, tmp_path, key):
    mat = nyu.write_mat(tmp_path / "nyu.mat", drop=(key,))
    with pytest.raises(DataError, match=f"nyu.mat: missing dataset '{key}'"):
        nyu_scenes(mat, None, GROUPED)


def test_not_hdf5(tmp_path):
    bad = tmp_path / "nyu.mat"
    bad.write_bytes(b"<html>503 Service Unavailable</html>")
    with pytest.raises(DataError, match=r"nyu\.mat: not an HDF5"):
        nyu_scenes(bad, None, GROUPED)


def test_old_format_mat_instead_of_labeled(nyu, tmp_path):
    splits = nyu.write_splits(tmp_path / "splits.mat")
    with pytest.raises(DataError, match=r"splits\.mat: an old-format"):
        nyu_scenes(splits, None, GROUPED)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        nyu_scenes(tmp_path / "nyu.mat", None, GROUPED)


def test_inconsistent_frame_counts(nyu, tmp_path):
    short = np.stack([nyu.depth(i, W, H).T for i in range(4)])
    mat = nyu.write_mat(tmp_path / "nyu.mat", replace={"rawDepths": short})
    with pytest.raises(DataError, match="inconsistent frame counts: dataset 'rawDepths' has 4 frames"):
        nyu_scenes(mat, None, GROUPED)


def test_scene_count_mismatch(nyu, tmp_path):
    mat = nyu.write_mat(tmp_path / "nyu.mat")
    with h5py.File(mat, "r+") as f:
        refs = f["scenes"][()]
        del f["scenes"]
        f.create_dataset("scenes", data=refs[:, :3], dtype=h5py.ref_dtype)
    with pytest.raises(DataError, match=r"nyu\.mat: inconsistent frame counts: dataset 'scenes'"):
        nyu_scenes(mat, None, GROUPED)


@pytest.mark.parametrize(
    ("key", "array", "message"),
    [
        ("images", np.zeros((5, 4, W, H), np.uint8), "dataset 'images' must be uint8"),
        ("images", np.zeros((5, 3, W, H), np.float32), "dataset 'images' must be uint8"),
        ("depths", np.zeros((5, H, W), np.float32), "dataset 'depths' has frames of shape"),
        ("rawDepths", np.zeros((5, W, H), np.uint16), "dataset 'rawDepths' must be float"),
        ("scenes", np.zeros((1, 5)), "dataset 'scenes' must be a MATLAB cell array"),
    ],
)
def test_wrong_shapes_and_types(nyu, tmp_path, key, array, message):
    mat = nyu.write_mat(tmp_path / "nyu.mat", replace={key: array})
    with pytest.raises(DataError, match=message) as exc:
        nyu_scenes(mat, None, GROUPED)
    assert "nyu.mat" in str(exc.value)


def test_bad_scene_name(nyu, tmp_path):
    mat = nyu.write_mat(tmp_path / "nyu.mat", scenes=["a/b"] + list(nyu.scenes[1:]))
    with pytest.raises(DataError, match="'scenes' entry 0 is 'a/b'"):
        nyu_scenes(mat, None, GROUPED)


@pytest.mark.parametrize(
    ("train", "test", "message"),
    [
        ([0, 1, 3, 5], [2, 4], "'trainNdxs' has indices out of range 1..5"),
        ([1, 3, 5], [2, 6], "'testNdxs' has indices out of range 1..5"),
        ([1, 3, 5], [2, 3, 4], "in both 'trainNdxs' and 'testNdxs'"),
        ([1, 3], [2, 4], "neither 'trainNdxs' nor 'testNdxs'"),
        ([1, 3, 3, 5], [2, 4], "'trainNdxs' lists some frames more than once"),
        ([1.5, 3, 5], [2, 4], "'trainNdxs' must hold whole numbers"),
    ],
)
def test_bad_splits(nyu, tmp_path, train, test, message):
    mat = nyu.write_mat(tmp_path / "nyu.mat")
    splits = nyu.write_splits(tmp_path / "splits.mat", train=train, test=test)
    with pytest.raises(DataError, match=message) as exc:
        nyu_scenes(mat, splits, GROUPED)
    assert "splits.mat" in str(exc.value)


def test_splits_missing_key_or_not_mat(nyu, tmp_path):
    mat = nyu.write_mat(tmp_path / "nyu.mat")
    scipy.io.savemat(tmp_path / "splits.mat", {"trainNdxs": np.array([[1], [2], [3], [4], [5]])})
    with pytest.raises(DataError, match=r"splits\.mat: missing variable 'testNdxs'"):
        nyu_scenes(mat, tmp_path / "splits.mat", GROUPED)
    (tmp_path / "junk.mat").write_bytes(b"hello, not a mat file at all" * 10)
    with pytest.raises(DataError, match=r"junk\.mat: not a MATLAB \.mat file"):
        nyu_scenes(mat, tmp_path / "junk.mat", GROUPED)


def test_splits_in_v73_format(nyu, tmp_path):
    mat = nyu.write_mat(tmp_path / "nyu.mat")
    splits = tmp_path / "splits73.mat"
    with h5py.File(splits, "w", userblock_size=512) as f:
        f["trainNdxs"] = np.array([[1.0, 3.0, 5.0]])  # MATLAB column vector, axes reversed
        f["testNdxs"] = np.array([[2.0, 4.0]])
    (scene,) = nyu_scenes(mat, splits, FLAT)
    assert scene.splits == ["train", "test", "train", "test", "train"]


def test_config_is_strict():
    with pytest.raises(pydantic.ValidationError, match="group_by_scen"):
        NyuConfig(group_by_scen=False)
    with pytest.raises(pydantic.ValidationError, match="sha256"):
        NyuConfig(sha256="abc")
    assert NyuConfig().sha256 is None and NyuConfig().size is None
    assert NyuConfig(sha256="A" * 64).sha256 == "a" * 64


# --- end to end -----------------------------------------------------------------------------------------


def test_fetch_then_read(nyu, http_server, tmp_path):
    (tmp_path / "src").mkdir()
    src = nyu.write_mat(tmp_path / "src" / "nyu.mat")
    sp = nyu.write_splits(tmp_path / "src" / "splits.mat")
    http_server.files["nyu/nyu_depth_v2_labeled.mat"] = src.read_bytes()
    http_server.files["nyu/splits.mat"] = sp.read_bytes()
    cfg = NyuConfig(url=http_server.url("nyu/nyu_depth_v2_labeled.mat"),
                    sha256=hashlib.sha256(src.read_bytes()).hexdigest(), size=src.stat().st_size,
                    splits_url=http_server.url("nyu/splits.mat"))
    data = tmp_path / "data"
    mat = fetch(cfg.url, data / "nyu_depth_v2_labeled.mat", sha256=cfg.sha256, size=cfg.size, progress=False)
    splits = fetch(cfg.splits_url, data / "splits.mat", progress=False)
    scenes = nyu_scenes(mat, splits, cfg)
    assert [s.name for s in scenes] == ["kitchen_0028a", "bedroom_0001", "office_0003"]
    assert sum(len(s) for s in scenes) == 5
    np.testing.assert_array_equal(scenes[0].load(2).rgb, nyu.rgb(3, W, H))
    assert scenes[0].splits == ["train", "test", "test"]
