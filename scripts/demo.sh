#!/usr/bin/env bash
# The demo: installs Debian's Mosquitto and the agent (in .venv), starts a local broker if none listens on
# 127.0.0.1:1883, shows what the agent publishes (mosquitto_sub) and runs the agent on the bundled model and
# sample video with ./config.yaml. Ctrl-C stops it (the agent drains its outbox and says "offline").
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
if ! command -v mosquitto >/dev/null || ! command -v mosquitto_sub >/dev/null; then
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends mosquitto mosquitto-clients >/dev/null
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -e .
if ! (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null; then
  conf=$(mktemp); printf 'listener 1883 127.0.0.1\nallow_anonymous true\n' > "$conf"
  [ "$(id -u)" -ne 0 ] || echo "user root" >> "$conf"
  mosquitto -c "$conf" -d
  sleep 0.5
fi
mosquitto_sub -h 127.0.0.1 -p 1883 -v -t 'seg-agent/#' | cut -c1-300 &
sub=$!
trap 'kill $sub 2>/dev/null || true' EXIT
.venv/bin/seg-agent run --config config.yaml
