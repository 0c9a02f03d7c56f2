#!/usr/bin/env bash
# Fuzzes every input parser ftl owns with AFL++ (see RELIABILITY.md): builds the targets in
# fuzz/ with cargo-afl, runs each for EXECS executions from its seeds in fuzz/in/TARGET, JOBS at
# a time, and prints per target the executions, paths found, crashes and hangs.
#
#   cargo install cargo-afl            # once (stable Rust; it builds its own AFL++ runtime)
#   scripts/fuzz.sh                    # every target, 1,000,000 executions each
#   EXECS=200000 JOBS=1 scripts/fuzz.sh gguf data
#   SECONDS_EACH=300 scripts/fuzz.sh   # also stop each target after 300 s
#
# Crashes and hangs land in fuzz/out/TARGET/default/{crashes,hangs}; replay one with
#   fuzz/target/release/TARGET < FILE
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
EXECS=${EXECS:-1000000}
JOBS=${JOBS:-$(nproc)}
LIMIT=${SECONDS_EACH:+-V $SECONDS_EACH}
TARGETS=${*:-args options config safetensors gguf adapter_config data run_ron checkpoint}
cargo afl build --release
mkdir -p out
export AFL_SKIP_CPUFREQ=1 AFL_NO_UI=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_AFFINITY=1
# -m: inputs may not make ftl take more than 4 GiB (an unbounded allocation is a crash);
# -t: an execution over 5 s is a hang
printf '%s\n' $TARGETS | xargs -P "$JOBS" -I{} sh -c \
  'cargo afl fuzz -i in/{} -o out/{} -E '"$EXECS"' '"$LIMIT"' -m 4096 -t 5000 target/release/{} > out/{}.log 2>&1 || echo "{}: afl-fuzz failed (fuzz/out/{}.log)"'
printf '%-15s %12s %8s %8s %6s %10s\n' target executions corpus crashes hangs seconds
for t in $TARGETS; do
  s=out/$t/default/fuzzer_stats
  [ -f "$s" ] || { echo "$t: no stats"; continue; }
  v() { awk -F' *: *' -v k="$1" '$1 == k {print $2}' "$s"; }
  printf '%-15s %12s %8s %8s %6s %10s\n' "$t" "$(v execs_done)" "$(v corpus_count)" \
    "$(v saved_crashes)" "$(v saved_hangs)" "$(v run_time)"
done
