#!/usr/bin/env bash
# Builds `reflex` for the robot's computer: aarch64-unknown-linux-gnu (Jetson, any arm64 Linux
# board), release, linked against glibc 2.35 (JetPack 6 / Ubuntu 22.04) so that it runs on those
# boards and on anything newer. See README.md, "The board binary".
#
#   ./scripts/build-board.sh            # -> <target dir>/board/aarch64-unknown-linux-gnu/release/reflex
#   ./scripts/build-board.sh --qemu     # also fetch qemu-user and an arm64 libc to run it here
#   ./scripts/build-board.sh --qemu --env   # ... and print REFLEX_BOARD_* exports (scripts/test.sh)
#
# The compiler, in this order:
#   1. rustup's, when its aarch64-unknown-linux-gnu standard library is installed (or
#      REFLEX_BOARD_TOOLCHAIN=rustup: `rustup target add` it);
#   2. Debian's `rustc-web` with `libstd-rust-web-dev:arm64` (bookworm-security), fetched with
#      `apt-get download` and unpacked with `dpkg-deb -x`, never installed (installing rustc-web
#      would remove rustup): for machines where rustup cannot download targets. `auto` tries
#      `rustup target add` for 60 s first, unless the Debian compiler is already cached.
# The linker: zig (PyPI `ziglang`) through `cargo-zigbuild`, in a virtualenv; zig brings its own
# aarch64 glibc stubs, so the glibc version is pinned by the target suffix (`.2.35`).
#
# Environment:
#   REFLEX_BOARD_TOOLCHAIN   auto (default) | rustup | debian
#   REFLEX_BOARD_FEATURES    cargo features of reflex-runtime to build in; default `auto`: the
#                            `tensorrt` feature when runtime/Cargo.toml has it (its shim loads
#                            TensorRT at run time and falls back to tract on a board without it)
#                            when TensorRT's headers are found (below), else none, with a warning;
#                            empty for none
#   TENSORRT_INCLUDE_DIR     TensorRT's headers for the shim (with the tensorrt feature); default
#                            JetPack's /usr/include/aarch64-linux-gnu, else
#                            $REFLEX_SHARED_DIR/third_party/tensorrt-10.3/include (../shared)
#   REFLEX_BOARD_TARGET_DIR  cargo target dir of the board build (default: $CARGO_TARGET_DIR/board,
#                            or target/board); the x86 build is not disturbed
#   REFLEX_BOARD_CACHE       downloads, unpacked compiler, qemu, sysroot, zig
#                            (default ~/.cache/reflex/board, ~1.6 GB)
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=aarch64-unknown-linux-gnu
GLIBC=2.35 # JetPack 6 (Ubuntu 22.04)
ZIGLANG_VERSION=0.15.2
ZIGBUILD_VERSION=0.24.1
CACHE="${REFLEX_BOARD_CACHE:-$HOME/.cache/reflex/board}"
TOOLCHAIN="${REFLEX_BOARD_TOOLCHAIN:-auto}"

want_qemu=0
print_env=0
for a in "$@"; do
    case "$a" in
        --qemu) want_qemu=1 ;;
        --env) print_env=1 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-board.sh: unknown argument '$a' (see --help)" >&2; exit 2 ;;
    esac
done

say() { echo "build-board: $*" >&2; }
die() { echo "build-board: error: $*" >&2; exit 1; }
if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi

features="${REFLEX_BOARD_FEATURES-auto}"
if [ "$features" = auto ]; then
    features=""
    if sed -n '/^\[features\]/,/^\[/p' runtime/Cargo.toml | grep -q '^tensorrt *='; then
        features="tensorrt"
    fi
fi

# The TensorRT shim is C++ compiled against TensorRT's headers (runtime/build.rs); it loads the
# library at run time, so the headers are all the build needs. TENSORRT_INCLUDE_DIR when set,
# else JetPack's (building on a Jetson), else NVIDIA's 10.3 headers in the shared folder next to
# the repository (REFLEX_SHARED_DIR, default ../shared), checked here, before a long build.
# With REFLEX_BOARD_FEATURES=auto and no headers, the binary is built without the shim (it runs
# tract only), and this says so; asked for explicitly, missing headers are an error.
if [[ " $features " == *" tensorrt "* ]] && [ -z "${TENSORRT_INCLUDE_DIR:-}" ]; then
    shared="${REFLEX_SHARED_DIR:-../shared}"
    for d in /usr/include/aarch64-linux-gnu "$shared/third_party/tensorrt-10.3/include"; do
        if [ -f "$d/NvInferRuntime.h" ]; then
            TENSORRT_INCLUDE_DIR="$(cd "$d" && pwd)"
            export TENSORRT_INCLUDE_DIR
            break
        fi
    done
    if [ -z "${TENSORRT_INCLUDE_DIR:-}" ]; then
        looked="/usr/include/aarch64-linux-gnu or $shared/third_party/tensorrt-10.3/include"
        if [ "${REFLEX_BOARD_FEATURES-auto}" = auto ]; then
            say "WARNING: no TensorRT headers (NvInferRuntime.h) in $looked: building WITHOUT the \
TensorRT shim (the binary runs tract only); set TENSORRT_INCLUDE_DIR to build it in"
            features="${features//tensorrt/}"
        else
            die "the tensorrt feature needs TensorRT's headers (NvInferRuntime.h): none in $looked. \
Set TENSORRT_INCLUDE_DIR (or REFLEX_SHARED_DIR), or build without it: REFLEX_BOARD_FEATURES= $0"
        fi
    else
        say "TensorRT headers: $TENSORRT_INCLUDE_DIR"
    fi
fi

base_target="${CARGO_TARGET_DIR:-$PWD/target}"
target_dir="${REFLEX_BOARD_TARGET_DIR:-$base_target/board}"
mkdir -p "$CACHE" "$target_dir"

# Makes sure apt's lists know `pkg:arm64` (adds the architecture to dpkg once).
apt_arm64() {
    command -v apt-get >/dev/null || die "apt-get not found: without Debian's packages, install the \
target with rustup (rustup target add $TARGET) and set REFLEX_BOARD_TOOLCHAIN=rustup"
    if ! apt-cache show "$1:arm64" >/dev/null 2>&1; then
        say "adding the arm64 architecture to apt's lists (dpkg --add-architecture arm64)"
        dpkg --print-foreign-architectures | grep -qx arm64 || $SUDO dpkg --add-architecture arm64
        $SUDO apt-get update -qq
        apt-cache show "$1:arm64" >/dev/null 2>&1 || die "apt has no $1:arm64 (is bookworm-security in /etc/apt/sources.list?)"
    fi
}

# apt-get download PKG... into $CACHE/debs (kept: a later cold run reuses them) and unpack into $1.
fetch_unpack() {
    local into="$1"; shift
    rm -rf "$into.tmp" && mkdir -p "$CACHE/debs" "$into.tmp"
    (cd "$CACHE/debs" && apt-get download -qq "$@" 2>&1 | grep -v 'unsandboxed' >&2 || true)
    local p name arch ver f
    for p in "$@"; do
        # NAME[:ARCH][=VERSION] -> NAME_VERSION_ARCH.deb (an epoch's colon is %3a in the name).
        name=${p%%[:=]*}
        arch=$(dpkg --print-architecture)
        case "$p" in *:arm64*) arch=arm64 ;; esac
        ver=""
        case "$p" in *=*) ver=${p#*=} ;; esac
        if [ -n "$ver" ]; then
            f="$CACHE/debs/${name}_${ver//:/%3a}_$arch.deb"
        else
            f=$(ls -t "$CACHE/debs/${name}_"*"_$arch.deb" 2>/dev/null | head -1)
        fi
        [ -n "$f" ] && [ -f "$f" ] || die "apt-get download $p wrote no .deb into $CACHE/debs"
        dpkg-deb -x "$f" "$into.tmp"
    done
    rm -rf "$into" && mv "$into.tmp" "$into"
}

# Debian's rustc-web + its standard library for x86-64 (build scripts, proc macros) and aarch64.
debian_rustc() {
    apt_arm64 libstd-rust-web-dev
    local v
    v=$(apt-cache policy rustc-web | awk '/Candidate:/ {print $2}')
    [ -n "$v" ] && [ "$v" != "(none)" ] || die "apt has no rustc-web (Debian bookworm-security)"
    local short=${v%%+*}; short=${short%.*} # 1.96.0+dfsg1-... -> 1.96
    local root="$CACHE/rustc-web-$v"
    if [ ! -x "$root/usr/bin/rustc" ]; then
        local llvm
        llvm=$(apt-cache depends "libstd-rust-web-$short" | awk '/Depends: libllvm/ {print $2; exit}')
        say "fetching Debian's rustc-web $v (and $llvm) into $root"
        fetch_unpack "$root" "rustc-web=$v" "libstd-rust-web-$short=$v" "libstd-rust-web-dev=$v" \
            "libstd-rust-web-dev:arm64=$v" "libstd-rust-web-$short:arm64=$v" "$llvm"
    fi
    # A wrapper that finds the unpacked shared libraries (librustc_driver, libLLVM).
    mkdir -p "$CACHE/bin"
    cat > "$CACHE/bin/rustc.tmp" <<EOF
#!/bin/sh
LD_LIBRARY_PATH="$root/usr/lib/x86_64-linux-gnu\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$root/usr/bin/rustc" "\$@"
EOF
    chmod +x "$CACHE/bin/rustc.tmp" && mv "$CACHE/bin/rustc.tmp" "$CACHE/bin/rustc"
    if ! "$CACHE/bin/rustc" -V >/dev/null 2>&1; then
        local missing
        missing=$(LD_LIBRARY_PATH="$root/usr/lib/x86_64-linux-gnu" ldd "$root/usr/lib/x86_64-linux-gnu/"libLLVM*.so* \
            "$root/usr/bin/rustc" 2>/dev/null | awk '/not found/ {print $1}' | sort -u | tr '\n' ' ')
        die "the unpacked rustc does not start; missing libraries: ${missing:-?} (apt-get install the packages that provide them)"
    fi
    [ -d "$root/usr/lib/rustlib/$TARGET/lib" ] || die "no $TARGET standard library in $root (libstd-rust-web-dev:arm64)"
    export RUSTC="$CACHE/bin/rustc"
}

choose_toolchain() {
    case "$TOOLCHAIN" in
        rustup)
            rustup target add "$TARGET" >&2 ;;
        debian)
            debian_rustc ;;
        auto)
            if command -v rustup >/dev/null && rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
                TOOLCHAIN=rustup
            elif ls -d "$CACHE"/rustc-web-*/usr/lib/rustlib/"$TARGET" >/dev/null 2>&1; then
                TOOLCHAIN=debian; debian_rustc
            elif command -v rustup >/dev/null && timeout 60 rustup target add "$TARGET" >&2; then
                TOOLCHAIN=rustup
            else
                say "rustup cannot install $TARGET here: using Debian's rustc-web"
                TOOLCHAIN=debian; debian_rustc
            fi ;;
        *) die "REFLEX_BOARD_TOOLCHAIN must be auto, rustup or debian, not '$TOOLCHAIN'" ;;
    esac
}

# zig and cargo-zigbuild from PyPI, pinned, in their own virtualenv.
zig_linker() {
    local venv="$CACHE/venv"
    if [ ! -x "$venv/bin/cargo-zigbuild" ] || ! "$venv/bin/cargo-zigbuild" --version 2>/dev/null | grep -q "$ZIGBUILD_VERSION" \
        || ! "$venv/bin/python" -m ziglang version 2>/dev/null | grep -qx "$ZIGLANG_VERSION"; then
        say "installing ziglang $ZIGLANG_VERSION and cargo-zigbuild $ZIGBUILD_VERSION into $venv"
        python3 -m venv "$venv" || die "python3 -m venv failed (apt-get install python3-venv)"
        "$venv/bin/pip" install --quiet --disable-pip-version-check \
            "ziglang==$ZIGLANG_VERSION" "cargo-zigbuild==$ZIGBUILD_VERSION" >&2
    fi
    export PATH="$venv/bin:$PATH"
}

# qemu-user and the arm64 libc it runs the binary against (`qemu-aarch64-static -L SYSROOT`).
qemu_user() {
    QEMU=$(command -v qemu-aarch64-static || command -v qemu-aarch64 || true)
    if [ -z "$QEMU" ]; then
        QEMU="$CACHE/qemu/usr/bin/qemu-aarch64-static"
        if [ ! -x "$QEMU" ]; then
            say "fetching qemu-user-static into $CACHE/qemu"
            fetch_unpack "$CACHE/qemu" qemu-user-static
            # The package has an emulator per architecture (~370 MB): keep aarch64's.
            find "$CACHE/qemu/usr/bin" -name 'qemu-*' ! -name qemu-aarch64-static -delete
        fi
    fi
    SYSROOT="$CACHE/sysroot-arm64"
    if [ ! -e "$SYSROOT/lib/ld-linux-aarch64.so.1" ]; then
        apt_arm64 libc6
        say "fetching the arm64 libc (libc6:arm64, libgcc-s1:arm64) into $SYSROOT"
        fetch_unpack "$SYSROOT" libc6:arm64 libgcc-s1:arm64
    fi
}

choose_toolchain
zig_linker
say "compiler: $TOOLCHAIN ($(${RUSTC:-rustc} -V)); linker: zig $ZIGLANG_VERSION, glibc $GLIBC; features: ${features:-none}"
say "target dir: $target_dir"
CARGO_TARGET_DIR="$target_dir" cargo zigbuild --release --locked -p reflex-runtime --bin reflex \
    --target "$TARGET.$GLIBC" ${features:+--features "$features"} >&2
bin="$target_dir/$TARGET/release/reflex"
[ -x "$bin" ] || die "cargo zigbuild finished without $bin"
say "built $bin"

if [ "$want_qemu" = 1 ]; then
    qemu_user
    say "run it here with: $QEMU -cpu cortex-a76 -L $SYSROOT $bin --version"
fi
if [ "$print_env" = 1 ]; then
    printf 'export REFLEX_BOARD_BIN=%q\n' "$bin"
    if [ "$want_qemu" = 1 ]; then
        printf 'export REFLEX_BOARD_QEMU=%q\n' "$QEMU"
        printf 'export REFLEX_BOARD_SYSROOT=%q\n' "$SYSROOT"
    fi
else
    echo "$bin"
fi
