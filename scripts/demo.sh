#!/usr/bin/env bash
# The demo: installs Debian's Mosquitto and the agent (in .venv), starts a local broker if none listens on
# 127.0.0.1:1883, shows what the agent publishes (`seg-agent watch`, one line per message) and runs the agent
# on the bundled model and sample video with ./config.yaml. Ctrl-C stops it: the agent drains its outbox and
# says "offline", the watcher shows that, and the broker this script started stops with it.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
if ! command -v mosquitto >/dev/null || ! command -v mosquitto_sub >/dev/null; then
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends mosquitto mosquitto-clients >/dev/null
fi
echo "installing the agent into .venv ..."
[ -x .venv/bin/python ] || python3 -m venv .venv
PYTHONWARNINGS=ignore .venv/bin/pip install -q -e .  # (setuptools' editable-install notice is noise here)

workdir=$(mktemp -d)
broker="" watcher=""
# shellcheck disable=SC2317  # reached through the trap, which shellcheck 0.9 doesn't follow
cleanup() {
  [ -z "$watcher" ] || kill "$watcher" 2>/dev/null || true
  [ -z "$broker" ] || { kill "$broker" 2>/dev/null || true; wait "$broker" 2>/dev/null || true; }
  rm -rf "$workdir"
}
trap cleanup EXIT

started_broker=no
if ! (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null; then
  printf 'listener 1883 127.0.0.1\nallow_anonymous true\npersistence false\n' > "$workdir/mosquitto.conf"
  [ "$(id -u)" -ne 0 ] || echo "user root" >> "$workdir/mosquitto.conf"
  # In the foreground, as this script's child: it stops when the script does (Ctrl-C included).
  (trap '' INT; exec mosquitto -c "$workdir/mosquitto.conf" >"$workdir/mosquitto.log" 2>&1) &
  broker=$!
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null && break; sleep 0.1; done
  started_broker=yes
fi

# The watcher ignores Ctrl-C so that it can still show the agent's last messages ("offline").
(trap '' INT; exec .venv/bin/seg-agent watch --config config.yaml) &
watcher=$!
status=0
.venv/bin/seg-agent run --config config.yaml || status=$?
sleep 1  # the agent's last status and health reach the watcher

cat <<EOF

What ran: seg-agent on models/demo-seg.onnx and models/sample.avi (config.yaml), publishing to
127.0.0.1:1883 under seg-agent/demo-device/ ($( [ $started_broker = yes ] && echo "a Mosquitto this script started and has now stopped" || echo "the broker already listening there" )).
To see the raw JSON while an agent runs: .venv/bin/seg-agent watch --raw
  (or: mosquitto_sub -h 127.0.0.1 -v -t 'seg-agent/#'); the agent alone: .venv/bin/seg-agent run --config config.yaml
EOF
exit "$status"
