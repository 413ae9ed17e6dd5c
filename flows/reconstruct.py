"""``dnerf reconstruct``: one capture folder in, refined depth, a NeRF, its mesh and a video out.

A capture (nerfstudio / Instant-NGP ``transforms.json``, a Stray Scanner phone LiDAR export, a ScanNet export,
a 7-Scenes or TUM sequence) runs through the pipeline's own stages, each with its usual flow, lock and cache,
with every output under one folder ``out``::

    out/scenes.zarr      download  (data.source, data.path = the capture; role eval)
    out/noisy.zarr       corrupt   (noise.mode=sensor: the capture's own depth, not simulated noise)
    out/refined.zarr     refine    (the trained refiner at --refiner, or a classical refine.method)
    out/nerf/<scene>/    fit_nerf  (nerf.depth_source=refined): field, mesh.ply with vertex colours,
                                   pointcloud.ply, renders, metrics.json, curve.csv
    out/video/<scene>-orbit/       an orbit around the scene: frames/*.png and video.mp4 (RGB | depth)
    out/params.yaml      the effective params: ``dnerf view <scene> -p out/params.yaml`` (or render, export)

The refiner is trained once, apart from any capture (``dvc repro train_diffusion`` trains it on the built-in
synthetic rooms into ``artifacts/diffusion``); captures have no clean depth to train it on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tasks.config import Params, load_params
from tasks.errors import DataError
from tasks.versions import resolve

#: The ``data.source`` values a capture folder can have.
CAPTURE_SOURCES = ("nerfstudio", "phone", "scannet", "sevenscenes", "tum")
STAGES = ("download", "corrupt", "refine", "fit_nerf")


@dataclass(frozen=True)
class Reconstruction:
    """What ``dnerf reconstruct`` wrote for one scene of the capture."""

    scene: str
    frames: int
    refined: Path
    fit: Path
    mesh: Path
    video: Path | None
    test_psnr: float | None


def capture_overrides(capture: Path, source: str, out: Path, refiner: Path | None) -> list[str]:
    """``--set`` overrides that run the stages on ``capture`` with every output under ``out``; with
    ``refiner`` ``None`` the refine stage keeps the params' ``refine.method`` (a classical filter, say)."""
    out = out.resolve()
    sets = [
        f"data.source={source}", f"data.path={capture.resolve()}", "data.role=eval", "noise.mode=sensor",
        f"paths.raw={out / 'raw'}", f"paths.scenes={out / 'scenes.zarr'}", f"paths.noisy={out / 'noisy.zarr'}",
        f"paths.refined={out / 'refined.zarr'}", f"paths.nerf={out / 'nerf'}",
        f"paths.nerf_checkpoints={out / '.checkpoints' / 'nerf'}", f"paths.nerf_metrics={out / 'nerf.json'}",
        f"orchestration.results={out / '.prefect-results'}", "nerf.depth_source=refined", "nerf.ablation_sources=[]",
    ]
    if refiner is not None:
        sets += [f"paths.diffusion={refiner.resolve()}", "refine.method=diffusion"]
    return sets


def reconstruct_params(params_file: Path | None, capture: Path, source: str, out: Path, refiner: Path | None,
                       overrides: list[str]) -> Params:
    """The params of a reconstruction: the params file, then :func:`capture_overrides`, then the user's ``--set``
    (which win, e.g. ``nerf.train.steps=500``)."""
    if source not in CAPTURE_SOURCES:
        raise DataError(capture, f"unknown capture source {source!r} (one of {', '.join(CAPTURE_SOURCES)})")
    if not capture.exists():
        raise DataError(capture, "capture folder not found")
    params = load_params(params_file, capture_overrides(capture, source, out, refiner) + overrides)
    if params.refine.method == "diffusion" and resolve(params.paths.diffusion) is None:
        raise DataError(params.paths.diffusion, "no trained refiner here: run `dvc repro train_diffusion` once (it "
                                                "trains on the built-in synthetic rooms), pass --refiner DIR, or "
                                                "use a classical filter with --set refine.method=bilateral")
    return params


def reconstruct(params: Params, out: Path, video_frames: int = 60, fps: float = 15.0, progress: bool = True,
                run=None) -> list[Reconstruction]:
    """Run download, corrupt, refine and fit_nerf on the capture, then render an orbit video of each scene.

    ``run(stage, params)`` runs one stage (default :func:`flows.stages.run_flow`: its Prefect flow)."""
    import json

    import yaml

    from flows.stages import run_flow
    from tasks.files import write_text_atomic
    from tasks.nerf_layout import FitFolder
    from tasks.render import render_scene
    from tasks.store import open_store

    run = run or (lambda stage, p: run_flow(stage, p, progress=progress))
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "params.yaml", yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
    for stage in STAGES:
        run(stage, params)
    summary = json.loads(Path(params.paths.nerf_metrics).read_text())
    refined = open_store(params.paths.refined, "refined")
    results = []
    for scene, metrics in summary["scenes"].items():
        fit = Path(params.paths.nerf) / scene
        rendered = render_scene(params, scene, "orbit", video_frames, fps, 1, out / "video" / f"{scene}-orbit",
                                progress=progress)
        results.append(Reconstruction(
            scene=scene, frames=refined[scene]["depth_refined"].shape[0], refined=Path(params.paths.refined) / scene,
            fit=fit, mesh=FitFolder(fit).mesh, video=Path(rendered["video"]) if rendered["video"] else None,
            test_psnr=metrics.get("test_psnr"),
        ))
    return results
