"""The zarr scene store: schema, round trip, atomic publication, schema checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from tasks.datasets.base import Frame
from tasks.errors import DataError
from tasks.store import (
    SCHEMA_VERSION,
    SceneView,
    SceneWriter,
    StoreBuilder,
    consolidate,
    iter_scenes,
    open_store,
    scenes_with_role,
)


def make_frame(i: int, h: int = 6, w: int = 8, sensor: bool = False) -> Frame:
    rng = np.random.default_rng(i)
    return Frame(
        frame_id=f"f{i}",
        rgb=rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
        depth=rng.uniform(0.5, 4, (h, w)).astype(np.float32),
        K=np.array([[10.0, 0, 4], [0, 10, 3], [0, 0, 1]]),
        c2w=np.eye(4) + i,
        depth_sensor=rng.uniform(0.5, 4, (h, w)).astype(np.float32) if sensor else None,
    )


def write_store(path, n=3, sensor=False, mesh=False):
    frames = [make_frame(i, sensor=sensor) for i in range(n)]
    with StoreBuilder(path, "scenes", attrs={"note": "test"}) as root:
        w = SceneWriter(root, "room", n_frames=n, height=6, width=8, source="unit", depth_kind="reference",
                        has_sensor_depth=sensor)
        for i, f in enumerate(frames):
            w.write(i, f)
        if mesh:
            w.set_mesh(np.zeros((3, 3)), np.array([[0, 1, 2]]))
        w.close(["train", "test", "train"][:n])
    return frames


def test_round_trip_schema_and_chunking(tmp_path):
    path = tmp_path / "s.zarr"
    frames = write_store(path, sensor=True, mesh=True)
    root = open_store(path, "scenes")
    assert root.attrs["schema"] == "dnerf.scenes" and root.attrs["schema_version"] == SCHEMA_VERSION
    assert root.attrs["note"] == "test"
    (view,) = list(iter_scenes(root))
    assert view.name == "room" and view.n_frames == 3 and view.shape == (6, 8)
    assert view.attrs["units"] == "m" and view.attrs["source"] == "unit"
    assert view.split == ["train", "test", "train"] and view.indices("test") == [1]
    assert view.frame_ids == ["f0", "f1", "f2"]
    g = view.group
    assert g["rgb"].dtype == np.uint8 and g["rgb"].shape == (3, 6, 8, 3) and g["rgb"].chunks == (1, 6, 8, 3)
    assert g["depth"].dtype == np.float32 and g["depth"].chunks == (1, 6, 8)
    assert g["depth"].compressors, "frames must be compressed"
    for i, f in enumerate(frames):
        got = view.frame(i)
        np.testing.assert_array_equal(got.rgb, f.rgb)
        np.testing.assert_array_equal(got.depth, f.depth)
        np.testing.assert_array_equal(got.depth_sensor, f.depth_sensor)
        np.testing.assert_array_equal(got.K, f.K)
        np.testing.assert_array_equal(got.c2w, f.c2w)
    v, faces = view.mesh()
    assert v.shape == (3, 3) and faces.dtype == np.int32
    # consolidated metadata: the root zarr.json lists every array
    meta = json.loads((path / "zarr.json").read_text())
    assert "room/depth" in meta["consolidated_metadata"]["metadata"]


def test_failure_inside_builder_leaves_no_store_and_keeps_old_one(tmp_path):
    path = tmp_path / "s.zarr"
    write_store(path, n=2)
    before = open_store(path, "scenes")["room"]["depth"][:]

    def fail_while_building():
        with StoreBuilder(path, "scenes") as root:
            SceneWriter(root, "other", n_frames=1, height=6, width=8, source="u", depth_kind="sensor",
                        has_sensor_depth=False)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_while_building()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"], "temporary store must be removed"
    np.testing.assert_array_equal(open_store(path, "scenes")["room"]["depth"][:], before)


def test_replacing_an_existing_store(tmp_path):
    path = tmp_path / "s.zarr"
    write_store(path, n=2)
    write_store(path, n=3)
    assert SceneView(open_store(path, "scenes")["room"]).n_frames == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


def test_unfinished_scene_is_an_error(tmp_path):
    def write_one_of_two():
        with StoreBuilder(tmp_path / "s.zarr", "scenes") as root:
            w = SceneWriter(root, "r", n_frames=2, height=6, width=8, source="u", depth_kind="sensor",
                            has_sensor_depth=False)
            w.write(0, make_frame(0))
            w.close(["train", "train"])

    with pytest.raises(RuntimeError, match="never written"):
        write_one_of_two()
    assert not (tmp_path / "s.zarr").exists()


def test_frame_size_mismatch_names_the_frame(tmp_path):
    def write_wrong_size():
        with StoreBuilder(tmp_path / "s.zarr", "scenes") as root:
            w = SceneWriter(root, "r", n_frames=1, height=5, width=8, source="u", depth_kind="sensor",
                            has_sensor_depth=False)
            w.write(0, make_frame(0))

    with pytest.raises(DataError, match="is 8x6 but scene"):
        write_wrong_size()


def test_open_checks_kind_version_and_existence(tmp_path):
    with pytest.raises(DataError, match="no such store"):
        open_store(tmp_path / "nope.zarr", "scenes")
    path = tmp_path / "s.zarr"
    write_store(path, n=1)
    with pytest.raises(DataError, match=r"expected a dnerf\.noisy store"):
        open_store(path, "noisy")
    assert open_store(path, None).attrs["schema"] == "dnerf.scenes"
    # a store from a future schema version is refused
    g = zarr.open_group(str(path), mode="r+")
    g.attrs["schema_version"] = SCHEMA_VERSION + 1
    zarr.consolidate_metadata(str(path))
    with pytest.raises(DataError, match="schema version"):
        open_store(path, "scenes")
    (tmp_path / "junk.zarr").mkdir()
    with pytest.raises(DataError, match="not a readable zarr"):
        open_store(tmp_path / "junk.zarr", "scenes")


def write_roles(path, roles: dict[str, str | None]):
    """A store with one 1-frame scene per entry; ``None`` writes the scene as older stores did (no role)."""
    with StoreBuilder(path, "scenes") as root:
        for name, role in roles.items():
            kw = {} if role is None else {"role": role}
            w = SceneWriter(root, name, n_frames=1, height=6, width=8, source="u", depth_kind="sensor",
                            has_sensor_depth=False, **kw)
            w.write(0, make_frame(0))
            w.close(["train"])
            if role is None:
                del w.group.attrs["role"]


def test_roles_written_read_back_and_selected(tmp_path):
    path = tmp_path / "s.zarr"
    write_roles(path, {"kitchen": "train", "office": "val", "lab": "eval", "old": None, "desk": "train"})
    root = open_store(path, "scenes")
    roles = {v.name: v.role for v in iter_scenes(root)}
    assert roles == {"kitchen": "train", "office": "val", "lab": "eval", "old": "eval", "desk": "train"}
    assert "role" not in root["old"].attrs  # an older store: no attr, read as eval
    assert root["kitchen"].attrs["role"] == "train"
    assert scenes_with_role(root, "train") == ["desk", "kitchen"]
    assert scenes_with_role(root, "eval") == ["lab", "old"]
    assert scenes_with_role(root, ("train", "val")) == ["desk", "kitchen", "office"]
    with pytest.raises(ValueError, match="unknown role"):
        scenes_with_role(root, "test")


def test_bad_roles_are_refused_on_write_and_named_on_read(tmp_path):
    with pytest.raises(ValueError, match="role must be one of"):
        write_roles(tmp_path / "a.zarr", {"room": "training"})
    assert not (tmp_path / "a.zarr").exists()
    path = tmp_path / "b.zarr"
    write_roles(path, {"room": "eval"})
    zarr.open_group(str(path), mode="r+", use_consolidated=False)["room"].attrs["role"] = "testing"  # by hand
    consolidate(path)
    view = SceneView(open_store(path, "scenes")["room"])
    with pytest.raises(DataError, match="'testing'"):
        _ = view.role
