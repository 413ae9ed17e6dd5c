#!/usr/bin/env bash
# Build the real refiner-training stores of the quality preset from ../shared/data/rgbd-train (or DIR):
# every folder becomes a scene store with a role (train or val) and its noisy twin (the project's simulated
# sensor noise on the real sensor depth, as the seed does with NYU). Frames of ../shared/data/rgbd (the
# held-out frames of benchmarks/bench_real.py) are never used here.
#
#   bash benchmarks/real_stores.sh [DIR] [OUT]     # OUT defaults to data/real (git-ignored)
#
# 7-Scenes kitchen (early frames) and the RealSense F200 shelf train the refiner at 640x480 and, once more,
# at 320x240 (the noise simulated at each scale's focal length); the ASUS Xtion frames validate it.
set -euo pipefail
src=${1:-../shared/data/rgbd-train}
out=${2:-data/real}
mkdir -p "$out"
build() {  # name folder role extra-args...
    local name=$1 folder=$2 role=$3
    shift 3
    [ -d "$out/$name.zarr" ] || dnerf download --quiet --set data.source=sevenscenes --set "data.path=$src/$folder" \
        --set "data.role=$role" --set data.test_every=0 --set "paths.scenes=$out/$name.zarr" "$@"
    [ -d "$out/${name}_noisy.zarr" ] || dnerf corrupt --quiet --set "paths.scenes=$out/$name.zarr" \
        --set "paths.noisy=$out/${name}_noisy.zarr"
}
build kitchen 7scenes-redkitchen-early train
build kitchen_half 7scenes-redkitchen-early train --set data.downscale=2
build shelf apc-shelf-f200 train
build shelf_half apc-shelf-f200 train --set data.downscale=2
build ycb ycb-xtion val
pairs=""
for name in kitchen kitchen_half shelf shelf_half ycb; do
    pairs="$pairs{scenes: $out/$name.zarr, noisy: $out/${name}_noisy.zarr}, "
done
echo "diffusion.train.extra_stores=[${pairs%, }]"
