#!/usr/bin/env bash
# On the GPU machine: Nsight Compute on one training step (2 layers of the 1.1B shape).
#   scripts/gpu-profile.sh [method]                  per-kernel GPU time summed by kernel name
#                                                    → $OUT/ncu.csv and $OUT/ncu-summary.txt
#   scripts/gpu-profile.sh [method] KERNEL-REGEX     speed of light, occupancy, warp stalls and
#                                                    memory of the matching kernels → $OUT/ncu-kernel.txt
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
gunzip -c .device/ftl.gz > /tmp/ftl && chmod +x /tmp/ftl
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
shape="--hidden 2048 --layers 2 --heads 32 --kv-heads 4 --intermediate 5632 --vocab 32000"
bench=(/tmp/ftl bench --device cuda --dtype bf16 $shape --batch 8 --seq 512 --steps 1 --warmup 1 --method "${1:-lora-qv}")
if [ -n "${2:-}" ]; then
  $NCU -k "regex:$2" -c 4 --section SpeedOfLight --section Occupancy --section WarpStateStats \
    --section LaunchStats --section MemoryWorkloadAnalysis "${bench[@]}" > "$OUT/ncu-kernel.txt" 2> "$OUT/ncu.err"
  grep -vE "^\s*$|----" "$OUT/ncu-kernel.txt" |
    grep -E "\(|Duration|Throughput|Occupancy|Stall|Warp Cycles|Registers|Shared Memory|Block Limit|Waves|OPT" | head -80
  exit 0
fi
$NCU --csv --metrics gpu__time_duration.sum "${bench[@]}" > "$OUT/ncu.csv" 2> "$OUT/ncu.err"
python3 - "$OUT/ncu.csv" > "$OUT/ncu-summary.txt" <<'PY'
import csv, sys, collections
rows = [l for l in open(sys.argv[1]) if l.startswith('"')]
t = collections.Counter(); n = collections.Counter()
for r in csv.DictReader(rows):
    if r["Metric Name"] == "gpu__time_duration.sum":
        k = r["Kernel Name"][:60]
        t[k] += float(r["Metric Value"].replace(",", "")); n[k] += 1
tot = sum(t.values())
print(f"total {tot/1e6:.2f} ms over {sum(n.values())} launches (warm-up + 1 step)")
for k, v in t.most_common(40):
    print(f"{v/1e6:9.3f} ms {100*v/tot:5.1f}% {n[k]:6d}  {k}")
PY
cat "$OUT/ncu-summary.txt"
