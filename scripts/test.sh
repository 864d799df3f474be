#!/usr/bin/env bash
# Runs every test of the workspace: formatting, lints, unit, integration and end-to-end tests
# (ONNX Runtime parity included). This is what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
export REFLEX_QEMU_TESTS="${REFLEX_QEMU_TESTS:-1}"
source scripts/setup.sh

export REFLEX_HEAVY_TESTS="${REFLEX_HEAVY_TESTS:-1}"
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo test (target dir: $CARGO_TARGET_DIR)"
cargo test --workspace --all-targets "$@"
