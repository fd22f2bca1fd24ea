#!/usr/bin/env bash
# Proves the agent on arm64 (Raspberry Pi, Jetson) under emulation, on an x86_64 Debian/Ubuntu host.
#
#   sudo scripts/arm64-check.sh                 build (or reuse) the arm64 root, install, check, demo
#   sudo scripts/arm64-check.sh --frames 20     detections to wait for in the demo (default 10)
#   sudo scripts/arm64-check.sh --fresh         rebuild the arm64 root from scratch
#   sudo scripts/arm64-check.sh --cache DIR     where the root lives (default /var/cache/seg-agent-arm64)
#   sudo scripts/arm64-check.sh --no-infer      skip the infer comparison (emulated, it takes ~10 minutes)
#
# Steps: a Debian bookworm arm64 root (debootstrap, qemu-user-static through binfmt_misc); the agent
# installed there by systemd/install.sh --no-start (venv, aarch64 wheels of every dependency from PyPI);
# then, inside the root as the seg-agent user: `seg-agent check-config` on the installed config,
# `seg-agent infer` on the demo model (compared with the same command on this host, number by number,
# within float rounding), and `seg-agent run` on the sample video against a Mosquitto on this host until
# N detections messages arrived. It prints what it installed and how long each step took. Emulated speed
# is NOT a benchmark: qemu runs aarch64 code 5-50x slower than a real board.
#
# The root is cached: a second run skips debootstrap and pip finds every dependency installed, so only
# the agent itself is reinstalled. Run by hand (root, network, ~2 GB disk); not part of CI.
#
# Environment: HOST_PYTHON (the x86 reference: a Python with the agent's dependencies; default
# ./.venv/bin/python, created like scripts/demo.sh does when missing), MIRROR (Debian mirror).
set -euo pipefail

SRC=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
readonly SRC
CACHE=/var/cache/seg-agent-arm64
FRAMES=10
FRESH=0
INFER=1
MIRROR=${MIRROR:-http://deb.debian.org/debian}
HOST_PYTHON=${HOST_PYTHON:-$SRC/.venv/bin/python}
# What a bare board image has beyond Debian's minimal base: Python with venv, systemd (systemctl for
# install.sh), certificates for PyPI. Anything else the agent needs must come from install.sh.
readonly ROOT_PACKAGES=python3,python3-venv,systemd,ca-certificates

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; }
say() { printf '==> %s\n' "$*"; }
die() {
    printf 'arm64-check: error: %s\n' "$*" >&2
    exit 1
}

while (($#)); do
    case $1 in
    --frames)
        (($# > 1)) || die "--frames needs a number"
        FRAMES=$2
        shift
        ;;
    --cache)
        (($# > 1)) || die "--cache needs a directory"
        CACHE=$2
        shift
        ;;
    --fresh) FRESH=1 ;;
    --no-infer) INFER=0 ;;
    -h | --help)
        usage
        exit 0
        ;;
    *)
        usage >&2
        die "unknown option: $1"
        ;;
    esac
    shift
done
[[ $FRAMES =~ ^[1-9][0-9]*$ ]] || die "--frames must be a positive integer, got '$FRAMES'"
((EUID == 0)) || die "run as root (debootstrap, chroot, mounts)"
[[ $(uname -m) == x86_64 ]] || die "this is for x86_64 hosts (uname -m: $(uname -m))"

readonly ROOT=$CACHE/root
readonly WORK=/tmp/seg-agent-check # inside the root (and $ROOT$WORK outside)
readonly IN_SRC=/opt/seg-agent-src # the checkout, copied into the root
HOST_TMP=$(mktemp -d)
readonly HOST_TMP
BROKER_PID=""
AGENT_PID=""
STEP_NAMES=()
STEP_SECONDS=()

# ------------------------------------------------------------------------------------------ helpers

# Runs "$@" as a named step and records its duration.
step() {
    local name=$1 start=$SECONDS
    shift
    say "$name"
    "$@"
    STEP_NAMES+=("$name")
    STEP_SECONDS+=($((SECONDS - start)))
    say "$name: $((SECONDS - start)) s"
}

# A command inside the root with a clean environment; `--user` runs it as the service user.
in_root() {
    local spec=()
    if [[ ${1:-} == --user ]]; then
        spec=(--userspec=seg-agent:seg-agent)
        shift
    fi
    chroot "${spec[@]}" "$ROOT" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin \
        HOME=/root LANG=C.UTF-8 OPENCV_LOG_LEVEL=ERROR "$@"
}

# in_root, replacing the calling (sub)shell: `in_root_exec ... &` makes $! the agent's own pid, so that a
# SIGTERM reaches it and not a subshell (which would leave the agent running).
in_root_exec() {
    local spec=()
    if [[ ${1:-} == --user ]]; then
        spec=(--userspec=seg-agent:seg-agent)
        shift
    fi
    exec chroot "${spec[@]}" "$ROOT" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin \
        HOME=/root LANG=C.UTF-8 OPENCV_LOG_LEVEL=ERROR "$@"
}

mounted() { mountpoint -q -- "$1"; }

# No /sys in the root: it would describe the host's x86 CPUs, and onnxruntime's cpuinfo, reading it at
# import, crashes qemu-user 7.2 (SIGSEGV). Without it cpuinfo warns it can't detect the CPU's features and
# goes on; on a real board /sys is the board's.
mount_root() {
    local dir
    for dir in proc dev dev/pts; do
        mounted "$ROOT/$dir" && continue
        case $dir in
        proc) mount -t proc proc "$ROOT/proc" ;;
        dev) mount --bind /dev "$ROOT/dev" ;;
        dev/pts) mount -t devpts devpts "$ROOT/dev/pts" ;;
        esac
    done
    cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
}

umount_root() {
    local dir
    for dir in dev/pts dev sys proc; do
        if [[ -d $ROOT/$dir ]] && mounted "$ROOT/$dir"; then umount -l -- "$ROOT/$dir" || true; fi
    done
}

cleanup() {
    if [[ -n $AGENT_PID ]]; then kill "$AGENT_PID" 2>/dev/null || true; fi
    if [[ -n $BROKER_PID ]]; then kill "$BROKER_PID" 2>/dev/null || true; fi
    wait 2>/dev/null || true
    umount_root
    rm -rf -- "$HOST_TMP"
}
trap cleanup EXIT

# ------------------------------------------------------------------------------------------- steps

host_packages() {
    local want=() pkg
    for pkg in debootstrap qemu-user-static binfmt-support mosquitto mosquitto-clients ffmpeg; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || want+=("$pkg")
    done
    if ((${#want[@]})); then
        say "installing on the host: ${want[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${want[@]}" >/dev/null ||
            { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${want[@]}" >/dev/null; }
    fi
}

# qemu-aarch64 registered with binfmt_misc, flag F (the interpreter is opened at registration, so the
# chroot needs no copy of it).
binfmt() {
    local fs=/proc/sys/fs/binfmt_misc
    if [[ ! -e $fs/register ]]; then
        mount -t binfmt_misc binfmt_misc "$fs"
    fi
    if [[ ! -e $fs/qemu-aarch64 ]]; then
        update-binfmts --enable qemu-aarch64 2>/dev/null || true
    fi
    if [[ ! -e $fs/qemu-aarch64 ]]; then
        # binfmt-support without a running systemd: register the entry qemu-user-static ships.
        local conf=/usr/lib/binfmt.d/qemu-aarch64.conf
        [[ -f $conf ]] || die "no $conf: is qemu-user-static installed?"
        cat "$conf" >"$fs/register"
    fi
    grep -q '^enabled' "$fs/qemu-aarch64" || die "qemu-aarch64 is registered but disabled in $fs"
    grep -q '^flags:.*F' "$fs/qemu-aarch64" || die "qemu-aarch64 lacks binfmt flag F: re-register it"
    sed -n 's/^interpreter /  interpreter: /p' "$fs/qemu-aarch64"
}

build_root() {
    if ((FRESH)) && [[ -d $ROOT ]]; then
        umount_root
        say "removing $ROOT"
        rm -rf --one-file-system -- "$ROOT"
    fi
    if [[ -f $ROOT/.seg-agent-root-ok ]]; then
        say "reusing $ROOT (--fresh rebuilds it)"
        return 0
    fi
    rm -rf --one-file-system -- "$ROOT"
    mkdir -p -- "$CACHE"
    debootstrap --arch=arm64 --variant=minbase --include="$ROOT_PACKAGES" bookworm "$ROOT" "$MIRROR" \
        >"$CACHE/debootstrap.log" 2>&1 || die "debootstrap failed: see $CACHE/debootstrap.log"
    touch -- "$ROOT/.seg-agent-root-ok"
}

copy_checkout() {
    rm -rf --one-file-system -- "${ROOT:?}$IN_SRC" "${ROOT:?}$WORK"
    mkdir -p -- "$ROOT$IN_SRC" "$ROOT$WORK"
    # The working tree as git sees it (tracked and untracked, not ignored), or everything without git.
    if git -C "$SRC" rev-parse --git-dir >/dev/null 2>&1; then
        (cd "$SRC" && git ls-files -z --cached --others --exclude-standard |
            while IFS= read -r -d '' f; do [[ -e $f ]] && printf '%s\0' "$f"; done |
            tar --null -T - -cf -) | tar -C "$ROOT$IN_SRC" -xf -
    else
        tar -C "$SRC" --exclude=.venv --exclude=state -cf - . | tar -C "$ROOT$IN_SRC" -xf -
    fi
    chmod 1777 "$ROOT$WORK"
}

# Local CAs the host trusts (a TLS-inspecting proxy's, a company's): pip in the root must trust them too.
host_cas() {
    local dir=/usr/local/share/ca-certificates
    if compgen -G "$dir/*.crt" >/dev/null; then
        mkdir -p -- "$ROOT$dir"
        cp -- "$dir"/*.crt "$ROOT$dir/"
        in_root update-ca-certificates >/dev/null
        printf '  trusting the host CAs in %s: %s\n' "$dir" "$(cd "$dir" && echo ./*.crt)"
    fi
}

install_agent() {
    in_root bash "$IN_SRC/systemd/install.sh" --no-start
}

report_installed() {
    in_root uname -m
    in_root python3 -V
    in_root /opt/seg-agent/venv/bin/python -m pip list --format=freeze 2>/dev/null | sed 's/^/  /'
    printf '  %s Debian packages in the root, %s on disk\n' \
        "$(in_root dpkg-query -W -f='.\n' | wc -l)" "$(du -sh --one-file-system "$ROOT" | cut -f1)"
    printf '  venv: %s\n' "$(du -sh "$ROOT/opt/seg-agent/venv" | cut -f1)"
}

check_config() {
    local report
    report=$(in_root --user /opt/seg-agent/venv/bin/seg-agent check-config --config /etc/seg-agent/config.yaml 2>&1)
    printf '  %s\n' "$(grep -m 1 ': OK' <<<"$report" || head -n 1 <<<"$report")" "($(wc -l <<<"$report") lines)"
}

# Three frames of the sample video as PNG, inferred here (x86_64) and in the root (aarch64).
infer_both() {
    ffmpeg -loglevel error -i "$SRC/models/sample.avi" -vf "select='not(mod(n\\,25))'" -vsync vfr \
        -frames:v 3 "$ROOT$WORK/frame%d.png"
    if [[ ! -x $HOST_PYTHON ]]; then
        python3 -m venv "$SRC/.venv"
        "$SRC/.venv/bin/pip" install -q -e "$SRC"
    fi
    local out=$CACHE/results t0
    mkdir -p -- "$out"
    t0=$SECONDS
    PYTHONPATH=$SRC OPENCV_LOG_LEVEL=ERROR "$HOST_PYTHON" -m agent infer --model "$SRC/models/demo-seg.onnx" \
        "$ROOT$WORK"/frame{1,2,3}.png >"$out/x86_64.jsonl"
    printf '  x86_64 infer (3 images, this host): %s s\n' "$((SECONDS - t0))"
    t0=$SECONDS
    in_root --user /opt/seg-agent/venv/bin/seg-agent infer --model /opt/seg-agent/models/demo-seg.onnx \
        "$WORK"/frame{1,2,3}.png >"$out/aarch64.jsonl" 2>"$out/aarch64.stderr"
    printf '  aarch64 infer (3 images, emulated): %s s; outputs kept in %s\n' "$((SECONDS - t0))" "$out"
    PYTHONPATH=$SRC "$HOST_PYTHON" - "$out/x86_64.jsonl" "$out/aarch64.jsonl" <<'EOF'
"""Compares two `seg-agent infer` outputs prediction by prediction.

Predictions are paired by class and box IoU (their order may differ where two confidences are close), then
compared: confidence, box (x, y, width, height in pixels) and the polygons as masks (IoU of the filled
polygons). Not byte for byte: the two builds run different SIMD kernels (NEON vs AVX2/FMA) in ONNX Runtime
and OpenCV, which round differently; a mask pixel whose probability is near 0.5 can flip, moving a contour by a
pixel or two and changing how many points it has.
"""
import json
import sys

import cv2
import numpy as np

TOL_CONFIDENCE, TOL_BOX_PX, MIN_MASK_IOU = 0.01, 2.0, 0.95


def box_iou(a, b):
    ax0, ay0, ax1, ay1 = a["x"] - a["width"] / 2, a["y"] - a["height"] / 2, a["x"] + a["width"] / 2, a["y"] + a["height"] / 2
    bx0, by0, bx1, by1 = b["x"] - b["width"] / 2, b["y"] - b["height"] / 2, b["x"] + b["width"] / 2, b["y"] + b["height"] / 2
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    union = a["width"] * a["height"] + b["width"] * b["height"] - inter
    return inter / union if union > 0 else 0.0


def mask(pred, hw):
    m = np.zeros(hw, np.uint8)
    pts = np.array([[p["x"], p["y"]] for p in pred["points"]], np.float64).round().astype(np.int32)
    if len(pts) >= 3:
        cv2.fillPoly(m, [pts], 1)
    return m.astype(bool)


x86, arm = ([json.loads(line) for line in open(p)] for p in sys.argv[1:3])
problems, d_conf, d_box, mask_ious = [], [], [], []
if len(x86) != len(arm):
    problems.append(f"{len(x86)} vs {len(arm)} results")
for i, (r1, r2) in enumerate(zip(x86, arm)):
    if r1["image"] != r2["image"]:
        problems.append(f"image {i}: size {r1['image']} vs {r2['image']}")
    hw = (r1["image"]["height"], r1["image"]["width"])
    p1, p2 = r1["predictions"], list(r2["predictions"])
    if len(p1) != len(p2):
        problems.append(f"image {i}: {len(p1)} vs {len(p2)} predictions")
    for a in sorted(p1, key=lambda p: -p["confidence"]):
        same = [b for b in p2 if b["class"] == a["class"]]
        b = max(same, key=lambda b: box_iou(a, b), default=None)
        if b is None or box_iou(a, b) < 0.5:
            problems.append(f"image {i}: no match for a {a['class']} at ({a['x']}, {a['y']})")
            continue
        p2.remove(b)
        d_conf.append(abs(a["confidence"] - b["confidence"]))
        d_box.append(max(abs(a[k] - b[k]) for k in ("x", "y", "width", "height")))
        m1, m2 = mask(a, hw), mask(b, hw)
        union = np.logical_or(m1, m2).sum()
        mask_ious.append(float(np.logical_and(m1, m2).sum() / union) if union else 1.0)
        if d_conf[-1] > TOL_CONFIDENCE or d_box[-1] > TOL_BOX_PX or mask_ious[-1] < MIN_MASK_IOU:
            problems.append(
                f"image {i}, {a['class']} at ({a['x']}, {a['y']}): confidence {a['confidence']} vs {b['confidence']}, "
                f"box off by {d_box[-1]:.1f} px, mask IoU {mask_ious[-1]:.3f}"
            )
n1, n2 = sum(len(r["predictions"]) for r in x86), sum(len(r["predictions"]) for r in arm)
print(f"  {len(x86)} images, {n1} predictions on x86_64, {n2} on aarch64, {len(d_conf)} paired")
if d_conf:
    print(
        f"  largest confidence difference {max(d_conf):.4f} (tolerance {TOL_CONFIDENCE}), box {max(d_box):.1f} px "
        f"(tolerance {TOL_BOX_PX}); smallest mask IoU {min(mask_ious):.4f} (at least {MIN_MASK_IOU}), "
        f"median {float(np.median(mask_ious)):.4f}"
    )
for line in problems[:20]:
    print("  DIFFERENT " + line)
sys.exit(1 if problems or n1 == 0 else 0)
EOF
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# The agent in the root on the sample video, publishing to a Mosquitto on the host, until FRAMES
# detections messages arrived; then SIGTERM, and the retained status must say offline.
demo() {
    local port topic start first count status
    port=$(free_port)
    printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$port" >"$HOST_TMP/mosquitto.conf"
    mosquitto -c "$HOST_TMP/mosquitto.conf" >"$HOST_TMP/mosquitto.log" 2>&1 &
    BROKER_PID=$!
    cat >"$ROOT$WORK/config.yaml" <<EOF
device_id: arm64-check
cameras:
  - name: cam0
    source: /opt/seg-agent/models/sample.avi
    fps: 5
    loop: true
inference:
  mode: local
  local:
    model: /opt/seg-agent/models/demo-seg.onnx
mqtt:
  host: 127.0.0.1
  port: $port
state_dir: $WORK/state
EOF
    chmod 0644 "$ROOT$WORK/config.yaml"
    topic=seg-agent/arm64-check
    for _ in $(seq 50); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
        sleep 0.1
    done
    mosquitto_sub -h 127.0.0.1 -p "$port" -t "$topic/detections" -C "$FRAMES" -W 3600 >"$HOST_TMP/detections" &
    local sub=$!
    start=$SECONDS
    in_root_exec --user /opt/seg-agent/venv/bin/seg-agent run --config "$WORK/config.yaml" \
        >"$HOST_TMP/agent.log" 2>&1 &
    AGENT_PID=$!
    first=""
    while kill -0 "$sub" 2>/dev/null; do
        if [[ -z $first && -s $HOST_TMP/detections ]]; then first=$((SECONDS - start)); fi
        kill -0 "$AGENT_PID" 2>/dev/null || break
        sleep 0.5
    done
    wait "$sub" || true
    count=$(wc -l <"$HOST_TMP/detections")
    printf '  %s detections messages in %s s (first after %s s)\n' "$count" "$((SECONDS - start))" "${first:-?}"
    start=$SECONDS
    kill -TERM "$AGENT_PID" 2>/dev/null || true
    local rc=0
    wait "$AGENT_PID" || rc=$?
    printf '  after SIGTERM the agent exited with status %s in %s s (it finishes the frame in flight)\n' \
        "$rc" "$((SECONDS - start))"
    AGENT_PID=""
    status=$(mosquitto_sub -h 127.0.0.1 -p "$port" -t "$topic/status" -C 1 -W 5 || true)
    printf '  retained status after SIGTERM: %s\n' "$status"
    python3 - "$HOST_TMP/detections" <<'EOF'
import json, sys
msgs = [json.loads(line) for line in open(sys.argv[1])]
preds = [len(m.get("predictions", [])) for m in msgs]
print(f"  predictions per message: {preds}")
EOF
    sed -n '1,15p' "$HOST_TMP/agent.log" | sed 's/^/  agent: /'
    kill "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
    BROKER_PID=""
    ((count == FRAMES)) || die "only $count of $FRAMES detections messages arrived (agent log above)"
    [[ $status == offline* || $status == *'"offline"'* ]] || die "status after SIGTERM is not offline"
}

# --------------------------------------------------------------------------------------------- main

step "host packages" host_packages
step "binfmt_misc qemu-aarch64" binfmt
step "arm64 root (debootstrap bookworm)" build_root
mount_root
step "copy the checkout into the root" copy_checkout
host_cas
step "systemd/install.sh --no-start (in the root)" install_agent
step "what was installed" report_installed
step "seg-agent check-config (aarch64)" check_config
if ((INFER)); then step "seg-agent infer, aarch64 vs x86_64" infer_both; fi
step "demo: seg-agent run -> host Mosquitto, $FRAMES frames" demo

say "all steps passed (times are under qemu emulation, not a benchmark):"
for i in "${!STEP_NAMES[@]}"; do
    printf '  %6s s  %s\n' "${STEP_SECONDS[$i]}" "${STEP_NAMES[$i]}"
done
