"""``dnerf reconstruct``: a nerfstudio capture built here (a synthetic room exported with its sensor-like depth,
as the README's worked example does) in; refined depth, a NeRF, a coloured mesh and an orbit video out."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import trimesh
import zarr
from typer.testing import CliRunner

from flows.cli import app
from tasks.config import load_params
from tasks.corrupt import run_corrupt
from tasks.download import run_download
from tasks.export import export_nerfstudio
from tasks.train_diffusion import run_train_diffusion

pytestmark = pytest.mark.slow

TINY_REFINER = ["diffusion.unet.base_channels=8", "diffusion.unet.channel_mults=[1, 2]",
                "diffusion.unet.attention_heads=2", "diffusion.train.crop=16", "diffusion.train.batch_size=2",
                "diffusion.train.val_crops=2", "diffusion.train.max_steps=2"]
FIT = ["nerf.train.steps=40", "nerf.train.target_samples=2048", "nerf.train.n_coarse=16", "nerf.train.n_fine=8",
       "nerf.occupancy.resolution=16", "nerf.occupancy.warmup_steps=8", "nerf.occupancy.n_cells=512",
       "nerf.export.mesh_resolution=24", "orchestration.workers=1"]


def _sets(overrides: list[str]) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


@pytest.fixture
def capture(tiny_overrides, tmp_path) -> tuple[Path, Path]:
    """``(nerfstudio capture of synthetic_000 with noisy depth, a trained tiny refiner)``."""
    params = load_params(None, tiny_overrides + TINY_REFINER + ["data.synthetic.n_scenes=1", "data.test_every=4",
                                                                f"paths.diffusion={tmp_path / 'refiner'}"])
    run_download(params, progress=False)
    run_corrupt(params, progress=False)
    run_train_diffusion(params, progress=False)
    [row] = export_nerfstudio(params, tmp_path / "captures", depth="noisy")
    return Path(row["folder"]), tmp_path / "refiner"


def test_a_nerfstudio_capture_becomes_refined_depth_a_nerf_a_mesh_and_a_video(capture, tmp_path, prefect_api):
    folder, refiner = capture
    out = tmp_path / "recon"
    res = CliRunner().invoke(app, ["reconstruct", str(folder), "--source", "nerfstudio", "--out", str(out),
                                   "--refiner", str(refiner), "--video-frames", "6", "-q", "-p", "/dev/null",
                                   *_sets(TINY_REFINER + FIT)])
    assert res.exit_code == 0, res.output[-3000:]
    assert "reconstructed" in res.output and res.output.rstrip().splitlines()[-1] == f"done: {out}"

    transforms = json.loads((folder / "transforms.json").read_text())
    refined = zarr.open_group(str(out / "refined.zarr"), mode="r")
    depth = refined["synthetic_000"]["depth_refined"][:]
    assert depth.shape[0] == len(transforms["frames"]) and np.isfinite(depth).all() and (depth > 0).mean() > 0.9

    fit = out / "nerf" / "synthetic_000"
    metrics = json.loads((fit / "metrics.json").read_text())
    assert metrics["depth_source"] == "refined" and metrics["test_psnr"] > 8.0
    mesh = trimesh.load(fit / "mesh.ply")
    assert len(mesh.faces) > 0 and mesh.visual.vertex_colors.shape == (len(mesh.vertices), 4)

    video = cv2.VideoCapture(str(out / "video" / "synthetic_000-orbit" / "video.mp4"))
    frames = []
    while (ok := video.read())[0]:
        frames.append(ok[1])
    assert len(frames) == 6 and frames[0].shape[1] == 2 * 32  # RGB | depth, side by side


def test_without_a_trained_refiner_it_says_how_to_get_one(capture, tmp_path):
    folder, _ = capture
    res = CliRunner().invoke(app, ["reconstruct", str(folder), "--out", str(tmp_path / "recon"), "-p", "/dev/null",
                                   "--set", f"paths.diffusion={tmp_path / 'no-refiner'}"])
    assert res.exit_code == 1
    last = res.output.rstrip().splitlines()[-1]
    assert str(tmp_path / "no-refiner") in last and "dvc repro train_diffusion" in last
    assert not (tmp_path / "recon").exists()
