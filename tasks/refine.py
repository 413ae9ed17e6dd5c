"""The ``refine`` stage: every frame of ``noisy.zarr`` -> ``refined.zarr`` (refined depth + uncertainty).

Store layout (``dnerf.refined``)::

    refined.zarr/          attrs: schema, method, fingerprint, complete, refine params
      <scene>/
        depth_refined  float32 [N, H, W]  metres (0 where nothing could be recovered)
        depth_std      float32 [N, H, W]  metres: spread of the diffusion samples (0 for the classical baselines)
        done           bool    [N]        per-frame completion flags

The stage is resumable: the store skeleton is created atomically, then frames are refined in place, each
frame's flag set only after its depth is written. Running again with the same fingerprint (refine params,
model weights, input store) skips finished frames without touching them; a different fingerprint starts
a new store. ``complete`` is set once every frame is done. DVC must keep this out between runs
(``persist: true``), or resuming would have nothing to resume.

Frames larger than ``refine.tile`` are denoised in overlapping tiles whose outputs are blended at every
sampler step (so the whole frame follows one consistent diffusion trajectory) and memory stays bounded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import zarr
from tqdm import tqdm

from models.baselines import Refiner, fill_holes, make_baselines
from models.diffusion.pipeline import (
    DiffusionConfig,
    condition,
    decode_x0,
    depth_scale,
    from_log,
    make_scheduler,
    sample,
    to_log,
)
from tasks.config import Params, RefineConfig
from tasks.diffusion_data import check_depth_input
from tasks.digest import code_version
from tasks.errors import DataError
from tasks.store import SCHEMA_VERSION, StoreBuilder, consolidate, open_store, scene_names
from tasks.train_diffusion import load_model, model_files, resolve_device

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ tiling


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length ``tile`` covering ``[0, size)`` with at least ``overlap`` overlap."""
    if size <= tile:
        return [0]
    stride = tile - overlap
    n = int(np.ceil((size - tile) / stride)) + 1
    return [round(i * (size - tile) / (n - 1)) for i in range(n)]


def blend_window(h: int, w: int, overlap: int) -> torch.Tensor:
    """``[h, w]`` weights ramping linearly over ``overlap`` pixels at each border (never exactly 0)."""

    def ramp(n: int) -> torch.Tensor:
        r = torch.ones(n)
        if overlap > 0:
            k = min(overlap, n // 2)
            edge = (torch.arange(k, dtype=torch.float32) + 1) / (k + 1)
            r[:k], r[n - k :] = edge, edge.flip(0)
        return r

    return ramp(h)[:, None] * ramp(w)[None, :]


def tiled(model: Callable, tile: int, overlap: int) -> Callable:
    """Wrap ``model(x, t, cond)`` so that inputs larger than ``tile`` are processed in blended tiles."""

    def run(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h <= tile and w <= tile:
            return model(x, t, cond)
        out = torch.zeros_like(x)
        total = torch.zeros((h, w), dtype=x.dtype, device=x.device)
        for y0 in tile_starts(h, tile, overlap):
            for x0 in tile_starts(w, tile, overlap):
                sl = (..., slice(y0, y0 + tile), slice(x0, x0 + tile))
                o = model(x[sl], t, cond[sl])
                wgt = blend_window(o.shape[-2], o.shape[-1], overlap).to(x)
                out[sl] += o * wgt
                total[sl[1:]] += wgt
        return out / total

    return run


# ------------------------------------------------------------------------------------------ refiners


def frame_seed(seed: int, scene: str, index: int) -> int:
    """A seed for one frame's samples, independent of which worker refines it or in which order."""
    ss = np.random.SeedSequence([seed, zlib.crc32(scene.encode()), index])
    return int(ss.generate_state(1, dtype=np.uint64)[0] % (2**63))


class DiffusionRefiner:
    """Refines one frame with the trained model: ``samples`` DDIM samples, their mean and spread."""

    name = "diffusion"

    def __init__(self, model: torch.nn.Module, schedule: DiffusionConfig, cfg: RefineConfig, device: torch.device):
        self.model, self.schedule, self.cfg, self.device = model, schedule, cfg, device
        self.scheduler = make_scheduler(schedule)
        self.net = tiled(model, cfg.tile, cfg.overlap)

    @torch.inference_mode()
    def __call__(self, rgb: np.ndarray, noisy: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """``rgb`` uint8 [H,W,3], ``noisy`` float32 [H,W] metres -> (refined, std) float32 [H,W] metres."""
        s, dev = self.cfg.samples, self.device
        base = fill_holes(noisy)
        noisy_t = torch.from_numpy(noisy)[None, None].to(dev)
        base_t = torch.from_numpy(base)[None, None].to(dev)
        scale = depth_scale(noisy_t)
        y_obs, y_base = to_log(noisy_t, scale, self.schedule), to_log(base_t, scale, self.schedule)
        rgb_t = torch.from_numpy(rgb).permute(2, 0, 1)[None].float().div(255).to(dev)
        cond = condition(rgb_t, y_obs, y_base, (noisy_t > 0).float()).expand(s, -1, -1, -1)
        g = torch.Generator().manual_seed(seed)
        noise = torch.randn((s, 1, *noisy.shape), generator=g).to(dev)
        x0 = sample(self.net, cond, self.scheduler, self.cfg.steps, init_noise=noise)
        depth = from_log(decode_x0(x0, y_base.expand(s, -1, -1, -1), self.schedule), scale.expand(s), self.schedule)
        depth = depth[:, 0].float().cpu().numpy()
        return depth.mean(0).astype(np.float32), depth.std(0).astype(np.float32)


class BaselineAdapter:
    """A classical refiner behind the same interface (no uncertainty: ``std`` is 0)."""

    def __init__(self, refiner: Refiner, K_of: Callable[[], np.ndarray]):
        self.refiner, self.K_of, self.name = refiner, K_of, refiner.name

    def __call__(self, rgb: np.ndarray, noisy: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        out = self.refiner(rgb, noisy, self.K_of()).astype(np.float32)
        return out, np.zeros_like(out)


def refiner_digest(params: Params) -> str:
    """What defines the refiner's output besides its params: the diffusion weights, or the baseline's name."""
    if params.refine.method == "diffusion":
        return hashlib.sha256(model_files(params.paths.diffusion)[1].read_bytes()).hexdigest()[:16]
    return params.refine.method


def make_refiner(params: Params) -> Callable:
    """The configured refiner: the diffusion model (weights from ``paths.diffusion``) or a baseline."""
    cfg = params.refine
    if cfg.method == "diffusion":
        device = resolve_device(cfg.device)
        model, schedule = load_model(params.paths.diffusion, device)
        return DiffusionRefiner(model, schedule, cfg, device)
    baseline = make_baselines(cfg.baselines)[cfg.method]
    return BaselineAdapter(baseline, K_of=lambda: np.eye(3))


# ------------------------------------------------------------------------------------------- stage


def refine_fingerprint(params: Params, model_digest: str) -> str:
    """Identity of a refined store's content: refine params, weights, the noisy store's layout and the code."""
    cfg = params.refine.model_dump(mode="json", exclude={"device"})
    h = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode() + model_digest.encode())
    h.update((Path(params.paths.noisy) / "zarr.json").read_bytes())
    h.update(code_version().encode())
    return h.hexdigest()[:16]


def create_skeleton(path: Path, noisy: zarr.Group, scenes: zarr.Group, attrs: dict) -> None:
    """An empty refined store (all frames pending) for every scene of ``noisy``, created atomically."""
    with StoreBuilder(path, "refined", attrs={**attrs, "complete": False}) as root:
        for name in scene_names(noisy):
            n, h, w = noisy[name]["depth_noisy"].shape
            g = root.create_group(name)
            for key in ("depth_refined", "depth_std"):
                g.create_array(key, shape=(n, h, w), chunks=(1, h, w), dtype=np.float32, fill_value=0)
            g.create_array("done", shape=(n,), chunks=(1,), dtype=bool, fill_value=False)
            g.attrs.update({"frame_ids": noisy[name].attrs.get("frame_ids", []), "units": "m"})


def open_or_create(path: Path, noisy: zarr.Group, scenes: zarr.Group, fingerprint: str, attrs: dict) -> zarr.Group:
    """The refined store to write into: the existing one when it belongs to this run, else a fresh one."""
    if path.exists():
        try:
            existing = open_store(path, "refined")
            if existing.attrs.get("fingerprint") == fingerprint:
                return zarr.open_group(str(path), mode="r+", zarr_format=3)
            log.info("%s was made with other params, model or input; starting afresh", path)
        except DataError as err:
            log.info("%s is not a usable refined store (%s); starting afresh", path, err.problem)
    create_skeleton(path, noisy, scenes, {**attrs, "fingerprint": fingerprint})
    return zarr.open_group(str(path), mode="r+", zarr_format=3)


def refine_scene(
    name: str,
    noisy: zarr.Group,
    scenes: zarr.Group,
    out: zarr.Group,
    refiner: Callable,
    seed: int,
    progress: bool = True,
    on_frame: Callable[[str, int], None] | None = None,
) -> int:
    """Refine every pending frame of one scene in place; returns how many frames were refined now.

    ``on_frame(scene, index)`` is called after each frame is committed (progress reporting, tests).
    """
    g = out[name]
    done = g["done"][:]
    depth_noisy = noisy[name]["depth_noisy"]
    rgb_arr = scenes[name]["rgb"]
    if isinstance(refiner, BaselineAdapter):
        refiner.K_of = lambda: scenes[name]["K"][0]
    pending = [i for i in range(len(done)) if not done[i]]
    for i in tqdm(pending, desc=f"refine {name}", unit="frame", disable=not progress):
        d = np.asarray(depth_noisy[i], dtype=np.float32)
        rgb = rgb_arr[i]
        where = f"{noisy.store_path}/{name}[{i}]"
        check_depth_input(d, where)
        if rgb.shape[:2] != d.shape:
            raise DataError(where, f"RGB is {rgb.shape[1]}x{rgb.shape[0]} but depth is {d.shape[1]}x{d.shape[0]}")
        refined, std = refiner(rgb, d, frame_seed(seed, name, i))
        g["depth_refined"][i] = refined
        g["depth_std"][i] = std
        g["done"][i] = True  # only after the frame's data is written
        if on_frame is not None:
            on_frame(name, i)
    return len(pending)


def prepare_refine(params: Params) -> list[str]:
    """Check the inputs and open (or create afresh) the refined store; the names of the scenes to refine."""
    noisy = open_store(params.paths.noisy, "noisy")
    scenes = open_store(params.paths.scenes, "scenes")
    names = scene_names(noisy)
    for name in names:
        if name not in scenes:
            raise DataError(params.paths.scenes, f"scene {name!r} of {params.paths.noisy} is missing")
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
    open_or_create(Path(params.paths.refined), noisy, scenes, fp, attrs)
    return names


def refine_one_scene(
    params: Params, name: str, progress: bool = True, on_frame: Callable[[str, int], None] | None = None
) -> dict[str, np.ndarray]:
    """Refine the pending frames of scene ``name`` into the prepared store; its ``depth_refined`` and
    ``depth_std`` arrays ``[N, H, W]`` (metres) once every frame is done."""
    noisy = open_store(params.paths.noisy, "noisy")
    scenes = open_store(params.paths.scenes, "scenes")
    out = zarr.open_group(str(params.paths.refined), mode="r+", zarr_format=3)
    refine_scene(name, noisy, scenes, out, make_refiner(params), params.refine.seed, progress, on_frame)
    return {key: out[name][key][:] for key in ("depth_refined", "depth_std")}


def write_refined_scene(params: Params, name: str, arrays: dict[str, np.ndarray]) -> None:
    """Put a scene's refined arrays (e.g. a cached result) into the store unless it already holds them."""
    g = zarr.open_group(str(params.paths.refined), mode="r+", zarr_format=3)[name]
    if g["done"][:].all():
        return
    for key in ("depth_refined", "depth_std"):
        g[key][:] = arrays[key]
    g["done"][:] = True


def finish_refine(params: Params) -> Path:
    """Mark the refined store complete and consolidate its metadata."""
    out_path = Path(params.paths.refined)
    out = zarr.open_group(str(out_path), mode="r+", zarr_format=3)
    out.attrs["complete"] = True
    consolidate(out_path)
    return out_path


def run_refine(params: Params, progress: bool = True, on_frame: Callable[[str, int], None] | None = None) -> Path:
    """The ``refine`` stage, one scene after another: ``paths.noisy`` (+ ``paths.scenes``) -> ``paths.refined``.
    The Prefect flow (``flows.stages.refine_flow``) runs the same steps with scenes in parallel."""
    for name in prepare_refine(params):
        refine_one_scene(params, name, progress, on_frame)
    out_path = finish_refine(params)
    log.info("refined the scenes of %s with %s into %s", params.paths.noisy, params.refine.method, out_path)
    return out_path
