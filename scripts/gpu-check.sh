#!/usr/bin/env bash
# On the GPU machine: correctness of the CUDA build against the reference fixtures, then the
# benchmark side by side with PyTorch + PEFT. Expects the packed binary at .device/ftl.gz (from
# scripts/build-cuda.sh) and the reference scripts at .device/bench/ (copied unchanged from
# ../shared/bench/). Results go to $OUT (or ./gpu-out).
#   scripts/gpu-check.sh [check|bench|all|tests] [methods]
# (tests: the integration tests built by `scripts/build-cuda.sh tests`, on the GPU)
# REF=0 skips the PyTorch reference; BENCH_ARGS adds ftl bench flags (e.g. --checkpoint).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
what=${1:-all}
methods=${2:-lora-qv,full,lora-all,ia3}
gunzip -c .device/ftl.gz > /tmp/ftl && chmod +x /tmp/ftl
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
if [ "$what" = tests ]; then
  gunzip -c .device/ftl-tests.gz > /tmp/ftl-tests && chmod +x /tmp/ftl-tests
  /tmp/ftl-tests --test-threads 1 cuda:: 2>&1 | tee "$OUT/tests.txt" | tail -15
fi
if [ "$what" = check ] || [ "$what" = all ]; then
  /tmp/ftl -q run recipes/check_fixtures.lua dir=tests/fixtures/hf training=true device=cuda dtype=f32 2>&1 | tee "$OUT/check-hf.txt" | tail -4
  /tmp/ftl -q run recipes/check_fixtures.lua dir=tests/fixtures/ref extra=tests/fixtures/hf device=cuda dtype=f32 2>&1 | tee "$OUT/check-ref.txt" | grep -E "FAIL|passed"
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
  shape="--hidden 2048 --layers 22 --heads 32 --kv-heads 4 --intermediate 5632 --vocab 32000"
  for m in ${methods//,/ }; do
    /tmp/ftl bench --device cuda --dtype bf16 $shape --batch 8 --seq 512 --steps 10 --warmup 3 --method "$m" ${BENCH_ARGS:-} 2>&1 | tee -a "$OUT/ftl-gpu.jsonl" | tail -1
  done
  if [ -f .device/bench/pytorch_peft_gpu.py ] && [ "${REF:-1}" = 1 ]; then
    python3 .device/bench/pytorch_peft_gpu.py "$OUT/pytorch-gpu.json" 2>&1 | tee "$OUT/pytorch-gpu.txt" | grep -v "^torch"
  fi
  # side by side: ftl's median per method against the reference run
  if [ -f "$OUT/pytorch-gpu.json" ]; then
    python3 bench/gpu_ratios.py "$OUT/ftl-gpu.jsonl" "$OUT/pytorch-gpu.json" | tee "$OUT/ratios.txt"
  fi
fi
