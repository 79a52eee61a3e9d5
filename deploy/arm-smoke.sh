#!/usr/bin/env bash
# Smoke test of the aarch64 build: cross-build it (deploy/build-arm.sh) and run it under
# qemu-aarch64 (Debian's qemu-user): `smeltwatch --version` and `smeltwatch check` of the demo
# configuration. Takes minutes (a full release build); .ci/run runs it unless SMELTWATCH_ARM_SMOKE=0.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v qemu-aarch64 >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "installing qemu-user"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends qemu-user >/dev/null
fi

nice -n 19 deploy/build-arm.sh aarch64
bin="${CARGO_TARGET_DIR:-target/cross}/aarch64-unknown-linux-musl/release/smeltwatch"
file "$bin" 2>/dev/null || true

version="$(qemu-aarch64 "$bin" --version)"
echo "qemu-aarch64: $version"
[[ "$version" == "smeltwatch "* ]] || { echo "unexpected --version output" >&2; exit 1; }
# `check` exits 1 on an invalid file (and set -e stops here).
plan="$(qemu-aarch64 "$bin" check -c config/demo.toml)"
echo "qemu-aarch64: ${plan%%$'\n'*}"
echo "aarch64 smoke test: ok"
