#!/usr/bin/env python3
"""Save → first completed step of the new run under `ftl watch`, and RSS over many reruns.

    python3 bench/watch_latency.py MODEL [--reruns 20] [--ftl target/release/ftl]

Starts `ftl watch` on a LoRA recipe for MODEL (an HF directory or GGUF file, or `llama-130m`: the
CPU benchmark's llama shape, randomly initialised and saved as an HF directory with safetensors
by `ftl.new` + `m:save` first), then saves the recipe
N times (changing the learning rate), timing from just before each write to the new run's
`step 1/` line on stderr; the watcher's VmRSS is read after each run. The first step's own time
is the `elapsed_s` of step 1 in that run's metrics.jsonl, so latency minus it is the overhead of
a rerun (settle delay, recipe, model from the cache, adapter, data). Prints medians of latency,
step time and overhead, and RSS after the first, middle and last rerun.
"""
import argparse, json, os, statistics, subprocess, sys, tempfile, time, threading, queue

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("--reruns", type=int, default=20)
ap.add_argument("--ftl", default="target/release/ftl")
a = ap.parse_args()

d = tempfile.mkdtemp()
recipe = os.path.join(d, "w.lua")
if a.model == "llama-130m":
    model = os.path.join(d, "make-out", "llama-130m")
    make = os.path.join(d, "make.lua")
    open(make, "w").write(f"""local m = ftl.new("llama", {{vocab_size = 32000, hidden_size = 768, intermediate_size = 2048,
  num_hidden_layers = 12, num_attention_heads = 12, num_key_value_heads = 12,
  tokenizer = ftl.tokenizer.bytes()}})
m:save({model!r})
""")
    subprocess.run([a.ftl, "run", make, "--out", os.path.join(d, "make-out")], check=True)
else:
    model = os.path.abspath(a.model)
def body(i):
    return f"""local m = ftl.load({model!r})
ftl.lora(m, {{targets = {{"q_proj", "v_proj"}}, r = 8}})
local data = ftl.data.from({{{{text = "The quick brown fox jumps over the lazy dog."}}}}, {{format = "text"}})
ftl.train(m, data, {{max_steps = 1, lr = {1e-4 * (1 + i % 7)!r}, batch_size = 1}})
"""
open(recipe, "w").write(body(0))
out = os.path.join(d, "out")
p = subprocess.Popen([a.ftl, "watch", recipe, "--out", out, f"model={model}"], stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
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
def step_s(run):
    for l in open(os.path.join(out, f"run-{run}", "metrics.jsonl")):
        r = json.loads(l)
        if r.get("step") == 1 and "elapsed_s" in r:
            return r["elapsed_s"]
    raise SystemExit(f"run-{run}: no step 1 in metrics.jsonl")

lat, step, mem = [], [], []
for i in range(1, a.reruns + 1):
    t0 = time.perf_counter()
    with open(recipe, "w") as f:
        f.write(body(i))
    t1, _ = wait(lambda l: "step 1/" in l)
    lat.append(t1 - t0)
    wait(lambda l: "done in" in l)
    step.append(step_s(i + 1))
    mem.append(rss())
p.terminate(); p.wait()
over = [x - y for x, y in zip(lat, step)]
ms = lambda xs: f"median {statistics.median(xs)*1000:.0f} ms (min {min(xs)*1000:.0f}, max {max(xs)*1000:.0f})"
marks = sorted({0, len(mem) // 4, len(mem) // 2, 3 * len(mem) // 4, len(mem) - 1})
print(f"model {a.model}: {a.reruns} reruns\n  save → first step: {ms(lat)}\n  first step itself: {ms(step)}\n"
      f"  overhead (latency − step): {ms(over)}\n  RSS after rerun "
      + ", ".join(f"{i + 1}: {mem[i]/2**20:.1f} MiB" for i in marks))
