#!/usr/bin/env bash
# Installs what building and testing reflex needs on a fresh Debian machine, and nothing twice.
# Sourced by scripts/demo.sh and scripts/test.sh; safe to run by hand.
set -euo pipefail

# Cargo builds go to a target dir outside the clone when possible, so CI and fresh clones on the
# same machine reuse the (slow to build) tract dependencies. Override with CARGO_TARGET_DIR.
if [ -z "${CARGO_TARGET_DIR:-}" ]; then
    export CARGO_TARGET_DIR="${REFLEX_TARGET_DIR:-$HOME/.cache/reflex/target}"
fi
mkdir -p "$CARGO_TARGET_DIR"

need_apt=()
command -v python3 >/dev/null || need_apt+=(python3 python3-pip)
command -v cc >/dev/null || need_apt+=(gcc)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "setup: apt-get install ${need_apt[*]}"
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi

# The QEMU hardware-in-the-loop tests (TESTING.md), only when they are asked for: an emulator
# (TCG, no KVM needed), the guest's user space (busybox, iproute2's ip, can-utils, v4l-utils),
# and kmod/cpio/binutils to assemble its initramfs. The guest kernel is not installed: the tests
# `apt-get download` and unpack it into a cache.
if [ "${REFLEX_QEMU_TESTS:-0}" = 1 ]; then
    qemu_apt=()
    command -v qemu-system-x86_64 >/dev/null || qemu_apt+=(qemu-system-x86)
    command -v busybox >/dev/null || qemu_apt+=(busybox-static)
    command -v candump >/dev/null || qemu_apt+=(can-utils)
    command -v v4l2-ctl >/dev/null || qemu_apt+=(v4l-utils)
    command -v ip >/dev/null || qemu_apt+=(iproute2)
    command -v modprobe >/dev/null || qemu_apt+=(kmod)
    command -v cpio >/dev/null || qemu_apt+=(cpio)
    command -v strip >/dev/null || qemu_apt+=(binutils)
    # The tests find the kernel package through apt's lists.
    if [ ${#qemu_apt[@]} -gt 0 ] || ! apt-cache show linux-image-amd64 >/dev/null 2>&1; then
        echo "setup: apt-get install ${qemu_apt[*]} (QEMU tests)"
        if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
        $SUDO apt-get update -qq
        [ ${#qemu_apt[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
            --no-install-recommends "${qemu_apt[@]}"
    fi
fi

# The deploy test (tests/tests/it/deploy.rs) starts its own sshd on 127.0.0.1 with a throwaway
# key and runs `reflex-tools deploy` (ssh + rsync) against it; the unit tests of the generated
# systemd units run `systemd-analyze verify`. (Installing openssh-server also enables Debian's
# own sshd service on a machine that runs systemd; the test never uses that one.)
deploy_apt=()
[ -x /usr/sbin/sshd ] || deploy_apt+=(openssh-server)
command -v ssh >/dev/null || deploy_apt+=(openssh-client)
command -v rsync >/dev/null || deploy_apt+=(rsync)
command -v systemd-analyze >/dev/null || deploy_apt+=(systemd)
if [ ${#deploy_apt[@]} -gt 0 ]; then
    echo "setup: apt-get install ${deploy_apt[*]} (deploy tests)"
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        "${deploy_apt[@]}"
fi
# The board binary (scripts/build-board.sh, run by scripts/test.sh unless REFLEX_BOARD_TESTS=0)
# installs zig and cargo-zigbuild into a virtualenv: Debian's python3 needs python3-venv for it.
if [ "${REFLEX_BOARD_TESTS:-0}" = 1 ] && ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    echo "setup: apt-get install python3-venv (board binary)"
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-venv
fi

if ! command -v cargo >/dev/null; then
    echo "setup: cargo not found; install Rust with rustup (https://rustup.rs), then re-run" >&2
    exit 1
fi

# Python packages for the independent references used by the tests (ONNX checker, ONNX Runtime,
# numpy/PIL preprocessing references, cantools for the CAN codecs). Pinned to the versions the
# tests were written against.
PY_PKGS=(onnx==1.23.2 onnxruntime==1.32.0 numpy==2.4.6 pillow==13.0.0 safetensors==0.8.0 cantools==45.1.0)
if ! python3 - <<'PY' 2>/dev/null
import onnx, onnxruntime, numpy, PIL, safetensors, cantools
PY
then
    echo "setup: pip install ${PY_PKGS[*]}"
    python3 -m pip install --quiet --disable-pip-version-check "${PY_PKGS[@]}"
fi
