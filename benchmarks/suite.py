"""The benchmark suite: speed, memory and quality measured side by side in one run, on one machine.

    python benchmarks/suite.py --quick                 # about 5 minutes on 2 CPU cores
    python benchmarks/suite.py                         # longer fits, more repeats
    python benchmarks/suite.py --kitchen ../shared/data/rgbd/7scenes-redkitchen   # + the peer comparison
    python benchmarks/suite.py --quick --skip nerf parallel refine --kitchen ../shared/data/rgbd/7scenes-redkitchen
    python benchmarks/suite.py --device cuda --quick   # the same measurements on a GPU (benchmarks/gpu.sh)

Sections (each case runs in a fresh child process, so its peak memory is its own):

- machine: CPU / GPU, threads, and two ceilings measured here: fp32 matrix-multiply GFLOP/s and copy
  bandwidth GB/s;
- nerf: training throughput (network samples per second, forward + backward) with the share of the
  ceilings it reaches (MLP FLOPs against the matmul ceiling, hash-table traffic against the bandwidth), step
  time and peak memory as the frame count and the resolution grow (they should stay flat: rays come from a
  small pool of frames read on the fly), samples per ray with and without the occupancy grid, full-image
  render time, and time-to-PSNR against the original NeRF on the same scene;
- parallel: two scenes' NeRF fits one after the other (all cores each) against two at once (half the cores
  each, as the ``threads`` runner does), and a single fit on all cores against half of them: two workers can
  only win the share of the cores that one fit leaves idle, so ``2 / intra-op speed-up`` bounds their gain;
- refine: seconds per frame and peak memory against DDIM steps (640x480) and against resolution, frames per
  second, and the classical baselines on the same frames;
- pipeline (``--pipeline``): the default ``dvc repro`` from a fresh clone, per stage, and the orchestration
  overhead (stage wall time not spent in the stage's flow run), then a no-op ``dvc repro``;
- peer (``--kitchen``): the 7-Scenes kitchen at 320x240 with every 8th frame held out (43 train / 7 eval),
  our NeRF with sensor depth against nerfstudio 1.1.5 ``nerfacto`` as measured on this kind of machine (the
  reference figures of issue 7; nerfacto itself is not installed).

Every table is printed and the whole run is written to ``benchmarks/results/<UTC time>-<host>-<device>.json``
and ``.md`` as each section finishes, so runs can be compared. Times are medians over ``--repeats``. How cases
are run, timed and written is ``benchmarks/harness.py``; this file is what is measured.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import resource
import socket
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from harness import ResultsWriter, isolated, median_time, peak_gb, results_stem  # noqa: E402

# nerfstudio 1.1.5 nerfacto on the 7-Scenes kitchen, 320x240, 43/7 split, 2 CPU cores (issue 7)
PEER = {"name": "nerfacto (nerfstudio 1.1.5, 1024 rays)", "psnr_at_s": [(140, 22.1), (380, 24.1), (585, 24.4)],
        "ssim": 0.72, "render_s": 54.0, "peak_gb": 2.5}


# ------------------------------------------------------------------------------------------- machine


def machine_ceilings(device: str, repeats: int, n: int, mbytes: int) -> dict:
    """fp32 matmul GFLOP/s (``n x n``) and copy bandwidth GB/s (read + write of ``mbytes`` MB)."""
    import torch

    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else None
    a, b = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
    torch.mm(a, b)
    t = median_time(lambda: torch.mm(a, b), repeats, sync)
    src = torch.empty(mbytes * 2**20 // 4, device=dev)
    dst = torch.empty_like(src)
    dst.copy_(src)
    t_copy = median_time(lambda: dst.copy_(src), repeats, sync)
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
            "matmul_gflops": round(2 * n**3 / t / 1e9, 1), "copy_gbs": round(2 * src.nbytes / t_copy / 1e9, 1)}


# ------------------------------------------------------------------------------------------- data


def synthetic_store(folder: Path, n_frames: int, height: int, width: int, test_every: int = 8) -> Path:
    from tasks.config import load_params
    from tasks.download import run_download

    path = folder / f"scenes-{n_frames}-{height}x{width}.zarr"
    if not path.exists():
        run_download(load_params(None, [
            f"paths.scenes={path}", f"paths.raw={folder / 'raw'}", "data.synthetic.n_scenes=1",
            f"data.synthetic.n_frames={n_frames}", f"data.synthetic.height={height}", f"data.synthetic.width={width}",
            f"data.test_every={test_every}"]), progress=False)
    return path


def nerf_params(scenes: Path, device: str, steps: int, overrides: list[str] | None = None):
    from tasks.config import load_params

    return load_params(ROOT / "params.yaml", [f"paths.scenes={scenes}", "nerf.depth_source=gt",
                                              f"nerf.train.steps={steps}", f"nerf.train.device={device}",
                                              *(overrides or [])])


# ------------------------------------------------------------------------------------------- nerf


def mlp_params(field_) -> int:
    """Weights of the field's linear layers (the matmul work per sample)."""
    import torch

    return sum(m.weight.numel() for m in field_.modules() if isinstance(m, torch.nn.Linear))


def nerf_fit_case(scenes: str, device: str, steps: int, skip: int, occupancy: bool = True) -> dict:
    """Fit ``steps`` steps; throughput and step time over the steps after ``skip`` (warm-up excluded)."""
    import torch

    from tasks.fit_nerf import fit_scene
    from tasks.nerf_data import open_scene

    params = nerf_params(Path(scenes), device, steps)
    frames = open_scene(params.paths.scenes, "synthetic_000", "gt", None, None)
    with tempfile.TemporaryDirectory() as tmp:
        field_, _grid, state, _ = fit_scene(frames, params.nerf, Path(tmp), "bench", progress=False,
                                           use_occupancy=occupancy)
    curve = state.curve[skip:]
    step_s = [b["seconds"] - a["seconds"] for a, b in itertools.pairwise(curve)]
    samples = sum(r["rays"] * r["samples_per_ray"] for r in curve[1:])
    enc = params.nerf.field.encoding
    return {"frames": frames.view.n_frames, "resolution": f"{frames.shape[1]}x{frames.shape[0]}",
            "step_ms": round(1000 * statistics.median(step_s), 1),
            "samples_per_s": round(samples / (curve[-1]["seconds"] - curve[0]["seconds"])),
            "samples_per_ray": round(statistics.mean(r["samples_per_ray"] for r in curve[-20:]), 1),
            "occupied": round(statistics.mean(r["occupied"] for r in curve[-20:]), 3),
            "flops_per_sample": 6 * mlp_params(field_),  # forward 2x, backward 4x the weights
            "table_bytes_per_sample": 3 * enc.n_levels * 8 * enc.features_per_level * 4,  # gather + 2x scatter
            "train_psnr": round(statistics.mean(r["psnr"] for r in curve[-20:]), 2),
            "device": str(torch.device(device))}


def parallel_case(scenes: str, device: str, steps: int, fits: int, workers: int, threads: int) -> dict:
    """Wall seconds for ``fits`` NeRF fits of ``steps`` steps (one per scene seed), ``workers`` at once in one
    process (as ``orchestration.runner=threads``), with ``threads`` torch intra-op threads shared by them."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from tasks.fit_nerf import fit_scene
    from tasks.nerf_data import open_scene

    torch.set_num_threads(threads)
    params = nerf_params(Path(scenes), device, steps)
    frames = open_scene(params.paths.scenes, "synthetic_000", "gt", None, None)

    def fit(seed: int) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            fit_scene(frames, params.nerf.model_copy(update={"seed": seed}), Path(tmp), "bench", progress=False)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(fit, range(fits)))
    return {"wall_s": round(time.perf_counter() - t0, 1)}


def nerf_render_case(scenes: str, device: str, steps: int) -> dict:
    """Seconds to render one full test image (RGB + depth) after a fit of ``steps`` (past the occupancy
    grid's warm-up, so empty space is skipped as in a finished fit)."""
    import torch

    from tasks.fit_nerf import fit_scene
    from tasks.nerf_data import open_scene
    from tasks.nerf_export import render_view

    params = nerf_params(Path(scenes), device, steps)
    frames = open_scene(params.paths.scenes, "synthetic_000", "gt", None, None)
    with tempfile.TemporaryDirectory() as tmp:
        field_, grid, _, aabb = fit_scene(frames, params.nerf, Path(tmp), "bench", progress=False)
    box = torch.from_numpy(aabb).to(device)
    view = frames.test[0]
    render_view(field_, grid, frames, view, box, params.nerf, device)
    t = median_time(lambda: render_view(field_, grid, frames, view, box, params.nerf, device), 3)
    return {"resolution": f"{frames.shape[1]}x{frames.shape[0]}", "render_s": round(t, 3)}


def vanilla_case(scenes: str, device: str, seconds: float, variant: str) -> dict:
    """Time-to-PSNR: hash grid + occupancy against the original NeRF with equal supervision and sampling
    (benchmarks/bench_nerf.py; ``variant`` colour or depth)."""
    from bench_nerf import compare

    from tasks.nerf_data import open_scene

    params = nerf_params(Path(scenes), device, 1_000_000)
    return compare(lambda source: open_scene(params.paths.scenes, "synthetic_000", source, None, None),
                   params.nerf, variant, "gt", seconds)


def encoding_case(device: str, n: int, repeats: int) -> dict:
    """The hash encoding (default size) at ``n`` random points: fused kernel against the PyTorch path,
    forward and forward + backward (table gradients)."""
    import torch

    from models.nerf.encoding import HashEncoding
    from tasks.config import load_params

    cfg = load_params(ROOT / "params.yaml").nerf.field.encoding
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else None
    x = torch.rand(n, 3, device=dev)
    row: dict = {"points": n}
    for backend in ("torch", "fused") if dev.type == "cpu" else ("torch",):
        enc = HashEncoding(cfg.model_copy(update={"backend": backend})).to(dev)

        def forward(enc=enc):
            with torch.no_grad():
                enc(x)

        def both(enc=enc):
            enc.tables.grad = None
            enc(x).sum().backward()

        both()
        row[f"{backend} fwd ms"] = round(1000 * median_time(forward, repeats, sync), 2)
        row[f"{backend} fwd+bwd ms"] = round(1000 * median_time(both, repeats, sync), 2)
    if "fused fwd ms" in row:
        row["fwd speed-up"] = round(row["torch fwd ms"] / row["fused fwd ms"], 1)
        row["fwd+bwd speed-up"] = round(row["torch fwd+bwd ms"] / row["fused fwd+bwd ms"], 1)
    return row


def memory_case(scenes: str, device: str, steps: int, rays: int, overrides: list[str]) -> dict:
    """Step time and the memory a fit adds on top of the loaded process (peak RSS growth on CPU, peak
    allocated on CUDA) at a fixed batch of ``rays`` rays, with ``overrides`` (one memory technique)."""
    import torch

    from tasks.fit_nerf import fit_scene
    from tasks.nerf_data import open_scene

    params = nerf_params(Path(scenes), device, steps, [f"nerf.train.min_rays={rays}", f"nerf.train.max_rays={rays}",
                                                      f"nerf.train.initial_rays={rays}", *overrides])
    frames = open_scene(params.paths.scenes, "synthetic_000", "gt", None, None)
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with tempfile.TemporaryDirectory() as tmp:
        _, _, state, _ = fit_scene(frames, params.nerf, Path(tmp), "bench", progress=False)
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    curve = state.curve[5:]
    step_s = [b["seconds"] - a["seconds"] for a, b in itertools.pairwise(curve)]
    return {"step_ms": round(1000 * statistics.median(step_s), 1), "added_gb": round((peak - base) / 2**30, 3),
            "samples_per_ray": round(statistics.mean(r["samples_per_ray"] for r in curve), 1)}


# ------------------------------------------------------------------------------------------- refine


def refine_case(device: str, height: int, width: int, steps: int, samples: int, repeats: int) -> dict:
    """Seconds per frame of the diffusion refiner (default UNet; speed does not depend on the weights)."""
    import numpy as np
    import torch

    from models.diffusion.calibration import Calibration
    from models.diffusion.refiner import DiffusionRefiner
    from models.diffusion.unet import DepthUNet
    from models.noise import SensorPrior
    from tasks.config import load_params

    params = load_params(ROOT / "params.yaml", [f"refine.steps={steps}", f"refine.samples={samples}"])
    torch.manual_seed(0)
    model = DepthUNet(params.diffusion.unet).to(device).eval()
    rc = params.refine
    refiner = DiffusionRefiner(model, params.diffusion.schedule, SensorPrior.from_noise(params.noise), Calibration(),
                               rc.steps, rc.samples, rc.tile, rc.overlap, device)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    depth = rng.uniform(0.5, 4.0, (height, width)).astype(np.float32)
    depth[rng.random((height, width)) < 0.1] = 0
    focal = 525.0 * width / 640
    refiner.refine(rgb, depth, focal, 0)
    sync = torch.cuda.synchronize if device.startswith("cuda") else None
    t = median_time(lambda: refiner.refine(rgb, depth, focal, 0), repeats, sync)
    return {"resolution": f"{width}x{height}", "steps": steps, "samples": samples, "s_per_frame": round(t, 3),
            "frames_per_s": round(1 / t, 2)}


def baselines_case(height: int, width: int, repeats: int) -> dict:
    import numpy as np

    from models.baselines import make_baselines
    from models.camera import intrinsics_from_fov
    from tasks.config import load_params

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    depth = rng.uniform(0.5, 4.0, (height, width)).astype(np.float32)
    depth[rng.random((height, width)) < 0.1] = 0
    K = intrinsics_from_fov(width, height, 60)
    out = {}
    for name, fn in make_baselines(load_params(ROOT / "params.yaml").refine.baselines).items():
        out[f"{name}_s"] = round(median_time(lambda fn=fn: fn(rgb, depth, K), repeats), 4)
    return out


# ------------------------------------------------------------------------------------------- peer


def kitchen_case(kitchen: str, device: str, seconds: float, steps: int, source: str, work: str,
                 overrides: list[str] | None = None) -> dict:
    """Our NeRF on the kitchen (320x240, nerfstudio's interval split: 43 train / 7 eval views) with
    ``source`` supervision (``noisy``: the sensor depth; ``none``: colour only), its learning rate decaying
    over ``steps``, for at most ``seconds`` of training: PSNR / SSIM / depth error on the 7 eval views at 30 s,
    60 s, 140 s, 300 s (those within the budget) and at the end, and the time to render one eval view."""
    import torch
    from bench_nerf import BudgetReached

    from tasks.config import load_params
    from tasks.corrupt import run_corrupt
    from tasks.download import run_download
    from tasks.fit_nerf import fit_scene
    from tasks.nerf_data import open_scene, scene_bounds
    from tasks.nerf_export import evaluate_views, render_view

    w = Path(work)
    params = load_params(ROOT / "params.yaml", [
        "data.source=sevenscenes", f"data.path={kitchen}", "data.height=240", "data.width=320", "data.test_every=8",
        "data.test_offset=0",  # nerfstudio's interval split: frames 0, 8, ..., 48 held out (43 train / 7 eval)
        f"paths.scenes={w / 'k.zarr'}", f"paths.noisy={w / 'kn.zarr'}", "noise.mode=sensor",
        f"nerf.depth_source={source}", f"nerf.train.steps={steps}", f"nerf.train.device={device}", *(overrides or [])])
    if not (w / "k.zarr").exists():
        run_download(params, progress=False)
        run_corrupt(params, progress=False)
    frames = open_scene(params.paths.scenes, "7scenes-redkitchen", source, params.paths.noisy, None)
    checkpoints = sorted(s for s in (30, 60, 140, 300) if s < seconds) + [seconds]
    curve: list[dict] = []
    box = torch.from_numpy(scene_bounds(frames, params.nerf.bounds_padding, seed=params.nerf.seed)).to(device)
    clock = {"excluded": 0.0, "start": time.perf_counter()}

    def score(step, field_, grid, t):
        t0 = time.perf_counter()
        render_view(field_, grid, frames, frames.test[0], box, params.nerf, device)
        render_s = time.perf_counter() - t0
        scores, _ = evaluate_views(field_, grid, frames, frames.test, box, params.nerf, device)
        curve.append({"train_s": round(t, 1), "step": step, "psnr": round(scores["psnr"], 2),
                      "ssim": round(scores["ssim"], 3), "depth_rmse": round(scores["depth_rmse"], 3),
                      "render_s": round(render_s, 2)})
        clock["excluded"] += time.perf_counter() - t0

    def on_step(step, field_, grid):
        if step == 0:  # called before the first step: the training clock starts after the setup
            clock["start"] = time.perf_counter()
            return
        t = time.perf_counter() - clock["start"] - clock["excluded"]
        if t >= checkpoints[0] or step == steps:
            while checkpoints and t >= checkpoints[0]:
                checkpoints.pop(0)
            score(step, field_, grid, t)
            if not checkpoints or step == steps:
                raise BudgetReached

    with tempfile.TemporaryDirectory() as tmp, contextlib.suppress(BudgetReached):
        fit_scene(frames, params.nerf, Path(tmp), "bench", progress=False, on_step=on_step)
    return {"train_views": len(frames.train), "eval_views": len(frames.test), "source": source, "steps": steps,
            "curve": curve}


# ------------------------------------------------------------------------------------------- pipeline


def pipeline_case(work: str, overrides: list[str]) -> dict:
    """``dvc repro`` from a fresh clone of this repository's committed HEAD (code from this working tree),
    against a local Prefect server: wall time per stage (from DVC's stage markers), the stage's flow run time
    (from the Prefect API), the rest as orchestration overhead; then a no-op ``dvc repro``."""
    import subprocess

    import yaml

    from flows.server import LocalServer, configure_prefect_env
    from tasks.config import apply_overrides

    repo = Path(work) / "pipeline"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
    params_file = repo / "params.yaml"
    params_file.write_text(yaml.safe_dump(apply_overrides(yaml.safe_load(params_file.read_text()), overrides),
                                          sort_keys=False))
    env = configure_prefect_env(repo, dict(os.environ))
    with LocalServer(Path(work) / "prefect-home") as server:
        env.update(PREFECT_API_URL=server.api_url, DVC_NO_ANALYTICS="1")
        os.environ.update(PREFECT_API_URL=server.api_url)
        marks, t0 = [], time.perf_counter()
        proc = subprocess.Popen(["dvc", "repro"], cwd=repo, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        marks.extend((line.split("'")[1], time.perf_counter() - t0)
                     for line in proc.stdout if line.startswith("Running stage '"))
        if proc.wait() != 0:
            raise RuntimeError("dvc repro failed")
        total = time.perf_counter() - t0
        t_noop = time.perf_counter()
        subprocess.run(["dvc", "repro"], cwd=repo, env=env, check=True, capture_output=True)
        noop = time.perf_counter() - t_noop
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(limit=50)
        flow_s = {r.name.rsplit("-", 1)[0]: r.total_run_time.total_seconds() for r in runs}
    rows = []
    for k, (stage, start) in enumerate(marks):
        end = marks[k + 1][1] if k + 1 < len(marks) else total
        f = flow_s.get(stage, float("nan"))
        rows.append({"stage": stage, "wall_s": round(end - start, 1), "flow_s": round(f, 1),
                     "overhead_s": round(end - start - f, 1)})
    overhead = sum(r["overhead_s"] for r in rows)
    # the run's DVC metrics travel with the timing, so the README's default-run tables come from this file
    metrics = {p.name: json.loads(p.read_text()) for p in (repo / "metrics").glob("*.json")}
    metrics["diffusion.json"] = json.loads((repo / "artifacts" / "diffusion" / "metrics.json").read_text())
    return {"stages": rows, "total_s": round(total, 1), "overhead_s": round(overhead, 1),
            "overhead_share": round(overhead / total, 3), "noop_s": round(noop, 2), "metrics": metrics,
            "clone": str(repo)}


# ------------------------------------------------------------------------------------------- run


def without_peaks(rows: list[dict]) -> list[dict]:
    """:func:`harness.isolated` results without their peak memory columns (for tables where it says nothing)."""
    return [{k: v for k, v in r.items() if not k.startswith("peak")} for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short fits, fewer repeats (a few minutes)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--kitchen", type=Path, help="7-Scenes kitchen folder: run the peer comparison")
    ap.add_argument("--kitchen-budgets", nargs="+", default=["60:2000", "300:10000"], metavar="SECONDS:STEPS",
                    help="kitchen fits: training budget and the step count the learning rate decays over")
    ap.add_argument("--kitchen-set", action="append", default=[], metavar="KEY=VALUE",
                    help="params override for the kitchen fit (repeatable), e.g. nerf.train.lr=0.02")
    ap.add_argument("--pipeline", action="store_true", help="also time `dvc repro` from a fresh clone (~15 min)")
    ap.add_argument("--pipeline-set", action="append", default=[], metavar="KEY=VALUE",
                    help="params override for that run (repeatable), e.g. data.synthetic.n_frames=8")
    ap.add_argument("--skip", nargs="*", default=[],
                    choices=["encoding", "memory", "nerf", "render", "parallel", "vanilla", "refine", "baselines",
                             "peer"])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    q = args.quick
    repeats = 3 if q else 7
    steps = 60 if q else 200
    dev = args.device
    when, host = datetime.now(UTC).isoformat(timespec="seconds"), socket.gethostname()
    work = Path(tempfile.mkdtemp(prefix="dnerf-bench-"))

    gpu = dev.startswith("cuda")  # a GPU's ceilings need bigger problems than a CPU's
    m = isolated(machine_ceilings, device=dev, repeats=repeats, n=8192 if gpu else 1024 if q else 2048,
                 mbytes=2048 if gpu else 256)
    run = {"when": when, "host": host, "quick": q, "argv": sys.argv[1:]}
    heading = f"Benchmark {when} on {m['cpu']} ({m['cores']} cores, {m['device']})"
    out = ResultsWriter(args.out, results_stem(when, host, dev), run, heading)
    out.publish("machine", m, "machine", [m])

    if "encoding" not in args.skip:
        rows = [isolated(encoding_case, device=dev, n=n, repeats=repeats) for n in (16384, 200_000)]
        out.publish("encoding", rows, "hash encoding (default size), fused CPU kernel against the PyTorch path",
                    without_peaks(rows))

    if "memory" not in args.skip:
        store = str(synthetic_store(work, 16, 120, 160))
        mem_rays = 4096
        techniques = {
            "none (fp32, one chunk, no checkpointing)": [],
            f"ray chunking (chunk {mem_rays // 8})": [f"nerf.train.chunk={mem_rays // 8}"],
            "gradient checkpointing": ["nerf.field.gradient_checkpointing=true"],
            "mixed precision (bf16 autocast)": ["nerf.train.amp=bf16"],
            "all three": [f"nerf.train.chunk={mem_rays // 8}", "nerf.field.gradient_checkpointing=true",
                          "nerf.train.amp=bf16"],
        }
        rows = []
        for name, overrides in techniques.items():
            r = isolated(memory_case, scenes=store, device=dev, steps=25 if q else 60, rays=mem_rays,
                         overrides=["nerf.train.guide_spread=0", "nerf.train.amp=off", *overrides])
            rows.append({"technique": name, "step ms": r["step_ms"], "added GB": r["added_gb"],
                         "peak GB": peak_gb(r, dev)})
        for r in rows[1:]:
            r["memory vs none"] = f"{r['added GB'] / max(rows[0]['added GB'], 1e-9):.2f}x"
            r["time vs none"] = f"{r['step ms'] / rows[0]['step ms']:.2f}x"
        out.publish("memory", rows, f"NeRF memory techniques ({mem_rays} rays per step, coarse + fine sampling, "
                    "160x120)", rows)

    if "nerf" not in args.skip:
        base = synthetic_store(work, 16, 120, 160)
        main_fit = isolated(nerf_fit_case, scenes=str(base), device=dev, steps=steps + 150, skip=150)
        no_grid = isolated(nerf_fit_case, scenes=str(base), device=dev, steps=steps, skip=10, occupancy=False)
        rows = []
        for name, r in (("hash grid + occupancy", main_fit), ("hash grid, no occupancy", no_grid)):
            mlp_gflops = r["samples_per_s"] * r["flops_per_sample"] / 1e9
            table_gbs = r["samples_per_s"] * r["table_bytes_per_sample"] / 1e9
            rows.append({"config": name, "samples/s": r["samples_per_s"], "step ms": r["step_ms"],
                         "samples/ray": r["samples_per_ray"], "occupied": r["occupied"],
                         "MLP GFLOP/s": round(mlp_gflops, 2),
                         "% matmul ceiling": round(100 * mlp_gflops / m["matmul_gflops"], 1),
                         "table GB/s": round(table_gbs, 2), "% copy ceiling": round(100 * table_gbs / m["copy_gbs"], 1),
                         "peak GB": peak_gb(r, dev)})
        rows.append({"config": "occupancy: samples/ray cut",
                     "samples/ray": f"{no_grid['samples_per_ray'] / main_fit['samples_per_ray']:.1f}x"})
        out.publish("nerf_throughput", rows, "NeRF training throughput (160x120, 16 frames, forward + backward)",
                    rows)

        scaling = []
        for n in (8, 32, 64) if q else (8, 32, 128):
            r = isolated(nerf_fit_case, scenes=str(synthetic_store(work, n, 120, 160)), device=dev, steps=40,
                         skip=10)
            scaling.append({"frames": n, "resolution": r["resolution"], "step ms": r["step_ms"],
                            "peak GB": peak_gb(r, dev)})
        for h, w in ((60, 80), (240, 320)) + (() if q else ((480, 640),)):
            r = isolated(nerf_fit_case, scenes=str(synthetic_store(work, 16, h, w)), device=dev, steps=40, skip=10)
            scaling.append({"frames": 16, "resolution": r["resolution"], "step ms": r["step_ms"],
                            "peak GB": peak_gb(r, dev)})
        out.publish("nerf_scaling", scaling, "NeRF step time and memory against frames and resolution", scaling)

    if "render" not in args.skip:
        renders = [isolated(nerf_render_case, scenes=str(synthetic_store(work, 16, h, w)), device=dev, steps=200)
                   for h, w in ((120, 160), (240, 320), (480, 640))]
        out.publish("nerf_render", renders, "NeRF full-image render (RGB + depth)", [
            {"resolution": r["resolution"], "s / image": r["render_s"], "peak GB": peak_gb(r, dev)} for r in renders])

    if "parallel" not in args.skip:
        from flows.runners import threads_per_worker
        from tasks.config import OrchestrationConfig

        cores = os.cpu_count() or 1
        half = threads_per_worker(OrchestrationConfig(workers=2))  # what the threads runner gives each worker
        store = str(synthetic_store(work, 16, 120, 160))
        pst = 100 if q else 300

        def wall(fits: int, workers: int, threads: int) -> float:
            return isolated(parallel_case, scenes=store, device=dev, steps=pst, fits=fits, workers=workers,
                            threads=threads)["wall_s"]

        one_fast, one_slow = wall(1, 1, cores), wall(1, 1, half)
        serial, both = wall(2, 1, cores), wall(2, 2, half)
        intra = one_slow / one_fast
        rows = [
            {"run": f"1 fit, {cores} threads", "wall s": one_fast},
            {"run": f"1 fit, {half} thread(s)", "wall s": one_slow,
             "ratio": f"{intra:.2f}x slower (intra-op speed-up)"},
            {"run": f"2 fits, 1 worker x {cores} threads", "wall s": serial},
            {"run": f"2 fits, 2 workers x {half} thread(s)", "wall s": both,
             "ratio": f"{serial / both:.2f}x faster (bound {2 / intra:.2f}x)"},
        ]
        out.publish("parallel", rows, f"scene-parallel NeRF fits ({pst} steps each; bound = 2 / intra-op speed-up)",
                    rows)

    if "vanilla" not in args.skip:
        store = str(synthetic_store(work, 16, 120, 160))
        rows = [isolated(vanilla_case, scenes=store, device=dev, seconds=30.0 if q else 90.0, variant=v)
                for v in ("colour", "depth")]
        out.publish("vanilla", rows, "time-to-PSNR against the original NeRF, like for like (same scene, supervision, "
                    "sampling, renderer, machine)", without_peaks(rows))

    if "refine" not in args.skip:
        rows = [isolated(refine_case, device=dev, height=480, width=640, steps=s, samples=2, repeats=repeats)
                for s in ((1, 2, 4) if q else (1, 2, 4, 8))]
        rows += [isolated(refine_case, device=dev, height=h, width=w, steps=2, samples=2, repeats=repeats)
                 for h, w in ((120, 160), (240, 320))]
        out.publish("refine", rows, "diffusion refinement per frame (2 samples)", [
            {**{k: r[k] for k in ("resolution", "steps", "samples", "s_per_frame", "frames_per_s")},
             "peak GB": peak_gb(r, dev)} for r in rows])
    if "baselines" not in args.skip:
        b = isolated(baselines_case, height=480, width=640, repeats=repeats)
        out.publish("baselines", b, "classical baselines per 640x480 frame (s)", [b])

    if args.kitchen is not None and "peer" not in args.skip:
        runs = []
        for budget in args.kitchen_budgets:
            seconds, steps = (float(v) for v in budget.split(":"))
            for source, label in (("noisy", "ours, sensor depth"), ("none", "ours, colour only")):
                k = isolated(kitchen_case, kitchen=str(args.kitchen.resolve()), device=dev, seconds=seconds,
                             steps=int(steps), source=source, work=str(work), overrides=args.kitchen_set)
                runs.append({"method": label, "budget_s": seconds, **k})
        rows = [{"method": f"{r['method']} ({r['steps']}-step schedule)", **c, "peak GB": peak_gb(r, dev)}
                for r in runs for c in r["curve"]]
        rows += [{"method": PEER["name"], "train_s": s, "psnr": p, "render_s": PEER["render_s"],
                  "peak GB": PEER["peak_gb"]} for s, p in PEER["psnr_at_s"]]
        out.publish("peer", {"ours": runs, "peer": PEER}, f"7-Scenes kitchen 320x240, nerfstudio interval split: "
                    f"{runs[0]['train_views']} train / {runs[0]['eval_views']} eval views", rows)

    if args.pipeline:
        p = isolated(pipeline_case, work=str(work), overrides=args.pipeline_set)
        out.publish("pipeline", p, f"dvc repro from a fresh clone: {p['total_s']} s, orchestration overhead "
                    f"{p['overhead_s']} s ({100 * p['overhead_share']:.1f} %), no-op repro {p['noop_s']} s",
                    p["stages"])

    print(f"written {out.json_path} and .md")


if __name__ == "__main__":
    main()
