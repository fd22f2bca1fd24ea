#!/usr/bin/env bash
# Installs seg-agent from this checkout as a systemd service (Raspberry Pi OS, Debian, Ubuntu / Jetson L4T).
#
#   sudo systemd/install.sh                       install or upgrade, enable, (re)start
#   sudo systemd/install.sh --no-start            install and enable, don't start (fill in secrets first)
#   sudo systemd/install.sh --config FILE         the config.yaml to install (default: the checkout's)
#   sudo systemd/install.sh --uninstall           stop, disable, remove the unit and the venv;
#                                                 keep /etc/seg-agent, /var/lib/seg-agent and the models
#   sudo systemd/install.sh --uninstall --purge   ... and remove those too, and the seg-agent user
#   systemd/install.sh --dry-run [OPTIONS]        print what would be done; changes nothing, needs no root
#
# Environment: PYTHON (default python3, 3.11 or newer), VENV_OPTS (e.g. "--system-site-packages" on a
# Jetson, to use JetPack's onnxruntime-gpu and OpenCV), PIP_OPTS (e.g. "--extra-index-url URL"),
# APT_PACKAGES (the shared libraries pip's opencv-python loads, installed with apt-get when missing;
# default "libgl1 libglib2.0-0 libxcb1"; empty: install none).
#
# Idempotent: a second run upgrades the package from the checkout, reinstalls the unit and restarts the
# service; it never overwrites /etc/seg-agent/config.yaml or the secrets file.
set -euo pipefail
umask 022 # the venv and the models must stay readable by the service user

readonly SERVICE=seg-agent
readonly SERVICE_USER=seg-agent
readonly PREFIX=/opt/seg-agent
readonly VENV=$PREFIX/venv
readonly MODELS=$PREFIX/models
readonly CONF_DIR=/etc/seg-agent
readonly CONFIG=$CONF_DIR/config.yaml
readonly ENV_FILE=$CONF_DIR/seg-agent.env
readonly STATE_DIR=/var/lib/seg-agent
readonly CACHE_DIR=/var/cache/seg-agent
readonly UNIT=/etc/systemd/system/$SERVICE.service
readonly DROPIN_DIR=/etc/systemd/system/$SERVICE.service.d

SRC=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
readonly SRC
PYTHON=${PYTHON:-python3}
read -r -a VENV_ARGS <<<"${VENV_OPTS:-}"
read -r -a PIP_ARGS <<<"${PIP_OPTS:-}"
# opencv-python's wheel links libGL.so.1, libgthread-2.0.so.0/libglib-2.0.so.0 and libxcb.so.1 from the
# system: a bare Debian (a Raspberry Pi OS Lite, a container) lacks them and `import cv2` fails.
read -r -a APT_ARGS <<<"${APT_PACKAGES-libgl1 libglib2.0-0 libxcb1}"
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1

DRY_RUN=0
ACTION=install
PURGE=0
START=1
SRC_CONFIG=$SRC/config.yaml
ENV_CREATED=0

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

say() { printf '%s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}
# A failed precondition: fatal for real, only a warning in a dry run (which may run anywhere).
fail() {
    if ((DRY_RUN)); then warn "$*"; else die "$*"; fi
}

# Runs a command that changes the system, echoing it first; with --dry-run only prints it.
run() {
    if ((DRY_RUN)); then
        printf '[dry-run]'
    else
        printf '+'
    fi
    printf ' %q' "$@"
    printf '\n'
    if ((!DRY_RUN)); then
        "$@"
    fi
}

have_systemctl() { command -v systemctl >/dev/null 2>&1; }

service_active() { have_systemctl && systemctl is-active --quiet "$SERVICE.service" 2>/dev/null; }

# ------------------------------------------------------------------------------------------ install

check_prerequisites() {
    if [[ ! -f $SRC/pyproject.toml || ! -f $SRC/systemd/$SERVICE.service ]]; then
        die "$SRC does not look like a seg-agent checkout"
    fi
    command -v "$PYTHON" >/dev/null 2>&1 || fail "$PYTHON not found: install python3 (3.11+) or set PYTHON="
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        fail "seg-agent needs Python 3.11 or newer; $PYTHON is $("$PYTHON" -V 2>&1 || true). Set PYTHON=..."
    fi
    if ! "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then
        fail "$PYTHON cannot create virtual environments: apt-get install python3-venv"
    fi
    have_systemctl || fail "systemctl not found: this installs a systemd service"
    if [[ ! -d /run/systemd/system ]]; then
        warn "systemd is not running as init here: the service will not start"
    fi
}

ensure_user() {
    local groups=()
    if getent group video >/dev/null; then
        groups=(--groups video)
    else
        warn "no group 'video' on this system: cameras may be unreadable"
    fi
    # The unit adds `video` itself (SupplementaryGroups=); membership also covers manual runs such as
    # `sudo -u seg-agent seg-agent infer ...`.
    if ! getent passwd "$SERVICE_USER" >/dev/null; then
        local nologin
        nologin=$(command -v nologin || echo /usr/sbin/nologin)
        run useradd --system --user-group --no-create-home --home-dir /nonexistent \
            --shell "$nologin" --comment "seg-agent service" "${groups[@]}" "$SERVICE_USER"
    elif ((${#groups[@]})) && ! id -nG "$SERVICE_USER" | tr ' ' '\n' | grep -qx video; then
        run usermod -a -G video "$SERVICE_USER"
    else
        say "user $SERVICE_USER exists"
    fi
}

install_system_packages() {
    ((${#APT_ARGS[@]})) || return 0
    if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-query >/dev/null 2>&1; then
        warn "no apt-get: make sure these (or your system's equivalents) are installed: ${APT_ARGS[*]}"
        return 0
    fi
    local missing=() pkg
    for pkg in "${APT_ARGS[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || missing+=("$pkg")
    done
    if ((!${#missing[@]})); then
        say "system packages present: ${APT_ARGS[*]}"
        return 0
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ((DRY_RUN)); then
        run apt-get install -y --no-install-recommends "${missing[@]}"
    elif ! run apt-get install -y -q --no-install-recommends "${missing[@]}"; then
        run apt-get update -q # a fresh system may have no package lists yet
        run apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
}

install_venv() {
    if [[ -x $VENV/bin/python ]] && "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        say "virtual environment $VENV exists"
    else
        if [[ -e $VENV ]]; then
            run rm -rf -- "$VENV" # broken or too old a Python
        fi
        run install -d -m 0755 "$PREFIX"
        run "$PYTHON" -m venv "${VENV_ARGS[@]}" "$VENV"
    fi
    # Not editable: the service must not depend on the checkout staying where it is. pip reinstalls a
    # local directory even at the same version, so this also upgrades.
    run "$VENV/bin/python" -m pip install --upgrade --no-cache-dir "${PIP_ARGS[@]}" "$SRC"
}

install_models() {
    if [[ -d $SRC/models ]] && compgen -G "$SRC/models/*" >/dev/null; then
        run install -d -m 0755 "$MODELS"
        run cp -R -- "$SRC/models/." "$MODELS/"
        run chmod -R u=rwX,go=rX -- "$MODELS"
    else
        say "no models in $SRC/models: nothing copied to $MODELS"
    fi
}

# The checkout's config.yaml with state_dir set to /var/lib/seg-agent and `models/...` paths (relative to
# the checkout) pointing at the installed copies.
render_config() {
    sed -E \
        -e "s#^([[:space:]]*state_dir:[[:space:]]*).*#\\1$STATE_DIR#" \
        -e "s#(:[[:space:]]+[\"']?)(\\./)?models/#\\1$MODELS/#g" \
        -e "s#^([[:space:]]*-[[:space:]]+[\"']?)(\\./)?models/#\\1$MODELS/#" \
        "$SRC_CONFIG"
}

install_config() {
    run install -d -m 0755 -o root -g root "$CONF_DIR"
    if [[ -e $CONFIG ]]; then
        say "keeping $CONFIG"
    elif [[ ! -f $SRC_CONFIG ]]; then
        warn "no $SRC_CONFIG: write $CONFIG yourself (state_dir: $STATE_DIR), then restart $SERVICE"
    elif ((DRY_RUN)); then
        say "[dry-run] would write $CONFIG (0640 root:$SERVICE_USER) from $SRC_CONFIG, changed lines:"
        diff -u "$SRC_CONFIG" <(render_config) | sed -n 's/^[-+][^-+]/  &/p' || true
    else
        local tmp
        tmp=$(mktemp)
        # shellcheck disable=SC2064 # expand now: tmp is local
        trap "rm -f -- '$tmp'" EXIT
        render_config >"$tmp"
        run install -m 0640 -o root -g "$SERVICE_USER" "$tmp" "$CONFIG"
        rm -f -- "$tmp"
        trap - EXIT
    fi
    if [[ -f $CONFIG ]] && grep -qE "^[^#]*:[[:space:]]+[\"']?\\.{1,2}/" "$CONFIG"; then
        warn "$CONFIG has relative paths: they resolve against $CONF_DIR"
    fi
    if [[ -e $ENV_FILE ]]; then
        run chown "root:$SERVICE_USER" "$ENV_FILE"
        run chmod 0600 "$ENV_FILE"
    else
        run install -m 0600 -o root -g "$SERVICE_USER" "$SRC/systemd/$SERVICE.env.example" "$ENV_FILE"
        ENV_CREATED=1
    fi
}

install_unit() {
    local was_active=0
    if service_active; then was_active=1; fi
    run install -m 0644 -o root -g root "$SRC/systemd/$SERVICE.service" "$UNIT"
    if [[ -d /run/systemd/system ]] || ((DRY_RUN)); then
        run systemctl daemon-reload
    else
        # A chroot or an image being built: systemd reads the unit when it boots.
        say "systemd is not running: skipping daemon-reload"
    fi
    if ((!START)); then
        run systemctl enable "$SERVICE.service"
        return 0
    fi
    # Type=notify: these return once the agent has sent READY=1, or fail if it doesn't come up.
    local ok=1
    if ((was_active)); then
        # An upgrade: `enable --now` would leave the old code running.
        run systemctl enable "$SERVICE.service"
        run systemctl restart "$SERVICE.service" || ok=0
    else
        run systemctl enable --now "$SERVICE.service" || ok=0
    fi
    if ((!ok)); then
        warn "$SERVICE did not start: journalctl -u $SERVICE -n 50"
        warn "check $CONFIG and the secrets in $ENV_FILE, then: systemctl restart $SERVICE"
        exit 1
    fi
}

do_install() {
    check_prerequisites
    ensure_user
    install_system_packages
    install_venv
    install_models
    install_config
    install_unit
    say ""
    if ((DRY_RUN)); then
        say "dry run: nothing was changed"
        return 0
    fi
    say "seg-agent is installed: $VENV, $CONFIG, $ENV_FILE, $UNIT"
    if ((ENV_CREATED)); then
        say "Put ROBOFLOW_API_KEY and MQTT_PASSWORD in $ENV_FILE (sudoedit $ENV_FILE),"
        say "then: sudo systemctl restart $SERVICE"
    fi
    say "Status: systemctl status $SERVICE    Logs: journalctl -u $SERVICE -f"
}

# ---------------------------------------------------------------------------------------- uninstall

do_uninstall() {
    if [[ -e $UNIT ]] || service_active; then
        run systemctl disable --now "$SERVICE.service" || warn "could not stop/disable $SERVICE"
    fi
    if [[ -e $UNIT ]]; then
        run rm -f -- "$UNIT"
    fi
    if ((PURGE)) && [[ -d $DROPIN_DIR ]]; then
        run rm -rf -- "$DROPIN_DIR"
    fi
    if have_systemctl; then
        run systemctl daemon-reload || true
        run systemctl reset-failed "$SERVICE.service" 2>/dev/null || true
    fi
    if [[ -e $VENV ]]; then
        run rm -rf -- "$VENV"
    fi
    if ((PURGE)); then
        local path
        for path in "$MODELS" "$CONF_DIR" "$STATE_DIR" "$CACHE_DIR"; do
            if [[ -e $path ]]; then run rm -rf -- "$path"; fi
        done
        if getent passwd "$SERVICE_USER" >/dev/null; then
            run userdel "$SERVICE_USER"
        fi
        if getent group "$SERVICE_USER" >/dev/null; then
            run groupdel "$SERVICE_USER" || true # userdel usually removed it already
        fi
    else
        say "kept $CONF_DIR (config, secrets), $STATE_DIR (outbox), $MODELS: --purge removes them"
    fi
    if [[ -d $PREFIX ]]; then
        run rmdir --ignore-fail-on-non-empty -- "$PREFIX"
    fi
    if ((DRY_RUN)); then say "dry run: nothing was changed"; else say "seg-agent is uninstalled"; fi
}

# --------------------------------------------------------------------------------------------- main

while (($#)); do
    case $1 in
    -n | --dry-run) DRY_RUN=1 ;;
    --uninstall) ACTION=uninstall ;;
    --purge) PURGE=1 ;;
    --no-start) START=0 ;;
    --config)
        (($# > 1)) || die "--config needs a file"
        SRC_CONFIG=$2
        shift
        ;;
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

if ((PURGE)) && [[ $ACTION != uninstall ]]; then
    die "--purge goes with --uninstall"
fi
if ((!DRY_RUN)) && ((EUID != 0)); then
    die "run as root (sudo), or with --dry-run to see what it would do"
fi

case $ACTION in
install) do_install ;;
uninstall) do_uninstall ;;
esac
