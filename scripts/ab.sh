#!/usr/bin/env bash
# Two ftl builds benchmarked interleaved on one machine (A B A B …), to tell a change's effect
# from the machine's drift. On the GPU (DEVICE=cuda, the default) the shape and flags of
# scripts/gpu-check.sh, each build a packed binary from scripts/build-cuda.sh; on the CPU
# (DEVICE=cpu) those of bench/compare.py, each build a plain binary. Results (one JSON line per
# run, tagged with its build) go to $OUT/ab.jsonl and the medians to $OUT/ab.txt.
#   scripts/ab.sh A B [methods] [repeats]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
a=$1 b=$2 methods=${3:-lora-qv,full,lora-all,ia3} repeats=${4:-2}
unpack() { case "$1" in *.gz) gunzip -c "$1" > "$2" ;; *) cp "$1" "$2" ;; esac; chmod +x "$2"; }
unpack "$a" /tmp/ftl-a && unpack "$b" /tmp/ftl-b
rm -f "$OUT/ab.jsonl"
if [ "${DEVICE:-cuda}" = cuda ]; then
  export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
  args="--device cuda --dtype bf16 --hidden 2048 --layers 22 --heads 32 --kv-heads 4"
  args="$args --intermediate 5632 --vocab 32000 --batch 8 --seq 512 --steps 10 --warmup 3"
else
  grep -m1 "model name" /proc/cpuinfo | tee "$OUT/cpu.txt"
  args="--batch 4 --seq 128 --steps ${STEPS:-3}"
fi
for m in ${methods//,/ }; do
  for i in $(seq "$repeats"); do
    for w in a b; do
      line=$(/tmp/ftl-$w bench $args --method "$m" ${BENCH_ARGS:-} 2>/dev/null | tail -1)
      echo "{\"build\": \"$w\", \"run\": $i, \"result\": $line}" | tee -a "$OUT/ab.jsonl"
    done
  done
done
python3 - "$OUT/ab.jsonl" <<'EOF' | tee "$OUT/ab.txt"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {}
for r in rows:
    res = r["result"]
    by.setdefault((res.get("method"), r["build"]), []).append(res)
print(f"{'method':10} {'A tok/s':>10} {'B tok/s':>10} {'B/A':>6} {'A GiB':>7} {'B GiB':>7}")
for m in dict.fromkeys(k[0] for k in by):
    med = lambda w, k: statistics.median(x[k] for x in by[(m, w)])
    ta, tb = med("a", "tokens_per_s"), med("b", "tokens_per_s")
    ga, gb = (med(w, "peak_mem_bytes") / 2**30 for w in ("a", "b"))
    print(f"{m:10} {ta:10.0f} {tb:10.0f} {tb / ta:6.3f} {ga:7.2f} {gb:7.2f}")
EOF
