"""The corrupt stage: noisy store layout, determinism, per-frame seeding, sensor pass-through."""

from __future__ import annotations

import numpy as np
import zarr

from tasks.config import load_params
from tasks.corrupt import noisy_frame, run_corrupt
from tasks.datasets.base import Frame
from tasks.download import run_download
from tasks.store import SceneView, SceneWriter, StoreBuilder, iter_scenes, open_store

ALL_EFFECTS = ["axial", "quantization", "lateral", "flying_pixels", "shadow", "grazing", "dark", "dropout", "range"]


def test_simulated_noise_store(tiny_params, tiny_overrides):
    run_download(tiny_params, progress=False)
    out = run_corrupt(tiny_params, progress=False)
    noisy = open_store(out, "noisy")
    assert noisy.attrs["mode"] == "simulate" and noisy.attrs["seed"] == 0
    assert noisy.attrs["noise"]["axial"]["enabled"] is True
    scenes = open_store(tiny_params.paths.scenes, "scenes")
    for view in iter_scenes(scenes):
        dn = noisy[view.name]["depth_noisy"]
        assert dn.shape == (view.n_frames, *view.shape) and dn.chunks == (1, *view.shape)
        assert noisy[view.name].attrs["frame_ids"] == view.frame_ids
        clean = view.group["depth"][:]
        d = dn[:]
        valid = d > 0
        assert 0.5 < valid.mean() < 1.0, "some holes, mostly measured"
        assert np.any(d[valid] != clean[valid]), "noise was applied"
        rel = np.median(np.abs(d[valid] - clean[valid]) / clean[valid])
        assert rel < 0.05, "noise is centimetre scale, not a different scene"

    # same seed -> identical; another seed -> different
    first = noisy["synthetic_000"]["depth_noisy"][:]
    run_corrupt(tiny_params, progress=False)
    np.testing.assert_array_equal(open_store(out, "noisy")["synthetic_000"]["depth_noisy"][:], first)
    other = load_params(None, tiny_overrides + ["noise.seed=1"])
    run_corrupt(other, progress=False)
    assert not np.array_equal(open_store(out, "noisy")["synthetic_000"]["depth_noisy"][:], first)


def test_frames_are_seeded_independently_of_order(tiny_params):
    run_download(tiny_params, progress=False)
    view = SceneView(open_store(tiny_params.paths.scenes, "scenes")["synthetic_000"])
    forward = [noisy_frame(view, i, tiny_params.noise) for i in range(view.n_frames)]
    backward = [noisy_frame(view, i, tiny_params.noise) for i in reversed(range(view.n_frames))][::-1]
    for a, b in zip(forward, backward, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(forward[0], forward[2])


def test_all_effects_off_is_identity(tiny_params, tiny_overrides):
    run_download(tiny_params, progress=False)
    params = load_params(None, tiny_overrides + [f"noise.{e}.enabled=false" for e in ALL_EFFECTS])
    noisy = open_store(run_corrupt(params, progress=False), "noisy")
    clean = open_store(params.paths.scenes, "scenes")["synthetic_001"]["depth"][:]
    np.testing.assert_array_equal(noisy["synthetic_001"]["depth_noisy"][:], clean)


def test_sensor_mode_passes_measured_depth_through(tmp_path):
    rng = np.random.default_rng(0)
    ref = rng.uniform(1, 3, (2, 6, 8)).astype(np.float32)
    raw = np.where(rng.random((2, 6, 8)) < 0.3, 0, ref + 0.01).astype(np.float32)
    with StoreBuilder(tmp_path / "scenes.zarr", "scenes") as root:
        w = SceneWriter(root, "nyu", n_frames=2, height=6, width=8, source="nyu_labeled", depth_kind="reference",
                        has_sensor_depth=True)
        for i in range(2):
            w.write(i, Frame(f"{i}", np.zeros((6, 8, 3), np.uint8), ref[i], np.eye(3), np.full((4, 4), np.nan),
                             depth_sensor=raw[i]))
        w.close(["train", "test"])
    params = load_params(
        None, [f"paths.scenes={tmp_path / 'scenes.zarr'}", f"paths.noisy={tmp_path / 'noisy.zarr'}",
               "noise.mode=sensor"]
    )
    noisy = open_store(run_corrupt(params, progress=False), "noisy")
    np.testing.assert_array_equal(noisy["nyu"]["depth_noisy"][:], raw)
    assert noisy.attrs["model"] == "passthrough"
    assert isinstance(noisy, zarr.Group)
    assert SceneView(open_store(params.paths.scenes, "scenes")["nyu"]).has_sensor_depth
