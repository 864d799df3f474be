#!/usr/bin/env bash
# Runs every test of the workspace: formatting, lints, unit, integration and end-to-end tests
# (ONNX Runtime parity included). This is what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
export REFLEX_QEMU_TESTS="${REFLEX_QEMU_TESTS:-1}"
# The aarch64 board binary (scripts/build-board.sh) and its qemu-user smoke tests run by default;
# REFLEX_BOARD_TESTS=0 leaves them out (they add about 12 minutes to a cold run, 1 minute warm:
# docs/benchmarks.md, "CI from nothing").
export REFLEX_BOARD_TESTS="${REFLEX_BOARD_TESTS:-1}"
source scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== module import cycles"
for src in models/src runtime/src host-tools/src board/src; do python3 scripts/module-cycles.py "$src"; done
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
if [ "$REFLEX_BOARD_TESTS" = 1 ]; then
    # The aarch64 board binary (release, its own target dir under $CARGO_TARGET_DIR), qemu-user
    # and an arm64 libc: tests/tests/it/board.rs runs it against the x86 build.
    echo "== board binary (scripts/build-board.sh --qemu)"
    board_env="$(./scripts/build-board.sh --qemu --env)"
    eval "$board_env"
fi
# The TensorRT shim (C++, --features tensorrt) against NVIDIA's TensorRT 10.3 headers: in
# TENSORRT_INCLUDE_DIR when set, else in the shared folder next to the repository
# (REFLEX_SHARED_DIR, default ../shared: /work/shared when the repository is /work/main).
shared="${REFLEX_SHARED_DIR:-../shared}"
trt_headers="${TENSORRT_INCLUDE_DIR:-$shared/third_party/tensorrt-10.3/include}"
if [ -f "$trt_headers/NvInferRuntime.h" ]; then
  echo "== cargo clippy --features reflex-runtime/tensorrt (headers: $trt_headers)"
  TENSORRT_INCLUDE_DIR="$(cd "$trt_headers" && pwd)" \
    cargo clippy --workspace --all-targets --features reflex-runtime/tensorrt --quiet -- -D warnings
else
  echo "== SKIPPED cargo clippy --features reflex-runtime/tensorrt: no TensorRT headers at $trt_headers" \
    "(set TENSORRT_INCLUDE_DIR or REFLEX_SHARED_DIR)"
fi
echo "== cargo test (target dir: $CARGO_TARGET_DIR)"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --all-targets "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
