#!/usr/bin/env bash
# Build the Debian package with `cargo deb` and check what it ships: the binary, the systemd unit
# and the default configuration are listed by `dpkg-deb -c`, the configuration is a conffile, the
# extracted binary runs, and the extracted unit passes `systemd-analyze verify` (skipped with a
# message where systemd-analyze is not installed).
#
#   scripts/check-deb.sh           an x86-64 package from a release build (minutes: the build)
#   scripts/check-deb.sh --arm64   the arm64 package the gateways install, from the binary that
#                                  deploy/build-arm.sh (or deploy/arm-smoke.sh) built: no build
#                                  of its own (`cargo deb --no-build`), seconds
#   SMELTWATCH_DEB=path.deb scripts/check-deb.sh   check an existing package only
#
# cargo-deb is installed from crates.io when missing. Called by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
  echo "check-deb: $*" >&2
  exit 1
}

arm64=0
case "${1:-}" in
  "") ;;
  --arm64) arm64=1 ;;
  *) fail "unknown argument $1 (--arm64 or nothing)" ;;
esac

deb="${SMELTWATCH_DEB:-}"
if [ -z "$deb" ]; then
  if ! command -v cargo-deb >/dev/null 2>&1; then
    echo "check-deb: installing cargo-deb"
    cargo install cargo-deb --locked
  fi
  started=$(date +%s)
  if [ "$arm64" = 1 ]; then
    triple=aarch64-unknown-linux-musl
    cross="${CARGO_TARGET_DIR:-target/cross}"
    [ -x "$cross/$triple/release/smeltwatch" ] ||
      fail "no $cross/$triple/release/smeltwatch: run deploy/build-arm.sh aarch64 first"
    # cargo-deb prints the path of the package it wrote on its last line.
    deb=$(CARGO_TARGET_DIR="$cross" cargo deb --locked --no-build --target "$triple" | tail -n 1)
  else
    deb=$(cargo deb --locked | tail -n 1)
  fi
  echo "check-deb: built $deb in $(($(date +%s) - started)) s"
fi
[ -f "$deb" ] || fail "no package at ${deb:-<empty>}"

listing=$(dpkg-deb -c "$deb")
for path in \
  ./usr/bin/smeltwatch \
  ./usr/lib/systemd/system/smeltwatch.service \
  ./etc/smeltwatch/smeltwatch.toml \
  ./etc/smeltwatch/maps/pcu.csv; do
  # Older debhelper layouts put units in /lib/systemd/system; either is accepted.
  alt=${path/#.\/usr\/lib\/systemd/.\/lib\/systemd}
  if ! grep -qE " (${path}|${alt})\$" <<<"$listing"; then
    echo "$listing" >&2
    fail "$path is not in $deb"
  fi
done
conffiles=$(dpkg-deb -I "$deb" conffiles)
grep -qx /etc/smeltwatch/smeltwatch.toml <<<"$conffiles" ||
  fail "/etc/smeltwatch/smeltwatch.toml is not a conffile: $conffiles"

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
dpkg-deb -x "$deb" "$root"
bin="$root/usr/bin/smeltwatch"
arch=$(dpkg-deb -f "$deb" Architecture)
if [ "$arch" = "$(dpkg --print-architecture)" ]; then
  "$bin" --version
elif [ "$arch" = arm64 ] && command -v qemu-aarch64 >/dev/null 2>&1; then
  qemu-aarch64 "$bin" --version
else
  echo "check-deb: a $arch binary cannot run here: not started"
fi
unit=$(find "$root" -path '*/systemd/system/smeltwatch.service' | head -n 1)
[ -n "$unit" ] || fail "no smeltwatch.service extracted"

if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "check-deb: systemd-analyze is not installed: the unit is not verified"
else
  # verify checks that ExecStart's binary exists: point it at the extracted one.
  sed "s|/usr/bin/smeltwatch|$bin|g" "$unit" >"$root/smeltwatch.service"
  if ! out=$(systemd-analyze verify "$root/smeltwatch.service" 2>&1); then
    fail "systemd-analyze verify failed: $out"
  fi
  # Unknown keys and unparsable values are only warnings (exit 0): there must be none.
  [ -z "$out" ] || fail "systemd-analyze verify warns: $out"
  echo "check-deb: the extracted unit passes systemd-analyze verify"
fi
echo "check-deb: $deb ($arch) ok"
