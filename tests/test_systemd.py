"""systemd/: the unit verifies cleanly and keeps its hardening; install.sh parses and dry-runs harmlessly."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "seg-agent.service"
ENV_EXAMPLE = ROOT / "systemd" / "seg-agent.env.example"
INSTALL = ROOT / "systemd" / "install.sh"
EXEC_START = "/opt/seg-agent/venv/bin/seg-agent run --config /etc/seg-agent/config.yaml"

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")


def unit_entries(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment, in order (keys may repeat)."""
    entries = []
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not an assignment: {raw!r}"
        entries.append((section, key.strip(), value.strip()))
    return entries


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for section, key, value in unit_entries(UNIT.read_text(encoding="utf-8")):
        if section == "Service":
            values.setdefault(key, []).append(value)
    return values


def verifiable_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart= pointing at a program that exists here (verify checks it)."""
    program = tmp_path / "seg-agent"
    program.write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
    program.chmod(0o755)
    text = UNIT.read_text(encoding="utf-8")
    assert text.count(f"ExecStart={EXEC_START}\n") == 1
    copy = tmp_path / "seg-agent.service"
    copy.write_text(text.replace(f"ExecStart={EXEC_START}", f"ExecStart={program} run --config x"), "utf-8")
    return copy


# ------------------------------------------------------------------------------------------ unit


@needs_systemd_analyze
def test_unit_verifies_without_any_message(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    copy = verifiable_copy(tmp_path)
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0"},
    )
    # verify exits 0 on "Unknown key ..., ignoring": any output at all is a failure.
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr
    assert result.stdout.strip() == "", result.stdout


@needs_systemd_analyze
def test_verify_catches_a_typo(tmp_path: Path) -> None:
    """The check above is only worth something if verify reports unknown keys here."""
    assert SYSTEMD_ANALYZE is not None
    copy = verifiable_copy(tmp_path)
    copy.write_text(copy.read_text(encoding="utf-8").replace("PrivateTmp=", "PrivatTmp="), "utf-8")
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=60
    )
    assert "PrivatTmp" in result.stderr


@needs_systemd_analyze
def test_security_exposure_stays_low(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    copy = verifiable_copy(tmp_path)
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=yes", "--no-pager", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout  # 1.4 when written; "OK" is below 4.0


def test_unit_is_type_notify_with_watchdog(service: dict[str, list[str]]) -> None:
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert service["WatchdogSec"] == ["30"]
    assert service["Restart"] == ["on-failure"]
    assert service["RestartSec"]
    assert service["TimeoutStopSec"]
    assert service["RestartPreventExitStatus"] == ["2"]  # configuration errors don't loop


def test_unit_start_limit_is_in_unit_section() -> None:
    entries = unit_entries(UNIT.read_text(encoding="utf-8"))
    keys = {(section, key) for section, key, _ in entries}
    assert ("Unit", "StartLimitIntervalSec") in keys
    assert ("Unit", "StartLimitBurst") in keys
    assert ("Install", "WantedBy") in keys


def test_unit_runs_the_agent_as_its_own_user(service: dict[str, list[str]]) -> None:
    assert service["ExecStart"] == [EXEC_START]
    assert service["User"] == ["seg-agent"]
    assert "video" in service["SupplementaryGroups"][0].split()
    assert service["StateDirectory"] == ["seg-agent"]
    assert service["ConfigurationDirectory"] == ["seg-agent"]
    assert service["EnvironmentFile"] == ["-/etc/seg-agent/seg-agent.env"]


def test_no_secrets_in_the_unit(service: dict[str, list[str]]) -> None:
    """Secrets come from the environment file only: never ExecStart= (ps shows it) or Environment=."""
    for key in ("ExecStart", "Environment"):
        for value in service.get(key, []):
            assert not re.search(r"(?i)api_key|apikey|password|ROBOFLOW|MQTT_", value), value


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("DevicePolicy", "closed"),
        ("DeviceAllow", "char-video4linux rw"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("ProtectClock", "yes"),
        ("ProtectHostname", "yes"),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
        ("RestrictNamespaces", "yes"),
        ("RestrictRealtime", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("PrivateUsers", "yes"),
        ("SystemCallFilter", "@system-service"),
        ("SystemCallArchitectures", "native"),
        ("CapabilityBoundingSet", ""),
        ("UMask", "0077"),
    ],
)
def test_unit_hardening(service: dict[str, list[str]], key: str, value: str) -> None:
    assert value in service.get(key, []), f"{key}={value} missing (have {service.get(key)})"


def test_unit_allows_the_board_cameras(service: dict[str, list[str]]) -> None:
    # V4L2 (USB, CSI nodes), and what libcamera (rpicam-vid in a `command:` source) opens besides.
    allowed = service["DeviceAllow"]
    for device in ("char-video4linux rw", "char-media rw", "char-dma_heap rw"):
        assert device in allowed
    assert "video" in service["SupplementaryGroups"][0].split()
    assert "/tmp/argus_socket" in UNIT.read_text(encoding="utf-8")  # the Jetson drop-in says why PrivateTmp=no


def test_install_dry_run_installs_missing_system_libraries() -> None:
    env = {**os.environ, "APT_PACKAGES": "seg-agent-surely-not-a-package"}
    result = subprocess.run(
        ["bash", str(INSTALL), "--dry-run"], capture_output=True, text=True, timeout=60, cwd="/", env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    if shutil.which("apt-get") and shutil.which("dpkg-query"):
        assert "apt-get install -y --no-install-recommends seg-agent-surely-not-a-package" in result.stdout
    none = subprocess.run(
        ["bash", str(INSTALL), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
        env={**os.environ, "APT_PACKAGES": ""},
        check=False,
    )
    assert none.returncode == 0 and "apt-get" not in none.stdout


def test_unit_does_not_hide_devices_or_block_the_network(service: dict[str, list[str]]) -> None:
    assert "PrivateDevices" not in service  # would hide /dev/video*
    assert "PrivateNetwork" not in service
    assert "IPAddressDeny" not in service  # the hosted API and the broker are anywhere
    assert "ProcSubset" not in service  # ONNX Runtime reads /proc/cpuinfo


# ---------------------------------------------------------------------------- env and install.sh


def test_env_example_names_the_secrets_and_holds_none() -> None:
    assignments = dict(
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    )
    assert assignments == {"ROBOFLOW_API_KEY": "", "MQTT_PASSWORD": ""}
    assert "0600" in ENV_EXAMPLE.read_text(encoding="utf-8")


def test_install_script_is_executable_bash() -> None:
    assert INSTALL.stat().st_mode & stat.S_IXUSR
    assert INSTALL.read_text(encoding="utf-8").startswith("#!/usr/bin/env bash\n")
    subprocess.run(["bash", "-n", str(INSTALL)], check=True, timeout=30)
    assert "set -euo pipefail" in INSTALL.read_text(encoding="utf-8")


SHELL_SCRIPTS = [INSTALL, *sorted((ROOT / "scripts").glob("*.sh"))]


@pytest.mark.skipif(
    shutil.which("shellcheck") is None, reason="shellcheck is not installed (scripts/test.sh installs it)"
)
@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_shell_scripts_are_shellcheck_clean(script: Path) -> None:
    result = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


SYSTEM_PATHS = [
    Path("/opt/seg-agent"),
    Path("/etc/seg-agent"),
    Path("/etc/systemd/system/seg-agent.service"),
    Path("/var/lib/seg-agent"),
]


def run_install(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(INSTALL), *args], capture_output=True, text=True, timeout=60, cwd="/", check=False
    )


@pytest.mark.parametrize(
    "args",
    [
        ["--dry-run"],
        ["--dry-run", "--no-start"],
        ["--dry-run", "--uninstall"],
        ["-n", "--uninstall", "--purge"],
    ],
)
def test_install_dry_run_changes_nothing(args: list[str]) -> None:
    before = {p: p.exists() for p in SYSTEM_PATHS}
    result = run_install(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "nothing was changed" in result.stdout
    # Every command it would run is printed, none is marked as run.
    assert not [line for line in result.stdout.splitlines() if line.startswith("+ ")]
    assert {p: p.exists() for p in SYSTEM_PATHS} == before


def test_install_dry_run_shows_the_plan(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    text = "device_id: pi\nstate_dir: ./state\ninference:\n  local:\n    model: models/demo.onnx\n"
    config.write_text(text, "utf-8")
    result = run_install("--dry-run", "--config", str(config))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    if not Path("/etc/seg-agent/config.yaml").exists():
        assert "+state_dir: /var/lib/seg-agent" in out
        assert "+    model: /opt/seg-agent/models/demo.onnx" in out
    assert "python -m pip install" in out or "/opt/seg-agent/venv/bin/python -m pip" in out
    assert "install -m 0600 -o root -g seg-agent" in out or "chmod 0600 /etc/seg-agent/seg-agent.env" in out
    assert "/etc/systemd/system/seg-agent.service" in out
    assert "systemctl daemon-reload" in out
    assert "systemctl enable --now seg-agent.service" in out or "systemctl restart seg-agent.service" in out


def test_install_rejects_unknown_options_and_lone_purge() -> None:
    assert run_install("--frobnicate").returncode != 0
    result = run_install("--dry-run", "--purge")
    assert result.returncode != 0
    assert "--uninstall" in result.stderr
