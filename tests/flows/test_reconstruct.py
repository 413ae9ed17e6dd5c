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

from tasks.config import load_params
from tasks.export import export_nerfstudio
from tasks.train_diffusion import run_train_diffusion

pytestmark = pytest.mark.slow

TINY_REFINER = ["diffusion.unet.base_channels=8", "diffusion.unet.channel_mults=[1, 2]",
                "diffusion.unet.attention_heads=2", "diffusion.train.crop=16", "diffusion.train.batch_size=2",
                "diffusion.train.val_crops=2", "diffusion.train.max_steps=2"]
FIT = ["nerf.train.steps=80", "nerf.train.target_samples=2048", "nerf.train.n_coarse=16", "nerf.train.n_fine=8",
       "nerf.occupancy.resolution=16", "nerf.occupancy.warmup_steps=8", "nerf.occupancy.n_cells=512",
       "nerf.export.mesh_resolution=24", "orchestration.workers=1"]


def write_stray_capture(params, scene: str, root: Path) -> Path:
    """A Stray Scanner export of a store scene, as the app writes it: ``rgb.mp4`` (mp4v) at the colour
    resolution, millimetre depth and confidence at half of it, ``odometry.csv`` (OpenCV camera-to-world, the
    app's ``q_WA * q_AC``) and ``camera_matrix.csv`` at the video resolution."""
    from scipy.spatial.transform import Rotation

    g = zarr.open_group(str(params.paths.noisy), mode="r")[scene]
    s = zarr.open_group(str(params.paths.scenes), mode="r")[scene]
    rgb, depth, K, c2w = s["rgb"][:], g["depth_noisy"][:], s["K"][:], s["c2w"][:]
    (root / "depth").mkdir(parents=True)
    (root / "confidence").mkdir()
    h, w = rgb.shape[1:3]
    video = cv2.VideoWriter(str(root / "rgb.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (w, h))
    rows = ["timestamp, frame, x, y, z, qx, qy, qz, qw"]
    for i in range(len(rgb)):
        video.write(cv2.cvtColor(rgb[i], cv2.COLOR_RGB2BGR))
        d = depth[i, ::2, ::2]
        cv2.imwrite(str(root / "depth" / f"{i:06d}.png"), np.round(d * 1000).astype(np.uint16))
        cv2.imwrite(str(root / "confidence" / f"{i:06d}.png"), np.where(d > 0, 2, 0).astype(np.uint8))
        q = Rotation.from_matrix(c2w[i, :3, :3]).as_quat()
        rows.append(f"{i / 10}, {i:06d}, " + ", ".join(f"{v:.9g}" for v in (*c2w[i, :3, 3], *q)))
    video.release()
    (root / "odometry.csv").write_text("\n".join(rows) + "\n")
    (root / "camera_matrix.csv").write_text("\n".join(", ".join(f"{v:.9g}" for v in r) for r in K[0]) + "\n")
    return root


@pytest.fixture(params=["nerfstudio", "phone"])
def capture(request, make_stores, tmp_path) -> tuple[Path, str, Path]:
    """``(a capture of synthetic_000 with noisy depth, its layout, a trained tiny refiner)``: a nerfstudio
    dataset from ``dnerf export nerfstudio``, or a Stray Scanner phone export."""
    params = load_params(None, make_stores([*TINY_REFINER, "data.synthetic.n_scenes=1", "data.test_every=4",
                                            f"paths.diffusion={tmp_path / 'refiner'}"]))
    run_train_diffusion(params, progress=False)
    if request.param == "phone":
        return write_stray_capture(params, "synthetic_000", tmp_path / "scan"), "phone", tmp_path / "refiner"
    [row] = export_nerfstudio(params, tmp_path / "captures", depth="noisy")
    return Path(row["folder"]), "nerfstudio", tmp_path / "refiner"


def test_a_capture_becomes_refined_depth_a_nerf_a_mesh_and_a_video(dnerf, capture, tmp_path, prefect_api):
    folder, source, refiner = capture
    out = tmp_path / "recon"
    res = dnerf.invoke("reconstruct", str(folder), "--source", source, "--out", str(out), "--refiner", str(refiner),
                       "--video-frames", "6", "-q", "-p", "/dev/null", overrides=TINY_REFINER + FIT)
    assert res.returncode == 0, res.output[-3000:]
    assert "reconstructed" in res.output and res.output.rstrip().splitlines()[-1] == f"done: {out}"

    refined = zarr.open_group(str(out / "refined.zarr"), mode="r")
    [scene] = list(refined.group_keys())
    depth = refined[scene]["depth_refined"][:]
    assert depth.shape == (4, 24, 32) and np.isfinite(depth).all() and (depth > 0).mean() > 0.9

    fit = out / "nerf" / scene
    metrics = json.loads((fit / "metrics.json").read_text())
    assert metrics["depth_source"] == "refined" and metrics["test_psnr"] > 8.0
    mesh = trimesh.load(fit / "mesh.ply")
    assert len(mesh.faces) > 0 and mesh.visual.vertex_colors.shape == (len(mesh.vertices), 4)

    video = cv2.VideoCapture(str(out / "video" / f"{scene}-orbit" / "video.mp4"))
    frames = []
    while (ok := video.read())[0]:
        frames.append(ok[1])
    assert len(frames) == 6 and frames[0].shape[1] == 2 * 32  # RGB | depth, side by side
    # the effective params are kept beside the outputs, so view / render / export find them
    assert load_params(out / "params.yaml").paths.nerf == out.resolve() / "nerf"


def test_without_a_trained_refiner_it_says_how_to_get_one(dnerf, tmp_path):
    folder = tmp_path / "capture"
    folder.mkdir()
    res = dnerf.invoke("reconstruct", str(folder), "--out", str(tmp_path / "recon"), "-p", "/dev/null",
                       overrides=[f"paths.diffusion={tmp_path / 'no-refiner'}"])
    assert res.returncode == 1
    last = res.output.rstrip().splitlines()[-1]
    assert str(tmp_path / "no-refiner") in last and "dvc repro train_diffusion" in last
    assert not (tmp_path / "recon").exists()
