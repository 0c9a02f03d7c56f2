#!/usr/bin/env python3
"""Runs `ftl bench` side by side with the reference PyTorch + PEFT scripts (used unchanged, from
../shared/bench/) and prints tokens/s and peak-memory ratios.

  python3 bench/compare.py [--methods full,lora-qv,lora-all,ia3,prefix] [--repeats 3]
                           [--steps 5] [--python PYTHON] [--ftl target/release/ftl]
                           [--reference ../shared/bench/pytorch_peft_cpu.py] [--out FILE]

Each method runs in its own process (peak RSS is the process's), ftl and PyTorch alternating,
`--repeats` times; the table shows the median of each. Needs `pip install torch transformers peft`
in PYTHON (default: python3) and a release build of ftl (`cargo build --release`).
"""
import argparse, json, os, statistics, subprocess, sys

ap = argparse.ArgumentParser()
ap.add_argument("--methods", default="full,lora-qv,lora-all,ia3,prefix")
ap.add_argument("--repeats", type=int, default=3)
ap.add_argument("--steps", type=int, default=5)
ap.add_argument("--batch", type=int, default=4)
ap.add_argument("--seq", type=int, default=128)
ap.add_argument("--python", default=os.environ.get("PYTHON", "python3"))
ap.add_argument("--ftl", default="target/release/ftl")
ap.add_argument("--reference", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "bench", "pytorch_peft_cpu.py"))
ap.add_argument("--out", default=None, help="also append every raw JSON line to this file")
a = ap.parse_args()

def run(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{out.stderr}")
    line = [l for l in out.stdout.splitlines() if l.startswith("{")][-1]
    if a.out:
        with open(a.out, "a") as f:
            f.write(line + "\n")
    return json.loads(line)

rows = []
for m in a.methods.split(","):
    ours, theirs = [], []
    for _ in range(a.repeats):
        ours.append(run([a.ftl, "bench", "--method", m, "--batch", str(a.batch), "--seq", str(a.seq), "--steps", str(a.steps)]))
        theirs.append(run([a.python, a.reference, m, "llama-130m", str(a.batch), str(a.seq), str(a.steps)]))
    f_tps = statistics.median(r["tokens_per_s"] for r in ours)
    p_tps = statistics.median(r["tokens_per_s"] for r in theirs)
    f_mem = statistics.median(r["peak_mem_bytes"] for r in ours) / 2**30
    p_mem = statistics.median(r["peak_rss_mib"] for r in theirs) / 1024
    rows.append((m, f_tps, p_tps, f_mem, p_mem))
    print(f"{m:9} ftl {f_tps:7.1f} tok/s {f_mem:5.2f} GiB | pytorch+peft {p_tps:7.1f} tok/s {p_mem:5.2f} GiB | "
          f"speed x{f_tps / p_tps:4.2f}  memory x{f_mem / p_mem:4.2f}", flush=True)
