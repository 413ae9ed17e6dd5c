"""Does a bigger ray batch pay on a GPU? The 7-Scenes kitchen fit (sensor depth, as in the suite's peer section) with
``nerf.train.target_samples`` (network samples per step; the ray batch adapts to it) at several sizes, each for the
same training-time budget; eval PSNR / SSIM / depth RMSE on the 7 held-out views and the steps reached.

    python benchmarks/bench_gpu_batch.py --kitchen ../shared/data/rgbd/7scenes-redkitchen --device cuda

On a GPU a step costs about the same for a wide range of batch sizes (the suite found it launch-bound), so the
same seconds buy more rays. Writes ``benchmarks/results/<UTC time>-gpu-batch.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]


def main() -> None:
    from suite import kitchen_case

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kitchen", type=Path, required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--seconds", type=float, default=25.0)
    ap.add_argument("--lr-steps", type=int, default=4000, help="steps the learning rate decays over")
    ap.add_argument("--samples", type=int, nargs="+", default=[16384, 65536, 262144])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as work:
        for n in args.samples:
            overrides = [f"nerf.train.target_samples={n}", f"nerf.train.max_rays={max(4096, n // 8)}"]
            r = kitchen_case(str(args.kitchen.resolve()), args.device, args.seconds, args.lr_steps, "noisy", work,
                             overrides)
            end = r["curve"][-1]
            runs.append({"target_samples": n, **end})
            print(f"target_samples {n:>7}: {end['step']:>5} steps in {end['train_s']} s, PSNR {end['psnr']} dB, "
                  f"SSIM {end['ssim']}, depth RMSE {end['depth_rmse']} m", flush=True)
    when = datetime.now(UTC).isoformat(timespec="seconds")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{when.replace(':', '')[:17]}-gpu-batch.json"
    path.write_text(json.dumps({"when": when, "argv": sys.argv[1:], "device": args.device, "runs": runs}, indent=2))
    print(f"written {path}")


if __name__ == "__main__":
    main()
