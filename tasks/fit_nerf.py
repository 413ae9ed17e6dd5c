"""The ``fit_nerf`` stage: a memory-efficient NeRF per scene, supervised by colour and (refined) depth.

For each scene with poses: fit on the train views (:func:`fit_scene`), then render, score and export it to
``paths.nerf/<scene>/`` (:func:`tasks.nerf_export.export_scene`: the fit folder of :mod:`tasks.nerf_layout`).
Scenes without poses (e.g. NYU single frames) are skipped with a message. A per-scene checkpoint in
``paths.nerf_checkpoints`` lets an interrupted fit continue; a finished fit is only re-rendered and re-exported.

Determinism: a fit draws nothing from the global RNGs (two fits may run at once in threads). The initial
parameters come from a CPU ``torch.Generator`` seeded ``nerf.seed`` (:func:`init_generator`), the occupancy
grid's and the renderer's training samples from a ``torch.Generator`` on the fit's device seeded ``nerf.seed``
(checkpointed), the rays and the frame pool from the sampler's NumPy generator seeded ``nerf.seed``
(checkpointed) and the scene box's points from one seeded ``nerf.seed``.

Memory: rays are drawn from a small pool of frames read from the stores on the fly, full images are
rendered in ray chunks, the ray batch adapts to keep the number of network evaluations per step near
``train.target_samples``, and gradient checkpointing / mixed precision are options.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import torch

from models.nerf.field import NeRFField
from models.nerf.losses import depth_nll_loss, ds_nerf_loss, patch_edge_loss, rgb_loss
from models.nerf.occupancy import OccupancyGrid
from models.nerf.rendering import rays_from_camera, render_rays
from models.nerf.sampling import near_far
from tasks.config import DepthSource, NerfStageConfig, Params
from tasks.devices import autocast_dtype, resolve_device
from tasks.errors import DataError
from tasks.files import load_checkpoint, save_checkpoint, write_text_atomic
from tasks.location import Location, exists, join, read_bytes
from tasks.nerf_data import RaySampler, SamplerState, SceneFrames, open_scene, scene_bounds, sparse_views
from tasks.nerf_export import export_scene
from tasks.nerf_layout import ABLATION, FitJob
from tasks.progress import progress_bar
from tasks.staging import staged
from tasks.store import SceneView, local_scene_copies, open_store, resolve_store, scene_names

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------- rays


def batch_rays(frames: SceneFrames, frame: torch.Tensor, pixel: torch.Tensor, device) -> tuple[torch.Tensor, ...]:
    """World rays for ``(frame, flat pixel)`` pairs: origins, unit directions, z_scale, each ``[n, ...]``."""
    h, w = frames.shape
    o = torch.empty(len(frame), 3)
    d = torch.empty(len(frame), 3)
    zs = torch.empty(len(frame))
    for i in torch.unique(frame).tolist():
        sel = frame == i
        o[sel], d[sel], zs[sel] = rays_from_camera(frames.K[i], frames.c2w[i], h, w, pixel[sel])
    return o.to(device), d.to(device), zs.to(device)


# --------------------------------------------------------------------------------------------- model


@dataclass
class FitState:
    """A fit's progress: steps taken, the next ray batch size, training seconds (wall clock, setup excluded)
    and the curve (one logged dict per step)."""

    step: int = 0
    n_rays: int = 1024
    seconds: float = 0.0
    curve: list[dict] = field(default_factory=list)


def init_generator(cfg: NerfStageConfig) -> torch.Generator:
    """The CPU generator a fit's initial parameters are drawn from: its own, seeded ``nerf.seed``."""
    return torch.Generator().manual_seed(cfg.seed)


def make_model(
    cfg: NerfStageConfig, aabb: torch.Tensor, device, generator: torch.Generator | None = None
) -> tuple[NeRFField, OccupancyGrid]:
    """The hash-grid field and its occupancy grid on ``device``; the field's parameters are drawn on the CPU
    from ``generator`` (default :func:`init_generator`), so they do not depend on the device or on any other
    use of a random number generator."""
    generator = generator if generator is not None else init_generator(cfg)
    field_ = NeRFField(cfg.field, aabb, generator).to(device)
    grid = OccupancyGrid(aabb, cfg.occupancy.resolution).to(device)
    return field_, grid


def scene_fingerprint(cfg: NerfStageConfig, frames: SceneFrames, stores: list[Location | None]) -> str:
    """Identity of a fit's inputs: the NeRF params, the scene and the root metadata of each store it reads."""
    h = hashlib.sha256(json.dumps(cfg.model_dump(mode="json", exclude={"train": {"device"}}), sort_keys=True).encode())
    h.update(frames.view.name.encode())
    for store in stores:
        live = resolve_store(store) if store is not None else None
        if live is not None and exists(join(live, "zarr.json")):
            h.update(read_bytes(join(live, "zarr.json")))
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class RestoredFit:
    """What :func:`restore_fit` read besides the state it loads in place (field, grid, optimizer, learning rate
    schedule, torch generator).

    Attributes:
        state: the fit's progress at the checkpoint.
        sampler: the ray sampler's draws at the checkpoint (:meth:`RaySampler.set_state` continues them).
    """

    state: FitState
    sampler: SamplerState


def save_fit(folder: Location, fp: str, field_, grid, opt, sched, state: FitState, sampler: SamplerState, gen) -> None:
    """Checkpoint a fit into ``folder`` under fingerprint ``fp`` (:func:`tasks.files.save_checkpoint`)."""
    torch_state = {"optimizer": opt.state_dict(), "lr": sched.state_dict(), "torch_rng": gen.get_state()}
    save_checkpoint(folder, fp, {"field": field_.state_dict(), "grid": grid.state_dict()}, torch_state,
                    {"sampler": asdict(sampler), **asdict(state)})


def restore_fit(folder: Location, fp: str, field_, grid, opt, sched, gen) -> RestoredFit | None:
    """Load the checkpoint of fingerprint ``fp`` in ``folder`` into the field, grid, optimizer, schedule and
    generator; the fit's progress and sampler state, or None (nothing loaded) without such a checkpoint."""
    ckpt = load_checkpoint(folder, fp)
    if ckpt is None:
        return None
    field_.load_state_dict(ckpt.tensors["field"])
    grid.load_state_dict(ckpt.tensors["grid"])
    opt.load_state_dict(ckpt.torch_state["optimizer"])
    sched.load_state_dict(ckpt.torch_state["lr"])
    gen.set_state(ckpt.torch_state["torch_rng"])
    state = dict(ckpt.state)
    sampler = SamplerState(**state.pop("sampler"))
    return RestoredFit(FitState(**state), sampler)


# ------------------------------------------------------------------------------------------ training


def chunk_loss(
    field_: NeRFField,
    grid: OccupancyGrid | None,
    rays: tuple[torch.Tensor, ...],
    targets: tuple[torch.Tensor, ...],
    aabb: torch.Tensor,
    cfg: NerfStageConfig,
    gen: torch.Generator,
    amp: torch.dtype | None,
    perturb: bool = True,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    """Render one chunk of training rays (whole patches) and its loss; returns (loss, its terms, network
    evaluations). ``rays``: origins, unit directions, z_scale; ``targets``: rgb, z-depth, depth sigma."""
    tc = cfg.train
    rays_o, rays_d, z_scale = rays
    rgb, z_ref, sigma = targets
    near, far = near_far(rays_o, rays_d, aabb, tc.near)
    # The reference as a distance along the unit ray and its spread (z-depth / z_scale), for sampling and DS-NeRF.
    t_ref, sigma_t = z_ref / z_scale, torch.sqrt(sigma**2 + tc.sigma_floor**2) / z_scale
    guide = None
    if cfg.depth_source != "none" and tc.guide_spread > 0:
        guide = (t_ref, tc.guide_spread * sigma_t)
    with torch.autocast(rays_o.device.type, dtype=amp or torch.float32, enabled=amp is not None):
        out = render_rays(
            field_, rays_o, rays_d, near, far, n_coarse=tc.n_coarse, n_fine=tc.n_fine, occupancy=grid,
            perturb=perturb, chunk=len(rays_o), z_scale=z_scale, generator=gen, guide=guide,
        )
    terms = {"rgb": rgb_loss(out.rgb.float(), rgb)}
    loss = terms["rgb"]
    if cfg.depth_source != "none":
        assert out.z_depth is not None  # z_scale given
        z_pred = out.z_depth.float()
        if tc.depth_weight > 0:
            terms["depth"] = depth_nll_loss(z_pred, z_ref, sigma, tc.sigma_floor)
            loss = loss + tc.depth_weight * terms["depth"]
        if tc.edge_weight > 0:
            terms["edge"] = patch_edge_loss(z_pred, z_ref, tc.patch)
            loss = loss + tc.edge_weight * terms["edge"]
        if tc.ds_weight > 0:
            t_mid = 0.5 * (out.t_starts + out.t_ends)
            deltas = out.t_ends - out.t_starts
            terms["ds"] = ds_nerf_loss(out.weights.float(), t_mid, deltas, t_ref, sigma_t)
            loss = loss + tc.ds_weight * terms["ds"]
    return loss, terms, out.n_evaluated


def training_step(
    field_: NeRFField,
    grid: OccupancyGrid | None,
    frames: SceneFrames,
    batch: dict[str, torch.Tensor],
    aabb: torch.Tensor,
    cfg: NerfStageConfig,
    device,
    gen: torch.Generator,
    amp: torch.dtype | None,
    scaler: torch.amp.GradScaler | None = None,
    perturb: bool = True,
) -> tuple[dict[str, float], int]:
    """Render a ray batch and accumulate the gradients of its loss into the field's ``.grad``.

    The batch is rendered ``train.chunk`` rays at a time (rounded down to whole ``patch x patch`` blocks,
    so the edge term sees complete patches), each chunk's loss weighted by its share of the rays and
    back-propagated before the next chunk is rendered: the gradient is that of the whole batch's mean loss,
    and the activations held at once are one chunk's (ray chunking). ``scaler`` scales the loss for fp16;
    ``perturb=False`` places the samples deterministically (training jitters them).

    Returns the logged terms (batch means) and the network evaluations.
    """
    tc = cfg.train
    rays = batch_rays(frames, batch["frame"], batch["pixel"], device)
    targets = (batch["rgb"].to(device), batch["z"].to(device), batch["sigma"].to(device))
    n = len(rays[0])
    per_patch = tc.patch * tc.patch
    step = max(tc.chunk // per_patch, 1) * per_patch
    sums: dict[str, float] = {}
    n_eval = 0
    for start in range(0, n, step):
        part = slice(start, min(n, start + step))
        share = (part.stop - part.start) / n
        loss, terms, evals = chunk_loss(field_, grid, tuple(r[part] for r in rays), tuple(t[part] for t in targets),
                                        aabb, cfg, gen, amp, perturb)
        (scaler.scale(loss * share) if scaler is not None else loss * share).backward()
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + share * float(v.detach())
        n_eval += evals
    logged = dict(sums)
    logged["psnr"] = -10 * math.log10(max(logged["rgb"], 1e-10))
    return logged, n_eval


def fit_scene(
    frames: SceneFrames,
    cfg: NerfStageConfig,
    ckpt_dir: Location,
    fingerprint: str,
    progress: bool = True,
    stop_after: int | None = None,
    on_step=None,
    make_field=None,
    use_occupancy: bool = True,
) -> tuple[NeRFField, OccupancyGrid | None, FitState, np.ndarray]:
    """Fit one scene (resuming from ``ckpt_dir`` when it holds this fingerprint's run).

    Returns the field, its occupancy grid, the fit's state (steps, time, curve) and the scene box.
    ``on_step(step, field, grid)`` is called after every step, and once before the first one with the
    starting step (benchmarks start their training clocks there, after the setup, and measure time-to-PSNR).
    ``make_field(aabb) -> nn.Module`` replaces the hash-grid field (e.g. the vanilla NeRF baseline): a module
    on the CPU with an ``init_weights(generator)`` method, which draws its parameters from :func:`init_generator`;
    ``use_occupancy=False`` renders without empty-space skipping (the grid is then None).
    """
    tc = cfg.train
    device = resolve_device(tc.device)
    amp = autocast_dtype(tc.amp, device)
    aabb_np = scene_bounds(frames, cfg.bounds_padding, seed=cfg.seed)
    aabb = torch.from_numpy(aabb_np).to(device)
    if make_field is None:
        field_, grid = make_model(cfg, aabb, device)
    else:
        field_ = make_field(aabb)
        field_.init_weights(init_generator(cfg))
        field_ = field_.to(device)
        grid = OccupancyGrid(aabb, cfg.occupancy.resolution).to(device)
    if not use_occupancy:
        grid = None
    opt = torch.optim.Adam(field_.parameters(), lr=tc.lr, eps=1e-15, weight_decay=tc.weight_decay)
    # fp16 autocast needs loss scaling (bf16 has fp32's range and does not); disabled it is a pass-through
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    gamma = (tc.lr_final / tc.lr) ** (1 / max(tc.steps, 1))
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    sampler = RaySampler(frames, tc.patch, tc.pool_frames, tc.pool_refresh, cfg.seed)
    state = FitState(n_rays=tc.initial_rays)
    restored = restore_fit(ckpt_dir, fingerprint, field_, grid, opt, sched, gen) if grid is not None else None
    if restored is not None:
        state = restored.state
        sampler.set_state(restored.sampler)
        log.info("%s: resuming at step %d", frames.view.name, state.step)
    ppatch = tc.patch * tc.patch
    bar = progress_bar(total=tc.steps, initial=state.step, desc=f"fit_nerf {frames.view.name}", unit="step",
                       interactive=progress)
    if on_step is not None:
        on_step(state.step, field_, grid)
    while state.step < tc.steps:
        t0 = time.perf_counter()
        field_.train()
        if grid is not None and state.step % cfg.occupancy.update_every == 0:
            oc = cfg.occupancy
            grid.update(state.step, field_.density, oc.warmup_steps, oc.decay, oc.threshold, oc.n_samples_per_cell,
                        n_cells=oc.n_cells, generator=gen)
        batch = sampler.sample(state.n_rays)
        opt.zero_grad(set_to_none=True)
        logged, n_eval = training_step(field_, grid, frames, batch, aabb, cfg, device, gen, amp, scaler)
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(field_.parameters(), tc.grad_clip)
        scaler.step(opt)
        scaler.update()
        sched.step()
        state.step += 1
        # adapt the ray batch so that network evaluations per step stay near the target
        per_ray = max(n_eval / len(batch["pixel"]), 1.0)
        want = int(tc.target_samples / per_ray) // ppatch * ppatch
        state.n_rays = int(np.clip(want, tc.min_rays, tc.max_rays))
        state.seconds += time.perf_counter() - t0
        logged.update(step=state.step, rays=len(batch["pixel"]), samples_per_ray=per_ray,
                      occupied=grid.occupied_fraction if grid is not None else 1.0, seconds=state.seconds)
        state.curve.append(logged)
        bar.update(1)
        bar.set_postfix(psnr=f"{logged['psnr']:.1f}", spr=f"{per_ray:.0f}")
        if on_step is not None:
            on_step(state.step, field_, grid)
        if grid is not None and (state.step % tc.checkpoint_every == 0 or state.step == tc.steps):
            save_fit(ckpt_dir, fingerprint, field_, grid, opt, sched, state, sampler.get_state(), gen)
            if stop_after is not None and state.step >= stop_after:
                raise KeyboardInterrupt(f"stopped after step {state.step}")
    bar.close()
    return field_, grid, state, aabb_np


# --------------------------------------------------------------------------------------------- stage


def fit_config(job: FitJob, cfg: NerfStageConfig) -> NerfStageConfig:
    """The config of one fit: its depth source, and none of the stage-level scene / ablation lists, so the same
    fit has the same fingerprint whichever way it was asked for."""
    return cfg.model_copy(update={"depth_source": job.source, "ablation_sources": [], "scenes": None})


def plan_fit_nerf(params: Params) -> tuple[list[FitJob], dict[str, str]]:
    """The fits to run (main fits first, then the ablation) and what is skipped, with the reason: the
    refiner's training and validation scenes, scenes without camera poses, and ``gt`` ablation fits of scenes
    without a reference depth."""
    cfg = params.nerf
    scenes = open_store(params.paths.scenes, "scenes")
    names, skipped = [], {}
    for name in cfg.scenes or scene_names(scenes):
        if name not in scenes:
            raise DataError(params.paths.scenes, f"scene {name!r} (nerf.scenes) is not in the store")
        if name == ABLATION:
            raise DataError(params.paths.scenes, f"scene name {ABLATION!r} is reserved for the NeRF ablation folder")
        view = SceneView(scenes[name])
        if (role := view.role) != "eval":
            skipped[name] = f"role {role!r}: the refiner's own {role} scene, not an evaluation scene; skipped"
            continue
        if not np.any(np.all(np.isfinite(view.group["c2w"][:].reshape(view.n_frames, -1)), axis=1)):
            msg = "no camera poses (e.g. NYU single frames): a NeRF needs posed views; skipped"
            log.warning("%s: %s", name, msg)
            skipped[name] = msg
        else:
            names.append(name)
    jobs = [FitJob(name, cfg.depth_source) for name in names]
    for source in dict.fromkeys(cfg.ablation_sources):
        if source == cfg.depth_source:
            continue
        for name in names:
            if source == "gt" and SceneView(scenes[name]).attrs.get("depth_kind") != "reference":
                skipped[f"{name}@gt"] = "ablation with gt depth: the scene has sensor depth only"
                continue
            jobs.append(FitJob(name, source, ablation=True))
    return jobs, skipped


def fit_one_scene(params: Params, job: FitJob, out_dir: Path, progress: bool = True, on_step=None) -> dict:
    """Run one fit (resuming from its checkpoint) and export it into ``out_dir``; its metrics."""
    cfg = fit_config(job, params.nerf)
    paths = params.paths
    source = cast(DepthSource, job.source)  # FitJobs are made from nerf.depth_source / ablation_sources
    # stores on object storage: the fit reads the scene's frames many times over, so from a local copy
    with local_scene_copies([paths.scenes, paths.noisy, paths.refined], job.scene) as (scenes, noisy, refined):
        assert scenes is not None
        frames = open_scene(scenes, job.scene, source, noisy, refined)
        frames = sparse_views(frames, cfg.train_views)
        fp = scene_fingerprint(cfg, frames, [scenes, noisy, refined])
        ckpt = job.folder(paths.nerf_checkpoints)
        field_, grid, state, aabb = fit_scene(frames, cfg, ckpt, fp, progress, on_step=on_step)
        metrics = export_scene(out_dir, field_, grid, frames, aabb, cfg, state, resolve_device(cfg.train.device))
    log.info("%s: test PSNR %.2f dB, depth RMSE %.3f m", job.label, metrics["test_psnr"], metrics["test_depth_rmse"])
    return metrics


SUMMARY_KEYS = ("test_psnr", "test_ssim", "test_depth_rmse", "train_seconds")


def _means(results: list[dict]) -> dict[str, float]:
    return {f"mean_{k}": float(np.mean([r[k] for r in results])) for k in SUMMARY_KEYS}


def write_nerf_summary(params: Params, results: dict[FitJob, dict], skipped: dict[str, str]) -> dict:
    """``paths.nerf_metrics``: the main fits' per-scene metrics and means, skipped fits, and per depth source
    (main and ablation) the per-scene metrics and means (``by_source``)."""
    main = {job.scene: m for job, m in results.items() if not job.ablation}
    summary: dict = {"scenes": main, "skipped": skipped, "depth_source": params.nerf.depth_source}
    if main:
        summary.update(_means(list(main.values())))
    by_source: dict[str, dict] = {}
    for job, m in results.items():
        by_source.setdefault(job.source, {"scenes": {}})["scenes"][job.scene] = m
    for entry in by_source.values():
        entry.update(_means(list(entry["scenes"].values())))
    summary["by_source"] = by_source
    write_text_atomic(params.paths.nerf_metrics, json.dumps(summary, indent=2))
    return summary


def run_fit_nerf(params: Params, progress: bool = True) -> Location:
    """The ``fit_nerf`` stage, one fit after another; writes ``paths.nerf`` and ``paths.nerf_metrics``.
    The Prefect flow (``flows.stages.fit_nerf_flow``) runs the fits in parallel."""
    jobs, skipped = plan_fit_nerf(params)
    with staged(params, outputs=["nerf", "nerf_metrics"]) as local:
        out_root = Path(local.paths.nerf)
        results = {job: fit_one_scene(params, job, job.folder(out_root), progress) for job in jobs}
        write_nerf_summary(local, results, skipped)
    return params.paths.nerf
