"""Data-layer benchmark: synthetic scene generation and scene-store write / read throughput.

    python benchmarks/bench_data.py [--repeats 5] [--frames 16]

Prints medians over repeats (these machines are noisy). Throughput is of uncompressed frame bytes
(RGB + depth + intrinsics + pose) through the real writer and reader, so zstd's work is included;
the compression ratio is on-disk bytes / raw bytes.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from tasks.datasets.synthetic import SyntheticConfig, synthetic_scenes
from tasks.store import SceneView, SceneWriter, StoreBuilder, open_store


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def bench_resolution(height: int, width: int, n_frames: int, repeats: int, workdir: Path) -> dict:
    (scene,) = synthetic_scenes(SyntheticConfig(n_scenes=1, n_frames=n_frames, height=height, width=width), seed=0)
    t_render = median_time(lambda: [scene.load(i) for i in range(n_frames)], repeats) / n_frames
    frames = [scene.load(i) for i in range(n_frames)]
    raw_bytes = sum(f.rgb.nbytes + f.depth.nbytes + f.K.nbytes + f.c2w.nbytes for f in frames)
    path = workdir / f"bench_{width}x{height}.zarr"

    def write():
        with StoreBuilder(path, "scenes") as root:
            w = SceneWriter(root, "s", n_frames=n_frames, height=height, width=width, source="synthetic",
                            depth_kind="reference", has_sensor_depth=False)
            for i, f in enumerate(frames):
                w.write(i, f)
            w.close(["train"] * n_frames)

    def read_frames():
        view = SceneView(open_store(path, "scenes")["s"])
        for i in range(n_frames):
            view.frame(i)

    def read_arrays():
        g = open_store(path, "scenes")["s"]
        g["rgb"][:], g["depth"][:]

    t_write = median_time(write, repeats)
    t_read_frames = median_time(read_frames, repeats)
    t_read_arrays = median_time(read_arrays, repeats)
    mb = raw_bytes / 1e6
    return {
        "size": f"{width}x{height}",
        "render ms/frame": 1e3 * t_render,
        "write MB/s": mb / t_write,
        "read MB/s (per frame)": mb / t_read_frames,
        "read MB/s (whole arrays)": mb / t_read_arrays,
        "on-disk / raw": du(path) / raw_bytes,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--frames", type=int, default=16)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [bench_resolution(h, w, args.frames, args.repeats, Path(tmp)) for h, w in ((120, 160), (480, 640))]
    table = Table(title=f"data layer: {args.frames} frames, median of {args.repeats}")
    for key in rows[0]:
        table.add_column(key, justify="right")
    for r in rows:
        table.add_row(*(v if isinstance(v, str) else f"{v:.2f}" for v in r.values()))
    if len(rows) == 2:
        ratio = {k: rows[1][k] / rows[0][k] for k in rows[0] if k != "size"}
        table.add_row("640x480 / 160x120", *(f"{v:.2f}x" for v in ratio.values()))
    Console().print(table)
    print(f"pixels ratio 640x480 / 160x120 = {(640 * 480) / (160 * 120):.0f}x; numpy {np.__version__}")


if __name__ == "__main__":
    main()
