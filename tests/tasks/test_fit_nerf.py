"""The fit_nerf stage on a tiny synthetic scene: learning, exact resume, exports, skipped and bad scenes."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
import torch
import trimesh
import zarr
from PIL import Image
from safetensors.torch import load_file

from tasks.config import load_params
from tasks.errors import DataError
from tasks.fit_nerf import (
    fit_config,
    fit_scene,
    make_model,
    plan_fit_nerf,
    run_fit_nerf,
    scene_fingerprint,
    training_step,
)
from tasks.nerf_data import RaySampler, open_scene, scene_bounds, sparse_views
from tasks.nerf_export import evaluate_views
from tasks.nerf_layout import FitJob
from tasks.render import camera_path, load_fit, render_path, render_pose
from tasks.store import SceneWriter, StoreBuilder

FAST = [
    "data.synthetic.n_scenes=1", "data.synthetic.n_frames=8", "data.test_every=4",
    "nerf.depth_source=gt", "nerf.train.target_samples=4096", "nerf.train.n_coarse=24", "nerf.train.n_fine=8",
    "nerf.occupancy.warmup_steps=16", "nerf.occupancy.resolution=32", "nerf.occupancy.n_cells=2048",
    "nerf.export.mesh_resolution=32", "nerf.train.checkpoint_every=20", "nerf.train.lr=0.02",
    "nerf.ablation_sources=[]",
]


@pytest.fixture
def scene(make_stores, tmp_path):
    return make_stores(FAST + [
        f"paths.nerf={tmp_path / 'nerf'}", f"paths.nerf_checkpoints={tmp_path / 'ck'}",
        f"paths.nerf_metrics={tmp_path / 'metrics' / 'nerf.json'}",
    ])


def test_short_fit_raises_test_psnr_and_exports(dnerf, scene, tmp_path):
    params = load_params(None, scene + ["nerf.train.steps=120"])
    frames = open_scene(params.paths.scenes, "synthetic_000", "gt", None, None)
    aabb_np = scene_bounds(frames)
    untrained = make_model(params.nerf, torch.from_numpy(aabb_np), torch.device("cpu"))
    before, _ = evaluate_views(*untrained, frames, frames.test, torch.from_numpy(aabb_np), params.nerf, "cpu")
    run_fit_nerf(params, progress=False)
    out = tmp_path / "nerf" / "synthetic_000"
    m = json.loads((out / "metrics.json").read_text())
    assert m["test_psnr"] > before["psnr"] + 1.5, (before, m)
    assert m["test_depth_rmse"] < 0.5 * before["depth_rmse"], (before, m)
    assert m["train_views"] == 6 and m["test_views"] == 2
    summary = json.loads((tmp_path / "metrics" / "nerf.json").read_text())
    assert summary["mean_test_psnr"] == pytest.approx(m["test_psnr"])
    for fid in ("000003", "000007"):
        assert (out / "renders" / f"{fid}_rgb.png").is_file() and (out / "renders" / f"{fid}_depth.png").is_file()
    cloud = trimesh.load(out / "pointcloud.ply")
    assert len(cloud.vertices) > 100
    lo, hi = np.array(json.loads((out / "config.json").read_text())["aabb"])
    assert np.all(cloud.vertices >= lo - 1e-3) and np.all(cloud.vertices <= hi + 1e-3)
    mesh = trimesh.load(out / "mesh.ply")
    assert len(mesh.faces) > 100, "marching cubes finds the fitted surfaces"
    assert np.all(mesh.vertices >= lo - 1e-3) and np.all(mesh.vertices <= hi + 1e-3)
    assert "encoding.tables" in "".join(load_file(out / "field.safetensors").keys())

    # the export reloads (safetensors only) and renders the same test view again; a camera path becomes a video
    fitted = load_fit(out)
    i = frames.test[0]
    rgb, _z, _ = render_pose(fitted, frames.K[i], frames.shape, frames.c2w[i])
    exported = np.asarray(Image.open(out / "renders" / f"{frames.view.frame_ids[i]}_rgb.png")) / 255.0
    assert np.max(np.abs(rgb - exported)) <= 0.5 / 255 + 1e-6
    poses = camera_path(frames.c2w[frames.train], "train", 5, fitted.aabb)
    result = render_path(fitted, frames.K[0], frames.shape, poses, tmp_path / "video", fps=5, progress=False)
    pngs = sorted((tmp_path / "video" / "frames").glob("*.png"))
    assert len(pngs) == 5 and np.asarray(Image.open(pngs[0])).shape == (frames.shape[0], 2 * frames.shape[1], 3)
    cap = cv2.VideoCapture(result["video"])  # OpenCV's wheels encode MP4 (mp4v) on Linux
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    cap.release()
    # the same from the command line: an orbit at half resolution
    res = dnerf.invoke("render", "synthetic_000", "--path", "orbit", "--frames", "3", "--downscale", "2",
                       "--out", str(tmp_path / "orbit"), "--quiet", overrides=scene)
    assert res.returncode == 0, res.output
    assert len(list((tmp_path / "orbit" / "frames").glob("*.png"))) == 3
    assert (tmp_path / "orbit" / "video.mp4").is_file()
    res = dnerf.invoke("render", "no_such_scene", overrides=scene)
    assert res.returncode == 1 and "no_such_scene" in res.output


@pytest.mark.parametrize(("source", "spread", "guided"), [("gt", 3.0, True), ("gt", 0.0, False), ("none", 3.0, False)])
def test_training_rays_are_depth_guided_only_with_depth(scene, source, spread, guided):
    """With depth supervision and ``guide_spread > 0`` a training step makes one network pass (no coarse
    density pass); colour-only fits and ``guide_spread = 0`` keep hierarchical sampling. The fresh occupancy
    grid marks every cell occupied, so the evaluation counts are exact."""
    params = load_params(None, scene + [f"nerf.depth_source={source}", f"nerf.train.guide_spread={spread}"])
    cfg, tc = params.nerf, params.nerf.train
    frames = open_scene(params.paths.scenes, "synthetic_000", source, None, None)
    aabb = torch.from_numpy(scene_bounds(frames))
    field_, grid = make_model(cfg, aabb, torch.device("cpu"))
    batch = RaySampler(frames, tc.patch, tc.pool_frames, tc.pool_refresh, seed=0).sample(64)
    gen = torch.Generator().manual_seed(0)
    logged, n_eval = training_step(field_, grid, frames, batch, aabb, cfg, torch.device("cpu"), gen, None)
    n = len(batch["pixel"])
    fine_pass = n * (tc.n_coarse + tc.n_fine)
    assert n_eval == (fine_pass if guided else fine_pass + n * tc.n_coarse)
    assert math.isfinite(logged["rgb"]) and ("depth" in logged) == (source != "none")


@pytest.mark.parametrize("source", ["gt", "none"])
def test_ray_chunking_gives_the_gradient_of_the_whole_batch(scene, source):
    """``train.chunk`` smaller than the batch: the accumulated gradient and the logged losses equal those of
    one pass over the whole batch (same rays, deterministic sample placement)."""
    params = load_params(None, scene + [f"nerf.depth_source={source}"])
    frames = open_scene(params.paths.scenes, "synthetic_000", source, None, None)
    aabb = torch.from_numpy(scene_bounds(frames))
    batch = RaySampler(frames, 2, 8, 50, seed=0).sample(256)
    grads, logs = [], []
    for chunk in (4096, 64):
        cfg = params.nerf.model_copy(update={"train": params.nerf.train.model_copy(update={"chunk": chunk})})
        field_, _ = make_model(cfg, aabb, torch.device("cpu"))
        gen = torch.Generator().manual_seed(0)
        logged, _ = training_step(field_, None, frames, batch, aabb, cfg, torch.device("cpu"), gen, None,
                                  perturb=False)
        grads.append(torch.cat([p.grad.flatten() for p in field_.parameters()]))
        logs.append(logged)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-7)
    for k in logs[0]:
        assert logs[1][k] == pytest.approx(logs[0][k], rel=1e-5)


def test_camera_paths_pass_the_train_cameras_and_orbit_the_box():
    """The train path starts and ends at the first and last camera and passes through the others' positions;
    the orbit keeps one distance from the box centre and always looks at it."""
    from models.camera import look_at

    cams = np.stack([look_at([x, 0.0, -2.0], [0.0, 0.0, 0.0], [0.0, -1.0, 0.0]) for x in (-1.0, 0.0, 1.0)])
    box = np.array([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
    path = camera_path(cams, "train", 9, box)
    np.testing.assert_allclose(path[0], cams[0], atol=1e-9)
    np.testing.assert_allclose(path[-1], cams[-1], atol=1e-9)
    np.testing.assert_allclose(path[4, :3, 3], cams[1, :3, 3], atol=1e-9)  # the middle camera, halfway along
    orbit = camera_path(cams, "orbit", 8, box)
    dist = np.linalg.norm(orbit[:, :3, 3], axis=1)
    np.testing.assert_allclose(dist, dist[0], rtol=1e-9)
    to_center = -orbit[:, :3, 3] / dist[:, None]
    np.testing.assert_allclose(np.sum(orbit[:, :3, 2] * to_center, axis=1), 1.0, atol=1e-9)


def test_every_depth_source_gets_the_same_scene_box(scene, tmp_path):
    """The box (and so the mesh crop) comes from the cameras and the observed depth, not from each source's."""
    from tasks.refine import run_refine

    params = load_params(None, scene + ["refine.method=median", f"paths.refined={tmp_path / 'r.zarr'}"])
    run_refine(params, progress=False)
    boxes = {src: scene_bounds(open_scene(params.paths.scenes, "synthetic_000", src, params.paths.noisy,
                                          params.paths.refined)) for src in ("none", "noisy", "refined", "gt")}
    for src, box in boxes.items():
        np.testing.assert_array_equal(box, boxes["noisy"], err_msg=src)
    # without the observed depth each source would have had its own box
    assert not np.array_equal(scene_bounds(open_scene(params.paths.scenes, "synthetic_000", "none", None, None)),
                              boxes["noisy"])


def test_interrupted_fit_resumes_to_the_same_field(scene, tmp_path):
    params = load_params(None, scene + ["nerf.train.steps=40", "nerf.train.checkpoint_every=15"])
    frames = open_scene(params.paths.scenes, "synthetic_000", "gt", None, None)
    fp = scene_fingerprint(params.nerf, frames, [params.paths.scenes])
    straight, *_ = fit_scene(frames, params.nerf, tmp_path / "a", fp, progress=False)
    with pytest.raises(KeyboardInterrupt):
        fit_scene(frames, params.nerf, tmp_path / "b", fp, progress=False, stop_after=15)
    resumed, _, state, _ = fit_scene(frames, params.nerf, tmp_path / "b", fp, progress=False)
    assert state.step == 40
    for (k, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)


def _posed_store(path, poses):
    n = len(poses)
    with StoreBuilder(path, "scenes") as root:
        w = SceneWriter(root, "s", n_frames=n, height=8, width=8, source="unit", depth_kind="sensor",
                        has_sensor_depth=False)
        from tasks.datasets.base import Frame

        for i, c2w in enumerate(poses):
            w.write(i, Frame(f"{i}", np.zeros((8, 8, 3), np.uint8), np.full((8, 8), 2.0, np.float32),
                             np.array([[8.0, 0, 4], [0, 8, 4], [0, 0, 1]]), c2w))
        w.close(["train"] * n)


def test_scenes_without_poses_are_skipped_with_a_message(tmp_path):
    _posed_store(tmp_path / "s.zarr", [np.full((4, 4), np.nan)] * 2)
    params = load_params(None, [f"paths.scenes={tmp_path / 's.zarr'}", f"paths.nerf={tmp_path / 'nerf'}",
                                f"paths.nerf_metrics={tmp_path / 'm.json'}", "nerf.depth_source=none"])
    run_fit_nerf(params, progress=False)
    summary = json.loads((tmp_path / "m.json").read_text())
    assert summary["scenes"] == {} and "no camera poses" in summary["skipped"]["s"]


def test_bad_cameras_and_depth_source_name_the_problem(tmp_path):
    bad = np.eye(4)
    bad[0, 3] = np.inf
    _posed_store(tmp_path / "s.zarr", [np.eye(4), bad])
    with pytest.raises(DataError, match=r"s\[1\] \(1\): pose is not finite"):
        open_scene(tmp_path / "s.zarr", "s", "none", None, None)
    _posed_store(tmp_path / "t.zarr", [np.eye(4), np.eye(4)])
    with pytest.raises(DataError, match="depth_source=gt needs a reference"):
        open_scene(tmp_path / "t.zarr", "s", "gt", None, None)
    g = zarr.open_group(str(tmp_path / "t.zarr"), mode="r+")
    g["s"]["K"][1] = np.zeros((3, 3))
    with pytest.raises(DataError, match="degenerate intrinsics"):
        open_scene(tmp_path / "t.zarr", "s", "none", None, None)


def test_sparse_views_keep_an_even_subset_of_train_views(scene):
    params = load_params(None, scene)
    frames = open_scene(params.paths.scenes, "synthetic_000", "gt", None, None)
    assert frames.train == [0, 1, 2, 4, 5, 6]
    assert sparse_views(frames, 3).train == [0, 2, 6]
    assert sparse_views(frames, 1).train == [0]
    assert sparse_views(frames, None) is frames and sparse_views(frames, 10) is frames
    assert sparse_views(frames, 3).test == frames.test


def test_the_ablation_plans_one_fit_per_scene_and_source(tmp_path):
    _posed_store(tmp_path / "s.zarr", [np.eye(4), np.eye(4)])  # sensor depth only: no gt ablation
    base = [f"paths.scenes={tmp_path / 's.zarr'}", "nerf.depth_source=refined"]
    jobs, skipped = plan_fit_nerf(load_params(None, base + ["nerf.ablation_sources=[none, refined, gt, none]"]))
    assert [(j.scene, j.source, j.ablation) for j in jobs] == [("s", "refined", False), ("s", "none", True)]
    assert "sensor depth only" in skipped["s@gt"]
    assert [j.label for j in jobs] == ["s", "s@none"]
    assert jobs[0].folder(tmp_path) == tmp_path / "s"
    assert jobs[1].folder(tmp_path) == tmp_path / "ablation" / "none" / "s"
    # the same fit has the same config (so the same checkpoint and cache key) however it was asked for
    alone = load_params(None, base + ["nerf.ablation_sources=[]", "nerf.scenes=[s]"]).nerf
    assert fit_config(jobs[0], load_params(None, base).nerf) == fit_config(FitJob("s", "refined"), alone)
    assert fit_config(FitJob("s", "none", True), alone).depth_source == "none"


def test_bf16_autocast_fits_on_cpu(scene, tmp_path):
    """``nerf.train.amp=bf16`` (the CUDA default) also runs on CPU: the fit trains under bf16 autocast, its exported
    weights stay float32 and its test views are scored, finite and better than chance."""
    params = load_params(None, scene + ["nerf.train.steps=40", "nerf.train.amp=bf16"])
    run_fit_nerf(params, progress=False)
    out = tmp_path / "nerf" / "synthetic_000"
    m = json.loads((out / "metrics.json").read_text())
    assert np.isfinite(m["test_psnr"]) and m["test_psnr"] > 10.0, m
    weights = load_file(out / "field.safetensors")
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in weights.values())
