#!/usr/bin/env bash
# The CUDA checks on a machine with one GPU, in one call of under 9 minutes:
#   1. tests/test_cuda.py: the field, renderer and occupancy grid agree with the CPU; train_diffusion, refine and
#      fit_nerf run on CUDA under fp32, bf16 and fp16 (CI has no GPU and skips these);
#   2. the benchmark suite on CUDA (--quick; no scene-parallel section, which measures CPU threads), written to
#      OUT_DIR next to the CPU runs, section by section, so a run cut short keeps what it measured;
#   3. the 7-Scenes kitchen time-to-PSNR on CUDA, when KITCHEN_DIR exists.
# Usage: bash benchmarks/gpu.sh [KITCHEN_DIR] [OUT_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')" || exit 1
kitchen=${1:-../shared/data/rgbd/7scenes-redkitchen}
out=${2:-benchmarks/results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu-info.txt"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu-info.txt"

timeout 170 python -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$out/gpu-tests.txt"
tests=${PIPESTATUS[0]}
timeout 250 python benchmarks/suite.py --device cuda --quick --skip parallel vanilla baselines --out "$out"
if [ -d "$kitchen" ]; then
    timeout 130 python benchmarks/suite.py --device cuda --quick --kitchen "$kitchen" --kitchen-budgets 35:4000 \
        --skip encoding memory nerf parallel vanilla refine baselines --out "$out"
fi
exit "$tests"
