#!/usr/bin/env bash
# Boots a throwaway Linux guest under QEMU with the kernel drivers reflex talks to (vcan,
# can-raw, vivid) and runs one scenario script in it; prints the guest's serial console.
#
#   tests/qemu/run-guest.sh SCENARIO.sh [PAYLOAD_DIR]
#
# The guest's root is an initramfs built here: busybox, bash, iproute2's `ip`, can-utils,
# v4l2-ctl, the kernel modules, `$REFLEX_BIN` (default `$CARGO_TARGET_DIR/debug/reflex`) and
# PAYLOAD_DIR (copied to /payload: bundles, episodes). The scenario runs as /scenario.sh from
# tests/qemu/init; the guest powers off when it ends (or after REFLEX_QEMU_GUEST_TIMEOUT s).
#
# The kernel is Debian's current linux-image-amd64, fetched once with `apt-get download` and
# unpacked (never installed) under $REFLEX_QEMU_CACHE (default ~/.cache/reflex/qemu). QEMU runs
# with TCG software emulation: this needs no /dev/kvm, and the stock kernel boots in seconds.
#
# Environment: REFLEX_QEMU_TIMEOUT (host-side limit, s, default 300), REFLEX_QEMU_MEM (MiB,
# default 2048), REFLEX_QEMU_SMP (default 2), REFLEX_QEMU_ACCEL (default tcg).
# REFLEX_QEMU_MODULES (more kernel modules to load) and REFLEX_QEMU_DEVICES (more QEMU arguments,
# e.g. an emulated CAN controller) add hardware for one scenario.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
scenario="${1:?usage: run-guest.sh SCENARIO.sh [PAYLOAD_DIR]}"
payload="${2:-}"
target="${CARGO_TARGET_DIR:-$here/../../target}"
reflex_bin="${REFLEX_BIN:-$target/debug/reflex}"
cache="${REFLEX_QEMU_CACHE:-$HOME/.cache/reflex/qemu}"
work="$(mktemp -d "${TMPDIR:-/tmp}/reflex-qemu.XXXXXX")"
trap 'rm -rf "$work"' EXIT

for tool in qemu-system-x86_64 busybox bash ip candump cansend v4l2-ctl cpio depmod modprobe \
    apt-get dpkg-deb ldd; do
    command -v "$tool" >/dev/null || {
        echo "run-guest: \`$tool\` not found; run scripts/setup.sh with REFLEX_QEMU_TESTS=1" >&2
        exit 2
    }
done
[ -x "$reflex_bin" ] || { echo "run-guest: $reflex_bin not built" >&2; exit 2; }

# --- kernel: Debian's current image, unpacked once per version --------------------------------
mkdir -p "$cache"
kernel_pkg() {
    apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}'
}
kpkg="$(kernel_pkg)"
if [ -z "$kpkg" ] && [ "$(id -u)" = 0 ]; then
    apt-get update -qq >/dev/null 2>&1 || true
    kpkg="$(kernel_pkg)"
fi
if [ -z "$kpkg" ]; then
    # apt lists not downloaded yet, or no network: use whatever kernel is cached.
    kpkg="$(ls "$cache" 2>/dev/null | grep '^linux-image-[0-9]' | sort -V | tail -1 || true)"
fi
[ -n "$kpkg" ] || { echo "run-guest: no linux-image package known (apt-get update?)" >&2; exit 2; }
kdir="$cache/$kpkg"
if [ ! -f "$kdir/.ready" ]; then
    echo "run-guest: fetching $kpkg (once)" >&2
    rm -rf "$kdir" && mkdir -p "$kdir/deb"
    (cd "$kdir/deb" && apt-get download -q "$kpkg" >/dev/null 2>&1) || {
        echo "run-guest: apt-get download $kpkg failed" >&2; exit 2; }
    dpkg-deb -x "$kdir"/deb/*.deb "$kdir/root"
    rm -rf "$kdir/deb"
    kver="$(ls "$kdir/root/lib/modules")"
    depmod -b "$kdir/root" "$kver"
    touch "$kdir/.ready"
fi
kver="$(ls "$kdir/root/lib/modules")"
vmlinuz="$kdir/root/boot/vmlinuz-$kver"

# --- the guest's root ----------------------------------------------------------------------
root="$work/root"
mkdir -p "$root"/{bin,usr/bin,dev,proc,sys,tmp,run,etc,lib/modules,payload}
for applet in sh mount umount insmod poweroff sleep cat grep wc tail head ls kill mkdir date \
    sed awk tr cut sort uniq seq ps rm cp timeout printf echo true false test uptime dmesg \
    readlink ln touch basename dirname tee md5sum od hexdump xxd find stat free; do
    ln -sf busybox "$root/bin/$applet"
done

# A binary and the shared libraries `ldd` names, at their own paths.
copy_bin() {
    local src="$1" dst="$2"
    install -D -m 755 "$src" "$root$dst"
    local lib libs
    # Static binaries have none (ldd fails on them).
    libs="$(ldd "$src" 2>/dev/null | grep -o '/[^ ]*' || true)"
    for lib in $libs; do
        [ -e "$root$lib" ] || install -D -m 755 "$lib" "$root$lib"
    done
}
copy_bin "$(command -v busybox)" /bin/busybox
copy_bin "$(command -v bash)" /usr/bin/bash
copy_bin "$(command -v ip)" /usr/bin/ip
for t in candump cansend cangen canbusload; do copy_bin "$(command -v $t)" /usr/bin/$t; done
copy_bin "$(command -v v4l2-ctl)" /usr/bin/v4l2-ctl
# Debug info is most of the binary's size; the guest does not need it.
strip -o "$work/reflex" "$reflex_bin"
copy_bin "$work/reflex" /usr/bin/reflex
[ -z "${REFLEX_GUEST_BINS:-}" ] || for b in $REFLEX_GUEST_BINS; do
    strip -o "$work/$(basename "$b")" "$b"
    copy_bin "$work/$(basename "$b")" "/usr/bin/$(basename "$b")"
done

# Modules in dependency order (modprobe resolves it on the host; the guest only insmods).
: > "$root/etc/modules.order"
# REFLEX_QEMU_MODULES adds modules (the doctor test: kvaser_pci, the driver of the emulated CAN
# controller REFLEX_QEMU_DEVICES adds).
# shellcheck disable=SC2086
modprobe -d "$kdir/root" -S "$kver" -a --show-depends vcan can-raw vivid ${REFLEX_QEMU_MODULES:-} \
    | awk '$1 == "insmod" {print $2}' | while read -r ko; do
    cp "$ko" "$root/lib/modules/"
    basename "$ko" >> "$root/etc/modules.order"
done

install -m 755 "$here/init" "$root/init"
install -m 755 "$scenario" "$root/scenario.sh"
[ -z "$payload" ] || cp -r "$payload"/. "$root/payload/"
echo "${REFLEX_QEMU_GUEST_TIMEOUT:-240}" > "$root/etc/guest-timeout"

# Uncompressed: packing and unpacking ~100 MB of mostly incompressible weights is faster raw.
(cd "$root" && find . | cpio -o -H newc --quiet) > "$work/initrd.cpio"

# --- boot ----------------------------------------------------------------------------------
accel="${REFLEX_QEMU_ACCEL:-tcg}"
echo "run-guest: booting $kpkg ($accel, initramfs $(du -m "$work/initrd.cpio" | cut -f1) MiB)" >&2
start=$(date +%s.%N)
rc=0
timeout "${REFLEX_QEMU_TIMEOUT:-300}" qemu-system-x86_64 \
    -accel "$accel" -cpu "${REFLEX_QEMU_CPU:-Nehalem}" -smp "${REFLEX_QEMU_SMP:-2}" -m "${REFLEX_QEMU_MEM:-2048}" \
    -nographic -no-reboot -nodefaults -serial stdio -monitor none \
    -kernel "$vmlinuz" -initrd "$work/initrd.cpio" ${REFLEX_QEMU_DEVICES:-} \
    -append "console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init" || rc=$?
end=$(date +%s.%N)
echo "@@HOST qemu_seconds=$(awk "BEGIN{printf \"%.1f\", $end - $start}") qemu_rc=$rc"
exit $rc
