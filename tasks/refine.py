"""The ``refine`` stage: every frame of ``noisy.zarr`` -> ``refined.zarr`` (refined depth + uncertainty).

Store layout (``dnerf.refined``)::

    refined.zarr/          attrs: schema, method, fingerprint, complete, refine params
      <scene>/
        depth_refined  float32 [N, H, W]  metres (0 where nothing could be recovered)
        depth_std      float32 [N, H, W]  metres: calibrated standard deviation of the refined depth (the spread
                                          of the diffusion samples and the sensor model's expected noise, scaled
                                          on validation frames; 0 for the classical baselines)
        done           bool    [N]        per-frame completion flags

The stage is resumable: the store skeleton is created atomically, then frames are refined in place, a block of
frames at a time (:data:`FRAMES_PER_COMMIT`), their flags set only after their depth is written. Running again
with the same fingerprint (refine params, model weights, input store) skips finished frames without touching them;
a different fingerprint starts a new store. ``complete`` is set once every frame is done. DVC must keep this out
between runs (``persist: true``), or resuming would have nothing to resume.

Only the scenes whose role is ``eval`` are refined (refiner training and validation scenes are the model's
own data, see :mod:`tasks.train_diffusion`). Frames larger than ``refine.tile`` are denoised in overlapping
tiles (:mod:`models.diffusion.refiner`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
import zarr

from models.baselines import Refiner, make_baselines
from models.diffusion.refiner import DiffusionRefiner
from tasks.config import Params, RefineConfig
from tasks.devices import resolve_device
from tasks.diffusion_data import check_depth_input
from tasks.digest import closure_version
from tasks.errors import DataError
from tasks.location import Location, join, read_bytes, zarr_store
from tasks.progress import progress_bar
from tasks.refiner_files import TrainedRefiner, load_model, model_files
from tasks.store import (
    SCHEMA_VERSION,
    StoreBuilder,
    consolidate,
    live_store,
    open_for_update,
    open_store,
    resolve_store,
    scene_names,
    scenes_with_role,
)

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ refiners


def frame_seed(seed: int, scene: str, index: int) -> int:
    """A seed for one frame's samples, independent of which worker refines it or in which order."""
    ss = np.random.SeedSequence([seed, zlib.crc32(scene.encode()), index])
    return int(ss.generate_state(1, dtype=np.uint64)[0] % (2**63))


class FrameRefiner(Protocol):
    """What the stage refines frames with: ``check(K, where)`` refuses a frame it cannot serve (DataError);
    ``(rgb uint8 [H,W,3], noisy float32 [H,W] m, K [3,3], seed) -> (refined, std)`` float32 [H,W] metres."""

    name: str

    def check(self, K: np.ndarray, where: str) -> None: ...

    def __call__(self, rgb: np.ndarray, noisy: np.ndarray, K: np.ndarray,
                 seed: int) -> tuple[np.ndarray, np.ndarray]: ...


# A frame is served when its focal length is within this factor of the range the model was trained on: the
# network's receptive field and the noise it learned (lateral jitter, flying pixels) are in pixels.
SERVABLE_SCALE = 2.0


class DiffusionAdapter:
    """The diffusion refiner behind the stage's frame interface."""

    def __init__(self, refiner: DiffusionRefiner, focal_range: tuple[float, float] | None):
        self.refiner, self.name, self.focal_range = refiner, refiner.name, focal_range

    def check(self, K: np.ndarray, where: str) -> None:
        """Refuse a frame at an image scale the model never saw (DataError naming the frame and the range)."""
        if self.focal_range is None:
            return
        lo, hi = self.focal_range
        f = float(K[0, 0])
        if not lo / SERVABLE_SCALE <= f <= hi * SERVABLE_SCALE:
            raise DataError(
                where, f"focal length {f:.0f} px is outside what the refiner can serve ({lo / SERVABLE_SCALE:.0f}-"
                f"{hi * SERVABLE_SCALE:.0f} px; it was trained on {lo:.0f}-{hi:.0f} px): resize the frames "
                f"(data.downscale / data.height) or train on this resolution (data.synthetic.refiner_sizes)"
            )

    def __call__(self, rgb: np.ndarray, noisy: np.ndarray, K: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        out = self.refiner.refine(rgb, noisy, float(K[0, 0]), seed)
        return out.depth, out.std


class BaselineAdapter:
    """A classical refiner behind the same interface (no uncertainty: ``std`` is 0)."""

    def __init__(self, refiner: Refiner):
        self.refiner, self.name = refiner, refiner.name

    def check(self, K: np.ndarray, where: str) -> None:
        """Classical filters serve any resolution."""

    def __call__(self, rgb: np.ndarray, noisy: np.ndarray, K: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        out = self.refiner(rgb, noisy, K).astype(np.float32)
        return out, np.zeros_like(out)


def refiner_digest(params: Params) -> str:
    """What defines the refiner's output besides its params: the trained model's files (its config, with the
    parametrisation, sensor prior, edge bound and calibration, and its weights), or the baseline's name."""
    if params.refine.method == "diffusion":
        h = hashlib.sha256()
        for path in model_files(params.paths.diffusion):
            h.update(path.read_bytes())
        return h.hexdigest()[:16]
    return params.refine.method


def refiner_from(m: TrainedRefiner, cfg: RefineConfig) -> DiffusionRefiner:
    """A loaded refiner, sampled as ``cfg`` says."""
    device = next(m.model.parameters()).device
    return DiffusionRefiner(
        m.model, m.schedule, m.sensor, m.calibration, cfg.steps, cfg.samples, cfg.tile, cfg.overlap, device
    )


def diffusion_refiner(folder: str | Path, cfg: RefineConfig) -> DiffusionRefiner:
    """The trained refiner in ``folder``, sampled as ``cfg`` says."""
    return refiner_from(load_model(folder, resolve_device(cfg.device)), cfg)


def make_refiner(params: Params) -> FrameRefiner:
    """The configured refiner: the diffusion model (weights from ``paths.diffusion``) or a baseline."""
    cfg = params.refine
    if cfg.method == "diffusion":
        m = load_model(params.paths.diffusion, resolve_device(cfg.device))
        return DiffusionAdapter(refiner_from(m, cfg), m.focal_range)
    return BaselineAdapter(make_baselines(cfg.baselines)[cfg.method])


# ------------------------------------------------------------------------------------------- stage


def refine_fingerprint(params: Params, model_digest: str) -> str:
    """Identity of a refined store's content: refine params, weights, the noisy store's layout and the code."""
    cfg = params.refine.model_dump(mode="json", exclude={"device"})
    h = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode() + model_digest.encode())
    h.update(read_bytes(join(live_store(params.paths.noisy), "zarr.json")))
    h.update(closure_version("tasks.refine").encode())  # the code this stage runs
    return h.hexdigest()[:16]


def eval_scenes(scenes: zarr.Group, names: list[str]) -> list[str]:
    """Those of ``names`` whose role in the scene store is ``eval`` (stores without roles: all of them)."""
    evals = set(scenes_with_role(scenes, "eval"))
    return [n for n in names if n in evals]


def create_skeleton(path: Location, noisy: zarr.Group, scenes: zarr.Group, attrs: dict) -> None:
    """An empty refined store (all frames pending) for every eval scene of ``noisy``, created atomically."""
    with StoreBuilder(path, "refined", attrs={**attrs, "complete": False}) as root:
        for name in eval_scenes(scenes, scene_names(noisy)):
            n, h, w = noisy[name]["depth_noisy"].shape
            g = root.create_group(name)
            for key in ("depth_refined", "depth_std"):
                g.create_array(key, shape=(n, h, w), chunks=(1, h, w), dtype=np.float32, fill_value=0)
            g.create_array("done", shape=(n,), chunks=(1,), dtype=bool, fill_value=False)
            g.attrs.update({"frame_ids": noisy[name].attrs.get("frame_ids", []), "units": "m"})


def open_or_create(path: Location, noisy: zarr.Group, scenes: zarr.Group, fingerprint: str,
                   attrs: dict) -> zarr.Group:
    """The refined store to write into: the existing one when it belongs to this run, else a fresh one."""
    if resolve_store(path) is not None:
        try:
            existing = open_store(path, "refined")
            if existing.attrs.get("fingerprint") == fingerprint:
                return open_for_update(path)
            log.info("%s was made with other params, model or input; starting afresh", path)
        except DataError as err:
            log.info("%s is not a usable refined store (%s); starting afresh", path, err.problem)
    create_skeleton(path, noisy, scenes, {**attrs, "fingerprint": fingerprint})
    return open_for_update(path)


def refine_scene(
    name: str,
    noisy: zarr.Group,
    scenes: zarr.Group,
    out: zarr.Group,
    refiner: FrameRefiner,
    seed: int,
    progress: bool = True,
    on_frame: Callable[[str, int], None] | None = None,
) -> int:
    """Refine every pending frame of one scene in place; returns how many frames were refined now.

    Frames are read and committed :data:`FRAMES_PER_COMMIT` at a time (one request per array and block, not per
    frame, where the store is on object storage); a block's done flags are written only after its depth, so a
    killed run loses at most the block it was refining. ``on_frame(scene, index)`` is called for each frame once
    it is committed (progress reporting, tests).
    """
    g = out[name]
    done = g["done"][:]
    depth_noisy = noisy[name]["depth_noisy"]
    rgb_arr, K_arr = scenes[name]["rgb"], scenes[name]["K"]
    pending = [i for i in range(len(done)) if not done[i]]
    bar = progress_bar(total=len(pending), desc=f"refine {name}", unit="frame", interactive=progress)
    for start in range(0, len(pending), FRAMES_PER_COMMIT):
        block = pending[start:start + FRAMES_PER_COMMIT]
        rows = frame_rows(block)
        depths, rgbs, Ks = depth_noisy[rows], rgb_arr[rows], K_arr[rows]
        refined, std = [], []
        for i, raw, rgb, K in zip(block, depths, rgbs, Ks, strict=True):
            d = np.asarray(raw, dtype=np.float32)
            where = f"{noisy.store_path}/{name}[{i}]"
            check_depth_input(d, where)
            refiner.check(K, where)
            if rgb.shape[:2] != d.shape:
                raise DataError(where, f"RGB is {rgb.shape[1]}x{rgb.shape[0]} but depth is {d.shape[1]}x{d.shape[0]}")
            r, s = refiner(rgb, d, K, frame_seed(seed, name, i))
            refined.append(r)
            std.append(s)
            bar.update(1)
        rows = frame_rows(block)
        g["depth_refined"][rows] = np.stack(refined)
        g["depth_std"][rows] = np.stack(std)
        g["done"][rows] = True  # only after the block's data is written
        for i in block:
            if on_frame is not None:
                on_frame(name, i)
    bar.close()
    return len(pending)


def frame_rows(block: list[int]) -> slice | tuple[list[int]]:
    """A zarr selection of the frames ``block``: a slice where they are consecutive (zarr then writes whole chunks
    without reading them first, one request per chunk), else the list as an orthogonal selection."""
    if block == list(range(block[0], block[-1] + 1)):
        return slice(block[0], block[-1] + 1)
    return (block,)


#: Frames of a scene read and committed together by :func:`refine_scene`.
FRAMES_PER_COMMIT = 8


def prepare_refine(params: Params) -> list[str]:
    """Check the inputs and open (or create afresh) the refined store; the names of the scenes to refine."""
    noisy = open_store(params.paths.noisy, "noisy")
    scenes = open_store(params.paths.scenes, "scenes")
    for name in scene_names(noisy):
        if name not in scenes:
            raise DataError(params.paths.scenes, f"scene {name!r} of {params.paths.noisy} is missing")
    names = eval_scenes(scenes, scene_names(noisy))
    if not names:
        raise DataError(params.paths.scenes, "no scene with role 'eval' to refine")
    if params.refine.method == "diffusion":
        load_model(params.paths.diffusion, "cpu")  # a damaged or mismatched model fails before anything is written
    fp = refine_fingerprint(params, refiner_digest(params))
    attrs = {
        "created_by": "dnerf refine",
        "method": params.refine.method,
        "refine": params.refine.model_dump(mode="json"),
        "noisy_store": str(params.paths.noisy),
        "schema_version": SCHEMA_VERSION,
    }
    open_or_create(params.paths.refined, noisy, scenes, fp, attrs)
    return names


def refine_one_scene(
    params: Params, name: str, progress: bool = True, on_frame: Callable[[str, int], None] | None = None
) -> dict[str, np.ndarray]:
    """Refine the pending frames of scene ``name`` into the prepared store; its ``depth_refined`` and
    ``depth_std`` arrays ``[N, H, W]`` (metres) once every frame is done."""
    noisy = open_store(params.paths.noisy, "noisy")
    scenes = open_store(params.paths.scenes, "scenes")
    out = open_for_update(params.paths.refined)
    refine_scene(name, noisy, scenes, out, make_refiner(params), params.refine.seed, progress, on_frame)
    return {key: out[name][key][:] for key in ("depth_refined", "depth_std")}


def place_refined_scene(params: Params, name: str, group: Location) -> None:
    """Copy a refined scene's group (a copy of ``<refined store>/<name>``, e.g. a cached artifact) into the
    prepared store unless it already holds the scene, done. The done flags are written last, so an interrupted
    copy leaves frames pending, never frames marked done without their depth."""
    out = open_for_update(params.paths.refined)[name]
    if out["done"][:].all():
        return
    cached = zarr.open_group(zarr_store(group, read_only=True), mode="r", zarr_format=3)
    done = cached["done"][:]
    if not done.all():
        raise DataError(group, f"refined scene {name!r} is not complete ({int(done.sum())}/{done.size} frames)")
    for key in ("depth_refined", "depth_std"):
        if cached[key].shape != out[key].shape:
            raise DataError(group, f"{key} is {cached[key].shape}, the store expects {out[key].shape}")
        out[key][:] = cached[key][:]
    out["done"][:] = done


def finish_refine(params: Params) -> Location:
    """Mark the refined store complete and consolidate its metadata."""
    out = open_for_update(params.paths.refined)
    out.attrs["complete"] = True
    consolidate(live_store(params.paths.refined))
    return params.paths.refined


def run_refine(params: Params, progress: bool = True,
               on_frame: Callable[[str, int], None] | None = None) -> Location:
    """The ``refine`` stage, one scene after another: ``paths.noisy`` (+ ``paths.scenes``) -> ``paths.refined``.
    The Prefect flow (``flows.stages.refine_flow``) runs the same steps with scenes in parallel."""
    for name in prepare_refine(params):
        refine_one_scene(params, name, progress, on_frame)
    out_path = finish_refine(params)
    log.info("refined the scenes of %s with %s into %s", params.paths.noisy, params.refine.method, out_path)
    return out_path
