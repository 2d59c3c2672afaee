#!/usr/bin/env bash
# Issue 6's device checks in one call, for a session's short GPU lease (not yet run as a whole; see benchmarks/README.md).
# Run from the repository root after installing the project; results go to $OUT (default ./gpu-results).
#   per-layer timings of every formulation (bf16, 512 models), then whole training steps with a kernel profile.
set -euo pipefail
out=${OUT:-gpu-results}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/device.txt"
python3 -u benchmarks/packed_layers.py --device cuda --pack 512 --bf16 --repeat 5 --json "$out/layers_bf16.json" \
  | tee "$out/layers_bf16.txt" || true
python3 -u benchmarks/train_throughput.py --device cuda --tf32 --pack-sizes 1,32,128 --bf16-pack-sizes 128,512 \
  --other-pack-sizes 128 --seconds 2.5 --json "$out/train_throughput.json" --profile "$out/profile.txt" \
  | tee "$out/train_throughput.txt"
