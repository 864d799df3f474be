#!/usr/bin/env bash
# The main job on an embedded default: builds the reference ResNet-18 bundle and a synthetic
# episode (cached under target/reflex-demo), then runs the control loop for 10 s on the replayed
# camera and writes the CAN frames as a candump log. Extra arguments go to `reflex demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
# The whole workspace's binaries, not `-p reflex-runtime`: a per-package build resolves features
# differently and would compile tract a second time next to what the tests build.
cargo build --quiet --workspace --bins
exec "$CARGO_TARGET_DIR/debug/reflex" demo --workdir target/reflex-demo "$@"
