"""The train_diffusion stage on a tiny synthetic store: learning, exact resume, early stopping, model files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from models.diffusion.calibration import BOUND_GRID
from models.diffusion.unet import DepthUNet
from tasks.config import load_params
from tasks.corrupt import run_corrupt
from tasks.download import run_download
from tasks.errors import DataError
from tasks.refiner_files import load_model
from tasks.train_diffusion import train_diffusion

TINY_NET = [
    "diffusion.unet.base_channels=8",
    "diffusion.unet.channel_mults=[1, 2]",
    "diffusion.unet.attention_heads=2",
    "diffusion.train.crop=16",
    "diffusion.train.batch_size=4",
    "diffusion.train.val_crops=4",
]


@pytest.fixture
def stores(make_stores, tmp_path):
    return make_stores([f"paths.diffusion={tmp_path / 'model'}", f"paths.diffusion_checkpoints={tmp_path / 'ckpt'}",
                        *TINY_NET])


def test_training_lowers_the_loss_and_writes_outputs(stores, tmp_path):
    params = load_params(None, stores + ["diffusion.train.max_steps=60", "diffusion.train.val_every=10",
                                         "diffusion.train.patience=10", "diffusion.train.lr=0.005",
                                         "diffusion.train.ema_decay=0.5"])
    out = train_diffusion(params, progress=False)
    rows = (out / "curve.csv").read_text().splitlines()
    header = rows[0].split(",")
    vals = [float(r.split(",")[header.index("val_loss")]) for r in rows[1:] if r.split(",")[header.index("val_loss")]]
    assert len(vals) == 6 and all(np.isfinite(vals))
    # learning: the training loss drops (the validation room is another room, too small to judge from)
    total = [float(r.split(",")[header.index("total")]) for r in rows[1:]]
    assert np.mean(total[-15:]) < 0.8 * np.mean(total[:15]), f"training loss did not drop: {total}"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 60 and metrics["crops_per_second"] > 0
    assert metrics["best_val_loss"] == pytest.approx(min(vals), rel=1e-6)
    trained = load_model(out)
    assert trained.schedule.prediction_type == "v_prediction"
    assert any(p.abs().sum() > 0 for p in trained.model.parameters())
    # the uncertainty was calibrated on the validation room's frames
    cal = trained.calibration
    assert cal.pixels > 0 and cal.within_1sigma is not None
    assert metrics["calibration_within_1sigma"] == pytest.approx(cal.within_1sigma)
    # ... after the edge bound chosen on the same frames, which the model file keeps
    assert cal.untrusted_bound in BOUND_GRID and metrics["untrusted_bound"] == cal.untrusted_bound


def test_interrupted_run_resumes_to_the_same_weights(stores, tmp_path):
    common = stores + ["diffusion.train.max_steps=8", "diffusion.train.val_every=2",
                       "diffusion.train.checkpoint_every=3"]
    straight = load_params(None, common + [f"paths.diffusion={tmp_path / 'a'}",
                                           f"paths.diffusion_checkpoints={tmp_path / 'ca'}"])
    train_diffusion(straight, progress=False)
    resumed = load_params(None, common + [f"paths.diffusion={tmp_path / 'b'}",
                                          f"paths.diffusion_checkpoints={tmp_path / 'cb'}"])
    with pytest.raises(KeyboardInterrupt):
        train_diffusion(resumed, progress=False, stop_after=3)
    assert json.loads((tmp_path / "cb" / "state.json").read_text())["step"] == 3
    assert not (tmp_path / "b").exists(), "no model is published before training ends"
    train_diffusion(resumed, progress=False)
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    curve_a = (tmp_path / "a" / "curve.csv").read_text()
    assert curve_a == (tmp_path / "b" / "curve.csv").read_text()


def test_changed_params_do_not_resume_a_foreign_checkpoint(stores, tmp_path):
    params = load_params(None, stores + ["diffusion.train.max_steps=4", "diffusion.train.checkpoint_every=2"])
    train_diffusion(params, progress=False)
    other = load_params(None, stores + ["diffusion.train.max_steps=6", "diffusion.train.checkpoint_every=2"])
    train_diffusion(other, progress=False)
    assert json.loads((tmp_path / "model" / "metrics.json").read_text())["steps"] == 6


def test_early_stopping(stores, tmp_path):
    params = load_params(None, stores + ["diffusion.train.max_steps=50", "diffusion.train.val_every=1",
                                         "diffusion.train.patience=2", "diffusion.train.lr=1e-12",
                                         "diffusion.train.ema_decay=0"])
    out = train_diffusion(params, progress=False)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stopped_early"] and metrics["steps"] < 10


def test_model_files_are_checked(stores, tmp_path):
    params = load_params(None, stores + ["diffusion.train.max_steps=1"])
    out = train_diffusion(params, progress=False)
    cfg = json.loads((out / "config.json").read_text())
    cfg["unet"]["base_channels"] = 16
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(DataError, match=r"model.safetensors: weights do not match config.json"):
        load_model(out)
    (out / "config.json").write_text("{not json")
    with pytest.raises(DataError, match=r"config.json: not a valid model config"):
        load_model(out)
    (out / "model.safetensors").write_bytes(b"garbage")
    (out / "config.json").unlink()
    with pytest.raises(DataError, match=r"config.json: missing"):
        load_model(out)


def test_weights_are_safetensors_not_pickles(stores, tmp_path):
    params = load_params(None, stores + ["diffusion.train.max_steps=1"])
    out = train_diffusion(params, progress=False)
    raw = (out / "model.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    assert json.loads(raw[8 : 8 + header_len]), "safetensors header is JSON"
    save_file({"x": torch.zeros(1)}, tmp_path / "check.safetensors")
    assert np.frombuffer(raw[:8], dtype="<u8")[0] == header_len


def set_roles(path, roles: dict) -> None:
    """Rewrite scene roles of a finished store (and its consolidated metadata, which readers use)."""
    import zarr

    from tasks.store import consolidate

    root = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    for name, role in roles.items():
        root[name].attrs["role"] = role
    consolidate(path)


def test_training_needs_train_and_val_scenes_apart_from_the_eval_scenes(stores, tmp_path):
    from tasks.store import open_store

    params = load_params(None, stores + ["diffusion.train.max_steps=1"])
    root = open_store(params.paths.scenes, "scenes")
    saved = {n: root[n].attrs["role"] for n in root.group_keys()}
    assert sorted(saved.values()) == ["eval", "eval", "train", "val"]
    set_roles(params.paths.scenes, {n: "train" if r == "val" else r for n, r in saved.items()})
    with pytest.raises(DataError, match="no scene with role 'val'"):
        train_diffusion(params, progress=False)
    set_roles(params.paths.scenes, {n: "eval" if r == "train" else r for n, r in saved.items()})
    with pytest.raises(DataError, match="no scene with role 'train'"):
        train_diffusion(params, progress=False)
    set_roles(params.paths.scenes, saved)

    # a second store built from the same source whose scene is an evaluation scene of the main store
    overlap = load_params(None, stores + [f"paths.scenes={tmp_path / 'again.zarr'}",
                                          f"paths.noisy={tmp_path / 'again_n.zarr'}"])
    run_download(overlap, progress=False)
    run_corrupt(overlap, progress=False)
    set_roles(overlap.paths.scenes, {"synthetic_000": "train"})
    leaky = load_params(None, stores + ["diffusion.train.max_steps=1",
                                        ("diffusion.train.extra_stores="
                                         f"[{{scenes: {overlap.paths.scenes}, noisy: {overlap.paths.noisy}}}]")])
    with pytest.raises(DataError, match=r"again.zarr: scene 'synthetic_000' is used to train or validate"):
        train_diffusion(leaky, progress=False)
    assert not (tmp_path / "model").exists(), "nothing is written"


def test_fine_tuning_starts_from_the_given_model_and_mixes_in_extra_stores(stores, tmp_path):
    """``init_from``: training starts from that model's weights (a near-zero learning rate keeps them);
    ``extra_stores``: their train / val scenes join the main store's, as ``metrics.json`` records."""
    base = load_params(None, stores + ["diffusion.train.max_steps=4", "diffusion.train.val_every=2",
                                       "diffusion.train.lr=0.005"])
    first = train_diffusion(base, progress=False)
    extra = load_params(None, stores + ["data.seed=5", f"paths.scenes={tmp_path / 'more.zarr'}",
                                        f"paths.noisy={tmp_path / 'more_n.zarr'}", f"paths.raw={tmp_path / 'more'}"])
    run_download(extra, progress=False)
    run_corrupt(extra, progress=False)
    tuned = load_params(None, stores + [
        "diffusion.train.max_steps=2", "diffusion.train.val_every=1", "diffusion.train.lr=1e-9",
        f"diffusion.train.init_from={first}", f"paths.diffusion={tmp_path / 'tuned'}",
        f"paths.diffusion_checkpoints={tmp_path / 'ckpt-tuned'}",
        f"diffusion.train.extra_stores=[{{scenes: {extra.paths.scenes}, noisy: {extra.paths.noisy}}}]"])
    out = train_diffusion(tuned, progress=False)
    start, end = load_model(first).model.state_dict(), load_model(out).model.state_dict()
    assert max(float((start[k].float() - end[k].float()).abs().max()) for k in start) < 1e-5
    torch.manual_seed(base.diffusion.seed)  # what training starts from without init_from: far from the first model
    fresh = DepthUNet(base.diffusion.unet).state_dict()
    assert max(float((start[k].float() - fresh[k].float()).abs().max()) for k in start) > 1e-3
    used = json.loads((out / "metrics.json").read_text())
    assert sorted(s.split("::")[0] for s in used["train_scenes"]) == sorted([str(base.paths.scenes),
                                                                             str(extra.paths.scenes)])
    assert {s.split("::")[1] for s in used["val_scenes"]} == {"refiner_val_000"}
    assert len(used["val_scenes"]) == 2
