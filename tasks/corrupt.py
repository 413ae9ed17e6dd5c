"""The ``corrupt`` stage: ``scenes.zarr`` -> ``noisy.zarr`` with the sensor depth the refiner will see.

In ``simulate`` mode every frame's reference depth goes through the structured-light sensor model
(:func:`models.noise.simulate_sensor_noise`) with a generator seeded by ``(noise.seed, scene, frame)``,
so the result does not depend on how the work is split between workers. In ``sensor`` mode the measured
depth (``depth_sensor`` when the store has one, else ``depth``) is passed through unchanged: for real
captures whose depth is already the noisy input.
"""

from __future__ import annotations

import logging

import numpy as np
import zarr

from models.noise import frame_rng, simulate_sensor_noise
from tasks.config import NoiseConfig, Params
from tasks.location import Location
from tasks.progress import progress_bar
from tasks.store import SceneView, StoreBuilder, iter_scenes, open_store

log = logging.getLogger(__name__)


def noisy_frame(view: SceneView, i: int, cfg: NoiseConfig) -> np.ndarray:
    """Noisy depth ``[H, W]`` float32 (metres, 0 = hole) of frame ``i`` of a scene."""
    if cfg.mode == "sensor":
        key = "depth_sensor" if view.has_sensor_depth else "depth"
        return np.asarray(view.group[key][i], dtype=np.float32)
    frame = view.frame(i)
    # NoiseConfig extends the model's own config, so it is passed to the model as it is.
    return simulate_sensor_noise(frame.depth, frame.K, cfg, frame_rng(cfg.seed, view.name, i), rgb=frame.rgb)


def corrupt_scene(view: SceneView, out_root: zarr.Group, cfg: NoiseConfig, progress: bool = True) -> None:
    """Write the ``depth_noisy`` array of one scene into ``out_root`` (one chunk per frame)."""
    if cfg.mode == "sensor" and not view.has_sensor_depth and view.attrs.get("depth_kind") == "reference":
        log.warning(
            "scene %s: noise.mode=sensor but the store only has reference depth; it is passed through clean",
            view.name,
        )
    n, (h, w) = view.n_frames, view.shape
    group = out_root.create_group(view.name)
    arr = group.create_array("depth_noisy", shape=(n, h, w), chunks=(1, h, w), dtype=np.float32, fill_value=0)
    for i in progress_bar(range(n), desc=f"corrupt {view.name}", unit="frame", interactive=progress):
        arr[i] = noisy_frame(view, i, cfg)
    group.attrs.update({"frame_ids": view.frame_ids, "units": "m"})


def run_corrupt(params: Params, progress: bool = True) -> Location:
    """The ``corrupt`` stage: ``params.paths.scenes`` + ``params.noise`` -> ``params.paths.noisy``."""
    cfg = params.noise
    scenes = open_store(params.paths.scenes, "scenes")
    attrs = {
        "created_by": "dnerf corrupt",
        "mode": cfg.mode,
        "seed": cfg.seed,
        "model": "kinect_v1_structured_light" if cfg.mode == "simulate" else "passthrough",
        "noise": cfg.model_dump(mode="json"),
        "scenes_store": str(params.paths.scenes),
    }
    with StoreBuilder(params.paths.noisy, "noisy", attrs=attrs) as root:
        for view in iter_scenes(scenes):
            corrupt_scene(view, root, cfg, progress=progress)
    log.info("wrote %s", params.paths.noisy)
    return params.paths.noisy
