#!/usr/bin/env python3
"""Prints ftl against PyTorch + PEFT on the GPU from the files `scripts/gpu-check.sh bench`
writes: ftl's JSON lines (every run; the median per method is taken) and the reference script's
JSON (its tinyllama-1.1b rows, the issue's shape).

  python3 bench/gpu_ratios.py OUT/ftl-gpu.jsonl OUT/pytorch-gpu.json
"""
import json, statistics, sys

ftl_file, ref_file = sys.argv[1], sys.argv[2]
runs = {}
for line in open(ftl_file):
    line = line.strip()
    if not line.startswith("{"):
        continue
    r = json.loads(line)
    if r.get("checkpoint"):
        continue
    runs.setdefault(r["method"], []).append(r)
ref = {r["method"]: r for r in json.load(open(ref_file)) if r.get("model") == "tinyllama-1.1b"}

print(f"{'method':9} {'ftl tok/s':>10} {'runs':>4} {'GiB':>6} | {'pytorch tok/s':>13} {'GiB':>6} | speed  memory")
for m, rs in runs.items():
    tps = statistics.median(r["tokens_per_s"] for r in rs)
    gib = max(r["peak_mem_bytes"] for r in rs) / 2**30
    line = f"{m:9} {tps:10.0f} {len(rs):4d} {gib:6.2f} |"
    if m in ref:
        p = ref[m]
        line += f" {p['tokens_per_s']:13.0f} {p['peak_gib']:6.2f} | x{tps / p['tokens_per_s']:.2f}  x{gib / p['peak_gib']:.2f}"
    else:
        line += " (no reference run)"
    print(line)
