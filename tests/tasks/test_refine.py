"""The refine stage: diffusion and classical refiners into a resumable store; tiling; bad input."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import zarr

from models.diffusion.calibration import Calibration
from models.diffusion.pipeline import DiffusionConfig, Observation, observe
from models.diffusion.refiner import DiffusionRefiner, Draw, blend_window, tile_starts, tiled
from models.diffusion.unet import DepthUNet
from models.noise import SensorPrior
from tasks.config import RefinerUNetConfig, load_params
from tasks.corrupt import run_corrupt
from tasks.download import run_download
from tasks.errors import DataError
from tasks.refine import run_refine
from tasks.refiner_files import save_model
from tasks.store import open_store

TINY_UNET = RefinerUNetConfig(base_channels=8, channel_mults=(1, 2), attention_heads=2)


@pytest.fixture
def setup(make_stores, tmp_path):
    """Stores plus a tiny (randomly initialised, non-zero) model on disk."""
    overrides = make_stores([f"paths.diffusion={tmp_path / 'model'}", f"paths.refined={tmp_path / 'refined.zarr'}"])
    torch.manual_seed(0)
    model = DepthUNet(TINY_UNET)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_model(tmp_path / "model", model, TINY_UNET, DiffusionConfig(), SensorPrior(), Calibration(), {})
    return overrides


def chunk_mtimes(path):
    return {p: p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file() and "/c/" in str(p)}


def test_diffusion_refine_resumes_without_touching_finished_frames(setup, tmp_path, monkeypatch):
    """Killed after the first block of three frames (blocks of 3 here: 4 frames make a full and a partial one), the
    stage resumes with frame 3 and never rewrites a committed frame; the result equals an uninterrupted run's."""
    import tasks.refine

    monkeypatch.setattr(tasks.refine, "FRAMES_PER_COMMIT", 3)
    params = load_params(None, setup)
    seen = []

    def crash_after_three(scene, i):
        seen.append((scene, i))
        if len(seen) == 3:
            raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        run_refine(params, progress=False, on_frame=crash_after_three)
    partial = open_store(tmp_path / "refined.zarr", "refined")
    assert partial.attrs["complete"] is False
    assert partial["synthetic_000"]["done"][:].tolist() == [True, True, True, False]
    before = chunk_mtimes(tmp_path / "refined.zarr" / "synthetic_000" / "depth_refined")
    assert len(before) == 3, "one chunk file per finished frame"
    first3 = partial["synthetic_000"]["depth_refined"][:3]

    redone = []
    run_refine(params, progress=False, on_frame=lambda s, i: redone.append((s, i)))
    assert redone == [("synthetic_000", 3), ("synthetic_001", 0), ("synthetic_001", 1), ("synthetic_001", 2),
                      ("synthetic_001", 3)]
    out = open_store(tmp_path / "refined.zarr", "refined")
    assert out.attrs["complete"] is True and out.attrs["method"] == "diffusion"
    after = chunk_mtimes(tmp_path / "refined.zarr" / "synthetic_000" / "depth_refined")
    assert all(after[p] == t for p, t in before.items()), "finished frames were rewritten"
    np.testing.assert_array_equal(out["synthetic_000"]["depth_refined"][:3], first3)

    # the same as an uninterrupted run
    fresh = load_params(None, setup + [f"paths.refined={tmp_path / 'fresh.zarr'}"])
    run_refine(fresh, progress=False)
    ref = open_store(tmp_path / "fresh.zarr", "refined")
    for name in ("synthetic_000", "synthetic_001"):
        np.testing.assert_array_equal(ref[name]["depth_refined"][:], out[name]["depth_refined"][:])
        np.testing.assert_array_equal(ref[name]["depth_std"][:], out[name]["depth_std"][:])
    d, std = ref["synthetic_001"]["depth_refined"][:], ref["synthetic_001"]["depth_std"][:]
    assert d.shape == (4, 24, 32) and np.all(np.isfinite(d)) and np.all(d > 0)
    assert np.all(std >= 0) and np.any(std > 0), "two samples with different noise spread"

    # another model (a different fingerprint) starts afresh rather than mixing results
    run_refine(load_params(None, setup + ["refine.steps=3"]), progress=False)
    assert open_store(tmp_path / "refined.zarr", "refined")["synthetic_000"]["done"][:].all()
    assert not np.array_equal(open_store(tmp_path / "refined.zarr", "refined")["synthetic_000"]["depth_refined"][:3],
                              first3)


def test_trusted_measurements_move_less_than_the_bound_and_std_is_calibrated(setup, tmp_path):
    """Whatever the (here random) network outputs, a trusted measurement moves by less than measured_bound
    expected sigmas; holes and edges are free. depth_std follows the model's calibration."""
    folder = tmp_path / "model"
    cal = Calibration(spread_trusted=0.0, sigma_trusted=2.0, spread_free=0.0, sigma_free=3.0)
    model = DepthUNet(TINY_UNET)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))  # large, arbitrary outputs
    schedule = DiffusionConfig(measured_bound=2.0)
    save_model(folder, model, TINY_UNET, schedule, SensorPrior(), cal, {})
    params = load_params(None, setup)
    out = open_store(run_refine(params, progress=False), "refined")
    noisy_store, scenes = open_store(params.paths.noisy, "noisy"), open_store(params.paths.scenes, "scenes")
    assert sorted(out.group_keys()) == ["synthetic_000", "synthetic_001"], "only eval scenes are refined"
    moved_free = 0.0
    for name in ("synthetic_000", "synthetic_001"):
        for i in range(4):
            noisy = noisy_store[name]["depth_noisy"][i]
            obs = observe(noisy, float(scenes[name]["K"][i][0, 0]), SensorPrior(), schedule)
            d, std = out[name]["depth_refined"][i], out[name]["depth_std"][i]
            t = obs.trusted
            assert t.any()
            # the bound is on log-depth, in units of the relative sigma at the base depth b:
            # |log(d / z)| <= 2 sigma(b) / b, i.e. |d - z| <= z (exp(2 sigma(b) / b) - 1)
            limit = noisy[t] * np.expm1(2.0 * obs.sigma[t] / obs.base[t]) * (1 + 1e-5)
            assert np.all(np.abs(d[t] - noisy[t]) <= limit)
            moved_free = max(moved_free, float(np.max(np.abs(d[~t] - noisy[~t]) / obs.sigma[~t])))
            np.testing.assert_allclose(std, np.where(t, 2.0, 3.0) * obs.sigma, rtol=1e-6)
    assert moved_free > 2.0, "untrusted pixels are not bounded"


def test_the_models_edge_bound_keeps_measured_edge_pixels_near_the_base_and_holes_free(setup, tmp_path):
    """A model whose validation fit chose an edge bound of 1 sigma: measured pixels that are not trusted end
    within 1 expected sigma of the base (hole fill + median) whatever the network says; holes stay free."""
    folder = tmp_path / "model"
    model = DepthUNet(TINY_UNET)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))  # large, arbitrary outputs
    schedule = DiffusionConfig()
    save_model(folder, model, TINY_UNET, schedule, SensorPrior(), Calibration(untrusted_bound=1.0), {})
    params = load_params(None, setup)
    out = open_store(run_refine(params, progress=False), "refined")
    noisy_store, scenes = open_store(params.paths.noisy, "noisy"), open_store(params.paths.scenes, "scenes")
    moved_holes = 0.0
    for i in range(4):
        noisy = noisy_store["synthetic_000"]["depth_noisy"][i]
        obs = observe(noisy, float(scenes["synthetic_000"]["K"][i][0, 0]), SensorPrior(), schedule)
        d = out["synthetic_000"]["depth_refined"][i]
        edges, holes = (noisy > 0) & ~obs.trusted, noisy <= 0
        assert edges.any() and holes.any()
        assert np.all(np.abs(d[edges] - obs.base[edges]) <= obs.sigma[edges] * (1 + 1e-4))
        moved_holes = max(moved_holes, float(np.max(np.abs(d[holes] - obs.base[holes]) / obs.sigma[holes])))
    assert moved_holes > 1.0, "holes are bounded too"

    # The same weights with the bound off (a model's config.json alone changed) is another refiner: the finished
    # store is redone, not kept as if it were this model's output.
    bounded = out["synthetic_000"]["depth_refined"][:]
    save_model(folder, model, TINY_UNET, schedule, SensorPrior(), Calibration(), {})
    free = open_store(run_refine(params, progress=False), "refined")["synthetic_000"]["depth_refined"][:]
    assert not np.array_equal(free, bounded)


def test_spread_is_the_raw_samples_distance_from_the_reported_depth():
    """Free pixels: the samples' standard deviation. Pixels the bound holds at the first guess: how far the
    raw samples lie from it, so an edge the network disagrees with is not reported as certain."""
    rng = np.random.default_rng(0)
    base = rng.uniform(1.0, 3.0, (8, 9)).astype(np.float32)
    sigma = np.full_like(base, 0.01)
    edges = rng.random((8, 9)) < 0.5
    samples = (base + 0.05 + rng.normal(0.0, 0.02, (2, 8, 9))).astype(np.float32)
    obs = Observation(base=base, sigma=sigma, trusted=np.zeros_like(edges))
    draw = Draw(samples=samples, observation=obs, edges=edges)
    model = DepthUNet(TINY_UNET)
    for bound in (None, 0.0):
        refiner = DiffusionRefiner(model, DiffusionConfig(), SensorPrior(), Calibration(untrusted_bound=bound))
        out = refiner.summarise(draw)
        held = edges if bound == 0.0 else np.zeros_like(edges)
        np.testing.assert_allclose(out.depth, np.where(held, base, samples.mean(0)), rtol=1e-6)
        rms_from_base = np.sqrt(((samples - base) ** 2).mean(0))
        np.testing.assert_allclose(out.spread, np.where(held, rms_from_base, samples.std(0)), rtol=1e-5)
    # the samples sit ~5 cm off the first guess the bound keeps, ~1.5 cm from each other
    assert out.spread[edges].mean() > 2 * samples.std(0)[edges].mean()


@pytest.mark.parametrize("method", ["inpaint", "median", "bilateral", "joint_bilateral", "guided"])
def test_classical_baselines_fill_holes(setup, tmp_path, method):
    params = load_params(None, setup + [f"refine.method={method}"])
    out = open_store(run_refine(params, progress=False), "refined")
    noisy = open_store(params.paths.noisy, "noisy")["synthetic_000"]["depth_noisy"][:]
    d = out["synthetic_000"]["depth_refined"][:]
    assert np.any(noisy == 0) and np.all(d > 0), "holes are filled"
    assert np.all(out["synthetic_000"]["depth_std"][:] == 0)
    assert out.attrs["method"] == method


def test_bad_input_names_the_frame(setup, tmp_path):
    params = load_params(None, setup)
    noisy = zarr.open_group(str(params.paths.noisy), mode="r+")
    noisy["synthetic_001"]["depth_noisy"][2] = 0.0
    with pytest.raises(DataError, match=r"synthetic_001\[2\]: depth is all zero"):
        run_refine(params, progress=False)
    out = open_store(tmp_path / "refined.zarr", "refined")
    assert out["synthetic_000"]["done"][:].all(), "frames finished before the bad one are kept"


def test_a_frame_at_a_scale_the_model_never_saw_is_refused(setup, tmp_path):
    model = DepthUNet(TINY_UNET)
    save_model(tmp_path / "model", model, TINY_UNET, DiffusionConfig(), SensorPrior(), Calibration(),
               {"trained_focal_px": [500.0, 600.0]})  # trained at 640x480 only; these frames are 32x24
    with pytest.raises(DataError, match=r"noisy.zarr/synthetic_000\[0\]: focal length \d+ px is outside what the "
                       r"refiner can serve \(250-1200 px"):
        run_refine(load_params(None, setup), progress=False)


def test_missing_model_is_a_clear_error(tiny_overrides, tmp_path):
    params = load_params(None, tiny_overrides + [f"paths.diffusion={tmp_path / 'none'}"])
    run_download(params, progress=False)
    run_corrupt(params, progress=False)
    with pytest.raises(DataError, match=r"config.json: missing; train the model first"):
        run_refine(params, progress=False)


def test_tiles_cover_the_frame_and_blend_exactly():
    for size, tile, overlap in [(100, 32, 8), (33, 32, 8), (256, 64, 16), (20, 32, 8)]:
        starts = tile_starts(size, tile, overlap)
        covered = np.zeros(size, bool)
        for s in starts:
            covered[s : s + tile] = True
        assert covered.all() and starts[-1] + min(tile, size) == size
        assert all(b - a <= tile - overlap for a, b in itertools.pairwise(starts))
    w = blend_window(16, 16, 4)
    assert w.min() > 0 and w[8, 8] == 1

    # a per-pixel model gives the same result tiled and untiled
    def pointwise(x, t, cond):
        return torch.sin(x) * cond[:, :1] + t.float().reshape(-1, 1, 1, 1) * 1e-3

    x, cond, t = torch.randn(2, 1, 70, 90), torch.randn(2, 6, 70, 90), torch.tensor([5, 9])
    torch.testing.assert_close(tiled(pointwise, 32, 8)(x, t, cond), pointwise(x, t, cond))
