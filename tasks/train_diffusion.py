"""The ``train_diffusion`` stage: fit the conditional diffusion refiner on (clean, noisy) depth pairs.

Learns from every frame of the scenes whose role is ``train`` in ``paths.scenes`` / ``paths.noisy`` and in
any ``diffusion.train.extra_stores``, validates (early stopping, checkpoint selection, uncertainty calibration)
on the scenes whose role is ``val``, and never reads an ``eval`` scene: those are the scenes whose refined
depth supervises the NeRFs and gets scored. A train or val scene that is also an eval scene of the main store
(same source and scene name) is refused. Writes to ``paths.diffusion``:

* ``model.safetensors`` — the EMA weights with the best validation loss;
* ``config.json`` — the UNet and schedule config the weights belong to (checked when loading), the sensor
  prior (from ``params.noise``) and the uncertainty calibration fitted on the validation frames;
* ``curve.csv`` — step, losses, validation loss and learning rate (DVC plots);
* ``metrics.json`` — best validation loss, steps, wall time, throughput (DVC metrics).

Optimisation: AdamW, OneCycle LR with warm-up, gradient clipping, EMA weights, mixed precision on CUDA,
early stopping on the validation loss. A checkpoint is written every ``checkpoint_every`` steps to
``paths.diffusion_checkpoints`` (outside the DVC outs, which DVC deletes before a run); running the stage
again after an interruption continues from it and ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from models.diffusion.calibration import Calibration, fit_calibration, select_untrusted_bound
from models.diffusion.losses import depth_refinement_loss, masked_mean
from models.diffusion.pipeline import (
    DiffusionConfig,
    add_noise,
    decode_x0,
    encode_x0,
    make_scheduler,
    normalise,
    predict_x0,
    to_log,
    training_target,
)
from models.diffusion.refiner import DiffusionRefiner
from models.diffusion.unet import DepthUNet
from models.noise import SensorPrior
from tasks.config import DiffusionStageConfig, Params
from tasks.devices import autocast_dtype, resolve_device
from tasks.diffusion_data import FramePairs, collate, random_crop
from tasks.errors import DataError
from tasks.files import load_checkpoint, save_checkpoint, write_text_atomic
from tasks.location import Location, join, read_bytes
from tasks.progress import progress_bar
from tasks.refiner_files import load_model, save_model
from tasks.staging import staged
from tasks.store import SceneView, live_store, open_store, scenes_with_role

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------- losses


def prepare(batch: dict[str, torch.Tensor], schedule: DiffusionConfig) -> dict[str, Any]:
    """Normalise a batch (see :mod:`models.diffusion.pipeline`): conditioning, x0, masks, log depths."""
    norm = normalise(batch["rgb"], batch["noisy"], batch["base"], batch["sigma"], batch["trusted"], schedule)
    y_clean = to_log(batch["clean"], norm.scale, schedule)
    valid_gt = batch["clean"] > 0
    x0 = torch.where(valid_gt, encode_x0(y_clean, norm.y_base, norm.unit, schedule), torch.zeros_like(y_clean))
    return {"norm": norm, "x0": x0, "y_clean": y_clean, "valid_gt": valid_gt, "focal": batch["focal"]}


def diffusion_losses(
    model: torch.nn.Module,
    prep: dict[str, Any],
    t: torch.Tensor,
    noise: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    cfg: DiffusionStageConfig,
) -> dict[str, torch.Tensor]:
    """The training objective for one batch: diffusion MSE + edge / MS-SSIM / normal losses on the x0 estimate.

    The auxiliary losses compare relative depth ``d / s = exp(log_scale * y)`` (scale-free, positive) of the
    x0 estimate with the reference, on valid reference pixels.
    """
    sch = cfg.schedule
    ab = alphas_cumprod[t]
    x_t = add_noise(prep["x0"], noise, ab)
    norm = prep["norm"]
    out = model(x_t, t, norm.cond)
    target = training_target(prep["x0"], noise, ab, sch.prediction_type)
    mse = masked_mean((out.float() - target) ** 2, prep["valid_gt"])
    x0_hat = predict_x0(x_t, out.float(), ab, sch.prediction_type)
    y_hat = decode_x0(x0_hat, norm.y_base, norm.y_obs, norm.unit, norm.trusted, sch)
    rel_hat = torch.exp((y_hat * sch.log_scale).clamp(-4, 4))
    rel_gt = torch.exp(prep["y_clean"] * sch.log_scale)
    aux = depth_refinement_loss(rel_hat, rel_gt, prep["valid_gt"], cfg.loss, focal_px=prep["focal"])
    return {"mse": mse, **aux, "total": cfg.loss.mse * mse + aux["total_aux"]}


# -------------------------------------------------------------------------------------- checkpoints


@dataclass
class TrainState:
    """Everything besides tensors needed to continue a run exactly."""

    step: int = 0
    best_val: float = math.inf
    bad_vals: int = 0
    stopped_early: bool = False
    train_seconds: float = 0.0
    curve: list[dict] = field(default_factory=list)
    np_rng: dict = field(default_factory=dict)


def fingerprint(cfg: DiffusionStageConfig, sensor: SensorPrior, pairs: Sequence[tuple[Location, Location]]) -> str:
    """Identifies a run: the config, the sensor prior and the stores' metadata (rebuilt stores of other
    content differ)."""
    h = hashlib.sha256(json.dumps([cfg.model_dump(mode="json"), sensor.model_dump(mode="json")],
                                  sort_keys=True).encode())
    for scenes, noisy in pairs:
        for p in (scenes, noisy):
            h.update(read_bytes(join(live_store(p), "zarr.json")))
    return h.hexdigest()[:16]


def save_run(folder: Location, fp: str, model, ema, best, opt, lr_sched, gen: torch.Generator,
             state: TrainState) -> None:
    tensors = {"model": model.state_dict(), "ema": ema.state_dict()}
    if best is not None:
        tensors["best"] = best
    torch_state = {"optimizer": opt.state_dict(), "lr_scheduler": lr_sched.state_dict(), "torch_rng": gen.get_state()}
    save_checkpoint(folder, fp, tensors, torch_state, asdict(state))


def restore_run(folder: Location, fp: str, model, ema, opt, lr_sched, gen: torch.Generator):
    """Restore a run from ``folder`` if it belongs to this fingerprint; returns (state, best) or None."""
    ckpt = load_checkpoint(folder, fp)
    if ckpt is None:
        return None
    model.load_state_dict(ckpt.tensors["model"])
    ema.load_state_dict(ckpt.tensors["ema"])
    opt.load_state_dict(ckpt.torch_state["optimizer"])
    lr_sched.load_state_dict(ckpt.torch_state["lr_scheduler"])
    gen.set_state(ckpt.torch_state["torch_rng"])
    return TrainState(**ckpt.state), ckpt.tensors.get("best")


# -------------------------------------------------------------------------------------------- train


def validation_batch(val: FramePairs, cfg: DiffusionStageConfig) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Fixed validation crops with fixed timesteps and noise (so validation losses are comparable)."""
    rng = np.random.default_rng(cfg.seed + 1)
    n = cfg.train.val_crops
    frames = [random_crop(val[int(rng.integers(len(val)))], cfg.train.crop, rng) for _ in range(n)]
    batch = collate(frames)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    t = torch.linspace(0, cfg.schedule.num_train_timesteps - 1, n).round().long()
    noise = torch.randn(batch["clean"].shape, generator=g)
    return batch, t, noise


@torch.no_grad()
def validate(model, val, alphas_cumprod, cfg: DiffusionStageConfig, device) -> float:
    batch, t, noise = val
    prep = prepare({k: v.to(device) for k, v in batch.items()}, cfg.schedule)
    model.eval()
    losses = diffusion_losses(model, prep, t.to(device), noise.to(device), alphas_cumprod, cfg)
    return float(losses["total"])


def train_diffusion(params: Params, progress: bool = True, stop_after: int | None = None) -> Location:
    """The ``train_diffusion`` stage. ``stop_after`` interrupts the run after that step's checkpoint
    (as a kill would), for testing resumption."""
    cfg = params.diffusion
    tc = cfg.train
    ckpt_dir = params.paths.diffusion_checkpoints
    pairs = [(params.paths.scenes, params.paths.noisy)] + [(p.scenes, p.noisy) for p in tc.extra_stores]
    sensor = SensorPrior.from_noise(params.noise)
    train_set, val_set = (FramePairs(pairs, role, sensor, cfg.schedule) for role in ("train", "val"))
    where = ", ".join(str(s) for s, _ in pairs)
    if len(train_set) == 0:
        raise DataError(where, "no scene with role 'train' to learn from (build one with data.role=train)")
    if len(val_set) == 0:
        raise DataError(where, "no scene with role 'val' to validate on (build one with data.role=val)")
    check_disjoint(params.paths.scenes, train_set.scenes + val_set.scenes)
    device = resolve_device(tc.device)
    amp = autocast_dtype(tc.amp, device)

    torch.manual_seed(cfg.seed)
    model = DepthUNet(cfg.unet).to(device)
    if tc.init_from is not None:
        model.load_state_dict(load_model(tc.init_from, device).model.state_dict())
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(tc.ema_decay), use_buffers=True)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    lr_sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=tc.lr, total_steps=tc.max_steps,
                                                   pct_start=tc.warmup_frac)
    # fp16 autocast needs loss scaling (bf16 has fp32's range and does not); disabled it is a pass-through. Its
    # scale is not checkpointed: a resumed fp16 run starts from the initial scale again.
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    alphas_cumprod = make_scheduler(cfg.schedule).alphas_cumprod.to(device)

    fp = fingerprint(cfg, sensor, pairs)
    restored = restore_run(ckpt_dir, fp, model, ema, opt, lr_sched, gen)
    state, best = restored or (TrainState(), None)
    if restored:
        rng.bit_generator.state = state.np_rng
        log.info("resuming from step %d (%s)", state.step, ckpt_dir)
    val = validation_batch(val_set, cfg)

    bar = progress_bar(total=tc.max_steps, initial=state.step, desc="train_diffusion", unit="step",
                       interactive=progress)
    while state.step < tc.max_steps and not state.stopped_early:
        t0 = time.perf_counter()
        model.train()
        crops = [
            random_crop(train_set[int(rng.integers(len(train_set)))], tc.crop, rng, tc.scale_jitter, tc.flip)
            for _ in range(tc.batch_size)
        ]
        prep = prepare({k: v.to(device) for k, v in collate(crops).items()}, cfg.schedule)
        t = torch.randint(0, cfg.schedule.num_train_timesteps, (tc.batch_size,), generator=gen).to(device)
        noise = torch.randn(prep["x0"].shape, generator=gen).to(device)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            losses = diffusion_losses(model, prep, t, noise, alphas_cumprod, cfg)
        opt.zero_grad(set_to_none=True)
        scaler.scale(losses["total"]).backward()
        scaler.unscale_(opt)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        scaler.step(opt)
        scaler.update()
        lr_sched.step()
        ema.update_parameters(model)
        state.step += 1
        row = {"step": state.step, "lr": opt.param_groups[0]["lr"], "grad_norm": float(grad_norm)}
        row.update({k: v.item() for k, v in losses.items() if k != "total_aux"})
        if state.step % tc.val_every == 0 or state.step == tc.max_steps:
            v = validate(ema.module, val, alphas_cumprod, cfg, device)
            row["val_loss"] = v
            if v < state.best_val:
                state.best_val, state.bad_vals = v, 0
                best = {k: x.detach().cpu().clone() for k, x in ema.module.state_dict().items()}
            else:
                state.bad_vals += 1
                state.stopped_early = state.bad_vals >= tc.patience
        state.curve.append(row)
        state.train_seconds += time.perf_counter() - t0
        bar.update(1)
        bar.set_postfix(loss=f"{row['total']:.4f}", val=f"{state.best_val:.4f}")
        if state.step % tc.checkpoint_every == 0 or state.stopped_early or state.step == tc.max_steps:
            state.np_rng = dict(rng.bit_generator.state)
            save_run(ckpt_dir, fp, model, ema, best, opt, lr_sched, gen, state)
            if stop_after is not None and state.step >= stop_after:
                raise KeyboardInterrupt(f"stopped after step {state.step}")
    bar.close()

    final = DepthUNet(cfg.unet)
    final.load_state_dict(best if best is not None else ema.module.state_dict())
    calibration = calibrate(final.eval(), cfg.schedule, sensor, val_set, params)
    used = {role: [f"{store}::{name}" for store, name in data.scenes] for role, data in
            (("train", train_set), ("val", val_set))}
    with staged(params, outputs=["diffusion"]) as local:  # a URL: written here, published when complete
        write_outputs(Path(local.paths.diffusion), final, cfg, sensor, calibration, train_set.focal_range(), state,
                      used)
    return params.paths.diffusion


def check_disjoint(eval_store: Location, used: Sequence[tuple[Location, str]]) -> None:
    """Refuse refiner training / validation scenes that are also evaluation scenes of ``eval_store``: same
    scene name and source (a store built twice from one folder), or the very same scene group."""
    scenes = open_store(eval_store, "scenes")
    evals = {n: SceneView(scenes[n]).attrs for n in scenes_with_role(scenes, "eval")}
    for store, name in used:
        if name in evals:
            attrs = SceneView(open_store(store, "scenes")[name]).attrs
            if attrs.get("source") == evals[name].get("source"):
                raise DataError(
                    store, f"scene {name!r} is used to train or validate the refiner but is also an evaluation "
                    f"scene of {eval_store}: refined depth would be scored on data the model learned from"
                )


def calibrate(model: DepthUNet, schedule: DiffusionConfig, sensor: SensorPrior, val: FramePairs, params: Params):
    """Fit what the refiner fits on validation frames (:mod:`models.diffusion.calibration`): the edge bound, then
    the uncertainty of the bounded output, on up to ``diffusion.train.calib_frames`` whole validation frames
    refined exactly as the refine stage will (its steps, samples and tiling)."""
    rc = params.refine
    refiner = DiffusionRefiner(model, schedule, sensor, Calibration(), rc.steps, rc.samples, rc.tile, rc.overlap)
    n = min(len(val), params.diffusion.train.calib_frames)
    picks = np.linspace(0, len(val) - 1, n).round().astype(int) if n else []
    frames = [val[int(k)] for k in picks]
    draws = [refiner.draw(f.rgb, f.noisy, f.focal, seed=int(k)) for f, k in zip(frames, picks, strict=True)]
    bound, rmse = select_untrusted_bound((d.samples, d.observation.base, d.observation.sigma, d.edges, f.clean)
                                         for d, f in zip(draws, frames, strict=True))
    if rmse:
        log.info("edge bound %s (validation RMSE on measured edge pixels, mm: %s)", "free" if bound is None else bound,
                 ", ".join(f"{k} {1000 * v:.1f}" for k, v in rmse.items()))
    refiner = refiner.with_calibration(Calibration(untrusted_bound=bound))
    parts: dict[str, list[np.ndarray]] = {"err": [], "spread": [], "sigma": [], "trusted": []}
    for d, f in zip(draws, frames, strict=True):
        out = refiner.summarise(d)
        ref = f.clean > 0
        for key, arr in (("err", out.depth - f.clean), ("spread", out.spread), ("sigma", out.sigma),
                         ("trusted", out.trusted)):
            parts[key].append(arr[ref])
    if not parts["err"] or not sum(a.size for a in parts["err"]):
        log.warning("no validation pixels with a reference: the uncertainty is left uncalibrated")
        return refiner.calibration
    err, spread, sigma, trusted = (np.concatenate(parts[k]) for k in parts)
    cal = fit_calibration(err, spread, sigma, trusted).model_copy(update={"untrusted_bound": bound})
    log.info("uncertainty calibrated on %d validation pixels: %.3f within 1 sigma, %.3f within 2",
             cal.pixels, cal.within_1sigma, cal.within_2sigma)
    return cal


def write_outputs(
    out_dir: Path, model: DepthUNet, cfg: DiffusionStageConfig, sensor: SensorPrior, calibration: Calibration,
    focal_range: tuple[float, float], state: TrainState, scenes: dict[str, list[str]],
) -> None:
    """Weights + config (atomically), the training curve CSV and the metrics JSON (which also names the scenes
    trained and validated on, ``scenes[role]`` as ``<store>::<scene>``, so any score can be checked for leaks)."""
    crops = state.step * cfg.train.batch_size
    metrics = {
        "best_val_loss": state.best_val,
        "steps": state.step,
        "stopped_early": state.stopped_early,
        "train_seconds": round(state.train_seconds, 2),
        "crops_per_second": round(crops / max(state.train_seconds, 1e-9), 2),
        "parameters": sum(p.numel() for p in model.parameters()),
        "calibration_within_1sigma": calibration.within_1sigma,
        "calibration_within_2sigma": calibration.within_2sigma,
        "untrusted_bound": calibration.untrusted_bound,
    }
    meta = {"trained": metrics, "trained_focal_px": [round(f, 2) for f in focal_range]}
    save_model(out_dir, model, cfg.unet, cfg.schedule, sensor, calibration, meta)
    fields = ["step", "total", "mse", "edge", "ssim", "normal", "val_loss", "lr", "grad_norm"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    w.writerows(state.curve)
    write_text_atomic(out_dir / "curve.csv", buf.getvalue())
    used = {"train_scenes": scenes["train"], "val_scenes": scenes["val"]}
    write_text_atomic(out_dir / "metrics.json", json.dumps(metrics | used, indent=2))
    log.info("trained %d steps (%.1f crops/s), best validation loss %.4f", state.step, metrics["crops_per_second"],
             state.best_val)


def run_train_diffusion(params: Params, progress: bool = True) -> Location:
    return train_diffusion(params, progress=progress)
