"""The trained refiner's folder, the contract between ``train_diffusion`` (writes it) and ``refine`` (reads it).

``paths.diffusion`` holds:

* ``model.safetensors``: the EMA weights with the best validation loss (safetensors: nothing is unpickled);
* ``config.json``: the UNet and schedule config the weights belong to (checked when loading), the sensor prior
  behind the refiner's units, its uncertainty calibration and the focal lengths it was trained on;
* ``curve.csv`` and ``metrics.json`` (written by the stage; other files in the folder survive :func:`save_model`).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from models.diffusion.calibration import Calibration
from models.diffusion.pipeline import DiffusionConfig
from models.diffusion.unet import DepthUNet, UNetConfig
from models.noise import SensorPrior
from tasks.errors import DataError
from tasks.files import atomic_dir, save_tensors
from tasks.location import Location, as_location
from tasks.versions import local_copy

WEIGHTS = "model.safetensors"
CONFIG = "config.json"



@dataclass(frozen=True)
class TrainedRefiner:
    """A trained refiner as loaded from its folder: the network (eval mode), the parametrisation it was
    trained with, the sensor prior behind its units and bound, and its uncertainty calibration."""

    model: DepthUNet
    schedule: DiffusionConfig
    sensor: SensorPrior
    calibration: Calibration
    focal_range: tuple[float, float] | None = None  # focal lengths (pixels) of the frames it was trained on


def save_model(
    folder: Path, model: torch.nn.Module, unet: UNetConfig, schedule: DiffusionConfig, sensor: SensorPrior,
    calibration: Calibration, meta: dict,
) -> None:
    """Write weights + config into ``folder`` atomically; other files already there (curve, metrics) stay."""
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        save_tensors(tmp / WEIGHTS, model.state_dict())
        config = {
            "unet": unet.model_dump(mode="json"), "schedule": schedule.model_dump(mode="json"),
            "sensor": sensor.model_dump(mode="json"), "calibration": calibration.model_dump(mode="json"), **meta,
        }
        (tmp / CONFIG).write_text(json.dumps(config, indent=2))
        if folder.exists():
            for p in folder.iterdir():
                if not (tmp / p.name).exists():
                    shutil.copy2(p, tmp / p.name)


def model_files(folder: Location) -> tuple[Path, Path]:
    """``(config.json, model.safetensors)`` of a trained refiner (a folder, or one published at a URL: then of
    this machine's copy, :func:`tasks.versions.local_copy`); a DataError names a missing one."""
    folder = as_location(folder)
    local = local_copy(folder) or folder
    if isinstance(local, str):
        raise DataError(folder, "no trained refiner published here; train the model first (dnerf train-diffusion)")
    paths = local / CONFIG, local / WEIGHTS
    for p in paths:
        if not p.is_file():
            raise DataError(p, "missing; train the model first (dnerf train-diffusion)")
    return paths


def load_model(folder: Location, device: torch.device | str = "cpu") -> TrainedRefiner:
    """Load a trained refiner (safetensors weights, config beside them); errors name the file and problem."""
    cfg_path, w_path = model_files(folder)
    try:
        meta = json.loads(cfg_path.read_text())
        unet_cfg = UNetConfig.model_validate(meta["unet"])
        schedule = DiffusionConfig.model_validate(meta["schedule"])
        sensor = SensorPrior.model_validate(meta["sensor"])
        calibration = Calibration.model_validate(meta["calibration"])
        focal = meta.get("trained_focal_px")
        focal_range = (float(focal[0]), float(focal[1])) if focal is not None else None
    except (json.JSONDecodeError, KeyError, ValueError) as err:
        raise DataError(cfg_path, f"not a valid model config: {err}") from None
    model = DepthUNet(unet_cfg)
    try:
        state = load_file(w_path, device=str(device))
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types for damaged files
        raise DataError(w_path, f"cannot read weights: {err}") from None
    missing, unexpected = model.state_dict().keys() - state.keys(), state.keys() - model.state_dict().keys()
    mismatched = [k for k in state.keys() & model.state_dict().keys() if state[k].shape != model.state_dict()[k].shape]
    if missing or unexpected or mismatched:
        raise DataError(
            w_path,
            f"weights do not match {cfg_path.name}: {len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(mismatched)} with other shapes (e.g. {sorted(missing or unexpected or mismatched)[:3]})",
        )
    model.load_state_dict(state)
    return TrainedRefiner(model.to(device).eval(), schedule, sensor, calibration, focal_range)
