#!/usr/bin/env python3
"""Save → first completed step of the new run under `ftl watch`, and RSS over many reruns.

    python3 bench/watch_latency.py MODEL [--reruns 20] [--ftl target/release/ftl]

Starts `ftl watch` on a LoRA recipe for MODEL (an HF directory or GGUF file), then saves the recipe
REPEAT times (changing the learning rate), timing from just before each write to the new run's
`step 1/` line on stderr; the watcher's VmRSS is read after each run. Prints the median latency,
the median first-step time ftl reports (elapsed of step 1 is in the line's tok/s; we time a run
with an unchanged recipe's step to compare) and RSS at the first and last rerun.
"""
import argparse, os, statistics, subprocess, sys, tempfile, time, threading, queue

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("--reruns", type=int, default=20)
ap.add_argument("--ftl", default="target/release/ftl")
a = ap.parse_args()

d = tempfile.mkdtemp()
recipe = os.path.join(d, "w.lua")
model = os.path.abspath(a.model)
def body(i):
    return f"""local m = ftl.load({model!r})
ftl.lora(m, {{targets = {{"q_proj", "v_proj"}}, r = 8}})
local data = ftl.data.from({{{{text = "The quick brown fox jumps over the lazy dog."}}}}, {{format = "text"}})
ftl.train(m, data, {{max_steps = 1, lr = {1e-4 * (1 + i % 7)!r}, batch_size = 1}})
"""
open(recipe, "w").write(body(0))
p = subprocess.Popen([a.ftl, "watch", recipe, f"model={model}"], stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                     text=True, env={**os.environ, "FTL_LOG": "ftl=info"})
lines = queue.Queue()
threading.Thread(target=lambda: [lines.put((time.perf_counter(), l)) for l in p.stderr], daemon=True).start()

def wait(pred, timeout=300):
    end = time.time() + timeout
    while time.time() < end:
        t, l = lines.get(timeout=timeout)
        if pred(l):
            return t, l
    raise SystemExit("timed out")

def rss():
    for l in open(f"/proc/{p.pid}/status"):
        if l.startswith("VmRSS:"):
            return int(l.split()[1]) * 1024

wait(lambda l: "step 1/" in l)
wait(lambda l: "done in" in l)
lat, mem = [], []
for i in range(1, a.reruns + 1):
    t0 = time.perf_counter()
    with open(recipe, "w") as f:
        f.write(body(i))
    t1, _ = wait(lambda l: "step 1/" in l)
    lat.append(t1 - t0)
    wait(lambda l: "done in" in l)
    mem.append(rss())
p.terminate(); p.wait()
print(f"model {a.model}: {a.reruns} reruns; save → first step: median {statistics.median(lat)*1000:.0f} ms "
      f"(min {min(lat)*1000:.0f}, max {max(lat)*1000:.0f}); RSS after rerun 1: {mem[0]/2**20:.0f} MiB, "
      f"after rerun {a.reruns}: {mem[-1]/2**20:.0f} MiB")
