#!/usr/bin/env bash
# On the GPU machine: Nsight Compute's speed-of-light, occupancy and warp-stall sections for the
# kernels matching a regex, in one training step (2 layers of the 1.1B shape) → $OUT/ncu-kernel.txt.
#   scripts/gpu-kernel-profile.sh [kernel-regex] [method]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
gunzip -c .device/ftl.gz > /tmp/ftl && chmod +x /tmp/ftl
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
shape="--hidden 2048 --layers 2 --heads 32 --kv-heads 4 --intermediate 5632 --vocab 32000"
$NCU -k "regex:${1:-flash}" -c 4 --section SpeedOfLight --section Occupancy --section WarpStateStats \
  --section LaunchStats --section MemoryWorkloadAnalysis /tmp/ftl bench --device cuda --dtype bf16 $shape \
  --batch 8 --seq 512 --steps 1 --warmup 1 --method "${2:-lora-qv}" > "$OUT/ncu-kernel.txt" 2> "$OUT/ncu.err"
grep -vE "^\s*$|----" "$OUT/ncu-kernel.txt" | grep -E "flash|Duration|Throughput|Occupancy|Stall|Warp Cycles|Registers|Shared Memory|Block Limit|Issued|Eligible|Bank|OPT|est" | head -80
