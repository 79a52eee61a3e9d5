#!/usr/bin/env bash
# Build the Debian package the way it is shipped (`cargo deb`, the release profile) and check what
# is in it: the binary, the systemd unit and the default configuration are listed by
# `dpkg-deb -c`, the extracted binary runs, and the extracted unit passes
# `systemd-analyze verify` (skipped with a message where systemd-analyze is not installed).
#
#   scripts/check-deb.sh            build and check
#   SMELTWATCH_DEB=path.deb scripts/check-deb.sh   check an existing package only
#
# cargo-deb is installed from crates.io when missing. Called by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
  echo "check-deb: $*" >&2
  exit 1
}

deb="${SMELTWATCH_DEB:-}"
if [ -z "$deb" ]; then
  if ! command -v cargo-deb >/dev/null 2>&1; then
    echo "check-deb: installing cargo-deb"
    cargo install cargo-deb --locked
  fi
  started=$(date +%s)
  # cargo-deb prints the path of the package it wrote on its last line.
  deb=$(cargo deb --locked | tail -n 1)
  echo "check-deb: built $deb in $(($(date +%s) - started)) s"
fi
[ -f "$deb" ] || fail "no package at ${deb:-<empty>}"

listing=$(dpkg-deb -c "$deb")
for path in \
  ./usr/bin/smeltwatch \
  ./usr/lib/systemd/system/smeltwatch.service \
  ./etc/smeltwatch/smeltwatch.toml \
  ./etc/smeltwatch/maps/pcu.csv; do
  # Debian 12's debhelper layout puts units in /lib/systemd/system; either is accepted.
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
"$root/usr/bin/smeltwatch" --version
unit=$(find "$root" -path '*/systemd/system/smeltwatch.service' | head -n 1)
[ -n "$unit" ] || fail "no smeltwatch.service extracted"

if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "check-deb: systemd-analyze is not installed: the unit is not verified"
else
  # verify checks that ExecStart's binary exists: point it at the extracted one.
  sed "s|/usr/bin/smeltwatch|$root/usr/bin/smeltwatch|g" "$unit" >"$root/smeltwatch.service"
  if ! out=$(systemd-analyze verify "$root/smeltwatch.service" 2>&1); then
    fail "systemd-analyze verify failed: $out"
  fi
  # Unknown keys and unparsable values are only warnings (exit 0): there must be none.
  [ -z "$out" ] || fail "systemd-analyze verify warns: $out"
  echo "check-deb: the extracted unit passes systemd-analyze verify"
fi
echo "check-deb: $deb ok"
