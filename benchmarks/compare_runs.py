"""Are two runs of the pipeline the same? Weights, refined depth and metrics of two ``dvc repro`` workspaces.

Compares, bit for bit: the refiner's and every NeRF fit's safetensors, the refined store's arrays, and the
metrics files with their wall-clock keys (``*seconds*``, ``*per_second*``, ``*time*``) left out. Writes
``benchmarks/results/<time>-compare.json``, with both runs' metrics files (timings left out)::

    python benchmarks/compare_runs.py BEFORE_WORKSPACE AFTER_WORKSPACE
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import zarr

RESULTS = Path(__file__).resolve().parent / "results"
METRICS = ("metrics/evaluate.json", "metrics/nerf.json", "artifacts/diffusion/metrics.json")


def without_timings(obj):
    """``obj`` with every key that names a time or a rate left out."""
    if isinstance(obj, dict):
        return {k: without_timings(v) for k, v in obj.items()
                if not any(t in k for t in ("seconds", "per_second", "time"))}
    if isinstance(obj, list):
        return [without_timings(v) for v in obj]
    return obj


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compare(a: Path, b: Path) -> dict[str, bool]:
    same = {}
    weights = ["artifacts/diffusion/model.safetensors"]
    weights += sorted(str(p.relative_to(a)) for p in (a / "artifacts" / "nerf").rglob("*.safetensors"))
    for rel in weights:
        same[rel] = (b / rel).is_file() and digest(a / rel) == digest(b / rel)
    for rel in METRICS:
        same[f"{rel} (timings left out)"] = (without_timings(json.loads((a / rel).read_text()))
                                             == without_timings(json.loads((b / rel).read_text())))
    ra = zarr.open_group(str(a / "data" / "refined.zarr"), mode="r")
    rb = zarr.open_group(str(b / "data" / "refined.zarr"), mode="r")
    for scene in sorted(ra.group_keys()):
        for key in ("depth_refined", "depth_std"):
            same[f"data/refined.zarr/{scene}/{key}"] = np.array_equal(ra[scene][key][:], rb[scene][key][:])
    return same


def commit(repo: Path) -> str:
    res = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         check=False)
    return res.stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    args = ap.parse_args()
    same = compare(args.before, args.after)
    for name, ok in same.items():
        print(f"{'same' if ok else 'DIFFERENT':9s} {name}")
    result = {"before": {"path": str(args.before), "commit": commit(args.before)},
              "after": {"path": str(args.after), "commit": commit(args.after)},
              "all_same": all(same.values()), "compared": same,
              "metrics": {side: {rel: without_timings(json.loads((path / rel).read_text())) for rel in METRICS}
                          for side, path in (("before", args.before), ("after", args.after))}}
    out = RESULTS / f"{datetime.now(UTC).strftime('%Y-%m-%dT%H%M%S')}-compare.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"{sum(same.values())}/{len(same)} the same -> {out}")


if __name__ == "__main__":
    main()
