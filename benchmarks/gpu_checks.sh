#!/usr/bin/env bash
# Issue 6's device checks in one call, for a session's short GPU lease (about 9 minutes: the steps time out
# at 220 + 140 + 100 + 60 s). Run from the repository root after installing the project; results go to $OUT
# (default ./gpu-results): gpu_checks.log (everything printed) and six JSON/text files, within the device tool's
# limit of 8 files. The most important measurement runs first; each step has its own time limit, so one slow or
# failing step cannot take the others.
#   1. whole training steps: the naive loop, bmm, grouped and triton side by side, each formulation with its
#      exactness check against one-by-one training, and a kernel profile of the fastest row
#   2. per-layer timings of bmm's, grouped's and triton's layers (bf16, 512 models) and a block-size sweep of
#      the Triton kernels, which writes the fastest setting as packed_triton.TUNING JSON
#   3. triton again with the sweep's setting, at 512 and 1024 models (bf16) and 128 (fp32/TF32)
#   4. tests/test_packed_triton.py on the card (the kernels compiled by this machine's Triton vs torch)
set -uo pipefail
out=${OUT:-gpu-results}
mkdir -p "$out"
log="$out/gpu_checks.log"
export PYTHONUNBUFFERED=1
step() { echo; echo "=== $* ($(date -u +%T))"; }
{
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
} 2>&1 | tee "$log"

step "1. train_throughput: naive, bmm, grouped, triton" | tee -a "$log"
timeout 220 python3 -u benchmarks/train_throughput.py --device cuda --tf32 --pack-sizes 128 --bf16-pack-sizes 512 \
  --compare grouped,triton --compare-pack-sizes 128,512 --seconds 2.5 \
  --json "$out/train_throughput.json" --profile "$out/profile.txt" 2>&1 | tee -a "$log"

step "2. packed_layers: per-layer timings and the Triton block-size sweep (bf16, 512 models)" | tee -a "$log"
timeout 140 python3 -u benchmarks/packed_layers.py --device cuda --pack 512 --bf16 --repeat 5 \
  --only implicit window fold nhwc triton --sweep 64:4:3,128:8:3,128:4:4,256:8:3 \
  --json "$out/layers.json" --write-tuning "$out/triton_tuning.json" 2>&1 | tee -a "$log"
[ -s "$out/triton_tuning.json" ] || echo '{}' > "$out/triton_tuning.json"

step "3. train_throughput: triton with the sweep's block sizes" | tee -a "$log"
timeout 100 python3 -u benchmarks/train_throughput.py --device cuda --tf32 --formulation triton --pack-sizes 128 \
  --bf16-pack-sizes 512,1024 --compare '' --seconds 2.5 --triton-tuning "$out/triton_tuning.json" \
  --json "$out/train_throughput_triton.json" 2>&1 | tee -a "$log"

step "4. Triton kernel tests on the card" | tee -a "$log"
timeout 60 python3 -m pytest -q -x -p no:cacheprovider tests/test_packed_triton.py -k "not trainer" 2>&1 \
  | tail -25 | tee -a "$log"

step "done" | tee -a "$log"
