#!/usr/bin/env bash
# Install what the integration tests talk to, then run the whole test suite.
#
#   mosquitto, mosquitto_passwd  real MQTT broker for the uplink and end-to-end tests (Debian package)
#   mbpoll                       an independent Modbus client reading our simulator (Debian package)
#   pymodbus                     an independent Modbus server for the poller (PyPI, in ./.venv)
#   mqtt-spb-wrapper             a second Sparkplug decoder for the cross-check (PyPI, in ./.venv)
#   chromium                     headless browser for the dashboard test (Debian package)
#   faketime                     libfaketime: steps the agent's wall clock in the fault tour (Debian package)
#   sparkplug-payload            Eclipse Tahu JS, decodes our Sparkplug payloads (npm, when node is present)
#
# Packages are installed only when missing; apt-get needs root (or sudo).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v mosquitto >/dev/null 2>&1 || missing+=(mosquitto)
command -v mosquitto_passwd >/dev/null 2>&1 || missing+=(mosquitto-clients)
command -v mbpoll >/dev/null 2>&1 || missing+=(mbpoll)
command -v chromium >/dev/null 2>&1 || missing+=(chromium fonts-dejavu-core)
command -v faketime >/dev/null 2>&1 || missing+=(faketime)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Debian's mosquitto package may start a system broker; the tests start their own on free ports.

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import pymodbus, mqtt_spb_wrapper' 2>/dev/null; then
  echo "installing pymodbus and mqtt-spb-wrapper into .venv"
  python3 -m venv .venv
  .venv/bin/pip install -q 'pymodbus==3.16.1' 'mqtt-spb-wrapper==2.1.2'
fi
# Eclipse Tahu's JavaScript decoder for the Sparkplug cross-check (npm, into tests/peers/node).
if command -v npm >/dev/null 2>&1 && [ ! -d tests/peers/node/node_modules/sparkplug-payload ]; then
  echo "installing sparkplug-payload into tests/peers/node"
  npm ci --prefix tests/peers/node --no-audit --no-fund --silent
fi
export SMELTWATCH_PYTHON="$PWD/.venv/bin/python"
# Tests that need an external peer fail instead of skipping when this is set.
export SMELTWATCH_REQUIRE_PEERS=1

cargo test --locked "$@"
