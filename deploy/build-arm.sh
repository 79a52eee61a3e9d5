#!/usr/bin/env bash
# Cross-build smeltwatch for ARM gateways without Docker, with cargo-zigbuild (zig as the linker
# and C compiler, from PyPI).
#
#   aarch64-unknown-linux-musl           static binary: runs on any 64-bit ARM Linux
#   armv7-unknown-linux-gnueabihf.2.28   glibc binary for 32-bit ARM, needs glibc >= 2.28
#                                        (Debian 10, Ubuntu 18.10, Yocto warrior and newer)
#
# Usage: deploy/build-arm.sh [aarch64|armv7]...      (default: both)
#
# Environment:
#   SMELTWATCH_ZIG_VENV   Python venv that holds cargo-zigbuild and ziglang
#                         (default: target/zigbuild-venv; created when missing)
#   CARGO_TARGET_DIR      default: target/cross, so that a long cross build does not hold the
#                         lock of the native target directory
#   CARGO_BUILD_JOBS      parallel jobs (cargo's own default when unset)
#
# Outputs: $CARGO_TARGET_DIR/<triple>/release/smeltwatch
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${SMELTWATCH_ZIG_VENV:-target/zigbuild-venv}"
[[ "$venv" == /* ]] || venv="$PWD/$venv"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/cross}"

if [[ ! -x "$venv/bin/cargo-zigbuild" ]]; then
    echo "installing cargo-zigbuild and ziglang into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet cargo-zigbuild ziglang
fi
# cargo-zigbuild finds zig through the ziglang module of the Python on PATH.
export PATH="$venv/bin:$PATH"

want=("$@")
[[ ${#want[@]} -eq 0 ]] && want=(aarch64 armv7)

for arch in "${want[@]}"; do
    case "$arch" in
        aarch64) triple=aarch64-unknown-linux-musl; zig_target=$triple ;;
        armv7) triple=armv7-unknown-linux-gnueabihf; zig_target=$triple.2.28 ;;
        *) echo "unknown architecture '$arch' (expected aarch64 or armv7)" >&2; exit 2 ;;
    esac
    rustup target add "$triple" >&2
    echo "building $zig_target" >&2
    cargo zigbuild --locked --release --target "$zig_target"
done

echo
echo "binary sizes:"
for arch in "${want[@]}"; do
    case "$arch" in
        aarch64) triple=aarch64-unknown-linux-musl ;;
        armv7) triple=armv7-unknown-linux-gnueabihf ;;
    esac
    bin="$CARGO_TARGET_DIR/$triple/release/smeltwatch"
    printf '  %-32s %9d bytes (%s)\n' "$triple" "$(stat -c %s "$bin")" "$(du -h "$bin" | cut -f1)"
done
