"""Fault injection: stages killed hard (SIGKILL) at a random point resume, reuse finished work and end with the
same outputs as an uninterrupted run; a killed run never leaves an output that looks complete; two runs on the
same output at once: the second refuses.

Every run is the real ``dnerf`` command in a subprocess against the session's Prefect server. The kill point is
"once the stage has made some durable progress" (a checkpoint, a finished frame) plus a random delay, so each
test kills a run that is mid-way; the seed of the delay is printed for reproduction.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zarr

from tasks.config import load_params
from tasks.corrupt import run_corrupt
from tasks.download import run_download
from tasks.store import open_store
from tasks.train_diffusion import run_train_diffusion

pytestmark = pytest.mark.slow

TINY_DIFFUSION = [
    "diffusion.unet.base_channels=8", "diffusion.unet.channel_mults=[1, 2]", "diffusion.unet.attention_heads=2",
    "diffusion.train.crop=16", "diffusion.train.batch_size=2", "diffusion.train.val_crops=2",
]
TINY_NERF = [
    "nerf.depth_source=noisy", "nerf.ablation_sources=[]", "nerf.train.target_samples=2048",
    "nerf.train.n_coarse=8", "nerf.train.n_fine=4", "nerf.occupancy.resolution=16", "nerf.occupancy.warmup_steps=4",
    "nerf.occupancy.n_cells=256", "nerf.export.mesh_resolution=16",
]


def straight_run(stage: str, overrides: list[str]) -> None:
    """The uninterrupted reference run: the stage's flow in this process (what ``dnerf <stage>`` runs; only the
    killed and the resumed runs need a process of their own)."""
    from flows.stages import run_flow

    run_flow(stage, load_params(None, overrides))


def kill_when(dnerf, stage: str, overrides: list[str], ready: Callable[[], bool], max_delay_s: float,
              timeout: float = 180) -> None:
    """Start ``dnerf stage``, wait until ``ready()``, wait a random extra delay, SIGKILL it."""
    seed = random.SystemRandom().randrange(2**32)
    delay = random.Random(seed).uniform(0, max_delay_s)
    print(f"kill seed {seed}: {delay:.2f} s after the kill point")
    proc = dnerf.start(stage, "--quiet", overrides=overrides, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       text=True)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if proc.poll() is not None:
                pytest.fail(f"dnerf {stage} ended (rc {proc.returncode}) before the kill point:\n{proc.stderr.read()}")
            if time.monotonic() > deadline:
                pytest.fail(f"dnerf {stage} never reached the kill point")
            time.sleep(0.02)
        time.sleep(delay)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    if proc.returncode != -signal.SIGKILL:
        pytest.fail(f"dnerf {stage} finished (rc {proc.returncode}) before it could be killed; kill it sooner")


def checkpoint_reached(state_json: Path, step: int) -> Callable[[], bool]:
    """A kill point: the checkpoint at ``state_json`` exists and is at ``step`` or later."""

    def reached() -> bool:
        try:
            return json.loads(state_json.read_text())["step"] >= step
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            return False

    return reached


@pytest.fixture
def base(make_stores, tmp_path, prefect_api):
    """Tiny synthetic stores, every output under ``tmp_path``, caching off (a resumed run must not be served
    from the uninterrupted run's cached results)."""
    return make_stores(TINY_DIFFUSION + TINY_NERF + [
        "orchestration.cache=false", "orchestration.workers=1", f"orchestration.results={tmp_path / 'results'}",
    ])


def outputs(tmp_path: Path, name: str) -> list[str]:
    return [f"paths.{k}={tmp_path / name / k}" for k in
            ("diffusion", "diffusion_checkpoints", "refined", "nerf", "nerf_checkpoints")] + [
        f"paths.nerf_metrics={tmp_path / name / 'nerf.json'}"]


def test_killed_training_resumes_to_the_same_weights(dnerf, base, tmp_path):
    train = base + ["diffusion.train.max_steps=120", "diffusion.train.checkpoint_every=4",
                    "diffusion.train.val_every=4", "diffusion.train.patience=100"]
    straight_run("train_diffusion", train + outputs(tmp_path, "straight"))
    run = outputs(tmp_path, "killed")
    ckpt = tmp_path / "killed" / "diffusion_checkpoints" / "state.json"
    kill_when(dnerf, "train-diffusion", train + run, checkpoint_reached(ckpt, 8), max_delay_s=0.5)
    assert not (tmp_path / "killed" / "diffusion" / "model.safetensors").exists()  # nothing looks finished
    killed_at = json.loads(ckpt.read_text())["step"]
    assert 8 <= killed_at < 120
    res = dnerf.run("train-diffusion", "--quiet", check=True, overrides=train + run)
    assert f"resuming from step {killed_at}" in res.stderr
    straight = (tmp_path / "straight" / "diffusion" / "model.safetensors").read_bytes()
    assert (tmp_path / "killed" / "diffusion" / "model.safetensors").read_bytes() == straight


def _done_chunks(store: Path) -> int:
    return sum(1 for _ in store.glob("*/done/c/*"))


def test_killed_refinement_keeps_finished_frames_and_matches(dnerf, base, tmp_path):
    model_dir = [f"paths.diffusion={tmp_path / 'model'}"]
    run_train_diffusion(load_params(None, base + model_dir + ["diffusion.train.max_steps=2"]), progress=False)
    refine = base + model_dir + ["data.synthetic.n_frames=16", "refine.steps=6", "refine.samples=3"]
    params = load_params(None, refine)
    run_download(params, progress=False)  # longer scenes, so the kill lands mid-way
    run_corrupt(params, progress=False)
    straight_run("refine", refine + [f"paths.refined={tmp_path / 'straight.zarr'}"])
    killed = tmp_path / "killed.zarr"
    run = refine + [f"paths.refined={killed}"]
    kill_when(dnerf, "refine", run, lambda: _done_chunks(killed) >= 3, max_delay_s=0.5)
    assert not open_refined_complete(killed)
    before = {p: p.stat().st_mtime_ns for p in killed.glob("*/depth_refined/c/*")}
    finished = {p.parent.parent.parent.name + "/" + p.name for p in killed.glob("*/done/c/*")}
    assert 3 <= len(finished) < 2 * 16
    dnerf.run("refine", "--quiet", check=True, overrides=run)
    a, b = zarr.open_group(str(tmp_path / "straight.zarr"), mode="r"), zarr.open_group(str(killed), mode="r")
    assert b.attrs["complete"]
    for scene in ("synthetic_000", "synthetic_001"):
        for key in ("depth_refined", "depth_std"):
            np.testing.assert_array_equal(b[scene][key][:], a[scene][key][:], err_msg=f"{scene}/{key}")
    reused = [p for p, t in before.items() if p.stat().st_mtime_ns == t]
    assert len(reused) >= len(finished), "finished frames are reused, not refined again"


def open_refined_complete(path: Path) -> bool:
    """Would a later stage take this refined store as complete?"""
    try:
        return bool(open_store(path, "refined").attrs.get("complete"))
    except Exception:  # noqa: BLE001 - unreadable counts as not complete
        return False


def test_killed_nerf_fit_resumes_to_the_same_field(dnerf, base, tmp_path):
    fit = base + ["nerf.train.steps=60", "nerf.train.checkpoint_every=10", "nerf.scenes=[synthetic_000]"]
    # the reference fit runs in a fresh process, like the resumed one: an in-process fit differs in the last bits
    dnerf.run("fit-nerf", "--quiet", check=True, overrides=fit + outputs(tmp_path, "straight"))
    run = outputs(tmp_path, "killed")
    ckpt = tmp_path / "killed" / "nerf_checkpoints" / "synthetic_000" / "state.json"
    kill_when(dnerf, "fit-nerf", fit + run, checkpoint_reached(ckpt, 20), max_delay_s=0.3)
    assert not (tmp_path / "killed" / "nerf" / "synthetic_000").exists()
    assert not (tmp_path / "killed" / "nerf.json").exists()
    dnerf.run("fit-nerf", "--quiet", check=True, overrides=fit + run)
    straight = tmp_path / "straight" / "nerf" / "synthetic_000"
    resumed = tmp_path / "killed" / "nerf" / "synthetic_000"
    assert (resumed / "field.safetensors").read_bytes() == (straight / "field.safetensors").read_bytes()
    m_a, m_b = (json.loads((d / "metrics.json").read_text()) for d in (straight, resumed))
    assert m_b["test_psnr"] == m_a["test_psnr"] and m_b["steps"] == 60


def test_killed_download_leaves_no_store_and_reruns_to_the_same(dnerf, tiny_overrides, tmp_path, prefect_api):
    big = tiny_overrides + ["data.synthetic.n_scenes=3", "data.synthetic.n_frames=24", "data.synthetic.height=72",
                            "data.synthetic.width=96"]
    straight_run("download", big + [f"paths.scenes={tmp_path / 'straight.zarr'}"])
    target = tmp_path / "killed.zarr"
    run = big + [f"paths.scenes={target}"]
    kill_when(dnerf, "download", run, lambda: any(tmp_path.glob(".killed.zarr.tmp-*/*/rgb/c/*")), max_delay_s=0.3)
    assert not target.exists(), "a killed download must not leave a store a later stage would read"
    dnerf.run("download", "--quiet", check=True, overrides=run)
    a, b = open_store(tmp_path / "straight.zarr", "scenes"), open_store(target, "scenes")
    for scene in ("synthetic_000", "synthetic_001", "synthetic_002"):
        for key in ("rgb", "depth", "K", "c2w"):
            np.testing.assert_array_equal(b[scene][key][:], a[scene][key][:], err_msg=f"{scene}/{key}")
    assert not list(tmp_path.glob(".killed.zarr.tmp-*")), "the killed run's temporary store is cleaned up"


def test_a_second_run_on_the_same_output_refuses(dnerf, base, tmp_path):
    noisy = load_params(None, base).paths.noisy
    before = {p: p.read_bytes() for p in noisy.rglob("*") if p.is_file()}
    holder = subprocess.Popen(
        [sys.executable, "-c", ("import sys, time; from tasks.locks import output_lock\n"
                                f"with output_lock({str(noisy)!r}, 'corrupt'):\n    print('held', flush=True); "
                                "time.sleep(120)")],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2])
    try:
        assert holder.stdout.readline().strip() == "held"
        res = dnerf.run("corrupt", "--quiet", overrides=[*base, "noise.seed=7"])
        assert res.returncode == 1
        assert "another corrupt run is writing it right now" in res.stderr and str(noisy) in res.stderr
        assert {p: p.read_bytes() for p in noisy.rglob("*") if p.is_file()} == before  # nothing touched
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


def test_lock_is_released_when_its_holder_is_killed(tmp_path):
    from tasks.locks import OutputBusy, output_lock

    out = tmp_path / "out.zarr"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    holder = subprocess.Popen(
        [sys.executable, "-c", ("import time; from tasks.locks import output_lock\n"
                                f"with output_lock({str(out)!r}, 'refine'):\n    print('held', flush=True); "
                                "time.sleep(120)")],
        stdout=subprocess.PIPE, text=True, env=env)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(OutputBusy, match="another refine run"), output_lock(out, "refine"):
        pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with output_lock(out, "refine") as path:
        assert path == tmp_path / ".out.zarr.lock"
