#!/usr/bin/env bash
# The benchmark suite on CUDA (one GPU, under 8 minutes): the same measurements as on CPU, written to
# benchmarks/results/ next to the CPU runs. Usage: bash benchmarks/gpu.sh [KITCHEN_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')"
kitchen=${1:-../shared/data/rgbd/7scenes-redkitchen}
args=(--device cuda --quick --skip parallel)
[ -d "$kitchen" ] && args+=(--kitchen "$kitchen" --kitchen-budgets 60:4000)
timeout 470 python benchmarks/suite.py "${args[@]}"
