#!/usr/bin/env bash
# Issue 6's device checks in one call, for a session's short GPU lease (at most 9 minutes: the steps time out at 100 + 100 + 240 + 90 s; not yet run as a whole,
# see benchmarks/README.md). Run from the repository root after installing the project; results go to $OUT
# (default ./gpu-results). Each step has its own time limit, so one slow or failing step cannot take the others.
#   1. the Triton kernels compiled by this machine's Triton, against torch's convolutions (values, gradients)
#   2. per-layer timings of every formulation (bf16, 512 models)
#   3. whole training steps: every formulation side by side, each with its exactness check, and a kernel profile
#   4. a block-size sweep of the Triton layers
set -uo pipefail
out=${OUT:-gpu-results}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/device.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$out/device.txt"
timeout 100 python3 -m pytest -q -x -p no:cacheprovider tests/test_packed_triton.py -k "not trainer" 2>&1 \
  | tail -40 | tee "$out/triton_tests.txt"
timeout 100 python3 -u benchmarks/packed_layers.py --device cuda --pack 512 --bf16 --repeat 5 \
  --json "$out/layers_bf16.json" 2>&1 | tee "$out/layers_bf16.txt"
timeout 240 python3 -u benchmarks/train_throughput.py --device cuda --tf32 --pack-sizes 1,128 --bf16-pack-sizes 512 \
  --compare grouped,triton,bmm+compile --compare-pack-sizes 128,512 --seconds 2.5 \
  --json "$out/train_throughput.json" --profile "$out/profile.txt" 2>&1 | tee "$out/train_throughput.txt"
# 4. with the time left: the Triton layers under other block sizes and launch options (for packed_triton.TUNING)
timeout 90 python3 -u benchmarks/packed_layers.py --device cuda --pack 512 --bf16 --repeat 5 --only triton \
  --sweep 64:4:3,128:8:3,256:8:3,128:4:4 --json "$out/layers_triton_sweep.json" 2>&1 | tee "$out/layers_triton_sweep.txt"
