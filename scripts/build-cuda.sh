#!/usr/bin/env bash
# Builds ftl with the `cuda` feature on a machine without a GPU, for the H200 machine (CUDA 13.0,
# driver 580, glibc 2.39), and packs the binary to travel with the working tree.
#
#   scripts/build-cuda.sh            # → target-cuda/release/ftl and .device/ftl.gz
#   scripts/build-cuda.sh tests      # also the integration tests → .device/ftl-tests.gz
#
# Needs the CUDA 13.0 toolchain unpacked from PyPI wheels (nvcc must stay 13.0.x: newer PTX is
# rejected by driver 580): ../shared/notes/cuda-build/setup-cuda13-from-pypi.sh, once.
set -euo pipefail
cd "$(dirname "$0")/.."
export CUDA_ROOT=${CUDA_ROOT:-$HOME/.cache/cuda13}
[ -x "$CUDA_ROOT/bin/nvcc" ] || { echo "no CUDA toolchain at $CUDA_ROOT (run setup-cuda13-from-pypi.sh)" >&2; exit 1; }
export CUDA_PATH=$CUDA_ROOT CUDA_HOME=$CUDA_ROOT PATH=$CUDA_ROOT/bin:$PATH
export CUDA_COMPUTE_CAP=90 CUDARC_CUDA_VERSION=13000 CUDAFORGE_THREADS=${CUDAFORGE_THREADS:-2}
export LIBRARY_PATH=$CUDA_ROOT/lib:$CUDA_ROOT/lib/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}
# the GPU machine keeps CUDA's libraries in /usr/local/cuda/lib64
export RUSTFLAGS="${RUSTFLAGS:-} -C link-arg=-Wl,--enable-new-dtags,-rpath,/usr/local/cuda/lib64"
cargo build --release --features cuda --target-dir target-cuda
mkdir -p .device
strip -o .device/ftl target-cuda/release/ftl
gzip -9f .device/ftl
ls -la .device/ftl.gz
if [ "${1:-}" = tests ]; then
  bin=$(cargo test --release --features cuda --target-dir target-cuda --test ftl --no-run \
    --message-format=json 2>/dev/null | grep -o '"executable":"[^"]*"' | cut -d'"' -f4 | tail -1)
  strip -o .device/ftl-tests "$bin"
  gzip -9f .device/ftl-tests
  ls -la .device/ftl-tests.gz
fi
