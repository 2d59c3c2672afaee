#!/usr/bin/env bash
# The packed trainer's device checks in one call, for a session's short GPU lease (at most 8.7 minutes: the steps
# time out at 180 + 140 + 120 + 80 s). Run from the repository root after installing the project; results go to
# $OUT (default ./gpu-results): gpu_checks.log (everything printed) and JSON/text files, within the device
# tool's limit of 8 files. Each step has its own time limit, so one slow or failing step cannot take the others.
#   1. a sweep of the Triton kernels' launch settings, kernel kind by kernel kind (bf16, 512 models, per layer);
#      the settings that beat packed_triton's heuristic are combined and written as TUNING JSON
#   2. whole training steps (bf16, 512 models; the fp32/TF32 rows and the bf16-vs-fp32 loss comparison were measured
#      on 2026-11-28 and are left out for time): the naive loop, triton (auto), triton
#      with torch's reconstruction loss instead of the fused kernels and with the ReLU masks applied where
#      gradients are read (the A/B rows of those two) and with the per-run draws on a side stream (overlap_sampling's
#      A/B), the exactness check against one-by-one training, and a kernel profile of the fastest
#   3. triton again with the sweep's combined setting, without and with side-stream sampling (exactness checked too)
#   4. tests/test_packed_triton.py on the card (the kernels compiled by this machine's Triton vs torch)
# Earlier sessions' calls (2026-11-28: per-layer comparison of every formulation, throughput, the first sweep):
# benchmarks/README.md.
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

# The sweep: packed_layers.py's STANDARD_SWEEP (the window form of the transposed convs first, then whole-K
# weight-gradient tiles, the reduction chunks around the defaults, row tiles, warps and row splits); --budget drops
# its tail evenly on every layer if time runs short.
step "1. packed_layers: the Triton launch-settings sweep (bf16, 512 models)" | tee -a "$log"
timeout 180 python3 -u benchmarks/packed_layers.py --device cuda --pack 512 --bf16 --repeat 5 --only triton \
  --sweep standard --budget 140 --json "$out/layers_sweep.json" --write-tuning "$out/triton_tuning.json" 2>&1 \
  | tee -a "$log"
[ -s "$out/triton_tuning.json" ] || echo '{}' > "$out/triton_tuning.json"

step "2. train_throughput: naive, triton (auto), its unfused-loss, unchained and overlapped-sampling A/B rows" | tee -a "$log"
timeout 140 python3 -u benchmarks/train_throughput.py --device cuda --tf32 --pack-sizes '' --bf16-pack-sizes 512 \
  --compare triton+unfused,triton+unchained,triton+overlap --compare-pack-sizes 512 --seconds 2.5 \
  --json "$out/train_throughput.json" --profile "$out/profile.txt" 2>&1 | tee -a "$log"

step "3. train_throughput: triton with the sweep's settings, without and with side-stream sampling" | tee -a "$log"
timeout 120 python3 -u benchmarks/train_throughput.py --device cuda --tf32 --formulation triton --pack-sizes '' \
  --bf16-pack-sizes 512 --compare triton+overlap --compare-pack-sizes 512 --seconds 2.5 \
  --triton-tuning "$out/triton_tuning.json" \
  --json "$out/train_throughput_tuned.json" 2>&1 | tee -a "$log"

step "4. Triton kernel tests on the card" | tee -a "$log"
timeout 80 python3 -m pytest -q -p no:cacheprovider tests/test_packed_triton.py -k "not trainer" 2>&1 \
  | tail -25 | tee -a "$log"
step "done" | tee -a "$log"
